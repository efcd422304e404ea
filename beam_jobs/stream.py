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
windows of ``--window-seconds`` -> the batch job's ``ScoreInputs`` (RunInference,
batched across elements for at most ``--max-batch-seconds``; large inputs and
slides tiled, their heatmaps under ``<output>/heatmaps/``) -> windowed
``<output>/results/part-<window start>-<window end>-...jsonl``, ``<output>/errors/...``
and ``<output>/tiles/...``, the batch job's row schemas. Every notification for
an image or slide ends as one result row or one error row.

Model refresh: with a model root, the handler looks for a newer complete
version (metadata written last) every ``--model-poll-seconds`` and swaps it in
without stopping; each row names the version that scored it (see
:class:`RefreshingModelHandler` for why not RunInference's side-input refresh).

The model, image-limit and batching flags are the batch jobs' own
(``beam_jobs.score.add_model_flags`` into :class:`beam_jobs.config.ScoringOptions`),
with a minimum batch of one image: ``--max-batch-seconds`` bounds the wait.

Locally (``--max-idle-seconds``) the stream ends itself: the DirectRunner cannot
be stopped from inside the graph, so the stages report when they last received
a notification, how many they received and how many rows they owe and have
written, and the launcher cancels the run once it is quiet, owes nothing and has
received every notification the local notifier published (:class:`IdleRule`).
It then writes ``<output>/stream-summary.json`` (:class:`histo_common.layout.StreamSummary`:
notifications, results, errors, rows per model version, rows per window).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
from beam_jobs.config import ConfigError, ScoringOptions
from beam_jobs.model_handler import METRICS_NAMESPACE, HistoModelHandler, shared
from beam_jobs.score import add_model_flags, configure_logging, options_from_args, prepare_output
from beam_jobs.slides import TILES, slide_job
from beam_jobs.stages import CheckedImage
from beam_jobs.transforms import ERRORS, ScoreInputs
from histo_common import bucket_events, storage
from histo_common.layout import RunLayout, StreamSummary, StreamWindow
from histo_common.results import ErrorRow, utc_now
from model_export.identity import ModelIdentity, ModelLoadError, resolve, resolve_version
from model_export.scoring import score_batch

logger = logging.getLogger(__name__)

LOCAL_RUNNER = "BundleBasedDirectRunner"  # runs ReadFromPubSub; needs no download
DEFAULT_WINDOW_S = 10
DEFAULT_MODEL_POLL_S = 60.0
DEFAULT_MAX_BATCH_S = 1.0
DEFAULT_MIN_BATCH = (
    1  # a trickle of uploads never waits for a batch to fill (see --max-batch-seconds)
)
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
    """The streaming job's options, validated.

    ``options`` are the batch jobs' model, image-limit and batching options
    (:class:`beam_jobs.config.ScoringOptions`, from the same flags); the stream
    needs ``--model`` (it follows the root's new versions itself), so
    ``--model-endpoint`` is refused, and ``--overwrite`` clears earlier rows
    under ``--output`` at start (without it a stream adds to them).
    """

    output: str
    options: ScoringOptions = field(default_factory=ScoringOptions)
    subscription: str | None = None
    watch: str | None = None
    local_bucket_root: str | None = None
    window_s: int = DEFAULT_WINDOW_S
    model_poll_s: float = DEFAULT_MODEL_POLL_S
    max_idle_s: float | None = None
    max_batch_s: float = DEFAULT_MAX_BATCH_S
    dedupe_s: int = DEFAULT_DEDUPE_S
    project: str = DEFAULT_PROJECT

    def __post_init__(self) -> None:
        if not self.options.model:
            raise ConfigError(
                "--model is required: a model root (new versions are followed) or a version"
            )
        if self.options.model_endpoint:
            raise ConfigError(
                "--model-endpoint is for the batch jobs; the stream scores with --model"
            )
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
            ("--dedupe-seconds", self.dedupe_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.max_idle_s is not None and self.max_idle_s <= 0:
            raise ConfigError(f"--max-idle-seconds must be > 0, got {self.max_idle_s}")

    @property
    def model(self) -> str:
        """The model root or version URI (``--model``)."""
        return self.options.model or ""

    @property
    def source(self) -> str:
        """Where notifications come from: the subscription, or the watched folder."""
        return self.subscription or f"watch:{self.watch}"

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
            _note(self.run_id, "received")
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
        return bucket_events.skip_reason(note.name) or "a hidden file"
    return None


# ----------------------------------------------------------- ending a local stream

# The DirectRunner cannot be stopped from inside the graph, and a stream never
# finishes by itself. With --max-idle-seconds the pipeline reports, per run, when
# it last received a notification, how many notifications it received, how many
# rows it owes and has written (by window and model version, for the summary);
# the launcher cancels the run once it is quiet, owes nothing and has received
# every notification the local notifier published.
_LOCK = threading.Lock()
_PROGRESS: dict[str, dict[str, Any]] = {}


def _fresh_progress() -> dict[str, Any]:
    return {"owed": 0, "written": 0, "received": 0, "windows": {}, "versions": Counter()}


def _note(run_id: str, key: str, amount: float = 1.0) -> None:
    with _LOCK:
        progress = _PROGRESS.setdefault(run_id, _fresh_progress())
        if key == "last_seen":
            progress[key] = amount
        else:
            progress[key] = progress.get(key, 0) + amount


def _note_rows(run_id: str, kind: str, window: tuple[str, str], versions: Counter[str]) -> None:
    with _LOCK:
        progress = _PROGRESS.setdefault(run_id, _fresh_progress())
        counts = progress["windows"].setdefault(window, {RESULTS_DIR: 0, ERRORS_DIR: 0})
        counts[kind] += sum(versions.values())
        if kind == RESULTS_DIR:
            progress["versions"].update(versions)


def progress(run_id: str) -> dict[str, Any]:
    """What a local run has received and written so far (a copy)."""
    with _LOCK:
        return copy.deepcopy(_PROGRESS.get(run_id, _fresh_progress()))


def window_of_file(file_name: str) -> tuple[str, str]:
    """``(start, end)`` of the window a row file was written for (its name says it)."""
    parts = file_name.split("-")
    return parts[1], parts[2]


class _CountWritten(beam.DoFn):
    """Count the rows of each window file once it is written (local runs only)."""

    def __init__(self, run_id: str, folder: str, kind: str) -> None:
        self.run_id = run_id
        self.folder = folder
        self.kind = kind

    def process(self, written: Any) -> Iterator[str]:
        uri = files.join(self.folder, written.file_name)
        lines = [line for line in files.read_file(uri).decode("utf-8").splitlines() if line]
        if self.kind == RESULTS_DIR:
            rows = (json.loads(line) for line in lines)
            versions = Counter(f"{r['model_name']}/{r['model_version']}" for r in rows)
        else:
            versions = Counter({"": len(lines)})
        _note_rows(self.run_id, self.kind, window_of_file(written.file_name), versions)
        _note(self.run_id, "written", len(lines))
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
        """Load the latest version and follow the root; one per process, for every step.

        The patch and tile steps share it, so they load once and switch together.
        """
        key = ("refreshing", self.model_uri, self.poll_s, self.refresh)
        return shared(key, lambda: RefreshingModel(self.model_uri, self.poll_s, self.refresh))

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


class NotificationsToObjects(beam.PTransform):
    """Pub/Sub messages -> windowed ``MatchedFile`` (``objects``) and error rows (``errors``).

    Parses each notification (ignoring what is not an image to score), drops
    duplicates per object generation for ``dedupe_s`` and puts both outputs in
    fixed windows of ``window_s`` (arrival time), fired when the watermark
    passes a window's end and again for late data.

    Args:
        config: the stream's options (output, local bucket root, window, dedupe).
        subscription: named in the error rows of messages that are no notifications.
        run_id: set for local runs that end when idle (see :func:`progress`).
    """

    def __init__(self, config: StreamConfig, subscription: str, run_id: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.subscription = subscription
        self.run_id = run_id

    def expand(self, messages: beam.PCollection) -> dict[str, beam.PCollection]:
        """Parse, deduplicate and window; return ``objects`` and ``errors``."""
        config = self.config
        parsed = messages | "ParseNotifications" >> beam.ParDo(
            _ParseNotification(
                config.local_bucket_root, config.output, self.subscription, self.run_id
            )
        ).with_outputs(ERRORS, IGNORED, main="objects")
        objects = (
            parsed.objects
            | "DropDuplicates" >> DeduplicatePerKey(event_time_duration=Duration(config.dedupe_s))
            | "Objects" >> beam.Values()
        )
        return {
            "objects": objects | "FixedWindows" >> fixed_windows(config.window_s),
            ERRORS: parsed[ERRORS] | "WindowBadMessages" >> fixed_windows(config.window_s),
        }


def fixed_windows(window_s: int) -> beam.WindowInto:
    """Fixed windows of ``window_s``, fired at the watermark and again for late rows."""
    return beam.WindowInto(
        window.FixedWindows(window_s),
        trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
        accumulation_mode=trigger.AccumulationMode.DISCARDING,
        allowed_lateness=Duration(window_s * 6),
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
    options = config.options
    handler = RefreshingModelHandler(
        config.model,
        poll_s=config.model_poll_s,
        refresh=config.refresh,
        max_batch_duration_s=config.max_batch_s,
        identity=identity,
        min_batch_size=options.min_batch_size,
        max_batch_size=options.max_batch_size,
        large_model=options.large_model,
    )
    notes = (
        pipeline
        | "ReadNotifications"
        >> beam.io.ReadFromPubSub(subscription=subscription, with_attributes=True)
        | "Notifications" >> NotificationsToObjects(config, subscription, run_id)
    )
    objects, bad_messages = notes["objects"], notes[ERRORS]
    if run_id is not None:
        objects = objects | "OweRows" >> beam.Map(_owe_one, run_id)
        bad_messages = bad_messages | "OweErrorRows" >> beam.Map(_owe_one, run_id)
    # The batch job's scoring: large inputs are tiled (tile rows per window, a heatmap each).
    slides = slide_job(
        identity,
        has_metadata=True,
        output=config.output,
        base=config.watch or "",
        max_pixels=options.max_pixels,
        max_bytes=options.max_bytes,
    )
    scored = objects | "ScoreInputs" >> ScoreInputs(
        handler, identity, options.max_pixels, options.max_bytes, slides
    )
    errors = (bad_messages, scored[ERRORS]) | "AllErrors" >> beam.Flatten()
    for name, rows in (("Results", scored["results"]), ("Errors", errors)):
        kind = RESULTS_DIR if name == "Results" else ERRORS_DIR
        folder = files.join(config.output, kind)
        written = rows | f"Write{name}" >> WriteWindowedRows(folder)
        if run_id is not None:
            _ = written | f"Count{name}Written" >> beam.ParDo(_CountWritten(run_id, folder, kind))
    if TILES in scored:
        folder = files.join(config.output, RunLayout.TILES)
        _ = (
            scored[TILES]
            | "TileRows" >> beam.FlatMap(lambda rows: rows)  # lists of rows, per slide
            | "WriteTiles" >> WriteWindowedRows(folder)
        )
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
    add_model_flags(parser)  # the batch jobs' model, image-limit and batching flags
    parser.set_defaults(min_batch_size=DEFAULT_MIN_BATCH)
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
        "--dedupe-seconds",
        type=int,
        default=DEFAULT_DEDUPE_S,
        help="how long an object generation is remembered to drop duplicates",
    )
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
        options=options_from_args(args),
        subscription=args.subscription,
        watch=args.watch,
        local_bucket_root=local_root,
        window_s=args.window_seconds,
        model_poll_s=args.model_poll_seconds,
        max_idle_s=args.max_idle_seconds,
        max_batch_s=args.max_batch_seconds,
        dedupe_s=args.dedupe_seconds,
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


@dataclass(frozen=True)
class IdleRule:
    """When a local run (``--max-idle-seconds``) may end.

    Quiet for ``max_idle_s``, every row owed written, the notifier idle, and
    every notification it published received by the pipeline: a message still
    in the subscription (a runner slow to reconnect after the emulator came
    back, say) is waited for, up to ``give_up_s`` of quiet; past that the run
    ends and the summary counts what never arrived.
    """

    max_idle_s: float
    busy: Callable[[], bool] | None = None  # the notifier has files still to announce
    published: Callable[[], int] | None = None  # notifications the notifier published

    @property
    def give_up_s(self) -> float:
        """Quiet seconds after which unreceived notifications are given up on.

        Generous: on a loaded machine the local runner was seen to go more than a
        minute without pulling; a real loss still ends the run, and is counted.
        """
        return max(10 * self.max_idle_s, self.max_idle_s + 300)

    def done(self, run_id: str, started: float) -> bool:
        """True once the run may end."""
        if self.busy is not None and self.busy():
            _note(run_id, "last_seen", time.monotonic())
            return False
        state = progress(run_id)
        idle = time.monotonic() - state.get("last_seen", started)
        if idle < self.max_idle_s or state["written"] < state["owed"]:
            return False
        missing = self.unreceived(state)
        if missing and idle < self.give_up_s:
            return False
        if missing:
            logger.error(
                "%d published notifications never reached the pipeline in %.0f s: ending",
                missing,
                idle,
            )
        return True

    def unreceived(self, state: dict[str, Any]) -> int:
        """Notifications published locally that the pipeline has not received."""
        if self.published is None:
            return 0
        return max(0, self.published() - int(state["received"]))


def stream_summary(
    config: StreamConfig, state: dict[str, Any], started_at: str, elapsed_s: float, unreceived: int
) -> StreamSummary:
    """What a bounded run scored, from the progress its stages reported."""
    windows = [
        StreamWindow(start, end, counts[RESULTS_DIR], counts[ERRORS_DIR])
        for (start, end), counts in sorted(state["windows"].items())
    ]
    return StreamSummary(
        output=config.output,
        source=config.source,
        model=config.model,
        notifications=int(state["received"]),
        results=sum(w.results for w in windows),
        errors=sum(w.errors for w in windows),
        model_versions=dict(sorted(state["versions"].items())),
        windows=windows,
        started_at=started_at,
        finished_at=utc_now(),
        elapsed_s=round(elapsed_s, 3),
        unreceived=unreceived,
    )


def _run_pipeline(
    config: StreamConfig,
    pipeline_args: Sequence[str],
    subscription: str,
    wake: Callable[[], Any] | None = None,
    rule: IdleRule | None = None,
) -> PipelineResult:
    if config.max_idle_s is None:
        result = build_pipeline(config, pipeline_args, subscription).run()
        result.wait_until_finish()
        return result
    rule = rule or IdleRule(config.max_idle_s)
    run_id = f"stream-{os.getpid()}-{time.monotonic_ns()}"
    started_at = utc_now()
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
        while waiter.is_alive() and not rule.done(run_id, started):
            time.sleep(0.2)
    finally:
        state = progress(run_id)
        with _LOCK:
            _PROGRESS.pop(run_id, None)
    if failure:
        raise failure[0]
    document = stream_summary(
        config, state, started_at, time.monotonic() - started, rule.unreceived(state)
    )
    uri = RunLayout(config.output).stream_summary
    files.write_text(uri, document.to_json(), mime_type="application/json")
    logger.info(
        "No notification for %.0f s and all %d rows written: ending the stream "
        "(%d results, %d errors, versions %s; summary at %s)",
        config.max_idle_s,
        state["written"],
        document.results,
        document.errors,
        document.model_versions,
        uri,
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
    # A stream has no "before scoring" to clear the old run's images in: its launcher does.
    if config.options.overwrite and prepare_output(config.output, overwrite=True):
        for pattern in RunLayout(config.output).per_input_images():
            files.delete_matching(pattern)
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
                    wake=lambda: notifier.publisher.publish(
                        b"", {TICK_ATTRIBUTE: "stop"}, counted=False
                    ),
                    rule=IdleRule(
                        config.max_idle_s or 0.0,
                        busy=notifier.busy,
                        published=lambda: notifier.publisher.published,
                    ),
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
