"""Matching and reconciliation inside the scoring pipeline (no per-object work in the launcher)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import files, score, summary
from beam_jobs.matching import MatchInputs
from histo_common.layout import RunLayout, RunModel, Summary
from histo_common.results import ErrorRow, Prediction, ResultRow

RUNNER = "FnApiRunner"  # the in-process engine; a bare TestPipeline would try to download Prism


def _result(uri: str) -> ResultRow:
    prediction = Prediction(probability=0.7, label="malignant", threshold=0.5)
    return ResultRow.build(uri, prediction, model_name="m", model_version=1, width=2, height=2)


def test_match_inputs_deduplicates_across_patterns(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "d").mkdir()
    for name, size in (("a.png", 3), ("b.png", 4), ("c.jpg", 5)):
        (tmp_path / "d" / name).write_bytes(b"x" * size)
    monkeypatch.chdir(tmp_path)
    patterns = files.check_inputs(["d/*.png", f"{tmp_path}/**", f"{tmp_path}/none/*"])
    expected = [
        files.MatchedFile(str(tmp_path / "d" / name), size)
        for name, size in (("a.png", 3), ("b.png", 4), ("c.jpg", 5))
    ]
    with BeamTestPipeline(runner=RUNNER) as p:
        assert_that(p | MatchInputs(patterns), equal_to(expected))


def test_the_files_of_one_slide_are_one_input(tmp_path: Path) -> None:
    """A DICOM series (a folder of .dcm objects) and a MIRAX slide (.mrxs plus its folder)
    matched with ``**`` are one input each, not one per file."""
    d = tmp_path / "d"
    series = d / "case1"
    mirax = d / "case2"
    for folder, names in (
        (series, ("level0.dcm", "level1.DCM")),
        (mirax, ("Slidedat.ini", "Index.dat", "Data0000.dat")),
        (d / "orphan", ("Data0000.dat",)),  # no orphan.mrxs beside it: its own input
    ):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"x" * 10)
    (d / "case2.mrxs").write_bytes(b"x" * 5)
    (d / "a.png").write_bytes(b"x" * 3)
    expected = [
        files.MatchedFile(str(series), 20, series=True),
        files.MatchedFile(str(d / "case2.mrxs"), 35),
        files.MatchedFile(str(d / "orphan" / "Data0000.dat"), 10),
        files.MatchedFile(str(d / "a.png"), 3),
    ]
    patterns = files.check_inputs([f"{d}/**", f"{series}/*.dcm"])  # matched twice: once
    with BeamTestPipeline(runner=RUNNER) as p:
        assert_that(p | MatchInputs(patterns), equal_to(expected))


def test_reconcile_writes_lost_rows_and_counts(tmp_path: Path) -> None:
    output = str(tmp_path / "run")
    matched = [files.MatchedFile(f"/in/{n}.png", 1) for n in "abcd"]
    results = [_result("/in/a.png"), _result("/in/a.png")]  # a: two rows
    errors = [ErrorRow.build("/in/b.png", "not an image", "check")]
    errors.append(ErrorRow.build("/elsewhere/z.png", "odd", "read"))  # never matched
    facts = summary.RunFacts(
        inputs=["/in/*.png"],
        output=output,
        base="/in",
        model=RunModel("m", 1, "/m/1"),
        formats=["jsonl"],
        runner=RUNNER,
        launched_at=0.0,
    )
    with BeamTestPipeline(runner=RUNNER) as p:
        lost = {
            "matched": p | "Matched" >> beam.Create(matched),
            "results": p | "Results" >> beam.Create(results),
            "errors": p | "Errors" >> beam.Create(errors),
        } | summary.Reconcile(facts)
        assert_that(
            lost | beam.Map(lambda row: (row.uri, row.reason, row.stage)),
            equal_to([(f"/in/{n}.png", "lost", "reconcile") for n in "cd"]),
        )
    written = Summary.from_json(Path(RunLayout(output).summary).read_text())
    assert (written.matched, written.scored, written.failed, written.lost) == (4, 2, 4, 2)
    assert written.missing == ["/in/c.png", "/in/d.png"]
    assert written.duplicated == ["/in/a.png"] and written.unexpected == ["/elsewhere/z.png"]
    assert written.complete is False and written.base == "/in"
    assert "MISMATCH" in summary.describe(written) and "lost 2" in summary.describe(written)


def test_a_file_deleted_between_match_and_read_is_an_error_row(
    tmp_path: Path, small_set: Path, tiny_model
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(small_set.rglob("*.png"))[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    originals = sorted(str(p) for p in images.glob("*.png"))
    doomed = originals[1]
    output = str(tmp_path / "run")
    config, _ = score.parse_args(
        ["--input", f"{images}/*.png", "--model", tiny_model.root_uri, "--output", output]
    )
    plan = score.start_scoring(config)

    def delete_after_matching(matched: files.MatchedFile) -> files.MatchedFile:
        if matched.uri == doomed and os.path.exists(doomed):
            os.remove(doomed)
        return matched

    pipeline = beam.Pipeline(runner=RUNNER)
    matched = (
        pipeline
        | "MatchInputs" >> MatchInputs(plan.patterns)
        | "DeleteOne" >> beam.Map(delete_after_matching)
    )
    score.score_matched(matched, config, plan, runner=RUNNER)
    document = score.finish(pipeline.run(), config=config, plan=plan)

    assert not os.path.exists(doomed)
    layout = RunLayout(output)
    (error,) = files.read_json_lines(layout.errors_pattern)
    assert (error["uri"], error["stage"]) == (doomed, "read")
    assert len(list(files.read_json_lines(layout.results_pattern))) == 3
    assert (document.matched, document.scored, document.failed, document.lost) == (4, 3, 1, 0)
    assert document.complete and document.counters["files_matched"] == 4
    manifest = [json.loads(line) for line in Path(layout.manifest).read_text().splitlines()]
    assert sorted(m["uri"] for m in manifest) == originals  # as matched, the deleted one too
