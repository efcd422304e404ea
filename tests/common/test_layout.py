"""The run layout: every output name in one place, and the typed documents' JSON round-trips."""

from __future__ import annotations

import json

import pytest

from histo_common import layout
from histo_common.layout import (
    Blessing,
    Counts,
    DocumentError,
    EvaluatedModel,
    GateCheck,
    MetricsDocument,
    RunLayout,
    RunModel,
    Summary,
)


def test_run_layout_names_every_file_under_the_output() -> None:
    run = RunLayout("gs://b/runs/r1/")
    assert run.output == "gs://b/runs/r1"
    assert run.results_pattern == "gs://b/runs/r1/results/*.jsonl"
    assert run.results_format_pattern("csv") == "gs://b/runs/r1/results/*.csv"
    assert run.errors_pattern == "gs://b/runs/r1/errors/*.jsonl"
    assert run.tiles_pattern == "gs://b/runs/r1/tiles/*.jsonl"
    assert run.results_prefix == "gs://b/runs/r1/results/part"
    assert run.summary == "gs://b/runs/r1/summary.json"
    assert run.metrics == "gs://b/runs/r1/metrics.json"
    assert run.report == "gs://b/runs/r1/report.html"
    assert run.manifest == "gs://b/runs/r1/manifest.jsonl"
    assert run.plot("pr") == "gs://b/runs/r1/plots/precision_recall.png"
    assert run.resolve("plots/roc.png") == "gs://b/runs/r1/plots/roc.png"
    assert run.resolve("gs://x/y.png") == "gs://x/y.png"
    every = [*run.run_documents(), *run.per_input_images()]
    assert all(p.startswith(run.output + "/") for p in every)
    assert run.summary in every and run.metrics in every


def test_overlay_and_heatmap_paths_stay_under_the_output() -> None:
    run = RunLayout("/o")
    assert run.gradcam("gs://b/data/x/y.png", "gs://b/data") == "/o/gradcam/x/y.png.gradcam.png"
    assert run.gradcam("/a/../etc/p.png", "") == "/o/gradcam/a/etc/p.png.gradcam.png"
    assert run.gradcam("gs://other/z.png", "gs://b/data") == "/o/gradcam/other/z.png.gradcam.png"
    assert run.heatmap("gs://b/s/slide.svs", "gs://b") == "/o/heatmaps/s/slide.svs.heatmap.png"


def test_sibling_names_of_an_upload() -> None:
    uri = "gs://uploads/p.png"
    siblings = [
        layout.gradcam_sibling(uri),
        layout.prediction_sibling(uri),
        layout.error_sibling(uri),
        layout.heatmap_sibling(uri),
    ]
    assert siblings == [uri + s for s in layout.SIBLING_SUFFIXES]
    assert all(layout.is_output(s) for s in siblings) and not layout.is_output(uri)
    assert layout.blessing_file("/m/3", True) == "/m/3/BLESSED"
    assert layout.blessing_file("/m/3/", False) == "/m/3/NOT_BLESSED"


def _summary() -> Summary:
    return Summary(
        inputs=["gs://b/d/**.png"],
        output="gs://b/r",
        base="gs://b/d",
        model=RunModel(name="histo-cnn", version=2, endpoint="serving:8500"),
        matched=3,
        scored=2,
        failed=1,
        complete=True,
        formats=["jsonl", "parquet"],
        counters={"images_read": 3},
        finished_at="2026-12-03T00:00:00.000Z",
    )


def _metrics() -> MetricsDocument:
    return MetricsDocument(
        model=EvaluatedModel(name="histo-cnn", version=2, threshold=0.4, version_uri="/m/2"),
        counts=Counts(
            images=3,
            scored=2,
            errors=1,
            labelled=2,
            unlabelled=0,
            per_class={"benign": 1, "malignant": 1},
            patients=0,
        ),
        image_level={"roc_auc": {"value": 1.0, "ci_low": None, "ci_high": None}, "count": 2},
        plots={"roc": "plots/roc.png"},
        blessing=Blessing(
            blessed=False,
            checks=[GateCheck("roc_auc", "min", 1.01, 1.0, False)],
            reasons=["roc_auc = 1.0000 is below the minimum 1.01"],
            written_to="/m/2/NOT_BLESSED",
        ),
        source={"scores": "gs://b/r"},
        generated_at="2026-12-03T00:00:00.000Z",
    )


@pytest.mark.parametrize("make", [_summary, _metrics])
def test_documents_round_trip_through_json(make) -> None:
    document = make()
    again = type(document).from_json(document.to_json())
    assert again == document
    assert json.loads(document.to_json())["schema_version"] == 1


@pytest.mark.parametrize("make", [_summary, _metrics])
def test_documents_of_a_newer_schema_are_refused_in_one_sentence(make) -> None:
    data = json.loads(make().to_json())
    data["schema_version"] = 99
    with pytest.raises(DocumentError, match=r"^gs://b/x\.json is .* schema version 99, newer"):
        type(make()).from_dict(data, source="gs://b/x.json")
    del data["schema_version"]
    with pytest.raises(DocumentError, match="has no schema_version"):
        type(make()).from_dict(data)


@pytest.mark.parametrize("make", [_summary, _metrics])
def test_unknown_keys_are_tolerated_missing_ones_refused(make) -> None:
    document = make()
    data = json.loads(document.to_json())
    data["added_by_a_later_minor_writer"] = {"x": 1}
    assert type(document).from_dict(data) == document
    del data["model"]["version"]
    with pytest.raises(DocumentError, match="model lacks version"):
        type(document).from_dict(data, source="doc")
    with pytest.raises(DocumentError, match="not valid JSON"):
        type(document).from_json("{", source="doc")


def test_metric_values_by_name() -> None:
    document = _metrics()
    assert document.value("roc_auc") == 1.0
    assert document.value("sensitivity") is None
    assert document.value("roc_auc", "patient_level") is None
    assert document.blessing is not None and document.blessing.verdict == "NOT_BLESSED"
