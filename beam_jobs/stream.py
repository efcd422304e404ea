"""Streaming scoring job: score images as they land in a bucket, with the batch job's stages.

``python -m beam_jobs.stream --subscription projects/P/subscriptions/S --model gs://models/histo-cnn
--output gs://results/stream [Beam options]`` reads Cloud Storage notifications
(``OBJECT_FINALIZE``, JSON API format) from Pub/Sub. Locally, without
``--subscription``, it starts Google's Pub/Sub emulator on 127.0.0.1, creates a
topic and a subscription, and a notifier announces files appearing under
``--watch DIR`` (a folder or a ``gs://`` emulator bucket):
``python -m beam_jobs.stream --watch DIR --model MODEL --output OUT --max-idle-seconds N``.

Notifications -> ``ParseNotifications`` (non-images, other event types and the
job's own outputs are ignored; a message that is no notification is an error
row) -> ``DropDuplicates`` (one element per ``bucket/name#generation`` within
``--dedupe-seconds``: Pub/Sub and Cloud Storage deliver at least once) -> fixed
windows of ``--window-seconds`` -> ``ReadImages`` -> ``ScoreImages``
(RunInference, batched across elements for at most ``--max-batch-seconds``) ->
windowed ``<output>/results/part-<window start>-<window end>-...jsonl`` and
``<output>/errors/...``, the batch job's row schema. Every notification for an
image ends as one result row or one error row.

Model refresh: with a model root, the handler looks for a newer complete
version (metadata written last) every ``--model-poll-seconds`` and swaps it in
without stopping; each row names the version that scored it (see
:class:`RefreshingModelHandler` for why not RunInference's side-input refresh).

Locally (``--max-idle-seconds``) the stream ends itself: the DirectRunner cannot
be stopped from inside the graph, so the stages report when they last received
a notification and how many rows they owe and have written, and the launcher
cancels the run once it is quiet and owes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms import trigger, window
from apache_beam.transforms.deduplicate import DeduplicatePerKey
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_jobs import files, notifications
from beam_jobs.config import DEFAULT_MAX_BATCH_SIZE, ConfigError
from beam_jobs.model_handler import (
    METRICS_NAMESPACE,
    HistoModelHandler,
)
from beam_jobs.score import configure_logging
from beam_jobs.stages import CheckedImage
from beam_jobs.transforms import ERRORS, ReadImages, ScoreImages
from histo_common import bucket_events, storage
from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from histo_common.layout import RunLayout
from histo_common.results import ErrorRow
from model_export.identity import ModelIdentity, ModelLoadError, resolve, resolve_version
from model_export.scoring import score_batch

logger = logging.getLogger(__name__)

LOCAL_RUNNER = "BundleBasedDirectRunner"  # runs ReadFromPubSub; needs no download
DEFAULT_WINDOW_S = 10
DEFAULT_MODEL_POLL_S = 60.0
DEFAULT_MAX_BATCH_S = 1.0
DEFAULT_DEDUPE_S = 3600
DEFAULT_PROJECT = "histoscreen-local"
DEFAULT_TOPIC = "histoscreen-uploads"  # infra: <prefix>-uploads
DEFAULT_SUBSCRIPTION = "histoscreen-uploads-stream"  # infra: <prefix>-uploads-stream
RESULTS_DIR = RunLayout.RESULTS  # the run layout names the folders
ERRORS_DIR = RunLayout.ERRORS
IGNORED = "ignored"
TICK_ATTRIBUTE = "histoscreenTick"


@dataclass(frozen=True)
class StreamConfig:
    """The streaming job's options, validated."""

    output: str
    model: str
    subscription: str | None = None
    watch: str | None = None
    local_bucket_root: str | None = None
    window_s: int = DEFAULT_WINDOW_S
    model_poll_s: float = DEFAULT_MODEL_POLL_S
    max_idle_s: float | None = None
    max_batch_s: float = DEFAULT_MAX_BATCH_S
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    dedupe_s: int = DEFAULT_DEDUPE_S
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    project: str = DEFAULT_PROJECT

    def __post_init__(self) -> None:
        if not self.subscription and not self.watch:
            raise ConfigError("pass --subscription (a real one) or --watch DIR (local default)")
        if self.subscription and self.watch:
            raise ConfigError("pass --subscription or --watch, not both")
        if self.subscription and not self.subscription.startswith("projects/"):
            raise ConfigError(
                f"--subscription {self.subscription!r} must be projects/P/subscriptions/S"
            )
        for name, value in (
            ("--window-seconds", self.window_s),
            ("--model-poll-seconds", self.model_poll_s),
            ("--max-batch-seconds", self.max_batch_s),
            ("--max-batch-size", self.max_batch_size),
            ("--dedupe-seconds", self.dedupe_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.max_idle_s is not None and self.max_idle_s <= 0:
            raise ConfigError(f"--max-idle-seconds must be > 0, got {self.max_idle_s}")

    @property
    def refresh(self) -> bool:
        """True when ``--model`` is a model root, so new versions are picked up."""
        return not storage.basename(self.model.rstrip("/")).isdigit()


# ------------------------------------------------------------------ notifications


def _is_under(uri: str, folder: str) -> bool:
    return uri.startswith(folder.rstrip("/") + "/")


class _ParseNotification(beam.DoFn):
    """Pub/Sub message -> the object's ``MatchedFile``; ``ignored`` names, or an error row."""

    def __init__(
        self, local_root: str | None, output: str, subscription: str, run_id: str | None
    ) -> None:
        self.local_root = local_root
        self.output = output
        self.subscription = subscription
        self.run_id = run_id
        self.received = Metrics.counter(METRICS_NAMESPACE, "notifications_received")
        self.ignored = Metrics.counter(METRICS_NAMESPACE, "notifications_ignored")

    def process(self, message: Any) -> Iterator[Any]:
        if is_tick(message):
            return
        self.received.inc()
        if self.run_id is not None:
            _note(self.run_id, "last_seen", time.monotonic())
        try:
            note = notifications.parse_notification(message.data or b"", message.attributes or {})
            uri = bucket_events.object_uri(note.bucket, note.name, self.local_root)
        except (notifications.NotificationError, storage.StorageError) as exc:
            where = f"pubsub:{self.subscription}/{getattr(message, 'message_id', None) or '?'}"
            yield beam.pvalue.TaggedOutput(ERRORS, ErrorRow.build(where, str(exc), "notification"))
            return
        reason = ignore_reason(note, uri, self.output)
        if reason:
            self.ignored.inc()
            logger.info("Ignoring %s: %s", uri, reason)
            yield beam.pvalue.TaggedOutput(IGNORED, uri)
            return
        # Windows are of arrival time: a notification pulled late (the emulator or the
        # runner behind) is not late data, so no window gets a second pane for it.
        yield window.TimestampedValue(
            (note.key, files.MatchedFile(uri=uri, size=note.size or 0)), Timestamp.now()
        )


def is_tick(message: Any) -> bool:
    """True for the local notifier's heartbeat, which only keeps the runner's pull short.

    The DirectRunner's Pub/Sub read blocks up to 30 s on an empty subscription and
    its watermark waits with it, so the last window of a burst would close that
    much later; a tick every half second keeps windows closing on time.
    """
    return TICK_ATTRIBUTE in (message.attributes or {})


def ignore_reason(note: notifications.Notification, uri: str, output: str) -> str | None:
    """Why a notification is not one to score, or None when it is."""
    if note.event_type != notifications.OBJECT_FINALIZE:
        return f"event {note.event_type}, not {notifications.OBJECT_FINALIZE}"
    if _is_under(uri, output):
        return "an output of this job"
    if not bucket_events.wants_event(note.name):
        return "not an image by its name, hidden, or an output of the upload function"
    return None


# ----------------------------------------------------------- ending a local stream

# The DirectRunner cannot be stopped from inside the graph, and a stream never
# finishes by itself. With --max-idle-seconds the pipeline reports, per run, when
# it last received a notification, how many rows it owes and how many it has
# written; the launcher cancels the run once it is quiet and owes nothing.
_LOCK = threading.Lock()
_PROGRESS: dict[str, dict[str, float]] = {}


def _note(run_id: str, key: str, amount: float = 1.0) -> None:
    with _LOCK:
        progress = _PROGRESS.setdefault(run_id, {"owed": 0, "written": 0})
        if key == "last_seen":
            progress[key] = amount
        else:
            progress[key] = progress.get(key, 0) + amount


def progress(run_id: str) -> dict[str, float]:
    """What a local run has received and written so far (a copy)."""
    with _LOCK:
        return dict(_PROGRESS.get(run_id, {"owed": 0, "written": 0}))


class _CountWritten(beam.DoFn):
    """Count the rows of each window file once it is written (local runs only)."""

    def __init__(self, run_id: str, folder: str) -> None:
        self.run_id = run_id
        self.folder = folder

    def process(self, written: Any) -> Iterator[str]:
        uri = files.join(self.folder, written.file_name)
        lines = files.read_file(uri).decode("utf-8").splitlines()
        _note(self.run_id, "written", sum(1 for line in lines if line.strip()))
        _note(self.run_id, "last_seen", time.monotonic())
        yield uri


def _owe_one(value: Any, run_id: str) -> Any:
    _note(run_id, "owed")
    return value


# ------------------------------------------------------------- model refresh


class RefreshingModel:
    """The loaded model version, replaced by a newer complete one when it appears.

    What RunInference holds (one per worker process, shared by its threads).
    :meth:`current` looks under the model root at most every ``interval_s``; a
    version counts once its ``metadata.json`` exists (the exporter writes it
    last), so a half-written export is never loaded. A version that fails to
    load is logged and the old one kept.
    """

    def __init__(self, root: str, interval_s: float, refresh: bool) -> None:
        from model_export.loader import load_model

        self.root = root
        self.interval_s = interval_s
        self.refresh = refresh
        self._load = load_model
        self._model = load_model(root)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def current(self) -> Any:
        """The model to score the next batch with."""
        if not self.refresh or time.monotonic() - self._checked < self.interval_s:
            return self._model
        with self._lock:
            if time.monotonic() - self._checked >= self.interval_s:
                self._checked = time.monotonic()
                self._swap_if_newer()
        return self._model

    def _swap_if_newer(self) -> None:
        try:
            version_uri, version = resolve_version(self.root)
            if version == self._model.version:
                return
            model = self._load(version_uri)
        except ModelLoadError as exc:
            logger.warning("Keeping %s: %s", self._model.uri, exc)
            return
        logger.info("Model %s version %d loaded: scoring with it from now on", model.name, version)
        self._model = model


# ------------------------------------------------------------------------ scoring


class RefreshingModelHandler(HistoModelHandler):
    """The batch job's handler, following new model versions and batching by time too.

    ``load_model`` gives a :class:`RefreshingModel`; each batch is scored with its
    current version and every row carries the identity of the version that
    scored it, so a swap mid-stream shows in the rows.

    Why not RunInference's side-input refresh (``model_metadata_pcoll``): the
    local runner (BundleBasedDirectRunner) serves a global-window side input only
    once its window closes, which never happens, and crashes on empty bundles
    with a windowed one; this works the same on every runner.
    """

    def __init__(
        self,
        model_uri: str,
        *,
        poll_s: float,
        refresh: bool,
        max_batch_duration_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_uri, **kwargs)
        self.poll_s = poll_s
        self.refresh = refresh
        self.max_batch_duration_s = max_batch_duration_s

    def load_model(self) -> RefreshingModel:
        """Load the latest version now and follow the root from then on."""
        return RefreshingModel(self.model_uri, self.poll_s, self.refresh)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        """Batch across elements, but never hold one longer than the batch duration."""
        kwargs = dict(super().batch_elements_kwargs())
        kwargs["max_batch_duration_secs"] = self.max_batch_duration_s
        return kwargs

    def run_inference(
        self,
        batch: Sequence[CheckedImage],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> list[PredictionResult]:
        """Score one batch with the current version, stamping it on each outcome."""
        loaded = model.current()
        identity = ModelIdentity(name=loaded.name, version=loaded.version, uri=loaded.uri)
        outcomes = score_batch(
            loaded, [image.data for image in batch], identity, signature=self.signature
        )
        model_id = f"{identity.name}/{identity.version}"
        return [
            PredictionResult(im, out, model_id) for im, out in zip(batch, outcomes, strict=True)
        ]


def window_file_name(
    window_: Any, pane: Any, shard_index: int, total_shards: int, compression: Any, destination: Any
) -> str:
    """``part-<window start>-<window end>-pane<N>-<shard>-<unique>.jsonl`` (UTC times).

    One window can be written by several firings (late data, and the runner
    finalising bundles separately), so each file also gets a unique token:
    a later file never replaces an earlier one.
    """
    start = window_.start.to_utc_datetime().strftime("%Y%m%dT%H%M%SZ")
    end = window_.end.to_utc_datetime().strftime("%Y%m%dT%H%M%SZ")
    index = pane.index if pane is not None else 0
    token = uuid.uuid4().hex[:8]
    return f"part-{start}-{end}-pane{index}-{shard_index:05d}-{token}.jsonl"


class WriteWindowedRows(beam.PTransform):
    """Rows -> ``<folder>/part-<window start>-<window end>-<pane>-<shard>.jsonl``, per window."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        """Write each window's rows as one JSON-lines file under ``folder``."""
        return (
            rows
            | "ToJson" >> beam.Map(lambda row: row.to_json())
            | "WriteWindowFiles"
            >> fileio.WriteToFiles(
                path=self.folder,
                file_naming=window_file_name,
                shards=1,
            )
        )


def add_streaming(
    pipeline: beam.Pipeline,
    config: StreamConfig,
    subscription: str,
    identity: ModelIdentity,
    run_id: str | None = None,
) -> dict[str, beam.PCollection]:
    """Add the streaming stages to ``pipeline``; return its ``results`` and ``errors``.

    Args:
        pipeline: the streaming pipeline to add to.
        config: the validated streaming configuration.
        subscription: the Pub/Sub subscription path to read notifications from.
        identity: the model resolved at start (rows carry the version that scored them).
        run_id: set for local runs that end when idle: the pipeline then reports
            its progress (see :func:`progress`).
    """
    handler = RefreshingModelHandler(
        config.model,
        poll_s=config.model_poll_s,
        refresh=config.refresh,
        max_batch_duration_s=config.max_batch_s,
        identity=identity,
        min_batch_size=1,
        max_batch_size=config.max_batch_size,
    )
    parsed = (
        pipeline
        | "ReadNotifications"
        >> beam.io.ReadFromPubSub(subscription=subscription, with_attributes=True)
        | "ParseNotifications"
        >> beam.ParDo(
            _ParseNotification(config.local_bucket_root, config.output, subscription, run_id)
        ).with_outputs(ERRORS, IGNORED, main="objects")
    )
    objects = (
        parsed.objects
        | "DropDuplicates" >> DeduplicatePerKey(event_time_duration=Duration(config.dedupe_s))
        | "Objects" >> beam.Values()
    )
    bad_messages = parsed[ERRORS]
    if run_id is not None:
        objects = objects | "OweRows" >> beam.Map(_owe_one, run_id)
        bad_messages = bad_messages | "OweErrorRows" >> beam.Map(_owe_one, run_id)
    windowing: dict[str, Any] = {  # keyword arguments of both WindowInto steps
        "trigger": trigger.AfterWatermark(late=trigger.AfterCount(1)),
        "accumulation_mode": trigger.AccumulationMode.DISCARDING,
        "allowed_lateness": Duration(config.window_s * 6),
    }
    windowed = objects | "FixedWindows" >> beam.WindowInto(
        window.FixedWindows(config.window_s), **windowing
    )
    read = windowed | "ReadImages" >> ReadImages(config.max_pixels, config.max_bytes)
    scored = read["images"] | "ScoreImages" >> ScoreImages(handler)
    notification_errors = bad_messages | "WindowBadMessages" >> beam.WindowInto(
        window.FixedWindows(config.window_s), **windowing
    )
    errors = (notification_errors, read[ERRORS], scored[ERRORS]) | "AllErrors" >> beam.Flatten()
    for name, rows in (("Results", scored["results"]), ("Errors", errors)):
        folder = files.join(config.output, RESULTS_DIR if name == "Results" else ERRORS_DIR)
        written = rows | f"Write{name}" >> WriteWindowedRows(folder)
        if run_id is not None:
            _ = written | f"Count{name}Written" >> beam.ParDo(_CountWritten(run_id, folder))
    return {"results": scored["results"], ERRORS: errors}


# ------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The job's own flags; everything else is a Beam pipeline option."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m beam_jobs.stream",
        description="Score images as they land in a bucket (research use only). "
        "Unknown flags are Beam pipeline options (--runner, --project, ...).",
    )
    parser.add_argument("--output", required=True, help="output folder URI")
    parser.add_argument("--model", required=True, help="model root (refreshed) or a version URI")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--subscription", help="projects/P/subscriptions/S with the bucket's notifications"
    )
    source.add_argument(
        "--watch",
        help="local default: a folder or gs:// emulator bucket to announce through a Pub/Sub "
        "emulator this command starts",
    )
    parser.add_argument(
        "--window-seconds", type=int, default=DEFAULT_WINDOW_S, help="fixed output windows"
    )
    parser.add_argument(
        "--model-poll-seconds",
        type=float,
        default=DEFAULT_MODEL_POLL_S,
        help="how often the model root is checked for a new version; default %(default)s",
    )
    parser.add_argument(
        "--max-idle-seconds", type=float, help="end the stream after this many quiet seconds"
    )
    parser.add_argument(
        "--max-batch-seconds",
        type=float,
        default=DEFAULT_MAX_BATCH_S,
        help="longest an image waits for a batch to fill; default %(default)s",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="RunInference batching"
    )
    parser.add_argument(
        "--dedupe-seconds",
        type=int,
        default=DEFAULT_DEDUPE_S,
        help="how long an object generation is remembered to drop duplicates",
    )
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument(
        "--pubsub-project", default=DEFAULT_PROJECT, help="emulator project (local default)"
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[StreamConfig, list[str]]:
    """Split ``argv`` into the job's config and Beam's pipeline arguments."""
    args, pipeline_args = build_parser().parse_known_args(argv)
    local_root = None
    if args.watch and not storage.is_gcs(args.watch):
        local_root = os.path.dirname(os.path.abspath(args.watch.rstrip("/")))
    output = args.output if "://" in args.output else os.path.abspath(args.output)
    config = StreamConfig(
        output=output,
        model=args.model,
        subscription=args.subscription,
        watch=args.watch,
        local_bucket_root=local_root,
        window_s=args.window_seconds,
        model_poll_s=args.model_poll_seconds,
        max_idle_s=args.max_idle_seconds,
        max_batch_s=args.max_batch_seconds,
        max_batch_size=args.max_batch_size,
        dedupe_s=args.dedupe_seconds,
        max_pixels=args.max_pixels,
        max_bytes=args.max_bytes,
        project=args.pubsub_project,
    )
    return config, pipeline_args


def pipeline_options(pipeline_args: Sequence[str]) -> PipelineOptions:
    """Streaming options; the local runner that reads Pub/Sub when none is named."""
    options = PipelineOptions(list(pipeline_args))
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    return options


def build_pipeline(
    config: StreamConfig,
    pipeline_args: Sequence[str],
    subscription: str,
    run_id: str | None = None,
    identity: ModelIdentity | None = None,
) -> beam.Pipeline:
    """The streaming pipeline, built but not run (``make dataflow-check`` inspects it)."""
    identity = identity or resolve(config.model).identity
    pipeline = beam.Pipeline(options=pipeline_options(pipeline_args))
    add_streaming(pipeline, config, subscription, identity, run_id)
    return pipeline


def _quiet_and_done(
    run_id: str, max_idle_s: float, started: float, busy: Callable[[], bool] | None
) -> bool:
    state = progress(run_id)
    idle = time.monotonic() - state.get("last_seen", started)
    if busy is not None and busy():  # the notifier has files still to announce
        _note(run_id, "last_seen", time.monotonic())
        return False
    return idle >= max_idle_s and state["written"] >= state["owed"]


def _run_pipeline(
    config: StreamConfig,
    pipeline_args: Sequence[str],
    subscription: str,
    wake: Callable[[], Any] | None = None,
    busy: Callable[[], bool] | None = None,
) -> PipelineResult:
    if config.max_idle_s is None:
        result = build_pipeline(config, pipeline_args, subscription).run()
        result.wait_until_finish()
        return result
    run_id = f"stream-{os.getpid()}-{time.monotonic_ns()}"
    result = build_pipeline(config, pipeline_args, subscription, run_id).run()
    started = time.monotonic()
    failure: list[BaseException] = []

    def _wait() -> None:
        try:
            result.wait_until_finish()
        except BaseException as exc:  # reported by the launcher below
            failure.append(exc)

    waiter = threading.Thread(target=_wait, name="stream-wait", daemon=True)
    waiter.start()
    try:
        while waiter.is_alive() and not _quiet_and_done(run_id, config.max_idle_s, started, busy):
            time.sleep(0.2)
    finally:
        state = progress(run_id)
        with _LOCK:
            _PROGRESS.pop(run_id, None)
    if failure:
        raise failure[0]
    logger.info(
        "No notification for %.0f s and all %d rows written: ending the stream",
        config.max_idle_s,
        state["written"],
    )
    if wake is not None:
        wake()  # the runner's pull blocks up to 30 s on an empty subscription
    result.cancel()
    return result


def run(
    argv: Sequence[str] | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> PipelineResult:
    """Run the stream until it ends (``--max-idle-seconds``) or is interrupted.

    Args:
        argv: command-line arguments (the job's flags and Beam pipeline options).
        on_ready: called with the local setup (emulator, notifier) once it runs;
            tests use it to act on the emulator mid-stream.

    Raises:
        ConfigError, ModelLoadError: for bad flags or model.
        pubsub_emulator.EmulatorNotFound: without ``--subscription`` when the
            emulator is not installed.
    """
    config, pipeline_args = parse_args(argv)
    resolve(config.model)  # a bad model fails before anything starts
    if config.subscription:
        return _run_pipeline(config, pipeline_args, config.subscription)
    return _run_local(config, pipeline_args, on_ready)


@dataclass
class LocalSetup:
    """What the local default started: the emulator and the notifier feeding it."""

    emulator: Any
    notifier: notifications.Notifier
    subscription: str
    ensure: Callable[[], str]


def _run_local(
    config: StreamConfig,
    pipeline_args: Sequence[str],
    on_ready: Callable[[LocalSetup], None] | None,
) -> PipelineResult:
    from beam_jobs import pubsub_emulator

    assert config.watch is not None
    bucket = bucket_events.watched_bucket(config.watch)
    with pubsub_emulator.PubSubEmulator() as emulator:
        previous = os.environ.get(pubsub_emulator.HOST_ENV)
        os.environ[pubsub_emulator.HOST_ENV] = emulator.host

        def ensure() -> str:
            return pubsub_emulator.ensure_topic_and_subscription(
                config.project, DEFAULT_TOPIC, DEFAULT_SUBSCRIPTION
            )

        try:
            subscription = ensure()
            topic = f"projects/{config.project}/topics/{DEFAULT_TOPIC}"
            notifier = notifications.Notifier(
                bucket,
                notifications.Publisher(topic, ensure=ensure),
                heartbeat=(b"", {TICK_ATTRIBUTE: "1"}),
            ).start()
            logger.info(
                "Watching %s; notifications on %s (emulator %s); results under %s",
                bucket.list_uri,
                subscription,
                emulator.host,
                config.output,
            )
            try:
                if on_ready is not None:
                    on_ready(LocalSetup(emulator, notifier, subscription, ensure))
                return _run_pipeline(
                    config,
                    pipeline_args,
                    subscription,
                    wake=lambda: notifier.publisher.publish(b"", {TICK_ATTRIBUTE: "stop"}),
                )
            finally:
                notifier.stop()
        finally:
            if previous is None:
                os.environ.pop(pubsub_emulator.HOST_ENV, None)
            else:
                os.environ[pubsub_emulator.HOST_ENV] = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m beam_jobs.stream``); returns the exit status."""
    from beam_jobs.pubsub_emulator import EmulatorFailed, EmulatorNotFound

    configure_logging()

    def _interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)  # so the emulator is stopped too
    try:
        run(argv)
    except (ConfigError, ModelLoadError, EmulatorNotFound, EmulatorFailed) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    # Run the importable module, not __main__: Beam pickles __main__'s functions by
    # value, and the stages must share this module's progress registry.
    from beam_jobs import stream

    sys.exit(stream.main())
