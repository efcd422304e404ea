"""The streaming job: notifications, dedupe, windows, model refresh, the local emulator.

Unit tests need nothing running. The stream tests start Google's Pub/Sub
emulator through the command's own code (they skip, saying how to install it,
when it is absent) and run ``beam_jobs.stream.run`` on the BundleBasedDirectRunner
against a watched folder, while a scenario thread drops files, publishes raw
messages and swaps the model mid-stream.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from model_fixtures import publish_version
from PIL import Image
from support import run_local_stream, wait_for

from beam_jobs import dataflow_check, notifications, pubsub_emulator, stream
from beam_jobs.config import ConfigError, ScoringOptions
from histo_common import storage
from histo_common.bucket_events import watched_bucket
from histo_common.layout import StreamSummary

# ------------------------------------------------------------------ unit tests


def _message(attributes: dict[str, str], data: bytes = b"") -> SimpleNamespace:
    return SimpleNamespace(data=data, attributes=attributes, message_id="m1")


def test_notification_round_trip_names_the_object_generation(tmp_path: Path, small_set: Path):
    image = tmp_path / "uploads" / "case" / "a.png"
    image.parent.mkdir(parents=True)
    png = next(small_set.rglob("*.png")).read_bytes()
    image.write_bytes(png)
    info = storage.list_objects(str(image))[0]

    data, attributes = notifications.notification_message("uploads", "case/a.png", info)
    note = notifications.parse_notification(data, attributes)

    assert attributes["eventType"] == "OBJECT_FINALIZE"
    assert attributes["payloadFormat"] == "JSON_API_V1"
    assert json.loads(data)["name"] == "case/a.png"
    assert (note.bucket, note.name, note.size) == ("uploads", "case/a.png", len(png))
    assert note.key == f"uploads/case/a.png#{info.generation}"


@pytest.mark.parametrize(
    "attributes",
    [{}, {"bucketId": "b", "eventType": "OBJECT_FINALIZE"}, {"objectId": "a.png"}],
)
def test_a_message_that_is_no_notification_is_refused(attributes: dict[str, str]):
    with pytest.raises(notifications.NotificationError, match="not a Cloud Storage notification"):
        notifications.parse_notification(b"", attributes)


def test_a_bad_generation_is_refused_by_name():
    attributes = {
        "bucketId": "b",
        "objectId": "a.png",
        "eventType": "OBJECT_FINALIZE",
        "objectGeneration": "x1",
    }
    with pytest.raises(notifications.NotificationError, match=r"x1.*b/a.png"):
        notifications.parse_notification(b"", attributes)


@pytest.mark.parametrize(
    ("name", "event", "ignored"),
    [
        ("a.png", "OBJECT_FINALIZE", False),
        ("a.png", "OBJECT_DELETE", True),
        ("notes.txt", "OBJECT_FINALIZE", True),
        ("a.png.gradcam.png", "OBJECT_FINALIZE", True),
        ("out/results/x.png", "OBJECT_FINALIZE", True),
        ("case/slide.svs", "OBJECT_FINALIZE", False),  # slides are tiled, as in batch
        ("case/slide.mrxs", "OBJECT_FINALIZE", False),  # read once its folder is there
        ("series/1.dcm", "OBJECT_FINALIZE", True),  # one of a DICOM series' objects
        ("case/.upload-1.svs", "OBJECT_FINALIZE", True),
    ],
)
def test_ignore_reason(name: str, event: str, ignored: bool):
    note = notifications.Notification("bkt", name, 1, event)
    uri = f"/root/bkt/{name}"
    assert (stream.ignore_reason(note, uri, "/root/bkt/out") is not None) is ignored


def test_window_file_names_carry_the_window_and_never_repeat():
    from apache_beam.transforms.window import IntervalWindow
    from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

    window = IntervalWindow(1_700_000_000, 1_700_000_010)
    pane = PaneInfo(True, True, PaneInfoTiming.ON_TIME, 0, 0)
    first = stream.window_file_name(window, pane, 0, 1, None, None)
    second = stream.window_file_name(window, pane, 0, 1, None, None)
    assert first.startswith("part-20231114T221320Z-20231114T221330Z-pane0-")
    assert first != second


def test_config_needs_one_source_and_positive_numbers(tiny_model):
    root = ScoringOptions(model=tiny_model.root_uri)
    with pytest.raises(ConfigError, match="--subscription"):
        stream.StreamConfig(output="out", options=root)
    with pytest.raises(ConfigError, match="--window-seconds"):
        stream.StreamConfig(output="out", options=root, watch="w", window_s=0)
    with pytest.raises(ConfigError, match="projects/P/subscriptions/S"):
        stream.StreamConfig(output="out", options=root, subscription="s")
    with pytest.raises(ConfigError, match="--model is required"):
        stream.StreamConfig(output="out", watch="w")
    with pytest.raises(ConfigError, match="--model-endpoint is for the batch jobs"):
        stream.StreamConfig(
            output="o", options=ScoringOptions(model="m", model_endpoint="h:1"), watch="w"
        )
    assert stream.StreamConfig(output="o", options=root, watch="w").refresh
    version = ScoringOptions(model=tiny_model.version_uri)
    assert not stream.StreamConfig(output="o", options=version, watch="w").refresh


def test_stream_flags_are_the_batch_jobs_model_flags(tiny_model):
    config, beam_args = stream.parse_args(
        [
            "--watch",
            "w",
            "--output",
            "o",
            "--model",
            tiny_model.root_uri,
            "--max-pixels",
            "99",
            "--max-batch-size",
            "8",
            "--large-model",
            "--runner",
            "DirectRunner",
        ]
    )
    assert config.options == ScoringOptions(
        model=tiny_model.root_uri,
        max_pixels=99,
        min_batch_size=1,
        max_batch_size=8,
        large_model=True,
    )
    assert beam_args == ["--runner", "DirectRunner"]
    with pytest.raises(ConfigError, match="--min-batch-size"):
        stream.parse_args(
            [
                "--watch",
                "w",
                "--output",
                "o",
                "--model",
                "m",
                "--min-batch-size",
                "9",
                "--max-batch-size",
                "8",
            ]
        )


def test_notifications_are_deduplicated_and_windowed_on_a_test_stream(tmp_path: Path):
    """The streaming part before reading: parse, drop duplicates, fixed windows (no emulator)."""
    import apache_beam as beam
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.window import IntervalWindow

    window_s = 7
    config = stream.StreamConfig(
        output=str(tmp_path / "uploads" / "out"),
        options=ScoringOptions(model="m"),
        watch=str(tmp_path / "uploads"),
        local_bucket_root=str(tmp_path),
        window_s=window_s,
    )

    def note(name: str, generation: int, event: str = "OBJECT_FINALIZE") -> PubsubMessage:
        attributes = {
            "bucketId": "uploads",
            "objectId": name,
            "eventType": event,
            "objectGeneration": str(generation),
        }
        return PubsubMessage(b"", attributes, message_id=f"{name}#{generation}")

    burst = [
        note("a.png", 1),
        note("b.png", 1),
        note("a.png", 1),  # Pub/Sub delivers at least once
        note("notes.txt", 1),  # not an image
        note("a.png", 1, "OBJECT_DELETE"),  # not a new object
        note("out/results/x.png", 1),  # the job's own output
        PubsubMessage(b"junk", {"origin": "somebody else"}, message_id="junk"),
    ]
    later = [note("a.png", 1), note("b.png", 1), note("a.png", 2)]  # again, and a new generation
    events = (
        TestStream()
        .add_elements(burst)
        .advance_processing_time(30)
        .add_elements(later)
        .advance_watermark_to_infinity()
    )

    def in_fixed_windows(values: list) -> None:
        for value in values:
            (win,) = value.windows
            assert isinstance(win, IntervalWindow), win
            assert win.end - win.start == window_s and win.start <= value.timestamp < win.end
            assert int(win.start) % window_s == 0  # fixed windows, aligned on the epoch

    uploads = tmp_path / "uploads"
    options = PipelineOptions(streaming=True, runner="BundleBasedDirectRunner")
    with TestPipeline(options=options) as p:
        notes = p | events | stream.NotificationsToObjects(config, "projects/p/subscriptions/s")
        uris = notes["objects"] | "Uris" >> beam.Map(lambda m: m.uri)
        assert_that(
            uris,
            equal_to([str(uploads / "a.png"), str(uploads / "a.png"), str(uploads / "b.png")]),
            label="OncePerGeneration",
        )
        assert_that(uris, in_fixed_windows, reify_windows=True, label="InFixedWindows")
        assert_that(
            notes["errors"] | "Stages" >> beam.Map(lambda e: (e.uri, e.stage)),
            equal_to([("pubsub:projects/p/subscriptions/s/junk", "notification")]),
            label="JunkIsAnErrorRow",
        )


def test_a_local_stream_ends_only_once_every_published_notification_arrived():
    run_id = f"unit-{time.monotonic_ns()}"
    published = 3
    rule = stream.IdleRule(1.0, published=lambda: published)
    stream._note(run_id, "received", 2)
    stream._note(run_id, "last_seen", time.monotonic() - 5)  # quiet for longer than 1 s
    try:
        assert not rule.done(run_id, time.monotonic())  # one is still in the subscription
        stream._note(run_id, "owed")
        stream._note(run_id, "received")
        assert not rule.done(run_id, time.monotonic())  # received, but its row is owed
        stream._note(run_id, "written")
        assert rule.done(run_id, time.monotonic())
        published = 4  # published, never received: given up on after a long quiet
        assert not rule.done(run_id, time.monotonic())
        stream._note(run_id, "last_seen", time.monotonic() - rule.give_up_s - 1)
        assert rule.done(run_id, time.monotonic())
        assert rule.unreceived(stream.progress(run_id)) == 1
    finally:
        stream._PROGRESS.pop(run_id, None)


def test_missing_emulator_says_how_to_install_it(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(pubsub_emulator.EMULATOR_ENV, str(tmp_path / "nothing"))
    with pytest.raises(pubsub_emulator.EmulatorNotFound, match="apt-get install"):
        pubsub_emulator.find_emulator()


# -------------------------------------------------------------- with the emulator


@pytest.fixture(scope="module")
def emulator_bin() -> str:
    """The emulator's script, or a skip that says how to install it."""
    try:
        return pubsub_emulator.find_emulator()
    except pubsub_emulator.EmulatorNotFound as exc:
        pytest.skip(str(exc))


def _rows(output: Path, kind: str) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted((output / kind).glob("part-*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def _publish_raw(setup: stream.LocalSetup, data: bytes, attributes: dict[str, str]) -> None:
    assert setup.notifier.publisher.publish(data, attributes)


@pytest.mark.slow
def test_stream_scores_a_burst_once_each_and_follows_a_new_model_version(
    tmp_path: Path, emulator_bin: str, tiny_model, small_set: Path, bad_corpus
):
    uploads = tmp_path / "buckets" / "uploads"
    uploads.mkdir(parents=True)
    output = uploads / "stream-out"  # inside the watched bucket: its files must be ignored
    models = tmp_path / "models" / "histo-cnn"
    shutil.copytree(tiny_model.version_uri, models / "1")
    images = sorted(small_set.rglob("*.png"))
    bad = ["empty.png", "notes.png", "truncated.png"]

    def scenario(setup: stream.LocalSetup) -> None:
        for path in images[:12]:  # a burst
            shutil.copy(path, uploads / path.name)
        for name in bad:
            shutil.copy(bad_corpus.root / name, uploads / name)
        assert wait_for(lambda: setup.notifier.published >= 15, timeout=30)
        # Pub/Sub is at least once: the same generation announced again, twice.
        bucket = watched_bucket(str(uploads))
        for path in images[:3]:
            info = storage.list_objects(str(uploads / path.name))[0]
            for _ in range(2):
                _publish_raw(setup, *notifications.notification_message("uploads", path.name, info))
        # What is not ours: another event type, a by-product, the job's own output, junk.
        info = storage.list_objects(str(uploads / images[0].name))[0]
        data, attributes = notifications.notification_message("uploads", images[0].name, info)
        _publish_raw(setup, data, {**attributes, "eventType": "OBJECT_DELETE"})
        _publish_raw(setup, data, {**attributes, "objectId": images[0].name + ".gradcam.png"})
        _publish_raw(setup, data, {**attributes, "objectId": "stream-out/results/x.png"})
        _publish_raw(setup, b"not a notification", {"origin": "somebody else"})
        assert bucket.name == "uploads"
        assert wait_for(lambda: len(_rows(output, "results")) >= 12, timeout=60)
        publish_version(models, models / "1", 2)
        time.sleep(1.5)  # longer than --model-poll-seconds
        for path in images[12:16]:
            shutil.copy(path, uploads / path.name)

    failures = run_local_stream(
        uploads,
        models,
        output,
        scenario,
        idle_s=5,
        flags=("--model-poll-seconds", "1", "--max-batch-seconds", "0.5"),
    )
    assert not failures, failures

    results, errors = _rows(output, "results"), _rows(output, "errors")
    scored = [r["uri"] for r in results]
    assert sorted(scored) == sorted(str(uploads / p.name) for p in images[:16])  # once each
    version = {Path(r["uri"]).name: r["model_version"] for r in results}
    assert {version[p.name] for p in images[:12]} == {1}
    assert {version[p.name] for p in images[12:16]} == {2}  # picked up without a restart
    assert len(errors) == len(bad) + 1
    by_uri = {e["uri"]: e for e in errors}
    assert all(by_uri[str(uploads / n)]["stage"] in {"read", "check"} for n in bad)
    (junk,) = [e for e in errors if e["uri"].startswith("pubsub:")]
    assert junk["stage"] == "notification" and "not a Cloud Storage notification" in junk["reason"]
    files_ = sorted(p.name for p in (output / "results").glob("part-*.jsonl"))
    assert files_ and all(name.startswith("part-2") and "-pane" in name for name in files_)
    summary = StreamSummary.from_json((output / "stream-summary.json").read_text())
    assert (summary.results, summary.errors, summary.unreceived) == (16, len(bad) + 1, 0)
    assert summary.model_versions == {"histo-cnn/1": 12, "histo-cnn/2": 4}
    assert summary.notifications >= 15 + 6 + 4  # burst, duplicates, not ours, later files
    assert sum(w.results for w in summary.windows) == 16 and summary.source.startswith("watch:")
    assert all(w.start < w.end for w in summary.windows)


@pytest.mark.slow
def test_stream_loses_no_rows_when_the_emulator_restarts(
    tmp_path: Path, emulator_bin: str, tiny_model, small_set: Path
):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    output = tmp_path / "out"
    images = sorted(small_set.rglob("*.png"))[:8]

    def scenario(setup: stream.LocalSetup) -> None:
        for path in images[:4]:
            shutil.copy(path, uploads / path.name)
        assert wait_for(lambda: len(_rows(output, "results")) >= 4, timeout=60)
        setup.emulator.stop()
        for path in images[4:]:  # announced while the emulator is away: retried
            shutil.copy(path, uploads / path.name)
        time.sleep(2)
        setup.emulator.start()
        setup.ensure()  # a restarted emulator has no topics: the launcher re-creates them

    failures = run_local_stream(
        uploads,
        tiny_model.version_uri,
        output,
        scenario,
        # No margin for a slow restart: the stream ends only once every notification
        # published has been received (or, after a long quiet, reports the loss).
        idle_s=4,
    )
    assert not failures, failures
    assert sorted(r["uri"] for r in _rows(output, "results")) == sorted(
        str(uploads / p.name) for p in images
    )
    assert _rows(output, "errors") == []
    summary = StreamSummary.from_json((output / "stream-summary.json").read_text())
    assert (summary.results, summary.errors, summary.unreceived) == (8, 0, 0)


@pytest.mark.slow
def test_stream_tiles_slides_and_large_images_as_the_batch_job_does(
    tmp_path: Path, emulator_bin: str, tiny_model, small_set: Path, loaded_tiny_model
):
    """An uploaded slide and a large field of view are tiled (one row with the slide
    fields, tile rows per window, a heatmap); a truncated slide is one error row."""
    from histo_common.results import ResultRow, TileRow
    from histo_common.samples import generate_slide, synth_slide_image
    from model_export.slide_scoring import SlideSettings, score_input

    staging, uploads = tmp_path / "staging", tmp_path / "uploads"
    staging.mkdir()
    uploads.mkdir()
    output = tmp_path / "out"
    generate_slide(str(staging / "slide.tif"), 1024, 768, seed=3, mpp=None)
    field_, _ = synth_slide_image(300, 200, seed=4)
    Image.fromarray(field_).save(staging / "field.png")
    data = (staging / "slide.tif").read_bytes()
    (staging / "cut.tif").write_bytes(data[: len(data) // 2])
    patch = sorted(small_set.rglob("*.png"))[0]
    shutil.copy(patch, staging / patch.name)
    names = ["slide.tif", "field.png", "cut.tif", patch.name]

    def scenario(setup: stream.LocalSetup) -> None:
        for name in names:  # whole files only: the watcher must never see half a slide
            shutil.copy(staging / name, tmp_path / name)
            (tmp_path / name).rename(uploads / name)

    failures = run_local_stream(uploads, tiny_model.root_uri, output, scenario, idle_s=5)
    assert not failures, failures

    results = {Path(r["uri"]).name: ResultRow.from_dict(r) for r in _rows(output, "results")}
    errors = {Path(r["uri"]).name: r for r in _rows(output, "errors")}
    assert set(results) == {"slide.tif", "field.png", patch.name} and set(errors) == {"cut.tif"}
    assert "truncated" in errors["cut.tif"]["reason"]
    assert not results[patch.name].is_tiled
    tiles = [TileRow.from_dict(t) for t in _rows(output, "tiles")]
    settings = SlideSettings.from_metadata(loaded_tiny_model.metadata)
    for name in ("slide.tif", "field.png"):
        row, uri = results[name], str(uploads / name)
        mine = sorted((t for t in tiles if t.uri == uri), key=lambda t: (t.y, t.x))
        assert row.is_tiled and row.tiles_scored == len(mine) > 0
        assert {t.model_version for t in mine} == {row.model_version} == {1}
        alone = score_input(loaded_tiny_model, uri, loaded_tiny_model.identity, settings)
        assert alone.row is not None
        assert row.probability == pytest.approx(alone.row.probability, abs=1e-5)
        assert (output / "heatmaps" / f"{name}.heatmap.png").is_file()
    summary = StreamSummary.from_json((output / "stream-summary.json").read_text())
    assert (summary.results, summary.errors, summary.unreceived) == (3, 1, 0)


# ------------------------------------------------------------- dataflow-check


def _job(**changes) -> dataflow_check.JobCheck:
    job = dataflow_check.JobCheck(
        name="stream",
        runner="DataflowRunner",
        streaming=True,
        steps=[f"{step}/Inner" for step in dataflow_check.STREAM_STEPS],
        staged=list(dataflow_check.STAGED),
    )
    for key, value in changes.items():
        setattr(job, key, value)
    return job


def test_dataflow_check_passes_a_complete_streaming_job():
    job = dataflow_check.check(_job(), streaming=True, steps=dataflow_check.STREAM_STEPS)
    assert job.problems == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"runner": "DirectRunner"}, "not DataflowRunner"),
        ({"streaming": False}, "streaming is False"),
        (
            {"steps": [f"{s}/Inner" for s in dataflow_check.STREAM_STEPS if s != "RunInference"]},
            "no RunInference step",
        ),
        ({"staged": ["requirements.txt"]}, "--setup_file"),
        ({"staged": ["workflow.tar.gz"]}, "--requirements_file"),
    ],
)
def test_dataflow_check_names_what_is_wrong(changes: dict, problem: str):
    job = dataflow_check.check(_job(**changes), streaming=True, steps=dataflow_check.STREAM_STEPS)
    assert any(problem in p for p in job.problems), job.problems


def test_command_without_emulator_says_how_to_install_it(monkeypatch, tmp_path, tiny_model, capsys):
    monkeypatch.setenv(pubsub_emulator.EMULATOR_ENV, str(tmp_path / "nothing"))
    argv = ["--watch", str(tmp_path / "w"), "--model", tiny_model.root_uri, "--output", "o"]
    assert stream.main(argv) == 2
    assert "gcloud components install pubsub-emulator" in capsys.readouterr().err
