"""The reusable Beam stages of the scoring and evaluation jobs.

``ScoreInputs`` (matched files of any size -> rows: the composite both scoring
jobs use; slides go through :mod:`beam_jobs.slides`), ``ReadImages`` (matched
files -> checked images + error rows), ``ScoreImages`` (``RunInference`` ->
result rows + error rows [+ heatmaps]), ``WriteResults`` and ``WriteErrors``
(sharded JSON Lines, CSV, Parquet), ``ExplainTop`` (Grad-CAM for the N most
suspicious images), ``WriteOverlays`` (overlay PNGs) and ``ExplainErrors`` (the
evaluation gallery). Each is a composite ``PTransform``; the logic they run is in
:mod:`beam_jobs.stages`.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from typing import Any, cast

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from beam_jobs import files, stages
from beam_jobs.model_handler import METRICS_NAMESPACE
from beam_jobs.slides import ERRORS, TILES, WHOLE, ScoreSlides, SlideJob
from evaluation.outputs import LabelledScore
from evaluation.report import GalleryItem
from histo_common.errors import one_line
from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from histo_common.layout import ROW_FORMATS, RunLayout
from histo_common.overlay import load_rgb, overlay_png, upscale_for_display
from histo_common.results import ErrorRow, ResultRow
from histo_common.slides import TIFF_SUFFIXES, WSI_SUFFIXES, SlideGeometry
from histo_common.tiling import TrainingScale, plan_tiles
from model_export.contract import DEFAULT_POSITIVE_CLASS
from model_export.identity import ModelIdentity
from model_export.scoring import ScoreOutcome

logger = logging.getLogger(__name__)

EXPLAINED = "explained"
SLIDES = "slides"
# Inputs a model with a training scale always plans as slides (a TIFF may be a pyramid).
SLIDE_ROUTED_SUFFIXES = WSI_SUFFIXES + TIFF_SUFFIXES
PROGRESS_EVERY = 500


class _ReadAndCheck(beam.DoFn):
    """Read one matched file and check it; bad files go to the ``errors`` output.

    With a training scale, inputs to tile go to the ``slides`` output instead,
    unread: whole-slide formats and TIFFs (a TIFF may be a pyramid of any size),
    and plain images that the tiling rule does not score whole.
    """

    def __init__(self, max_pixels: int, max_bytes: int, scale: TrainingScale | None = None) -> None:
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.scale = scale
        self.images_read = Metrics.counter(METRICS_NAMESPACE, "images_read")
        self.bytes_read = Metrics.counter(METRICS_NAMESPACE, "bytes_read")
        self.images_failed = Metrics.counter(METRICS_NAMESPACE, "images_failed")
        self._seen = 0
        self._bytes = 0

    def process(self, matched: files.MatchedFile) -> Iterator[Any]:
        if self.scale is not None and (
            matched.series or matched.uri.lower().endswith(SLIDE_ROUTED_SUFFIXES)
        ):
            yield beam.pvalue.TaggedOutput(SLIDES, matched)
            return
        row: stages.CheckedImage | ErrorRow | None = stages.too_large(
            matched.uri, matched.size, self.max_bytes
        )
        if row is None:
            try:
                data = files.read_file(matched.uri)
            except Exception as exc:  # any storage failure is this file's error, not the job's
                row = ErrorRow.build(matched.uri, f"cannot read: {one_line(exc)}", "read")
            else:
                self.images_read.inc()
                self.bytes_read.inc(len(data))
                self._progress(len(data))
                row = stages.check_image(
                    matched.uri, data, max_pixels=self.max_pixels, max_bytes=self.max_bytes
                )
        if isinstance(row, ErrorRow):
            self.images_failed.inc()
            logger.warning("Skipping %s: %s", row.uri, row.reason)
            yield beam.pvalue.TaggedOutput(ERRORS, row)
        elif self.scale is not None and not _whole(row, self.scale):
            yield beam.pvalue.TaggedOutput(SLIDES, matched)
        else:
            yield row

    def _progress(self, size: int) -> None:
        self._seen += 1
        self._bytes += size
        if self._seen % PROGRESS_EVERY == 0:
            logger.info(
                "Read %d images (%.1f MB) so far in this worker", self._seen, self._bytes / 1e6
            )


def _whole(image: stages.CheckedImage, scale: TrainingScale) -> bool:
    """True when the tiling rule scores this plain image whole (it has no mpp)."""
    geometry = SlideGeometry(image.uri, "header", ((image.width, image.height),), (1.0,))
    return not plan_tiles(geometry, scale).is_tiled


class ReadImages(beam.PTransform):
    """Matched files -> ``CheckedImage`` (main output) and ``ErrorRow`` (``errors``).

    Files over the size limit are refused before they are read; unreadable,
    empty, non-image, truncated and too-large images become error rows. Given
    the model's training ``scale``, inputs to tile go to ``slides`` (see
    :class:`_ReadAndCheck`); without one there is no ``slides`` output's worth.
    """

    def __init__(
        self,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        scale: TrainingScale | None = None,
    ) -> None:
        super().__init__()
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.scale = scale

    def expand(self, matched: beam.PCollection) -> dict[str, beam.PCollection]:
        """Read and check each matched file; return ``images``, ``errors`` and ``slides``."""
        outputs = matched | "ReadAndCheck" >> beam.ParDo(
            _ReadAndCheck(self.max_pixels, self.max_bytes, self.scale)
        ).with_outputs(ERRORS, SLIDES, main="images")
        return {"images": outputs.images, ERRORS: outputs[ERRORS], SLIDES: outputs[SLIDES]}


class _SplitOutcomes(beam.DoFn):
    """PredictionResult -> result row, or error row (``errors``), plus heatmaps (``explained``)."""

    def __init__(self, keep_heatmaps: bool) -> None:
        self.keep_heatmaps = keep_heatmaps
        self.images_scored = Metrics.counter(METRICS_NAMESPACE, "images_scored")
        self.images_failed = Metrics.counter(METRICS_NAMESPACE, "images_failed")
        self._scored = 0
        self._started = 0.0

    def setup(self) -> None:
        self._started = time.monotonic()

    def process(self, result: PredictionResult) -> Iterator[Any]:
        # Beam types PredictionResult's fields as unbound TypeVars; the handler makes these.
        image = cast(stages.CheckedImage, result.example)
        outcome = cast(ScoreOutcome, result.inference)
        row = stages.result_row(image, outcome)
        if isinstance(row, ErrorRow):
            self.images_failed.inc()
            logger.warning("Model refused %s: %s", row.uri, row.reason)
            yield beam.pvalue.TaggedOutput(ERRORS, row)
            return
        self.images_scored.inc()
        self._scored += 1
        if self._scored % PROGRESS_EVERY == 0:
            rate = self._scored / max(time.monotonic() - self._started, 1e-9)
            logger.info(
                "Scored %d images so far in this worker (%.0f images/s)", self._scored, rate
            )
        yield row
        if self.keep_heatmaps and outcome.heatmap is not None:
            yield beam.pvalue.TaggedOutput(EXPLAINED, (image, outcome))


class ScoreImages(beam.PTransform):
    """Checked images -> ``ResultRow`` (``results``) and ``ErrorRow`` (``errors``).

    With an ``explain`` handler also ``(image, outcome)`` pairs with heatmaps (``explained``).

    Args:
        handler: a :mod:`beam_jobs.model_handler` handler (local SavedModel or TF Serving).
    """

    def __init__(self, handler: Any) -> None:
        super().__init__()
        self.handler = handler

    def expand(self, images: beam.PCollection) -> dict[str, beam.PCollection]:
        """Score the images; return ``results``, ``errors`` and (with ``explain``) ``explained``."""
        keep = self.handler.signature == "explain"
        outputs = (
            images
            | "RunInference" >> RunInference(self.handler)
            | "SplitOutcomes"
            >> beam.ParDo(_SplitOutcomes(keep)).with_outputs(ERRORS, EXPLAINED, main="results")
        )
        return {"results": outputs.results, ERRORS: outputs[ERRORS], EXPLAINED: outputs[EXPLAINED]}


class ScoreInputs(beam.PTransform):
    """Matched files of any size -> ``results``, ``errors`` (+ ``explained``, ``tiles``).

    The scoring composite the bulk and streaming jobs share: :class:`ReadImages`
    and :class:`ScoreImages` for patch-sized inputs, exactly as before, and with
    a :class:`~beam_jobs.slides.SlideJob` the inputs to tile go through
    :class:`~beam_jobs.slides.ScoreSlides` (one row each with the slide fields,
    tile rows under ``<output>/tiles/``, a heatmap under ``<output>/heatmaps/``).

    Args:
        handler: the model handler (local SavedModel or TF Serving).
        identity: the model identity stamped on slide rows.
        max_pixels, max_bytes: the image checks.
        slides: how to tile, or None to score every input whole (as before slides).
    """

    def __init__(
        self,
        handler: Any,
        identity: ModelIdentity,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        slides: SlideJob | None = None,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.identity = identity
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.slides = slides

    def expand(self, matched: beam.PCollection) -> dict[str, beam.PCollection]:
        """Route, read, score; return ``results``, ``errors``, ``explained`` and ``tiles``."""
        scale = self.slides.settings.scale if self.slides else None
        read = matched | "ReadImages" >> ReadImages(self.max_pixels, self.max_bytes, scale)
        images, errors, results = read["images"], [read[ERRORS]], []
        tiles: beam.PCollection | None = None
        if self.slides is not None:
            slides = read[SLIDES] | "ScoreSlides" >> ScoreSlides(
                self.slides, self.handler, self.identity
            )
            images = (images, slides[WHOLE]) | "AllImages" >> beam.Flatten()
            errors.append(slides[ERRORS])
            results.append(slides["results"])
            tiles = slides[TILES]
        scored = images | "ScoreImages" >> ScoreImages(self.handler)
        out = {
            "results": tuple([scored["results"], *results]) | "AllResults" >> beam.Flatten(),
            ERRORS: tuple([*errors, scored[ERRORS]]) | "AllErrors" >> beam.Flatten(),
            EXPLAINED: scored[EXPLAINED],
        }
        if tiles is not None:
            out[TILES] = tiles
        return out


class WriteResults(beam.PTransform):
    """Result rows -> ``<output>/results/part-*.jsonl`` (+ ``.csv`` with header, ``.parquet``)."""

    def __init__(
        self, output: str, formats: tuple[str, ...] = ("jsonl",), num_shards: int = 0
    ) -> None:
        super().__init__()
        self.prefix = RunLayout(output).results_prefix
        self.formats = formats
        self.num_shards = num_shards

    def expand(self, rows: beam.PCollection) -> tuple[beam.PCollection, ...]:
        """Write the rows in each requested format; return the written file names."""
        written = []
        if "jsonl" in self.formats:
            written.append(
                rows
                | "ResultsToJson" >> beam.Map(ResultRow.to_json)
                | "WriteResultsJsonl"
                >> beam.io.WriteToText(
                    self.prefix, file_name_suffix=ROW_FORMATS["jsonl"], num_shards=self.num_shards
                )
            )
        if "csv" in self.formats:
            written.append(
                rows
                | "ResultsToCsv" >> beam.Map(stages.csv_line)
                | "WriteResultsCsv"
                >> beam.io.WriteToText(
                    self.prefix,
                    file_name_suffix=ROW_FORMATS["csv"],
                    header=stages.csv_header(),
                    num_shards=self.num_shards,
                )
            )
        if "parquet" in self.formats:
            written.append(
                rows
                | "ResultsToDicts" >> beam.Map(ResultRow.to_columns)
                | "WriteResultsParquet"
                >> beam.io.WriteToParquet(
                    self.prefix,
                    stages.parquet_schema(),
                    file_name_suffix=ROW_FORMATS["parquet"],
                    num_shards=self.num_shards,
                )
            )
        return tuple(written)


class WriteErrors(beam.PTransform):
    """Error rows -> ``<output>/errors/part-*.jsonl`` (each with ``uri`` and ``reason``)."""

    def __init__(self, output: str, num_shards: int = 0) -> None:
        super().__init__()
        self.prefix = RunLayout(output).errors_prefix
        self.num_shards = num_shards

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        """Write the error rows as JSON lines; return the written file names."""
        return (
            rows
            | "ErrorsToJson" >> beam.Map(ErrorRow.to_json)
            | "WriteErrorsJsonl"
            >> beam.io.WriteToText(
                self.prefix, file_name_suffix=ROW_FORMATS["jsonl"], num_shards=self.num_shards
            )
        )


def _reread(row: ResultRow, max_pixels: int, max_bytes: int) -> Iterator[stages.CheckedImage]:
    try:
        checked = stages.check_image(
            row.uri, files.read_file(row.uri), max_pixels=max_pixels, max_bytes=max_bytes
        )
    except Exception as exc:  # the file changed since it was scored: no overlay, no failure
        logger.warning("No Grad-CAM for %s: %s", row.uri, one_line(exc))
        return
    if isinstance(checked, stages.CheckedImage):
        yield checked


class ExplainTop(beam.PTransform):
    """Result rows -> ``(image, outcome)`` with heatmaps for the N most suspicious images.

    Args:
        top_n: how many images, highest malignant probability first.
        handler: an ``explain`` handler.
    """

    def __init__(self, top_n: int, handler: Any, max_pixels: int, max_bytes: int) -> None:
        super().__init__()
        self.top_n = top_n
        self.handler = handler
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        """Reread and explain the ``top_n`` most suspicious rows; keep those with a heatmap."""
        return (
            rows
            | "MostSuspicious" >> beam.combiners.Top.Of(self.top_n, key=_probability)
            | "OnePerRow" >> beam.FlatMap(lambda top: top)
            | "RereadImages" >> beam.FlatMap(_reread, self.max_pixels, self.max_bytes)
            | "RunExplain" >> RunInference(self.handler)
            | "KeepExplained"
            >> beam.FlatMap(
                lambda r: [(r.example, r.inference)] if r.inference.heatmap is not None else []
            )
        )


def _probability(row: ResultRow) -> float:
    return row.probability


class _WriteOverlay(beam.DoFn):
    """Render and write one overlay PNG; a failure is logged and counted, not fatal."""

    def __init__(self, output: str, base: str, positive_class: str) -> None:
        self.run = RunLayout(output)
        self.base = base
        self.positive_class = positive_class
        self.written = Metrics.counter(METRICS_NAMESPACE, "gradcam_written")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "gradcam_failed")

    def process(self, pair: tuple[stages.CheckedImage, ScoreOutcome]) -> Iterator[str]:
        image, outcome = pair
        uri = self.run.gradcam(image.uri, self.base)
        try:
            if outcome.prediction is None or outcome.heatmap is None:
                raise ValueError("the model did not explain it")
            png = overlay_png(
                image.data,
                outcome.prediction,
                outcome.heatmap,
                positive_class=self.positive_class,
            )
            files.write_file(uri, png, mime_type="image/png")
        except Exception as exc:  # an overlay is a by-product: never lose the job for it
            self.failed.inc()
            logger.warning("Could not write Grad-CAM for %s: %s", image.uri, one_line(exc))
            return
        self.written.inc()
        yield uri


class WriteOverlays(beam.PTransform):
    """``(image, outcome)`` pairs -> ``<output>/gradcam/<input path>.gradcam.png``.

    Args:
        output: the job's output folder.
        base: the folder that holds every input; overlay names are paths under it.
        positive_class: the class the probabilities are of (the model's metadata).
    """

    def __init__(
        self, output: str, base: str, positive_class: str = DEFAULT_POSITIVE_CLASS
    ) -> None:
        super().__init__()
        self.output = output
        self.base = base
        self.positive_class = positive_class

    def expand(self, pairs: beam.PCollection) -> beam.PCollection:
        """Render each pair's overlay and write it under the output folder."""
        return pairs | "RenderAndWrite" >> beam.ParDo(
            _WriteOverlay(self.output, self.base, self.positive_class)
        )


def _reread_score(
    score: LabelledScore, max_pixels: int, max_bytes: int
) -> Iterator[tuple[LabelledScore, stages.CheckedImage]]:
    try:
        checked = stages.check_image(
            score.uri, files.read_file(score.uri), max_pixels=max_pixels, max_bytes=max_bytes
        )
    except Exception as exc:  # a gallery image that vanished is left out, not fatal
        logger.warning("Gallery skips %s: %s", score.uri, one_line(exc))
        return
    if isinstance(checked, stages.CheckedImage):
        yield score, checked


def _plain_png(data: bytes) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(upscale_for_display(load_rgb(data))).save(out, format="PNG")
    return out.getvalue()


def gallery_item(
    score: LabelledScore,
    image: stages.CheckedImage,
    outcome: ScoreOutcome | None,
    class_names: tuple[str, ...],
    positive_class: str = DEFAULT_POSITIVE_CLASS,
) -> GalleryItem:
    """A gallery card: the Grad-CAM overlay when the model explained it, else the image."""
    prediction = outcome.prediction if outcome else None
    heatmap = outcome.heatmap if outcome else None
    explained = prediction is not None and heatmap is not None
    if prediction is not None and heatmap is not None:
        png = overlay_png(image.data, prediction, heatmap, positive_class=positive_class)
    else:
        png = _plain_png(image.data)
    return GalleryItem(
        uri=score.uri,
        kind="false negative" if score.y else "false positive",
        true_label=class_names[score.y],
        predicted_label=score.predicted_label,
        probability=score.probability,
        threshold=score.threshold,
        png=png,
        has_gradcam=explained,
    )


class ExplainErrors(beam.PTransform):
    """Labelled scores -> ``GalleryItem`` for the N most confident errors.

    The images are read again and explained by RunInference with an ``explain``
    handler (the model is loaded once per worker, as for scoring); without a
    handler the gallery shows the plain images.

    Args:
        top_n: how many errors, furthest from the threshold first.
        handler: an ``explain`` handler, or None.
        class_names: the model's class names, by label index.
    """

    def __init__(
        self,
        top_n: int,
        handler: Any,
        class_names: tuple[str, ...],
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__()
        self.top_n = top_n
        self.handler = handler
        self.class_names = class_names
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def expand(self, scores: beam.PCollection) -> beam.PCollection:
        """Reread (and explain) the ``top_n`` most confident errors as gallery items."""
        images = (
            scores
            | "Misclassified" >> beam.Filter(lambda s: s.wrong)
            | "MostConfident" >> beam.combiners.Top.Of(self.top_n, key=_confidence)
            | "OnePerError" >> beam.FlatMap(lambda top: top)
            | "RereadErrors" >> beam.FlatMap(_reread_score, self.max_pixels, self.max_bytes)
        )
        names = self.class_names
        if self.handler is None:
            return images | "PlainImages" >> beam.MapTuple(
                lambda score, image: gallery_item(score, image, None, names)
            )
        return (
            images
            | "RunExplainErrors" >> RunInference(KeyedModelHandler(self.handler))
            | "Overlays"
            >> beam.MapTuple(
                lambda score, result: gallery_item(score, result.example, result.inference, names)
            )
        )


def _confidence(score: LabelledScore) -> float:
    return score.confidence
