"""The real Beam scoring and evaluation jobs' output, opened by the app's data layer and pages.

The scoring job writes results as JSON Lines, CSV and Parquet; the app must read
one format and agree with ``summary.json`` (issue 12), find the saved overlays
through the run layout, and show the evaluation job's typed ``metrics.json``.
No hand-written fixture: everything here is what the jobs wrote.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import data
from histo_common import DISCLAIMER, storage
from histo_common.layout import MetricsDocument, RunLayout, Summary

APP_FILE = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
GRADCAM_TOP = 3


@dataclass(frozen=True)
class RealRuns:
    """A scoring run and an evaluation of it, written by the real jobs."""

    root: Path  # the results folder holding both
    scores: RunLayout
    evaluation: RunLayout
    summary: Summary
    rows: list[dict]  # the JSON Lines result rows as written


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, tiny_model) -> RealRuns:
    """Score 16 labelled images and one broken file, then evaluate the scores."""
    from beam_jobs import evaluate, score

    root = tmp_path_factory.mktemp("real-runs")
    images = root / "images"
    for label in ("benign", "malignant"):
        (images / label).mkdir(parents=True)
        for path in sorted((sample_dir / label).glob("*.png"))[:8]:
            shutil.copy(path, images / label / path.name)
    (images / "malignant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    results = root / "results"
    scores, evaluation = RunLayout(str(results / "scores")), RunLayout(str(results / "eval"))
    score.run(
        [
            "--input",
            f"{images}/**.png",
            "--model",
            tiny_model.root_uri,
            "--output",
            scores.output,
            "--formats",
            "jsonl,csv,parquet",
            "--gradcam-top",
            str(GRADCAM_TOP),
        ]
    )
    evaluation_flags = ["--bootstrap", "50", "--gallery-size", "2"]
    evaluate.run(["--scores", scores.output, "--output", evaluation.output, *evaluation_flags])
    summary = Summary.from_json(storage.read_text(scores.summary))
    rows = [
        json.loads(line)
        for uri in storage.list_uris(scores.results_pattern)
        for line in storage.read_text(uri).splitlines()
        if line.strip()
    ]
    return RealRuns(results, scores, evaluation, summary, rows)


def test_the_scoring_job_wrote_every_format_and_a_complete_summary(real_runs: RealRuns) -> None:
    for fmt in ("jsonl", "csv", "parquet"):
        assert storage.list_uris(real_runs.scores.results_format_pattern(fmt)), fmt
    summary = real_runs.summary
    assert summary.complete and (summary.matched, summary.scored, summary.failed) == (17, 16, 1)
    assert summary.base == str(real_runs.root.parent / "images")
    assert summary.model.version_uri and summary.model.endpoint is None
    assert len(real_runs.rows) == summary.scored


def test_the_data_layer_reads_each_row_once_and_agrees_with_the_summary(
    real_runs: RealRuns,
) -> None:
    runs = data.list_runs(str(real_runs.root))
    assert runs == {
        "scoring": [real_runs.scores.output],
        "evaluation": [real_runs.evaluation.output],
    }
    run = data.load_scoring_run(real_runs.scores.output)

    assert run.summary == real_runs.summary
    assert len(run.results) == run.summary.scored and len(run.errors) == run.summary.failed
    assert sorted(run.results["uri"]) == sorted(r["uri"] for r in real_runs.rows)
    assert run.results["uri"].is_unique
    assert run.errors["uri"].tolist() == [str(Path(run.summary.base) / "malignant/broken.png")]
    overlays = [u for u in run.results["uri"] if run.saved_gradcam(u)]
    assert len(overlays) == len(run.gradcam_uris) == GRADCAM_TOP
    top = run.results.sort_values("probability", ascending=False)["uri"][:GRADCAM_TOP]
    assert sorted(overlays) == sorted(top)


def test_the_data_layer_reads_the_evaluation_as_written(real_runs: RealRuns) -> None:
    report = data.load_evaluation(real_runs.evaluation.output)
    written = MetricsDocument.from_json(storage.read_text(real_runs.evaluation.metrics))

    assert report.metrics == written
    summary = real_runs.summary
    counts = written.counts
    assert (counts.images, counts.scored, counts.errors) == (17, summary.scored, summary.failed)
    assert counts.labelled == 16 and counts.per_class == {"benign": 8, "malignant": 8}
    assert written.model.version_uri == summary.model.version_uri
    assert set(report.plots) == {"confusion_matrix", "roc", "pr", "calibration", "histogram"}
    assert all(storage.exists(uri) for uri in report.plots.values())
    assert report.report_uri == real_runs.evaluation.report


def _open(page: str, real_runs: RealRuns, monkeypatch: pytest.MonkeyPatch, tiny_model) -> AppTest:
    monkeypatch.setenv("HISTO_MODEL_URI", tiny_model.root_uri)
    monkeypatch.setenv("HISTO_SAMPLES_URI", str(tiny_model.sample_dir))
    monkeypatch.setenv("HISTO_RESULTS_URI", str(real_runs.root))
    at = AppTest.from_file(APP_FILE, default_timeout=60)
    at.run()
    at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert DISCLAIMER in [w.value for w in at.warning]
    return at


def test_the_scoring_runs_page_counts_agree_with_the_summary(
    real_runs: RealRuns, monkeypatch: pytest.MonkeyPatch, tiny_model
) -> None:
    at = _open("Scoring runs", real_runs, monkeypatch, tiny_model)

    metrics = {m.label: m.value for m in at.metric}
    summary = real_runs.summary
    assert (metrics["Images scored"], metrics["Errors"]) == (
        str(summary.scored),
        str(summary.failed),
    )
    by_label = {label: sum(r["label"] == label for r in real_runs.rows) for label in metrics}
    for label in ("benign", "malignant"):
        if label in metrics:
            assert metrics[label] == str(by_label[label])
    table = at.dataframe(key="results_table").value
    assert len(table) == summary.scored and table["uri"].is_unique
    assert not [w.value for w in at.warning if "summary.json says" in w.value]

    # The most suspicious row has its overlay saved by the run; the page shows that one.
    at.session_state["results_table"] = {"selection": {"rows": [0], "columns": []}}
    at.run()
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith("Grad-CAM saved by the run: ") for c in captions)


def test_the_evaluation_page_shows_the_written_metrics(
    real_runs: RealRuns, monkeypatch: pytest.MonkeyPatch, tiny_model
) -> None:
    at = _open("Evaluation", real_runs, monkeypatch, tiny_model)

    written = MetricsDocument.from_json(storage.read_text(real_runs.evaluation.metrics))
    tables = [d.value for d in at.dataframe]
    shown = next(t for t in tables if "ci_low" in t.columns).set_index("metric")
    for name in ("roc_auc", "sensitivity", "specificity"):
        assert shown.loc[name, "value"] == pytest.approx(written.value(name), nan_ok=True)
    counts = next(t for t in tables if t.index.name == "what")
    assert counts.loc["scored", "count"] == str(real_runs.summary.scored)
    assert len([c for image in at.image for c in image.captions]) == 5
