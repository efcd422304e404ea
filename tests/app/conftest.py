"""Fixtures for the app's tests: small runs on disk, written with the producers' own types.

Each file is named by :class:`histo_common.layout.RunLayout` and each document
is built with the producers' code (``ResultRow``/``ErrorRow``, ``Summary``, and
:func:`evaluation.outputs.metrics_document` on known scores), so its shape is
the real one; ``tests/app/test_app_real_runs.py`` runs the real Beam jobs. The
rows here are chosen by hand so the tests can check filters and edge cases:

- ``scoring_run``: ``<root>/scoring-1/{results,errors}/*.jsonl`` (one shard cut
  short), ``summary.json`` and one saved Grad-CAM, with rows pointing at real
  sample images;
- ``evaluation_run``: ``<root>/eval-1/metrics.json``, ``plots/*.png`` (one listed
  plot missing on purpose), ``report.html``;
- ``history_csv``: a Keras ``CSVLogger`` file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import Image

from evaluation.outputs import EvaluationSettings, LabelledScore, RunFacts, metrics_document
from histo_common.layout import MetricsDocument, RunLayout, RunModel, Summary
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
    summary = Summary(
        inputs=[f"{sample_dir}/**.png"],
        output=str(run),
        base=str(sample_dir),
        model=RunModel(name="histo-cnn", version=1, version_uri="/models/histo-cnn/1"),
        matched=8,
        scored=6,
        failed=2,
        complete=True,
    )
    layout = RunLayout(str(run))
    Path(layout.summary).write_text(summary.to_json())
    saved = images[5]
    gradcam = Path(layout.gradcam(str(saved), summary.base))
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


def evaluation_document() -> MetricsDocument:
    """The metrics of 40 known scores (20 per class, 4 patients), as the evaluation makes it."""
    scores = [
        LabelledScore(
            uri=f"/data/{i}.png",
            y=i % 2,
            probability=round(0.15 + 0.6 * (i % 2) + 0.01 * (i % 20) - 0.2 * (i % 7 == 0), 3),
            threshold=0.5,
            predicted_label="?",
            patient_id=f"P{i % 4}",
            model_name="histo-cnn",
            model_version=1,
        )
        for i in range(40)
    ]
    facts = RunFacts(model_version_uri="buckets/models/histo-cnn/1", errors=1, unlabelled=0)
    return metrics_document(scores, facts, EvaluationSettings(bootstrap=50))


@pytest.fixture
def scoring_run(tmp_path: Path, sample_dir: Path) -> ScoringRunFixture:
    """A hand-written scoring run under ``tmp_path/results``."""
    return write_scoring_run(tmp_path / "results", sample_dir)


@pytest.fixture
def evaluation_run(tmp_path: Path) -> Path:
    """A hand-written evaluation run; the histogram plot it lists is missing on purpose."""
    run = tmp_path / "results" / "eval-1"
    layout = RunLayout(str(run))
    document = evaluation_document()
    (run / "plots").mkdir(parents=True)
    Path(layout.plot("confusion_matrix")).write_bytes(png_bytes((10, 10, 200)))
    Path(layout.plot("roc")).write_bytes(png_bytes((10, 200, 10)))
    plots = {name: RunLayout.plot_path(name) for name in ("confusion_matrix", "roc", "histogram")}
    Path(layout.metrics).write_text(replace(document, plots=plots).to_json())
    Path(layout.report).write_text("<html><body>report</body></html>")
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
