"""The whole scoring job: local folders and the GCS emulator, bad files, outputs, exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_jobs import files, score
from histo_common import storage
from histo_common.results import ALL_RESULT_COLUMNS, ERROR_COLUMNS, ResultRow


def _rows(pattern: str) -> list[dict]:
    return list(files.read_json_lines(pattern))


def test_results_plus_errors_equal_matched_files(scored_run) -> None:
    out = scored_run.output
    results = _rows(f"{out}/results/*.jsonl")
    errors = _rows(f"{out}/errors/*.jsonl")
    assert len(results) + len(errors) == scored_run.matched
    uris = [r["uri"] for r in results] + [e["uri"] for e in errors]
    assert len(set(uris)) == len(uris)
    corpus = scored_run.corpus
    expected_errors = {corpus.uri(n) for n, e in corpus.expected.items() if e == "error"}
    assert {e["uri"] for e in errors} == expected_errors
    for name, outcome in corpus.expected.items():
        if outcome == "scored":
            assert corpus.uri(name) in {r["uri"] for r in results}, name
    for error in errors:
        assert tuple(error) == ERROR_COLUMNS
        assert error["reason"] and "\n" not in error["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert (summary["matched"], summary["scored"], summary["failed"]) == (
        scored_run.matched,
        len(results),
        len(errors),
    )
    assert summary["model"]["version"] == 1
    assert summary["counters"]["images_failed"] == len(errors)
    assert summary["counters"]["images_scored"] == len(results)
    assert summary["counters"]["bytes_read"] > 0
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["uri"] for m in manifest) == sorted(uris)


def test_result_rows_carry_model_size_and_time(scored_run) -> None:
    results = _rows(f"{scored_run.output}/results/*.jsonl")
    for data in results:
        row = ResultRow.from_dict(data)
        assert 0.0 <= row.probability <= 1.0
        assert row.label in ("benign", "malignant")
        assert row.label == ("malignant" if row.probability >= row.threshold else "benign")
        assert (row.model_name, row.model_version) == ("histo-cnn", 1)
        assert row.image_width > 0 and row.image_height > 0
        assert row.scored_at.endswith("Z")
    sizes = {Path(r["uri"]).name: (r["image_width"], r["image_height"]) for r in results}
    assert sizes["scan.tif"] == (40, 40)
    # The tiny model learnt the synthetic classes: malignant folders score higher on average.
    mean = {
        label: sum(r["probability"] for r in results if f"/{label}/" in r["uri"]) / 12
        for label in ("benign", "malignant")
    }
    assert mean["malignant"] > mean["benign"]


def test_csv_and_parquet_hold_the_same_rows(scored_run) -> None:
    out = scored_run.output
    jsonl = {r["uri"]: r for r in _rows(f"{out}/results/*.jsonl")}
    csv_rows = []
    for uri in files.list_files(f"{out}/results/*.csv"):
        with open(uri, newline="") as fh:
            reader = csv.DictReader(fh)
            assert tuple(reader.fieldnames) == ALL_RESULT_COLUMNS
            csv_rows.extend(reader)
    assert {r["uri"] for r in csv_rows} == set(jsonl)
    tables = [pq.read_table(uri) for uri in files.list_files(f"{out}/results/*.parquet")]
    parquet = [row for table in tables for row in table.to_pylist()]
    assert {r["uri"]: r["probability"] for r in parquet} == {
        uri: r["probability"] for uri, r in jsonl.items()
    }


def test_gradcam_overlays_for_the_top_n(scored_run) -> None:
    results = _rows(f"{scored_run.output}/results/*.jsonl")
    top = sorted(results, key=lambda r: r["probability"], reverse=True)[:3]
    overlays = sorted(Path(scored_run.output, "gradcam").rglob("*.gradcam.png"))
    assert len(overlays) == 3
    base = Path(files.common_base(r["uri"] for r in results))
    expected = {
        Path(scored_run.output, "gradcam", str(Path(r["uri"]).relative_to(base)) + ".gradcam.png")
        for r in top
    }
    assert set(overlays) == expected
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in overlays)


def test_rerun_into_the_same_output_needs_overwrite(scored_run, tiny_model) -> None:
    code = score.main(
        [
            "--input",
            f"{scored_run.small_set}/**.png",
            "--model",
            tiny_model.root_uri,
            "--output",
            str(scored_run.output),
        ]
    )
    assert code == 2


def test_overwrite_replaces_the_earlier_run(tmp_path, small_set, tiny_model) -> None:
    output = tmp_path / "run"
    earlier = [
        "results/part-00000-of-00009.jsonl",  # another shard count: would mix with the new rows
        "errors/part-00003-of-00009.jsonl",
        "plots/roc.png",
        "gradcam/gone/x.png.gradcam.png",  # images of inputs this run does not have:
        "heatmaps/gone/slide.svs.heatmap.png",  # the pipeline deletes these
    ]
    for name in earlier:
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text('{"uri": "earlier"}\n')
    argv = ["--input", f"{small_set}/**.png", "--model", tiny_model.root_uri]
    code = score.main([*argv, "--output", str(output), "--gradcam-top", "2", "--overwrite"])
    assert code == 0
    assert not [name for name in earlier if (output / name).exists()]
    results = _rows(f"{output}/results/*.jsonl")
    assert len(results) == 24 and "earlier" not in {r["uri"] for r in results}
    assert len(list((output / "gradcam").rglob("*.png"))) == 2
    summary = json.loads((output / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["counters"]["old_outputs_deleted"] == 2


def test_deleting_files_already_gone_is_not_an_error(tmp_path) -> None:
    kept = tmp_path / "a.png"
    kept.write_bytes(b"x")
    files.delete_files([str(kept), str(tmp_path / "gone.png")])
    assert not kept.exists()


def test_user_errors_exit_2_with_one_sentence(tmp_path, tiny_model, capsys) -> None:
    code = score.main(
        ["--input", f"{tmp_path}/nothing/*.png", "--model", tiny_model.root_uri, "--output", "o"]
    )
    assert code == 2
    assert "no files match --input" in capsys.readouterr().err
    (tmp_path / "a.png").write_bytes(b"x")
    code = score.main(
        ["--input", f"{tmp_path}/*.png", "--model", str(tmp_path / "nomodel"), "--output", "o"]
    )
    assert code == 2
    assert "no model versions found" in capsys.readouterr().err


@pytest.mark.slow
def test_scoring_through_the_gcs_emulator(
    gcs_bucket: str, tiny_model_gcs: str, small_set: Path, bad_corpus
) -> None:
    uploaded = []
    for path in sorted(small_set.rglob("*.png"))[::4]:
        uri = storage.join(gcs_bucket, "slides", path.parent.name, path.name)
        storage.write_bytes(uri, path.read_bytes())
        uploaded.append(uri)
    for name in ("notes.png", "bomb.png", "empty.png", "scan.tif"):
        uri = storage.join(gcs_bucket, "slides", "odd", name)
        storage.write_bytes(uri, (bad_corpus.root / name).read_bytes())
        uploaded.append(uri)
    output = f"{gcs_bucket}/runs/run1"
    score.run(
        [
            "--input",
            f"{gcs_bucket}/slides/**.png",
            "--input",
            f"{gcs_bucket}/slides/odd/*.tif",
            "--model",
            tiny_model_gcs,
            "--output",
            output,
            "--gradcam",
            "--formats",
            "jsonl,csv",
        ]
    )
    results = _rows(f"{output}/results/*.jsonl")
    errors = _rows(f"{output}/errors/*.jsonl")
    assert len(results) + len(errors) == len(uploaded)
    assert {e["uri"].rsplit("/", 1)[-1] for e in errors} == {"notes.png", "bomb.png", "empty.png"}
    assert {r["uri"] for r in results} <= set(uploaded)
    assert all(r["model_version"] == 1 for r in results)
    summary = json.loads(storage.read_text(f"{output}/summary.json"))
    assert summary["complete"] and summary["model"]["version_uri"] == f"{tiny_model_gcs}/1"
    assert summary["base"] == f"{gcs_bucket}/slides"
    overlays = storage.list_uris(f"{output}/gradcam/")
    assert len(overlays) == len(results)  # --gradcam without a top-N: every scored image
    assert f"{output}/gradcam/odd/scan.tif.gradcam.png" in overlays
    assert storage.list_uris(f"{output}/results/*.csv")
    assert not storage.list_uris(f"{output}/results/*.parquet")


def test_scoring_through_tf_serving_without_a_model_uri(
    tmp_path: Path, model_server: str, small_set: Path, bad_corpus, loaded_tiny_model
) -> None:
    """--model-endpoint alone: the served name from the flag, its version asked of the server."""
    output = tmp_path / "served"
    score.run(
        [
            "--input",
            f"{small_set}/**.png",
            "--input",
            str(bad_corpus.root / "notes.png"),
            "--model-endpoint",
            model_server,
            "--serving-model-name",
            "histo-cnn",
            "--output",
            str(output),
            "--gradcam-top",
            "2",
        ]
    )
    results = _rows(f"{output}/results/*.jsonl")
    errors = _rows(f"{output}/errors/*.jsonl")
    assert len(results) == 24 and [e["uri"] for e in errors] == [str(bad_corpus.root / "notes.png")]
    assert {(r["model_name"], r["model_version"]) for r in results} == {
        ("histo-cnn", loaded_tiny_model.version)
    }
    local = {
        str(p): pred.probability
        for p, pred in zip(
            sorted(small_set.rglob("*.png")),
            loaded_tiny_model.predict([p.read_bytes() for p in sorted(small_set.rglob("*.png"))]),
            strict=True,
        )
    }
    assert all(abs(r["probability"] - local[r["uri"]]) < 1e-5 for r in results)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["complete"] and summary["model"] == {
        "name": "histo-cnn",
        "version": loaded_tiny_model.version,
        "version_uri": None,
        "endpoint": model_server,
    }
    assert len(list((output / "gradcam").rglob("*.gradcam.png"))) == 2


def test_an_unknown_serving_model_name_is_one_sentence(
    tmp_path: Path, model_server: str, small_set: Path, capsys
) -> None:
    code = score.main(
        [
            "--input",
            f"{small_set}/**.png",
            "--model-endpoint",
            model_server,
            "--serving-model-name",
            "tf-serving",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot ask TF Serving at {model_server} for model 'tf-serving'" in err
    assert "NOT_FOUND" in err
