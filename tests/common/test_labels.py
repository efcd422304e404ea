"""The one labels module: aliases, the folder rule, the CSV reader and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from histo_common import labels
from model_export.contract import DEFAULT_CLASS_NAMES

CLASSES = DEFAULT_CLASS_NAMES


def test_aliases_name_a_class_by_name_index_or_initial() -> None:
    for written, expected in [
        ("malignant", "malignant"),
        ("Benign", "benign"),
        ("0", "benign"),
        ("1", "malignant"),
        (" b ", "benign"),
        ("M", "malignant"),
        ("maybe", None),
        ("2", None),
    ]:
        assert labels.normalise_label(written, CLASSES) == expected, written
    # Initials are aliases only when no other class shares them.
    three = ("benign", "borderline", "malignant")
    assert labels.normalise_label("b", three) is None
    assert labels.normalise_label("2", three) == "malignant"


def test_folder_rule_takes_the_nearest_class_folder() -> None:
    assert labels.label_from_folder("gs://b/set/malignant/x.png", CLASSES) == "malignant"
    assert labels.label_from_folder("/d/Benign/slide-7/x.png", CLASSES) == "benign"
    assert labels.label_from_folder("/d/benign/malignant/x.png", CLASSES) == "malignant"
    assert labels.label_from_folder("/d/1/x.png", CLASSES) == "malignant"
    assert labels.label_from_folder("/d/other/x.png", CLASSES) is None
    assert labels.label_from_folder("/d/malignant.png", CLASSES) is None  # a file, not a folder
    assert labels.patient_id_from_name("/x/8863_idx5_x1001_y1001_class0.png") == "8863"
    assert labels.patient_id_from_name("SOB_M_DC-14-2523-400-001.png") == "14-2523"
    assert labels.patient_id_from_name("synthetic_benign_00001.png") is None


def test_discovery_follows_the_folder_rule_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "malignant" / "data"  # a class name above the root does not count
    for rel in ("benign/a.png", "m/slide/b.png", "unsorted/c.png", "d.png", "1/e.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")

    found = {
        Path(i.uri).relative_to(root).as_posix(): i.label
        for i in labels.discover_labelled_images(str(root), CLASSES)
    }

    assert found == {"benign/a.png": "benign", "m/slide/b.png": "malignant", "1/e.png": "malignant"}
    with pytest.raises(labels.LabelsError, match=r"no labelled images found under .*benign/\*"):
        labels.discover_labelled_images(str(root / "unsorted"), CLASSES)


def test_labels_csv_through_storage_resolves_paths_and_aliases(tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "Path,Label,patient_id\nimgs/a.png,M,p1\ngs://b/c.png,0,\n\n"
        "imgs/8863_idx5_x1_y1_class0.png,benign,\n"
    )

    images = labels.read_labels_csv(str(csv_path), CLASSES)
    index = labels.by_uri(images)

    assert [i.label for i in images] == ["malignant", "benign", "benign"]
    assert index["gs://b/c.png"] == labels.LabelledImage("gs://b/c.png", "benign", None)
    assert index[
        labels.normalise_uri(f"{tmp_path}/imgs/8863_idx5_x1_y1_class0.png")
    ].patient_id == ("8863")
    found = labels.true_label(f"file://{tmp_path}/imgs/a.png", CLASSES, index)
    assert (found.label, found.patient_id) == ("malignant", "p1")
    assert labels.true_label("/elsewhere/benign/z.png", CLASSES, index).label == "benign"
    assert labels.true_label("/elsewhere/z.png", CLASSES, index) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\nx.png,benign\ny.png,maybe\n", r"l\.csv line 3: unknown label 'maybe'"),
        ("path,label\nx.png,\n", r"l\.csv line 2: empty path or label"),
        ("file,class\nx.png,benign\n", r"l\.csv needs columns 'path' \(or 'uri'\) and 'label'"),
        ("path,label\n", r"l\.csv has no rows"),
    ],
)
def test_csv_errors_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(labels.LabelsError, match=message):
        labels.parse_labels_csv(text, "/d/l.csv", CLASSES)


def test_unreadable_csv_names_it(tmp_path: Path) -> None:
    with pytest.raises(labels.LabelsError, match=r"cannot read labels CSV .*missing\.csv"):
        labels.read_labels_csv(str(tmp_path / "missing.csv"), CLASSES)


def test_require_some_label_says_what_to_do() -> None:
    labels.require_some_label(["/a/x.png", "/a/malignant/y.png"], CLASSES, None, "--input")
    with pytest.raises(labels.LabelsError, match="none of the 2 images in --input has a label"):
        labels.require_some_label(["/a/x.png", "/a/y.png"], CLASSES, None, "--input")
    # A launcher looks at the first rows only: past them, the pipeline decides.
    unlabelled = (f"/a/{i}.png" for i in range(1_000_000))
    labels.require_some_label(unlabelled, CLASSES, None, "--scores", limit=100)
    assert next(unlabelled) == "/a/101.png"  # it stopped after looking at 100 (and one more)
    with pytest.raises(labels.LabelsError, match="none of the 2 images"):
        labels.require_some_label(["/a/x.png", "/a/y.png"], CLASSES, None, "--input", limit=100)
