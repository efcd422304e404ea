"""Training data: discovery, patient ids, the patient split, bad folders, augmentation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo_common.labels import LabelledImage, patient_id_from_name, read_labels_csv
from histo_common.samples import encode_png, synth_patch
from model_export.contract import DEFAULT_CLASS_NAMES
from training.data import (
    DataError,
    Dataset,
    Example,
    class_weights,
    fold_splits,
    load_examples,
    split_examples,
)


def _png(seed: int = 0, malignant: bool = False) -> bytes:
    return encode_png(synth_patch(np.random.default_rng(seed), malignant, 32))


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("8863_idx5_x1001_y1001_class0.png", "8863"),
        ("gs://b/idc/malignant/12345_idx5_x51_y2251_class1.png", "12345"),
        ("SOB_M_DC-14-2523-400-001.png", "14-2523"),
        ("SOB_B_A-14-22549AB-40-001.png", "14-22549AB"),
        ("synthetic_benign_00001.png", None),
        ("8863_class0.png", None),
    ],
)
def test_patient_id_from_name(name: str, patient: str | None) -> None:
    assert patient_id_from_name(name) == patient


def _dataset(patients: dict[str, tuple[int, int]]) -> Dataset:
    """patients: id -> (n benign, n malignant)."""
    examples = []
    for pid, (nb, nm) in patients.items():
        examples += [Example(f"{pid}-b{i}", 0, pid, b"") for i in range(nb)]
        examples += [Example(f"{pid}-m{i}", 1, pid, b"") for i in range(nm)]
    return Dataset(examples, ["benign", "malignant"])


@pytest.mark.parametrize("seed", range(8))
def test_patient_split_never_leaks_a_patient(seed: int) -> None:
    ds = _dataset(
        {
            "p1": (50, 10),
            "p2": (40, 0),
            "p3": (0, 30),
            "p4": (30, 20),
            "p5": (0, 25),
            "p6": (45, 5),
            "p7": (0, 15),
        }
    )
    split = split_examples(ds, 0.2, seed)
    assert split.method == "patient"
    train_p = {ds.examples[i].patient_id for i in split.train}
    val_p = {ds.examples[i].patient_id for i in split.validation}
    assert train_p.isdisjoint(val_p)
    assert val_p == set(split.validation_patients)
    assert len(split.train) + len(split.validation) == len(ds.examples)
    for side in (split.train, split.validation):
        assert {ds.examples[i].label for i in side} == {0, 1}


@pytest.mark.parametrize("seed", range(5))
def test_patient_folds_cover_every_image_once_and_never_share_a_patient(seed: int) -> None:
    # Like IDC: benign patches in few patients, many patients with malignant only.
    ds = _dataset(
        {
            "a": (80, 20),
            "b": (80, 30),
            "c": (150, 15),
            "d": (90, 0),
            "e": (0, 40),
            "f": (0, 12),
            "g": (0, 20),
            "h": (0, 18),
            "i": (0, 35),
        }
    )
    splits = fold_splits(ds, 3, seed)
    assert len(splits) == 3 and all(s.method == "patient" for s in splits)
    held = sorted(i for s in splits for i in s.validation)
    assert held == list(range(len(ds.examples)))
    for s in splits:
        val_p = {ds.examples[i].patient_id for i in s.validation}
        train_p = {ds.examples[i].patient_id for i in s.train}
        assert val_p.isdisjoint(train_p)
        assert set(s.train) | set(s.validation) == set(range(len(ds.examples)))
        for side in (s.train, s.validation):
            assert {ds.examples[i].label for i in side} == {0, 1}


def test_folds_fall_back_to_images_when_patients_cannot_cover_classes() -> None:
    ds = _dataset({"a": (30, 0), "b": (0, 20), "c": (0, 25)})  # one benign patient, 3 folds
    splits = fold_splits(ds, 3, 0)
    assert all(s.method == "stratified" for s in splits)
    assert sorted(i for s in splits for i in s.validation) == list(range(75))


def test_split_is_seeded() -> None:
    ds = _dataset({f"p{i}": (20, 10) for i in range(10)})
    assert split_examples(ds, 0.2, 1) == split_examples(ds, 0.2, 1)
    assert any(split_examples(ds, 0.2, 1) != split_examples(ds, 0.2, s) for s in range(2, 6))


def test_stratified_split_without_patients() -> None:
    examples = [Example(f"x{i}", int(i % 3 == 0), None, b"") for i in range(90)]
    split = split_examples(Dataset(examples, ["benign", "malignant"]), 0.2, 0)
    assert split.method == "stratified"
    val_labels = [examples[i].label for i in split.validation]
    assert val_labels.count(1) == 6 and val_labels.count(0) == 12
    assert set(split.train).isdisjoint(split.validation)


def test_class_weights_balance_the_loss() -> None:
    labels = np.array([0] * 75 + [1] * 25)
    weights = class_weights(labels, 2)
    assert weights[0] * 75 == pytest.approx(weights[1] * 25)
    assert weights[1] == pytest.approx(2.0)


# ------------------------------------------------------------- bad folders


def test_empty_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"no labelled images found under .*data.*benign"):
        load_examples(str(tmp_path / "data"))


def test_one_class_only(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / "benign").mkdir(exist_ok=True)
        (tmp_path / "benign" / f"{i}.png").write_bytes(_png(i))
    with pytest.raises(DataError, match=r"only one class \('benign'\)"):
        load_examples(str(tmp_path))


def test_unreadable_images_are_named(tmp_path: Path) -> None:
    for label in ("benign", "malignant"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}.png").write_bytes(_png(i, label == "malignant"))
    (tmp_path / "malignant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (tmp_path / "benign" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"2 unreadable image\(s\).*(broken|empty)\.png") as err:
        load_examples(str(tmp_path))
    assert "broken.png" in str(err.value) and "empty.png" in str(err.value)
    assert "--skip-bad-images" in str(err.value)
    ds = load_examples(str(tmp_path), skip_bad_images=True)
    assert len(ds.examples) == 6


def test_labels_csv_with_patients(tmp_path: Path) -> None:
    for i, label in enumerate(["benign", "malignant", "benign", "malignant"]):
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / f"{i}.png").write_bytes(_png(i, label == "malignant"))
    (tmp_path / "labels.csv").write_text(
        "path,label,patient_id\nimg/0.png,benign,A\nimg/1.png,malignant,A\n"
        "img/2.png,benign,B\nimg/3.png,malignant,C\n"
    )
    items = read_labels_csv(str(tmp_path / "labels.csv"), DEFAULT_CLASS_NAMES)
    assert items[0] == LabelledImage(str(tmp_path / "img" / "0.png"), "benign", "A")
    ds = load_examples(str(tmp_path / "labels.csv"))
    assert ds.summary() == {"images": 4, "per_class": {"benign": 2, "malignant": 2}, "patients": 3}


def test_labels_csv_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,class\na.png,benign\n")
    with pytest.raises(DataError, match=r"needs columns 'path' \(or 'uri'\) and 'label'"):
        load_examples(str(tmp_path / "labels.csv"))


def test_tiff_is_transcoded_for_the_model(tmp_path: Path) -> None:
    for label in ("benign", "malignant"):
        (tmp_path / label).mkdir()
        arr = synth_patch(np.random.default_rng(1), label == "malignant", 32)
        out = io.BytesIO()
        Image.fromarray(arr).save(out, format="TIFF")
        (tmp_path / label / "x.tif").write_bytes(out.getvalue())
    ds = load_examples(str(tmp_path))
    assert all(e.data.startswith(b"\x89PNG") for e in ds.examples)


# ------------------------------------------------------------ augmentation


def test_augmentation_keeps_shape_range_and_changes_colour() -> None:
    import tensorflow as tf

    from training.config import Augmentation
    from training.data import augment

    tf.random.set_seed(0)
    image = tf.constant(synth_patch(np.random.default_rng(2), True, 48).astype(np.float32))
    outs = [augment(image, Augmentation(), 48).numpy() for _ in range(6)]
    for out in outs:
        assert out.shape == (48, 48, 3)
        assert out.min() >= 0.0 and out.max() <= 255.0
    means = np.array([o.reshape(-1, 3).mean(axis=0) for o in outs])
    assert means.std(axis=0).max() > 0.5  # colour jitter does something
    none = Augmentation(
        flip=False, rotate90=False, zoom=0, stain=0, brightness=0, contrast=0, saturation=0, hue=0
    )
    np.testing.assert_allclose(augment(image, none, 48).numpy(), image.numpy(), atol=1e-3)
