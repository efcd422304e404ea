"""The app's readers: runs, rows, filters, metrics, history (no Streamlit, no model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from app import data
from histo_common import storage
from histo_common.labels import label_from_folder
from histo_common.results import ERROR_COLUMNS, RESULT_COLUMNS


def test_list_runs_finds_scoring_and_evaluation_runs(scoring_run, evaluation_run) -> None:
    runs = data.list_runs(str(scoring_run.root))

    assert runs == {"scoring": [str(scoring_run.run)], "evaluation": [str(evaluation_run)]}


def test_list_runs_accepts_a_run_itself_and_an_empty_or_missing_root(
    scoring_run, tmp_path: Path
) -> None:
    assert data.list_runs(str(scoring_run.run))["scoring"] == [str(scoring_run.run)]
    assert data.list_runs(str(tmp_path / "nothing-here")) == {"scoring": [], "evaluation": []}


def test_load_scoring_run_reads_rows_errors_summary_and_skips_a_cut_line(scoring_run) -> None:
    run = data.load_scoring_run(str(scoring_run.run))

    assert list(run.results.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert sorted(run.results["uri"]) == sorted(scoring_run.image_uris)
    assert run.results["probability"].dtype.kind == "f"
    assert list(run.errors.columns) == list(ERROR_COLUMNS)
    assert len(run.errors) == 2
    assert (run.summary.scored, run.summary.failed) == (6, 2)
    assert run.skipped_lines == 1
    assert len(run.gradcam_uris) == 1
    assert run.saved_gradcam(scoring_run.saved_gradcam_for) == run.gradcam_uris[0]
    assert run.saved_gradcam(scoring_run.image_uris[0]) is None


def test_load_scoring_run_refuses_a_folder_that_is_no_run(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="is not a scoring run"):
        data.load_scoring_run(str(tmp_path))


def test_load_scoring_run_with_only_errors_has_an_empty_result_table(tmp_path: Path) -> None:
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "e.jsonl").write_text(
        json.dumps({"uri": "a.png", "reason": "empty file (0 bytes)", "stage": "check", "at": "t"})
    )

    run = data.load_scoring_run(str(tmp_path))

    assert run.results.empty
    assert list(run.results.columns) == list(RESULT_COLUMNS)
    assert run.errors["reason"].tolist() == ["empty file (0 bytes)"]


def test_load_rows_keeps_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"uri": "a.png", "probability": 0.4, "label": "benign", "x": 1}))

    frame, skipped = data.load_rows([str(path)], RESULT_COLUMNS)

    assert skipped == 0
    assert list(frame.columns) == [*RESULT_COLUMNS, "x"]
    assert frame.loc[0, "label"] == "benign"


def test_rows_are_read_from_json_lines_only(scoring_run) -> None:
    # The same rows as CSV beside the JSON Lines (--formats jsonl,csv) must not count twice.
    run = data.load_scoring_run(str(scoring_run.run))
    run.results.to_csv(scoring_run.run / "results" / "part-00000.csv", index=False)

    again = data.load_scoring_run(str(scoring_run.run))

    assert len(again.results) == len(run.results) == again.summary.scored


def _rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uri": ["x/benign/a.png", "x/malignant/b.png", "x/malignant/c.png", "x/benign/d.png"],
            "probability": [0.2, 0.9, 0.6, 0.45],
            "label": ["benign", "malignant", "malignant", "benign"],
        }
    )


def test_filter_results_by_label_probability_and_text_then_sorts() -> None:
    rows = _rows()

    malignant = data.filter_results(rows, data.ResultFilter(labels=("malignant",)))
    middle = data.filter_results(
        rows, data.ResultFilter(min_probability=0.3, max_probability=0.7, descending=False)
    )
    by_text = data.filter_results(rows, data.ResultFilter(uri_contains="BENIGN", sort_by="uri"))

    assert malignant["uri"].tolist() == ["x/malignant/b.png", "x/malignant/c.png"]
    assert middle["probability"].tolist() == [0.45, 0.6]
    assert by_text["uri"].tolist() == ["x/benign/d.png", "x/benign/a.png"]
    assert list(by_text.index) == [0, 1]  # positions match what the table shows


def test_result_filter_refuses_an_inverted_range() -> None:
    with pytest.raises(ValueError, match="probability range"):
        data.ResultFilter(min_probability=0.8, max_probability=0.2)


def test_saved_overlays_are_found_through_the_layout_never_by_name(scoring_run) -> None:
    run = data.load_scoring_run(str(scoring_run.run))
    saved = Path(scoring_run.saved_gradcam_for)
    twin = str(saved.parent.parent / "benign" / saved.name)  # same file name, other folder

    assert run.saved_gradcam(str(saved)) == run.gradcam_uris[0]
    assert run.saved_gradcam(twin) is None
    (scoring_run.run / "summary.json").unlink()
    assert data.load_scoring_run(str(scoring_run.run)).saved_gradcam(str(saved)) is None


def test_a_summary_of_a_newer_schema_is_a_message(scoring_run) -> None:
    path = scoring_run.run / "summary.json"
    path.write_text(path.read_text().replace('"schema_version": 1', '"schema_version": 7'))

    run = data.load_scoring_run(str(scoring_run.run))

    assert run.summary is None and "newer than this histoscreen reads" in run.summary_problem
    assert len(run.results) == 6


def test_load_evaluation_resolves_plots_and_report(evaluation_run: Path) -> None:
    report = data.load_evaluation(str(evaluation_run))

    assert report.plots["roc"] == str(evaluation_run / "plots" / "roc.png")
    assert report.report_uri == str(evaluation_run / "report.html")
    assert report.metrics.model.version == 1


def test_load_evaluation_names_the_missing_metrics_file(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match=r"metrics\.json does not exist"):
        data.load_evaluation(str(tmp_path))


def test_load_evaluation_names_a_malformed_metrics_file(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{not json")

    with pytest.raises(data.DataError, match="is not valid JSON"):
        data.load_evaluation(str(tmp_path))


def test_metric_tables_from_metrics_json(evaluation_run: Path) -> None:
    section = json.loads((evaluation_run / "metrics.json").read_text())["image_level"]

    table = data.metric_table(section)
    matrix = data.confusion_frame(section)
    report = data.classification_report_frame(section)

    assert table["metric"].tolist()[:2] == ["accuracy", "balanced_accuracy"]
    auc = table.set_index("metric").loc["roc_auc"]
    expected = section["roc_auc"]
    assert (auc["value"], auc["ci_low"], auc["ci_high"]) == (
        expected["value"],
        expected["ci_low"],
        expected["ci_high"],
    )
    _, (fn, tp) = section["confusion_matrix"]["matrix"]
    assert matrix.loc["true malignant", "predicted benign"] == fn
    assert report.loc["malignant", "recall"] == pytest.approx(tp / (tp + fn))
    assert report.loc["accuracy", "f1-score"] == section["accuracy"]["value"]
    assert list(report.columns) == ["precision", "recall", "f1-score", "support"]
    assert data.confusion_frame({}) is None
    assert data.classification_report_frame(None) is None


def test_history_charts_pair_each_metric_with_its_validation_twin(history_csv: Path) -> None:
    history = data.load_history(str(history_csv))

    charts = data.history_charts(history)

    assert history.index.name == "epoch"
    assert list(charts) == ["auc", "learning_rate", "loss"]
    assert list(charts["loss"].columns) == ["loss", "val_loss"]
    assert list(charts["learning_rate"].columns) == ["learning_rate"]
    assert charts["auc"]["val_auc"].iloc[-1] == pytest.approx(0.8)


def test_history_with_only_validation_columns_still_charts(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text("val_loss\n0.5\n0.4\n")

    charts = data.history_charts(data.load_history(str(path)))

    assert list(charts) == ["loss"]
    assert list(charts["loss"].columns) == ["val_loss"]


def test_load_history_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text("")

    with pytest.raises(data.DataError, match="not a CSV training history"):
        data.load_history(str(path))


def test_history_uri_for_a_run() -> None:
    assert data.history_uri_for("gs://b/runs/7") == "gs://b/runs/7/history.csv"
    assert data.history_uri_for(None) is None


def test_list_images_and_random_pick(sample_dir: Path) -> None:
    images = data.list_images(str(sample_dir))

    picked = data.pick_random_image(images, random.Random(3))

    assert len(images) == 80
    assert picked in images
    assert label_from_folder(picked, ["benign", "malignant"]) == Path(picked).parent.name
    assert label_from_folder("x/other/a.png", ["benign", "malignant"]) is None
    with pytest.raises(data.DataError, match="no images"):
        data.pick_random_image([])


def test_list_images_skips_gradcam_outputs(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "a.png.gradcam.png").write_bytes(b"x")
    (tmp_path / "a.png.prediction.json").write_text("{}")

    assert data.list_images(str(tmp_path)) == [str(tmp_path / "a.png")]


def test_scoring_run_in_a_gcs_bucket(gcs_bucket: str, scoring_run) -> None:
    storage.copy_tree_to(scoring_run.root, f"{gcs_bucket}/results")

    runs = data.list_runs(f"{gcs_bucket}/results")
    run = data.load_scoring_run(runs["scoring"][0])

    assert runs["scoring"] == [f"{gcs_bucket}/results/scoring-1"]
    assert len(run.results) == 6
    assert run.gradcam_uris[0].startswith(f"{gcs_bucket}/results/scoring-1/gradcam/")


def test_model_facts_lists_what_the_model_is(loaded_tiny_model) -> None:
    facts = data.model_facts(loaded_tiny_model.metadata, loaded_tiny_model.uri)

    table = dict(zip(facts["field"], facts["value"], strict=True))
    assert table["name"] == "histo-cnn"
    assert table["classes"] == "benign, malignant"
    assert table["location"] == loaded_tiny_model.uri
    assert table["training run"] == "(not recorded)"
