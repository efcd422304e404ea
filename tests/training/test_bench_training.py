"""The training benchmark's protocol: held-out groups, resuming, and the table.

The group picker is checked on the IDC set's shape (and on the real labels when
present); the protocol runs for real, in process, with a tiny recipe on synthetic
images given patient ids.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    path = REPO / "bench" / "bench_training.py"
    spec = importlib.util.spec_from_file_location("bench_training", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_training"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# IDC's patients: id -> (benign, malignant) patches.
IDC_SHAPE = {
    "8863": (772, 207), "8864": (805, 328), "8867": (1480, 162), "8913": (873, 0),
    "8917": (0, 397), "8918": (0, 120), "8950": (0, 190), "8951": (0, 180), "8955": (0, 181),
    "8956": (0, 340), "8957": (0, 83), "8959": (0, 204), "8974": (0, 369),
}  # fmt: skip


def _rows(bench, shape: dict[str, tuple[int, int]]):
    rows = []
    for patient, (benign, malignant) in shape.items():
        rows += [bench.Row(f"{patient}-b{i}", "benign", patient) for i in range(benign)]
        rows += [bench.Row(f"{patient}-m{i}", "malignant", patient) for i in range(malignant)]
    return rows


def _check_groups(rows, groups, n: int) -> None:
    patients = [p for g in groups for p in g]
    assert len(groups) == n
    assert len(patients) == len(set(patients)) == len({r.patient for r in rows})
    for group in groups:
        labels = {r.label for r in rows if r.patient in group}
        assert labels == {"benign", "malignant"}, group
        rest = {r.label for r in rows if r.patient not in group}
        assert rest == {"benign", "malignant"}, group


@pytest.mark.parametrize("n", [3, 4])
def test_groups_are_disjoint_cover_everyone_and_hold_both_classes(bench, n: int) -> None:
    rows = _rows(bench, IDC_SHAPE)
    groups = bench.pick_groups(rows, n)
    _check_groups(rows, groups, n)
    assert bench.pick_groups(list(reversed(rows)), n) == groups  # deterministic
    sizes = [sum(r.patient in g for r in rows) for g in groups]
    assert max(sizes) < 1.5 * min(sizes)  # roughly balanced in images


def test_too_few_patients_with_a_class(bench) -> None:
    with pytest.raises(ValueError, match="only 4 patients have it"):
        bench.pick_groups(_rows(bench, IDC_SHAPE), 5)


def test_groups_on_the_real_idc_labels(bench, idc_dir: Path) -> None:
    rows = bench.read_rows(idc_dir / "labels.csv")
    _check_groups(rows, bench.pick_groups(rows, 3), 3)


def test_image_split_folds_cover_every_image_once(bench) -> None:
    rows = _rows(bench, {"a": (10, 0), "b": (0, 7), "c": (3, 3)})
    folds = bench.image_folds(rows, 4)
    assert sorted(i for f in folds for i in f) == list(range(len(rows)))
    assert folds == bench.image_folds(rows, 4)


def test_split_by_image_is_its_own_dataset(bench) -> None:
    parse = bench.argparse.Namespace
    base = {"labels": None, "groups": None}
    (by_image,) = bench._specs(parse(dataset="idc", split="image", **base))
    assert (by_image.name, by_image.split) == ("idc-by-image", "image")
    (by_patient,) = bench._specs(parse(dataset="idc", split="patient", **base))
    assert (by_patient.name, by_patient.split) == ("idc", "patient")
    names = [s.name for s in bench._specs(parse(dataset="breakhis", split="patient", **base))]
    assert names == ["breakhis", "breakhis-by-image"]


def test_probe_oracle_balanced_accuracy_and_recolouring(bench) -> None:
    import numpy as np

    path = REPO / "bench" / "bench_features.py"
    spec = importlib.util.spec_from_file_location("bench_features", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    y = np.array([0, 0, 0, 1, 1, 1])
    assert probe.best_balanced_accuracy(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])) == 1.0
    # One benign scored above every malignant: the best cut keeps 2/3 of the benign right.
    p = np.array([0.1, 0.2, 0.95, 0.7, 0.8, 0.9])
    assert probe.best_balanced_accuracy(y, p) == pytest.approx(5 / 6)
    assert probe.best_balanced_accuracy(y, 1 - np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])) == 0.5
    images = np.random.default_rng(0).uniform(0, 255, (4, 5, 5, 3)) * [1.0, 0.5, 0.2]
    grey = probe.recoloured(images, "gray")
    assert np.allclose(grey[..., 0], grey[..., 2]) and not np.allclose(images, grey)
    same = probe.recoloured(images, "per-image").mean((1, 2))
    assert np.allclose(same, same[0], atol=1.0) and not np.allclose(images.mean((1, 2)), same)
    assert probe.recoloured(images, "rgb") is images


def test_every_recipe_is_a_valid_training_config(bench) -> None:
    from training.config import from_mapping

    for name, recipe in bench.RECIPES.items():
        config = from_mapping({"data": "d", "output": "o", **recipe.overrides}, source=name)
        assert recipe.about, f"recipe {name} has no one-line description"
        assert config.data == "d"
    # The description is not part of what a saved result must match.
    described = bench.Recipe({"tta": True}, about="words")
    assert described.key() == bench.Recipe({"tta": True}).key()
    assert bench.RECIPES["final1_tta"].overrides == {"final_models": 1, "tta": True}


def test_summary_means_ranges_and_wins(bench) -> None:
    def doc(recipe: str, group: int, auc: float) -> dict:
        return {
            "recipe": recipe, "group": group, "seed": 1, "roc_auc": auc,
            "balanced_accuracy": auc - 0.1, "f1": auc - 0.2, "train_seconds": 10.0,
            "peak_rss_gib": 1.0 + group, "serving_images_per_s": 100.0, "warnings": [],
        }  # fmt: skip

    docs = [doc("original_cnn", 0, 0.90), doc("original_cnn", 1, 0.80)]
    docs += [doc("default", 0, 0.95), doc("default", 1, 0.75)]
    summary = bench.summarize(docs)
    assert list(summary) == ["original_cnn", "default"]
    assert summary["default"]["roc_auc"] == pytest.approx({"mean": 0.85, "min": 0.75, "max": 0.95})
    assert summary["default"]["beats_baseline"] == "1/2"
    assert summary["default"]["peak_rss_gib"] == 2.0
    table = bench.markdown_table(summary, "t")
    assert "| default | 2 | 0.850 [0.750, 0.950] |" in table


def test_pooled_figures_by_image_and_by_patient(bench) -> None:
    def pred(patient: str, label: int, p: float) -> dict:
        return {"patient": patient, "label": label, "probability": p}

    # Two groups' models, thresholds 0.5 and 0.2; patient "b" is called wrongly by majority.
    runs = [
        {"seed": 1, "threshold": 0.5, "predictions": [pred("a", 1, 0.9), pred("a", 1, 0.6),
                                                       pred("b", 0, 0.7), pred("b", 0, 0.8)]},
        {"seed": 1, "threshold": 0.2, "predictions": [pred("c", 0, 0.1), pred("c", 0, 0.3),
                                                       pred("d", 1, 0.4)]},
    ]  # fmt: skip
    pooled = bench.pooled_figures(runs)
    assert pooled["patients"] == 4
    assert pooled["patient_accuracy"] == pytest.approx(0.5)  # a and d right; b and c wrong
    # Images: malignant 3/3 called; benign: c's 0.1 only (1 of 4) -> (1 + 0.25) / 2.
    assert pooled["image_balanced_accuracy"] == pytest.approx(0.625)
    assert 0.0 <= pooled["image_auc"] <= 1.0


def _patient_csv(sample_dir: Path, path: Path) -> Path:
    """The synthetic samples as six patients, each class spread over three of them."""
    images = sorted(sample_dir.rglob("*.png"))
    counts = {"benign": 0, "malignant": 0}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id"])
        for image in images:
            label = image.parent.name
            k = counts[label] % 3 + (0 if label == "benign" else 3)
            counts[label] += 1
            writer.writerow([str(image), label, f"p{k if k < 3 else k - 3}{label[0]}"])
    return path


def test_protocol_saves_each_run_resumes_and_tables(
    bench, sample_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    # Patients p0b..p2b hold benign images only, p0m..p2m malignant only: mix them so
    # that three patients hold both classes.
    labels = _patient_csv(sample_dir, tmp_path / "labels.csv")
    text = labels.read_text().replace("p0m", "p0b").replace("p1m", "p1b").replace("p2m", "p2b")
    labels.write_text(text.replace("p2b", "p2x", 5))
    tiny = bench.Recipe({"epochs": 1, "image_size": 32, "folds": 1, "batch_size": 32})
    monkeypatch.setitem(bench.RECIPES, "tiny", tiny)
    spec = bench.DatasetSpec("synthetic", labels, groups=2)
    mode = bench.Mode(groups_used=1, seeds=(1,), max_minutes=1.0)
    results = tmp_path / "results"
    ran = bench.run_protocol(spec, ["tiny"], mode, results, in_process=True)
    saved = sorted(results.glob("tiny/*.json"))
    assert [p.name for p in saved] == ["group0-seed1.json"] and len(ran) == 1
    first = json.loads(saved[0].read_text())
    for key in ("roc_auc", "balanced_accuracy", "f1", "train_seconds", "peak_rss_gib"):
        assert isinstance(first[key], float), key
    assert first["serving_images_per_s"] > 0 and first["recipe_spec"] == tiny.key()
    assert first["train_images_per_s"] > 0 and first["exported"]["kind"] == "one model"
    assert first["held_out_patients"] and first["test_images"] > 0
    stamps = [p.stat().st_mtime_ns for p in saved]
    assert bench.run_protocol(spec, ["tiny"], mode, results, in_process=True) == []
    assert [p.stat().st_mtime_ns for p in saved] == stamps
    # Another budget is another experiment: the saved results no longer count.
    task = bench.plan(spec, ["tiny"], mode, results, bench.read_rows(labels))[0]
    assert bench.saved_result(task, tiny, mode, spec) is not None
    longer = bench.Mode(groups_used=1, seeds=(1,), max_minutes=2.0)
    assert bench.saved_result(task, tiny, longer, spec) is None
    report = bench.build_table(results, "synthetic")
    aucs = [json.loads(p.read_text())["roc_auc"] for p in saved]
    assert report["recipes"]["tiny"]["roc_auc"]["mean"] == pytest.approx(aucs[0])
    assert (results / "table.md").read_text().count("| tiny | 1 |") == 1
    assert report["recipes"]["tiny"]["train_images_per_s"] == pytest.approx(
        first["train_images_per_s"]
    )
    assert json.loads((results / "summary.json").read_text())["groups"]["0"]
