"""Pure steps of the Beam jobs: image checks, rows, names, gate."""

from __future__ import annotations

import csv
import io
import json

import pytest

from beam_jobs import files, stages, summary
from beam_jobs.config import ConfigError, EvaluateConfig, ScoreConfig, ScoringOptions
from histo_common.layout import RunModel, Summary
from histo_common.results import ALL_RESULT_COLUMNS, ErrorRow, Prediction, ResultRow
from model_export.identity import ModelIdentity
from model_export.scoring import ScoreOutcome

MODEL = ModelIdentity(name="histo-cnn", version=3, uri="/m/histo-cnn/3")

EXPECTED_REASONS = {
    "empty.png": "empty",
    "notes.png": "not an image",
    "truncated.png": "truncated",
    "bomb.png": "decompression bomb",
}


def test_check_image_sorts_the_corpus(bad_corpus) -> None:
    for name, expected in bad_corpus.expected.items():
        path = bad_corpus.root / name
        if path.is_dir():
            continue
        out = stages.check_image(str(path), path.read_bytes())
        if expected == "scored":
            assert isinstance(out, stages.CheckedImage), (name, out)
            assert (out.width, out.height) == (40, 40)
        else:
            assert isinstance(out, ErrorRow), name
            assert out.stage == "check"
            assert EXPECTED_REASONS[name] in out.reason.lower(), out.reason
            assert "\n" not in out.reason


def test_tiff_is_transcoded_to_png(bad_corpus) -> None:
    out = stages.check_image("x.tif", (bad_corpus.root / "scan.tif").read_bytes())
    assert isinstance(out, stages.CheckedImage)
    assert out.format == "TIFF"
    assert out.data.startswith(b"\x89PNG")


def test_size_limit_is_checked_before_reading() -> None:
    assert stages.too_large("a.png", 10, 100) is None
    row = stages.too_large("a.png", 1000, 100)
    assert isinstance(row, ErrorRow) and "over the limit" in row.reason and row.stage == "read"


def test_result_row_and_error_row() -> None:
    image = stages.CheckedImage("gs://b/x.png", b"..", 50, 40, "PNG")
    ok = ScoreOutcome(Prediction(0.81234567, "malignant", 0.5), MODEL)
    row = stages.result_row(image, ok)
    assert isinstance(row, ResultRow)
    assert (row.uri, row.label, row.model_version, row.image_width, row.image_height) == (
        "gs://b/x.png",
        "malignant",
        3,
        50,
        40,
    )
    refused = ScoreOutcome(None, MODEL, error="InvalidArgumentError: bad")
    err = stages.result_row(image, refused)
    assert isinstance(err, ErrorRow) and err.stage == "score" and "bad" in err.reason


def test_csv_line_quotes_and_matches_header() -> None:
    row = ResultRow.build(
        "/data/a,b.png",
        Prediction(0.5, "malignant", 0.5),
        model_name="m",
        model_version=1,
        width=1,
        height=2,
    )
    text = stages.csv_header() + "\n" + stages.csv_line(row) + "\n"
    (parsed,) = list(csv.DictReader(io.StringIO(text)))
    assert tuple(parsed) == ALL_RESULT_COLUMNS
    assert parsed["tiles_scored"] == ""  # a patch has no slide fields
    assert parsed["uri"] == "/data/a,b.png"
    assert float(parsed["probability"]) == 0.5


def test_common_base() -> None:
    assert files.common_base(["gs://b/d/x/1.png", "gs://b/d/y/2.png"]) == "gs://b/d"
    assert files.common_base(["/t/a/1.png"]) == "/t/a"
    assert files.common_base([]) == ""


def test_input_base_is_the_folder_before_the_first_glob(tmp_path, monkeypatch) -> None:
    assert files.input_base(["gs://b/slides/**.png", "gs://b/slides/odd/*.tif"]) == "gs://b/slides"
    assert files.input_base(["gs://b/d/a.png"]) == "gs://b/d"
    assert files.input_base(["gs://b/d/case*/x.png", "gs://b/e/*"]) == "gs://b"
    monkeypatch.chdir(tmp_path)
    assert files.input_base(["data/**.png"]) == str(tmp_path / "data")


def test_check_inputs_needs_one_match_and_says_which_input(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "d" / name).write_bytes(b"x")
    patterns = [f"{tmp_path}/d/*.png", f"{tmp_path}/none/*"]
    assert files.check_inputs(patterns) == patterns  # one pattern matching nothing is logged
    with pytest.raises(files.InputError, match=r"no files match --input .*/none/\*"):
        files.check_inputs([f"{tmp_path}/none/*", f"{tmp_path}/d/*.jpg"])


def test_first_file_and_streamed_lines(tmp_path) -> None:
    assert files.first_file(f"{tmp_path}/none/*.jsonl") is None
    (tmp_path / "a-1.jsonl").write_text('{"n": 1}\n\n{"n": 2}\r\n')
    (tmp_path / "a-2.jsonl").write_text('{"n": 3}')
    assert files.first_file(f"{tmp_path}/a-*.jsonl") in {
        str(tmp_path / "a-1.jsonl"),
        str(tmp_path / "a-2.jsonl"),
    }
    assert [r["n"] for r in files.read_json_lines(f"{tmp_path}/a-*.jsonl")] == [1, 2, 3]


def test_configs_refuse_bad_flags() -> None:
    model = ScoringOptions(model="m")
    with pytest.raises(ConfigError, match="--model"):
        ScoreConfig(inputs=("a",), output="o")
    with pytest.raises(ConfigError, match="--gradcam-top"):
        ScoreConfig(inputs=("a",), output="o", options=model, gradcam=True, gradcam_top=0)
    with pytest.raises(ConfigError, match="--formats"):
        ScoreConfig(inputs=("a",), output="o", options=model, formats=("xml",))
    with pytest.raises(ConfigError, match="--tile-stride"):
        ScoreConfig(inputs=("a",), output="o", options=model, tile_stride=0)
    with pytest.raises(ConfigError, match="--tile-batch"):
        ScoreConfig(inputs=("a",), output="o", options=model, tile_batch=0)
    assert ScoreConfig(inputs=("a",), output="o", options=model, formats=("csv",)).formats[0] == (
        "jsonl"
    )
    with pytest.raises(ConfigError, match="either"):
        EvaluateConfig(output="o", options=model, inputs=("a",), scores="s")
    with pytest.raises(ConfigError, match="--min-batch-size"):
        ScoringOptions(model="m", min_batch_size=8, max_batch_size=4)
    with pytest.raises(ConfigError, match="host:port"):
        ScoringOptions(model_endpoint="serving")


def test_evaluation_derives_its_scoring_config_from_its_own() -> None:
    options = ScoringOptions(model="m", max_pixels=99, min_batch_size=2, max_batch_size=3)
    config = EvaluateConfig(output="o", options=options, inputs=("a/*.png",))
    scoring = config.scoring()
    assert scoring.options is options  # shared, not copied field by field
    assert (scoring.inputs, scoring.output, scoring.formats) == (("a/*.png",), "o", ("jsonl",))


def test_evaluate_flags_build_gate_limits_by_one_rule() -> None:
    from beam_jobs import evaluate

    config, _ = evaluate.parse_args(
        [
            "--scores",
            "s",
            "--output",
            "o",
            "--min-average-precision",
            "0.7",
            "--min-balanced-accuracy",
            "0.6",
            "--max-ece",
            "0.2",
            "--max-brier",
            "0.3",
        ]
    )
    assert config.evaluation.gate.minimums == {
        "average_precision": 0.7,
        "balanced_accuracy": 0.6,
    }
    assert config.evaluation.gate.maximums == {
        "expected_calibration_error": 0.2,
        "brier_score": 0.3,
    }
    with pytest.raises(ConfigError, match="--bootstrap"):
        evaluate.parse_args(["--scores", "s", "--output", "o", "--bootstrap", "-1"])


def test_summary_round_trips_through_json() -> None:
    doc = summary.build_summary(
        summary.Completeness(matched=1, scored=1, failed=0),
        RunModel(name="histo-cnn", version=3, version_uri="/m/histo-cnn/3"),
        inputs=["/d/*.png"],
        output="/o",
        base="/d",
        formats=["jsonl", "csv"],
        elapsed_s=2.0,
        counters={"images_read": 1},
        runner="FnApiRunner",
    )
    again = Summary.from_json(json.dumps(json.loads(doc.to_json())))
    assert again == doc
    assert again.complete is True and again.images_per_s == 0.5 and again.base == "/d"
    assert again.model.version_uri == "/m/histo-cnn/3" and again.model.endpoint is None
    # A summary written before ``lost`` existed (same schema version) reads with none lost.
    older = json.loads(doc.to_json())
    del older["lost"]
    assert Summary.from_dict(older).lost == 0


def test_beam_flags_pass_through_to_pipeline_options() -> None:
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    from beam_jobs import score

    dataflow = [
        "--runner",
        "DataflowRunner",
        "--project",
        "proj",
        "--region",
        "europe-west4",
        "--temp_location",
        "gs://tmp-bucket/tmp",
        "--setup_file",
        "./setup.py",
        "--max_num_workers",
        "4",
    ]
    config, rest = score.parse_args(
        [
            "--input",
            "gs://b/**.png",
            "--input",
            "/l/*.png",
            "--model",
            "m",
            "--output",
            "o",
            *dataflow,
        ]
    )
    assert config.inputs == ("gs://b/**.png", "/l/*.png")
    assert rest == dataflow
    options = score.pipeline_options(rest)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).project == "proj"
    assert score.pipeline_options([]).view_as(StandardOptions).runner == score.DEFAULT_RUNNER
