"""The whole evaluation job: metrics.json, plots, report, patients, gate, GCS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from beam_jobs import evaluate, files
from evaluation.metrics import ALL_METRICS
from histo_common import DISCLAIMER, storage


def _metrics(output: Path) -> dict:
    return json.loads((output / "metrics.json").read_text())


def test_metrics_json_has_the_agreed_shape(evaluated_run) -> None:
    doc = _metrics(evaluated_run.output)
    assert set(doc) >= {
        "model",
        "counts",
        "image_level",
        "patient_level",
        "plots",
        "blessing",
        "disclaimer",
    }
    assert doc["model"]["name"] == "histo-cnn" and doc["model"]["version"] == 1
    assert doc["model"]["version_uri"] == str(evaluated_run.model_version)
    assert doc["model"]["threshold"] == pytest.approx(0.5)
    assert doc["counts"] == {
        "images": 26,
        "scored": 25,
        "errors": 1,
        "labelled": 24,
        "unlabelled": 1,
        "per_class": {"benign": 12, "malignant": 12},
        "patients": 6,
    }
    for level in ("image_level", "patient_level"):
        for name in ALL_METRICS:
            m = doc[level][name]
            assert set(m) == {"value", "ci_low", "ci_high"}, (level, name)
        assert doc[level]["confusion_matrix"]["labels"] == ["benign", "malignant"]
    assert sum(map(sum, doc["image_level"]["confusion_matrix"]["matrix"])) == 24
    assert sum(map(sum, doc["patient_level"]["confusion_matrix"]["matrix"])) == 6
    assert "macro avg" in doc["image_level"]["classification_report"]
    assert doc["disclaimer"] == DISCLAIMER
    for rel in doc["plots"].values():
        assert (evaluated_run.output / rel).read_bytes().startswith(b"\x89PNG"), rel


def test_image_metrics_agree_with_sklearn_on_the_scored_rows(evaluated_run) -> None:
    doc = _metrics(evaluated_run.output)
    rows = list(files.read_json_lines(f"{evaluated_run.output}/results/*.jsonl"))
    by_name = {Path(r["uri"]).name: r for r in rows}
    names = sorted(evaluated_run.labels)
    y = np.array([evaluated_run.labels[n][0] == "malignant" for n in names], dtype=int)
    p = np.array([by_name[n]["probability"] for n in names])
    level = doc["image_level"]
    assert level["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
    assert level["average_precision"]["value"] == pytest.approx(
        skm.average_precision_score(y, p), abs=1e-6
    )
    pred = (p >= 0.5).astype(int)
    assert level["sensitivity"]["value"] == pytest.approx(skm.recall_score(y, pred), abs=1e-6)
    assert level["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, pred).tolist()
    # Patients: malignant if any image is; scored by their highest probability.
    patients = sorted({pid for _, pid in evaluated_run.labels.values()})
    py = [
        max(y[i] for i, n in enumerate(names) if evaluated_run.labels[n][1] == pid)
        for pid in patients
    ]
    pp = [
        max(p[i] for i, n in enumerate(names) if evaluated_run.labels[n][1] == pid)
        for pid in patients
    ]
    brier = doc["patient_level"]["brier_score"]["value"]
    assert brier == pytest.approx(skm.brier_score_loss(py, pp), abs=1e-6)


def test_report_is_self_contained(evaluated_run) -> None:
    html = (evaluated_run.output / "report.html").read_text()
    assert DISCLAIMER in html
    assert html.count('src="data:image/png;base64,') >= 5
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "BLESSED" in html
    assert html.count('alt="Grad-CAM overlay of') >= 2  # the two flipped labels at least


def test_gate_blesses_then_refuses_with_reasons(evaluated_run, tmp_path) -> None:
    version = evaluated_run.model_version
    assert (version / "BLESSED").read_text().startswith("BLESSED: histo-cnn version 1")
    assert _metrics(evaluated_run.output)["blessing"]["blessed"] is True
    # Re-evaluate the existing scores with a limit no model can meet.
    code = evaluate.main(
        [
            "--scores",
            str(evaluated_run.output),
            "--labels",
            str(evaluated_run.labels_csv),
            "--output",
            str(tmp_path / "again"),
            "--bootstrap",
            "0",
            "--min-sensitivity",
            "1.01",
            "--max-ece",
            "1.0",
            "--strict-gate",
        ]
    )
    assert code == 3
    assert not (version / "BLESSED").exists()
    text = (version / "NOT_BLESSED").read_text()
    assert "sensitivity" in text and "below the minimum 1.01" in text
    doc = _metrics(tmp_path / "again")
    assert doc["blessing"]["blessed"] is False
    assert doc["model"]["version_uri"] == str(version)  # found through the scoring summary
    assert doc["counts"]["images"] == 26 and doc["counts"]["errors"] == 1
    assert doc["image_level"]["roc_auc"]["ci_low"] is None  # --bootstrap 0: no intervals


def test_evaluate_needs_labels(tmp_path, tiny_model, bad_corpus, capsys) -> None:
    code = evaluate.main(
        [
            "--input",
            f"{bad_corpus.root}/photo.jpg",
            "--model",
            tiny_model.root_uri,
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "none of the 1 images in --input has a label" in capsys.readouterr().err


@pytest.mark.slow
def test_scoring_and_evaluation_through_the_gcs_emulator(
    gcs_bucket: str, tiny_model_gcs: str, small_set: Path
) -> None:
    for path in sorted(small_set.rglob("*.png"))[::2]:
        storage.write_bytes(
            storage.join(gcs_bucket, "data", path.parent.name, path.name), path.read_bytes()
        )
    storage.write_bytes(f"{gcs_bucket}/data/benign/zero.png", b"")
    scores = f"{gcs_bucket}/scores"
    evaluated = f"{gcs_bucket}/evaluation"
    from beam_jobs import score

    score.run(
        ["--input", f"{gcs_bucket}/data/**.png", "--model", tiny_model_gcs, "--output", scores]
    )
    evaluate.run(
        ["--scores", scores, "--output", evaluated, "--bootstrap", "50", "--gallery-size", "2"]
    )
    doc = json.loads(storage.read_text(f"{evaluated}/metrics.json"))
    assert doc["counts"]["images"] == 13 and doc["counts"]["errors"] == 1
    assert doc["counts"]["per_class"] == {"benign": 6, "malignant": 6}
    assert doc["patient_level"] is None  # synthetic names carry no patient id
    assert doc["model"]["version_uri"] == f"{tiny_model_gcs}/1"
    html = storage.read_text(f"{evaluated}/report.html")
    assert "Grad-CAM overlay" in html or "No misclassified images" in html
    for rel in doc["plots"].values():
        assert storage.read_bytes(f"{evaluated}/{rel}").startswith(b"\x89PNG")
