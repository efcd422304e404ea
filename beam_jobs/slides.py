"""Beam fans a slide out: tile regions spread over workers, grouped back per slide.

:class:`ScoreSlides` takes the inputs :class:`beam_jobs.transforms.ReadImages`
routed here (whole-slide formats, TIFFs, and plain images larger than the
tiling rule's whole size) and gives one result row (with the slide fields) or
one error row per input, plus its tile rows and heatmap::

    slide URIs -> PlanSlides (one worker opens the slide, applies the tiling rule and
                  the tissue mask: a header + one work item per ``batch_size``
                  neighbouring tissue tiles, row-major)
      tiles   -> Reshuffle (one slide's work items spread over workers)
              -> RunInference(TileModelHandler): each worker reads a work item's
                 regions through its own SlidePool and scores them in one call
                 (pixel signature)
              -> (uri, [(region, tile outcome)]) per work item, with the header
      slide   -> AssembleSlides (stateful: finishes a slide once all its tiles are in):
                 the slide rule -> ResultRow, TileRow's, heatmap PNG

The caller writes the tile rows (the batch job as files, the stream per
window). Memory per worker stays bounded whatever the slide's size: no slide is
read whole (regions only, through OpenSlide), tile pixels never leave the DoFn
that read them, and the state per slide holds only positions and probabilities. A
patch-sized TIFF planned ``whole`` goes back to the patch path (``whole``
output) and is scored exactly as before. Every routed input ends as exactly one
row: a slide that cannot be opened, whose tiles cannot be read, or that the
model refuses is one error row with the reason.

With ``--model-endpoint`` (TensorFlow Serving) tiles are PNG-encoded and sent to
the bytes signature (:func:`model_export.slide_scoring.tile_outputs`): same
scores, slower than the in-process pixel signature. Without ``--model`` there is
no metadata, hence no training scale: every input is scored whole, as before.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder, VarIntCoder
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)

from beam_jobs import files, stages
from beam_jobs.model_handler import METRICS_NAMESPACE, current_model
from histo_common.errors import one_line
from histo_common.layout import ROW_FORMATS, RunLayout
from histo_common.results import ErrorRow, ResultRow, TileRow
from histo_common.samples import encode_png
from histo_common.slides import SlideError, SlidePool, open_slide, reader_only_png
from histo_common.tiling import TilePlan, TileRegion, read_tiles
from model_export import contract
from model_export.identity import ModelIdentity, ModelLoadError
from model_export.slide_scoring import (
    SlideSettings,
    plan_input,
    slide_heatmap_png,
    summarise,
    tile_outputs,
    tile_rows,
)

logger = logging.getLogger(__name__)

ERRORS = "errors"
WHOLE = "whole"
TILES = "tiles"
# Tile rows leave the assembly in lists of this many: a slide has 10^4 to 10^5 tiles,
# and one element per row paid the runner's cost per element for each (about 2 s
# of a 64,000-tile slide's writing).
TILE_ROWS_PER_ELEMENT = 1_000
HEADERS = "headers"
DEFAULT_OPEN_SLIDES = 4


@dataclass(frozen=True)
class SlideJob:
    """What the Beam job needs to tile inputs: the settings and where outputs go.

    Attributes:
        settings: the model's scale and slide rule (from its metadata) and the job's choices.
        output: the run's output folder (heatmaps; the caller writes the tile rows,
            as files (:class:`WriteTiles`) or, in a stream, per window).
        base: the folder holding every input; heatmap names are paths under it.
    """

    settings: SlideSettings
    output: str
    base: str


def slide_job(
    identity: ModelIdentity,
    *,
    has_metadata: bool,
    output: str,
    base: str,
    **settings: Any,
) -> SlideJob | None:
    """The slide part of a scoring job, or None when inputs cannot be tiled.

    Args:
        identity: the pinned model version (its metadata gives the training scale).
        has_metadata: False when the model is known only as TF Serving serves it
            (no metadata, no training scale: every input is scored whole, as before).
        output: the run's output folder.
        base: the folder holding every input.
        settings: :class:`SlideSettings` overrides (``stride``, ``batch_size``, ...).
    """
    if not has_metadata:
        return None
    from model_export.identity import read_metadata

    metadata = read_metadata(identity.uri)
    if metadata.training_scale() is None:
        return None
    return SlideJob(
        settings=SlideSettings.from_metadata(metadata, **settings),
        output=output,
        base=base,
    )


class TileWork(NamedTuple):
    """Tiles to score in one model call: the input's URI and neighbouring regions.

    A work item holds a batch of tiles rather than one, so that the runner's cost
    per element (shuffling, batching, bookkeeping) is paid once per model call,
    not once per tile: a slide of 10^5 tiles is still some 800 items to spread.
    """

    uri: str
    regions: tuple[TileRegion, ...]


class TileOutcome(NamedTuple):
    """A scored tile: its probability (and the model version that gave it), or why not.

    ``version`` and ``model_uri`` are set when the model can change while a job
    runs (the stream's refreshing model): a slide is judged with the version that
    scored its tiles.
    """

    probability: float | None
    error: str | None = None
    version: int | None = None
    model_uri: str | None = None


class SlideHeader(NamedTuple):
    """What the grouping step needs of a planned slide (no tiles, no pixels)."""

    uri: str
    plan: dict[str, Any]  # TilePlan.to_dict() without its tiles
    tissue_tiles: int
    thumbnail_png: bytes
    thumbnail_downsample: float


# ------------------------------------------------------------------ planning


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


class _PlanSlide(beam.DoFn):
    """Open a slide, plan it; emit its header and tile work items (or its route/error)."""

    def __init__(self, settings: SlideSettings) -> None:
        self.settings = settings
        self.planned = Metrics.counter(METRICS_NAMESPACE, "slides_planned")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "images_failed")
        self.tiles = Metrics.counter(METRICS_NAMESPACE, "tiles_planned")

    def process(self, matched: files.MatchedFile) -> Iterator[Any]:
        uri = matched.uri
        whole: bytes | None = None
        try:
            with open_slide(uri, max_pixels=self.settings.max_pixels) as slide:
                plan = plan_input(slide, self.settings)
                if plan.is_tiled:
                    thumbnail, downsample = slide.thumbnail()
                else:
                    whole = reader_only_png(slide)
        except SlideError as exc:
            yield self._error(ErrorRow.build(uri, str(exc), "read"))
            return
        except Exception as exc:  # an unexpected reader failure is this slide's, not the job's
            yield self._error(ErrorRow.build(uri, f"cannot read slide: {one_line(exc)}", "read"))
            return
        for warning in plan.warnings:
            logger.warning(warning)
        if not plan.is_tiled:
            yield from self._whole(matched, whole)
            return
        self.planned.inc()
        self.tiles.inc(len(plan.tiles))
        logger.info(
            "Planned %s: %d tissue tiles of %d (%s)",
            uri,
            len(plan.tiles),
            plan.grid[0] * plan.grid[1],
            plan.scale,
        )
        yield beam.pvalue.TaggedOutput(
            HEADERS,
            (
                uri,
                SlideHeader(
                    uri,
                    plan.with_tiles(()).to_dict(),
                    len(plan.tiles),
                    encode_png(thumbnail),
                    float(downsample),
                ),
            ),
        )
        size = self.settings.batch_size
        for start in range(0, len(plan.tiles), size):
            yield TileWork(uri, tuple(plan.tiles[start : start + size]))

    def _whole(self, matched: files.MatchedFile, data: bytes | None) -> Iterator[Any]:
        """A patch-sized input goes back to the patch path: read and checked as always.

        ``data``: its pixels as PNG when only the slide reader decodes the file (DICOM...).
        """
        row = None if data else stages.too_large(matched.uri, matched.size, self.settings.max_bytes)
        if row is None:
            try:
                if data is None:
                    data = files.read_file(matched.uri)
            except Exception as exc:  # any storage failure is this file's error
                row = ErrorRow.build(matched.uri, f"cannot read: {one_line(exc)}", "read")
            else:
                checked = stages.check_image(
                    matched.uri,
                    data,
                    max_pixels=self.settings.max_pixels,
                    max_bytes=self.settings.max_bytes,
                )
                if isinstance(checked, stages.CheckedImage):
                    yield beam.pvalue.TaggedOutput(WHOLE, checked)
                    return
                row = checked
        yield self._error(row)

    def _error(self, row: ErrorRow) -> Any:
        self.failed.inc()
        logger.warning("Skipping %s: %s", row.uri, row.reason)
        return beam.pvalue.TaggedOutput(ERRORS, row)


# ------------------------------------------------------------------ scoring tiles


class TileScorer:
    """A worker's model and its open slides: what the tile handler's ``load_model`` gives."""

    def __init__(self, model: Any, pool: SlidePool) -> None:
        self.model = model
        self.pool = pool

    def score(self, batch: Sequence[TileWork]) -> list[list[TileOutcome]]:
        """Read and score work items (of one or several slides) in one model call.

        Returns each item's outcomes, one per region, in order. A slide or region
        that cannot be read gives its item's tiles outcomes with the reason; a
        failing model raises (the runner retries the bundle).
        """
        outcomes: list[list[TileOutcome]] = [[] for _ in batch]
        readable: list[int] = []
        pixels: list[np.ndarray] = []
        for i, work in enumerate(batch):
            try:
                pixels.append(read_tiles(self.pool.get(work.uri), work.regions))
            except SlideError as exc:
                outcomes[i] = [TileOutcome(None, str(exc))] * len(work.regions)
                continue
            readable.append(i)
        if readable:
            # The stream's model follows new versions: one version scores the whole batch.
            model = current_model(self.model)
            version, model_uri = getattr(model, "version", None), getattr(model, "uri", None)
            stacked = np.concatenate(pixels)
            probs = iter(tile_outputs(model, contract.PREDICT_SIGNATURE, stacked)["probability"])
            for i in readable:
                outcomes[i] = [
                    TileOutcome(float(next(probs)), None, version, model_uri)
                    for _region in batch[i].regions
                ]
        return outcomes


class TileModelHandler(ModelHandler[TileWork, PredictionResult, TileScorer]):
    """RunInference over tile work items, wrapping the job's model handler.

    The wrapped handler (``HistoModelHandler`` for a local SavedModel, or
    ``ServingModelHandler`` for TF Serving, or the stream's refreshing one) loads
    the model; this one adds a per-worker :class:`SlidePool` and reads each
    batch's regions before one model call.
    """

    def __init__(self, inner: Any, max_open: int = DEFAULT_OPEN_SLIDES, **open_kwargs: Any) -> None:
        # A work item is already a batch of tiles (the slide settings' batch_size): one
        # item per model call.
        super().__init__(
            min_batch_size=1,
            max_batch_size=1,
            large_model=bool(getattr(inner, "_large_model", False)),
        )
        self.inner = inner
        self.max_open = max_open
        self.open_kwargs = open_kwargs

    def load_model(self) -> TileScorer:
        """The wrapped handler's model and a pool of open slides (one per worker process)."""
        return TileScorer(self.inner.load_model(), SlidePool(self.max_open, **self.open_kwargs))

    def run_inference(
        self,
        batch: Sequence[TileWork],
        model: TileScorer,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Score one batch of work items; one result per item: its tiles' outcomes, in order."""
        return [
            PredictionResult(work, outcome)
            for work, outcome in zip(batch, model.score(batch), strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[TileWork]) -> int:
        """Pixels read for the batch (Beam's ``num_bytes`` metric)."""
        return sum(r.read_width * r.read_height * 3 for w in batch for r in w.regions)

    def get_metrics_namespace(self) -> str:
        """Namespace of RunInference's own metrics."""
        return METRICS_NAMESPACE


def _scored_tiles(result: PredictionResult) -> tuple[str, list[tuple[TileRegion, TileOutcome]]]:
    """(uri, [(region, outcome), ...]) of a work item: positions and probabilities, no pixels."""
    work = cast(TileWork, result.example)  # PredictionResult's fields are generic
    outcomes = cast(list[TileOutcome], result.inference)
    return work.uri, list(zip(work.regions, outcomes, strict=True))


# ------------------------------------------------------------------ per slide


# What _AssembleSlide keeps per slide (module-level: Beam reads them off the signatures).
_HEADER = ReadModifyWriteStateSpec("header", PickleCoder())
_OUTCOMES = BagStateSpec("outcomes", PickleCoder())
_COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
_EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
_HEADER_STATE = beam.DoFn.StateParam(_HEADER)
_OUTCOME_STATE = beam.DoFn.StateParam(_OUTCOMES)
_COUNT_STATE = beam.DoFn.StateParam(_COUNT)
_EXPIRY_TIMER = beam.DoFn.TimerParam(_EXPIRY)


class _AssembleSlide(beam.DoFn):
    """A slide's header and tile outcomes (keyed by URI) -> its row, tile rows and heatmap.

    A stateful step rather than a grouping, so that it works the same in the
    batch job and the stream: what has arrived of each slide is kept per slide
    (and window), and the slide is finished as soon as its header and all its
    tiles are in. A grouping would fire per window pane, and in a stream a late
    slide's header and tiles can fall into different panes. If tiles go missing,
    a timer at the window's end turns the slide into one error row.

    Tiles scored by a model version other than the job's (the stream follows new
    versions) are judged with that version's threshold; a slide whose tiles were
    scored by two versions is an error row (a version switch mid-slide, rare).
    """

    def __init__(self, job: SlideJob, identity: ModelIdentity) -> None:
        self.job = job
        self.identity = identity
        self.scored = Metrics.counter(METRICS_NAMESPACE, "slides_scored")
        self.tiles = Metrics.counter(METRICS_NAMESPACE, "tiles_scored")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "images_failed")
        self.heatmaps = Metrics.counter(METRICS_NAMESPACE, "heatmaps_written")
        self.heatmaps_failed = Metrics.counter(METRICS_NAMESPACE, "heatmaps_failed")
        self._versions: dict[str, tuple[ModelIdentity, SlideSettings]] = {}

    def process(
        self,
        element: tuple[str, Any],
        window_: Any = beam.DoFn.WindowParam,
        header_state: Any = _HEADER_STATE,
        outcome_state: Any = _OUTCOME_STATE,
        count_state: Any = _COUNT_STATE,
        expiry: Any = _EXPIRY_TIMER,
    ) -> Iterator[Any]:
        uri, item = element
        count = count_state.read() or 0
        if isinstance(item, SlideHeader):
            header = item
            header_state.write(header)
            expiry.set(window_.max_timestamp())
        else:
            header = header_state.read()
            outcome_state.add(item)  # a work item's tiles
            count += len(item)
            count_state.write(count)
        if header is None or count < header.tissue_tiles:
            return
        outcomes = [outcome for chunk in outcome_state.read() for outcome in chunk]
        for state in (header_state, outcome_state, count_state):
            state.clear()
        yield from self._finish(uri, header, outcomes)

    @on_timer(_EXPIRY)
    def expire(
        self,
        key: Any = beam.DoFn.KeyParam,
        header_state: Any = _HEADER_STATE,
        count_state: Any = _COUNT_STATE,
    ) -> Iterator[Any]:
        """The window ends with the slide incomplete: one error row, not a lost input."""
        header = header_state.read()
        if header is None:  # finished (state cleared) or never planned
            return
        self.failed.inc()
        missing = header.tissue_tiles - (count_state.read() or 0)
        logger.warning("Could not score slide %s: %d tiles went missing", key, missing)
        yield beam.pvalue.TaggedOutput(
            ERRORS, ErrorRow.build(key, f"{missing} tiles went missing", "score")
        )

    def _finish(
        self, uri: str, header: SlideHeader, outcomes: list[tuple[TileRegion, TileOutcome]]
    ) -> Iterator[Any]:
        outcomes.sort(key=lambda t: (t[0].y, t[0].x))  # row-major
        failed = [o for _r, o in outcomes if o.probability is None]
        if failed:
            yield self._error(uri, f"{len(failed)} tiles unreadable: {failed[0].error}", "read")
            return
        try:
            identity, settings = self._scored_by(outcomes)
        except (ValueError, ModelLoadError) as exc:
            yield self._error(uri, str(exc), "score")
            return
        template = TilePlan.from_dict(header.plan)
        regions = [r for r, _o in outcomes]
        plan = template.with_tiles(regions)
        probabilities = [float(o.probability or 0.0) for _r, o in outcomes]
        summary = summarise(plan, probabilities, settings)
        width, height = plan.geometry.dimensions
        self.scored.inc()
        self.tiles.inc(len(regions))
        yield ResultRow.for_slide(
            uri,
            summary,
            model_name=identity.name,
            model_version=identity.version,
            width=width,
            height=height,
        )
        rows = tile_rows(uri, regions, probabilities, identity)
        for start in range(0, len(rows), TILE_ROWS_PER_ELEMENT):
            yield beam.pvalue.TaggedOutput(TILES, rows[start : start + TILE_ROWS_PER_ELEMENT])
        target = RunLayout(self.job.output).heatmap(uri, self.job.base)
        try:
            png = slide_heatmap_png(
                uri, _unpng(header.thumbnail_png), header.thumbnail_downsample, rows, summary
            )
            files.write_file(target, png, mime_type="image/png")
        except Exception as exc:  # a heatmap is a by-product: never lose the row for it
            self.heatmaps_failed.inc()
            logger.warning("Could not write the heatmap of %s: %s", uri, one_line(exc))
            return
        self.heatmaps.inc()

    def _scored_by(
        self, outcomes: list[tuple[TileRegion, TileOutcome]]
    ) -> tuple[ModelIdentity, SlideSettings]:
        """The model version that scored the tiles, and the settings to judge them by.

        Raises:
            ValueError: two versions scored the tiles, or the new version's scale differs.
            ModelLoadError: the new version's metadata cannot be read.
        """
        used = {(o.version, o.model_uri) for _r, o in outcomes if o.version is not None}
        if {v for v, _u in used} <= {self.identity.version}:
            return self.identity, self.job.settings
        if len(used) > 1:
            versions = ", ".join(sorted({str(v) for v, _u in used}))
            raise ValueError(
                f"the model changed while its tiles were scored (versions {versions}); "
                "score it again to use one version"
            )
        ((version, model_uri),) = used
        assert model_uri is not None  # set together with the version
        if model_uri not in self._versions:
            from model_export.identity import read_metadata

            metadata = read_metadata(model_uri)
            settings = self.job.settings.judged_by(metadata)
            identity = ModelIdentity(name=metadata.model_name, version=version, uri=model_uri)
            self._versions[model_uri] = (identity, settings)
        return self._versions[model_uri]

    def _error(self, uri: str, reason: str, stage: str) -> Any:
        self.failed.inc()
        logger.warning("Could not score slide %s: %s", uri, reason)
        return beam.pvalue.TaggedOutput(ERRORS, ErrorRow.build(uri, reason, stage))


class ScoreSlides(beam.PTransform):
    """Slide inputs (``MatchedFile``) -> ``results``, ``errors``, ``tiles`` and ``whole``.

    ``whole`` holds the ``CheckedImage`` of inputs the tiling rule scores whole
    (for the patch path); heatmaps are written under ``<output>/heatmaps/``;
    ``tiles`` are the tile rows in lists of up to :data:`TILE_ROWS_PER_ELEMENT`
    (one slide's each), for the caller to write (see the module docstring).

    Args:
        job: the slide settings and outputs (:func:`slide_job`).
        handler: the job's model handler (local or TF Serving), wrapped per tile batch.
        identity: the model identity stamped on the rows.
    """

    def __init__(self, job: SlideJob, handler: Any, identity: ModelIdentity) -> None:
        super().__init__()
        self.job = job
        self.handler = handler
        self.identity = identity

    def expand(self, slides: beam.PCollection) -> dict[str, beam.PCollection]:
        """Plan, fan out, score, assemble per slide; return the rows."""
        planned = slides | "PlanSlides" >> beam.ParDo(_PlanSlide(self.job.settings)).with_outputs(
            HEADERS, WHOLE, ERRORS, main=TILES
        )
        handler = TileModelHandler(self.handler, max_pixels=self.job.settings.max_pixels)
        scored_tiles = (
            planned[TILES]
            | "SpreadTiles" >> beam.Reshuffle()
            | "ScoreTiles" >> RunInference(handler)
            | "BySlide" >> beam.Map(_scored_tiles)
        )
        finished = (
            (planned[HEADERS], scored_tiles)
            | "HeadersAndTiles" >> beam.Flatten()
            | "AssembleSlides"
            >> beam.ParDo(_AssembleSlide(self.job, self.identity)).with_outputs(
                TILES, ERRORS, main="results"
            )
        )
        errors = (planned[ERRORS], finished[ERRORS]) | "SlideErrors" >> beam.Flatten()
        return {
            "results": finished.results,
            ERRORS: errors,
            TILES: finished[TILES],
            WHOLE: planned[WHOLE],
        }


class WriteTiles(beam.PTransform):
    """Lists of tile rows -> ``<output>/tiles/part-*.jsonl`` (+ ``.parquet``); none if empty."""

    def __init__(
        self, output: str, formats: tuple[str, ...] = ("jsonl",), num_shards: int = 0
    ) -> None:
        super().__init__()
        self.prefix = RunLayout(output).tiles_prefix
        self.formats = formats
        self.num_shards = num_shards

    def expand(self, rows: beam.PCollection) -> tuple[beam.PCollection, ...]:
        """Write the tile rows; a run without tiled inputs writes no tile file."""
        written = [
            rows
            | "TilesToJson" >> beam.Map(_json_lines)  # a list's lines as one element
            | "WriteTilesJsonl"
            >> beam.io.WriteToText(
                self.prefix,
                file_name_suffix=ROW_FORMATS["jsonl"],
                num_shards=self.num_shards,
                skip_if_empty=True,
            )
        ]
        if "parquet" in self.formats:
            # WriteToFiles, unlike WriteToParquet, writes no file for no rows.
            folder, name = self.prefix.rsplit("/", 1)
            written.append(
                rows
                | "WriteTilesParquet"
                >> fileio.WriteToFiles(
                    path=folder,
                    file_naming=fileio.default_file_naming(name, ROW_FORMATS["parquet"]),
                    sink=lambda _dest: _ParquetSink(),
                    shards=self.num_shards or None,
                )
            )
        return tuple(written)


def _json_lines(rows: list[TileRow]) -> str:
    """Rows as JSON lines, without the last newline (the text sink adds one per element)."""
    return "\n".join(row.to_json() for row in rows)


class _ParquetSink(fileio.FileSink):
    """Lists of tile rows into one Parquet file, a row group per ``ROW_GROUP`` rows."""

    ROW_GROUP = 50_000

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._writer: Any = None
        self._file: Any = None

    def open(self, fh: Any) -> None:
        """Start a Parquet file on Beam's file handle."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._file = pa.PythonFile(fh, mode="w")
        self._writer = pq.ParquetWriter(self._file, stages.tile_parquet_schema())
        self._rows = []

    def write(self, record: list[TileRow]) -> None:
        """Buffer a list of rows; write a row group when the buffer is full."""
        self._rows.extend(row.to_dict() for row in record)
        if len(self._rows) >= self.ROW_GROUP:
            self._write_group()

    def flush(self) -> None:
        """Write what is buffered and close the Parquet footer (Beam closes the handle)."""
        self._write_group()
        self._writer.close()

    def _write_group(self) -> None:
        import pyarrow as pa

        if self._rows:
            schema = stages.tile_parquet_schema()
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=schema))
            self._rows = []
