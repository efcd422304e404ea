"""Fixtures for the app's tests: small runs on disk in the shapes the app reads.

The producers (bulk scoring, evaluation, training) are written elsewhere; these
fixtures write their outputs by hand, in the documented shapes, so the app's
tests do not depend on them:

- ``scoring_run``: ``<root>/scoring-1/{results,errors}/*.jsonl``, ``summary.json``
  and one saved Grad-CAM, with rows pointing at real sample images;
- ``evaluation_run``: ``<root>/eval-1/metrics.json``, ``plots/*.png``, ``report.html``;
- ``history_csv``: a Keras ``CSVLogger`` file.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from histo_common.results import ErrorRow, Prediction, ResultRow


def png_bytes(colour: tuple[int, int, int], size: int = 24) -> bytes:
    """A small plain PNG."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class ScoringRunFixture:
    """Where the hand-written scoring run lives and what it holds."""

    root: Path  # the results folder holding the run
    run: Path
    image_uris: list[str]  # in row order
    labels: list[str]
    probabilities: list[float]
    saved_gradcam_for: str  # the image whose overlay is saved in gradcam/


def write_scoring_run(root: Path, sample_dir: Path) -> ScoringRunFixture:
    """Write a scoring run of six sample images and two errors under ``root``."""
    run = root / "scoring-1"
    images = (
        sorted((sample_dir / "benign").glob("*.png"))[:3]
        + sorted((sample_dir / "malignant").glob("*.png"))[:3]
    )
    probabilities = [0.05, 0.31, 0.62, 0.71, 0.88, 0.97]
    labels = ["malignant" if p >= 0.5 else "benign" for p in probabilities]
    rows = [
        ResultRow.build(
            str(path),
            Prediction(probability=p, label=label, threshold=0.5),
            model_name="histo-cnn",
            model_version=1,
            width=48,
            height=48,
        ).to_json()
        for path, p, label in zip(images, probabilities, labels, strict=True)
    ]
    (run / "results").mkdir(parents=True)
    (run / "results" / "part-00000.jsonl").write_text("\n".join(rows[:4]) + "\n")
    # A second shard whose last line was cut short, as a crashed writer leaves it.
    (run / "results" / "part-00001.jsonl").write_text("\n".join(rows[4:]) + '\n{"uri": "gs://x')
    (run / "errors").mkdir()
    errors = [
        ErrorRow.build(str(root / "broken.png"), "corrupt or truncated PNG: bad", "check"),
        ErrorRow.build(
            str(root / "notes.txt"), "not an image: content starts with b'hello'", "check"
        ),
    ]
    (run / "errors" / "part-00000.jsonl").write_text("\n".join(e.to_json() for e in errors))
    (run / "summary.json").write_text(json.dumps({"images": 8, "scored": 6, "errors": 2}))
    saved = images[5]
    gradcam = run / "gradcam" / "malignant" / f"{saved.name}.gradcam.png"
    gradcam.parent.mkdir(parents=True)
    gradcam.write_bytes(png_bytes((200, 30, 30), size=40))
    return ScoringRunFixture(
        root=root,
        run=run,
        image_uris=[str(p) for p in images],
        labels=labels,
        probabilities=probabilities,
        saved_gradcam_for=str(saved),
    )


def metrics_document(plots: dict[str, str]) -> dict:
    """A ``metrics.json`` in the evaluation job's documented shape."""

    def ci(value: float) -> dict[str, float]:
        return {"value": value, "ci_low": round(value - 0.05, 3), "ci_high": round(value + 0.03, 3)}

    return {
        "model": {
            "name": "histo-cnn",
            "version": 1,
            "uri": "buckets/models/histo-cnn/1",
            "threshold": 0.5,
        },
        "counts": {"images": 40, "per_class": {"benign": 20, "malignant": 20}, "errors": 1},
        "image_level": {
            "auc": ci(0.912),
            "accuracy": ci(0.85),
            "sensitivity": ci(0.9),
            "specificity": ci(0.8),
            "confusion_matrix": {"labels": ["benign", "malignant"], "matrix": [[16, 4], [2, 18]]},
            "classification_report": {
                "benign": {"precision": 0.889, "recall": 0.8, "f1-score": 0.842, "support": 20},
                "malignant": {"precision": 0.818, "recall": 0.9, "f1-score": 0.857, "support": 20},
                "accuracy": 0.85,
            },
        },
        "patient_level": None,
        "plots": plots,
        "disclaimer": "Research use only.",
    }


@pytest.fixture
def scoring_run(tmp_path: Path, sample_dir: Path) -> ScoringRunFixture:
    """A hand-written scoring run under ``tmp_path/results``."""
    return write_scoring_run(tmp_path / "results", sample_dir)


@pytest.fixture
def evaluation_run(tmp_path: Path) -> Path:
    """A hand-written evaluation run; the histogram plot it lists is missing on purpose."""
    run = tmp_path / "results" / "eval-1"
    (run / "plots").mkdir(parents=True)
    plots = {
        "confusion_matrix": "plots/confusion_matrix.png",
        "roc": "plots/roc.png",
        "histogram": "plots/histogram.png",
    }
    (run / "plots" / "confusion_matrix.png").write_bytes(png_bytes((10, 10, 200)))
    (run / "plots" / "roc.png").write_bytes(png_bytes((10, 200, 10)))
    (run / "metrics.json").write_text(json.dumps(metrics_document(plots)))
    (run / "report.html").write_text("<html><body>report</body></html>")
    return run


@pytest.fixture
def history_csv(tmp_path: Path) -> Path:
    """A Keras CSVLogger history with loss, auc and learning rate (no accuracy)."""
    path = tmp_path / "train-run" / "history.csv"
    path.parent.mkdir(parents=True)
    path.write_text(
        "epoch,auc,learning_rate,loss,val_auc,val_loss\n"
        "0,0.700,0.001,0.700,0.680,0.720\n"
        "1,0.750,0.001,0.600,0.720,0.640\n"
        "2,0.800,0.001,0.500,0.760,0.560\n"
        "3,0.850,0.0005,0.400,0.800,0.480\n"
    )
    return path
