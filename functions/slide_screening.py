"""Screening a slide or a large field of view on upload, tile by tile.

An upload larger than the tiling rule scores whole (about 1.5x the model's
training size on a side; :mod:`histo_common.tiling`) is scored here through the
shared slide scorer (:mod:`model_export.slide_scoring`): tissue tiles at the
training scale, the slide rule for its label, a heatmap of the tile
probabilities over its thumbnail, and Grad-CAM of the most suspicious tile.
:func:`score_slide` does that for one URI and returns the pictures and the row;
``functions.screening`` decides when to call it and writes the outputs.

What the function cannot do in one event it refuses with a reason that says what
to do instead (:class:`SlideRefused`, written as ``<name>.error.json`` with a 2xx
so the event is not retried): a slide with more tissue tiles than fit in the
function's timeout (``FunctionSettings.max_slide_tiles``) or larger than
``MAX_SLIDE_BYTES``, and multi-file formats (MIRAX ``.mrxs``, Hamamatsu
``.vms``/``.vmu``), whose companion folder arrives as many separate objects, each
with its own event, so no single event can tell when the slide is complete. Each
reason carries the exact Beam command that scores the slide.
"""

from __future__ import annotations

import io
import logging
import shlex
import tempfile
from dataclasses import dataclass, replace
from typing import Any

from functions.logs import StageClock
from functions.settings import FunctionSettings
from histo_common import storage
from histo_common.overlay import overlay_png
from histo_common.results import ResultRow
from histo_common.slides import TIFF_SUFFIXES, SlideError, SlideGeometry, open_slide
from histo_common.tiling import plan_tiles
from model_export.loader import LoadedModel
from model_export.slide_scoring import SlideSettings, explain_tiles, plan_input, score_input

logger = logging.getLogger(__name__)

TOP_TILES_LISTED = 5  # the most suspicious tiles listed in prediction.json
BEAM_GRADCAM_TOP = 3


class SlideRefused(Exception):
    """A slide the function does not score; ``reason`` says why and what to do instead."""

    def __init__(self, reason: str, stage: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage


@dataclass(frozen=True)
class ScoredSlide:
    """A tiled upload scored: its row with the slide fields and its pictures.

    Attributes:
        row: the result row (slide fields set when tiled).
        heatmap_png: tile probabilities over the thumbnail (None when scored whole).
        overlay_png: Grad-CAM of the most suspicious tile (None without tissue tiles).
        document: what ``prediction.json`` adds to the row (top tiles, scale, format).
    """

    row: ResultRow
    heatmap_png: bytes | None
    overlay_png: bytes | None
    document: dict[str, Any]


def is_tiff_name(name: str) -> bool:
    """True for ``.tif``/``.tiff``: a small patch or a pyramidal slide, by its size."""
    return name.lower().endswith(TIFF_SUFFIXES)


def beam_command(uri: str, settings: FunctionSettings) -> str:
    """The command that scores ``uri`` with the Beam job, tiles, heatmap and overlays included.

    It runs locally as written; add Dataflow's options (``--runner DataflowRunner
    --project ... --region ... --temp_location gs://...``) to run it there.
    """
    if settings.slide_output_uri:
        name = storage.split_gcs(uri)[1] if storage.is_gcs(uri) else storage.basename(uri)
        output = storage.join(settings.slide_output_uri, name)
    else:
        output = uri + ".scoring"
    words = ["python", "-m", "beam_jobs.score", "--input", uri, "--model", settings.model_uri]
    words += ["--output", output, "--gradcam-top", str(BEAM_GRADCAM_TOP)]
    return " ".join(shlex.quote(w) for w in words)


def multi_file_reason(uri: str, settings: FunctionSettings) -> str:
    """Why a multi-file slide is not scored on upload, and the Beam command that scores it."""
    return (
        f"a {uri.rsplit('.', 1)[-1].upper()} slide is this file plus a folder of files "
        "uploaded as separate objects; each object is its own event and none says when the "
        "folder is complete, so it is not scored on upload. Once the folder is uploaded, "
        f"score the slide with Beam: {beam_command(uri, settings)}"
    )


def too_large_reason(uri: str, size: int, settings: FunctionSettings) -> str:
    """Why a slide over ``MAX_SLIDE_BYTES`` is not downloaded, and the command that scores it."""
    return (
        f"slide is {size:,} bytes, over the function's limit of {settings.max_slide_bytes:,} "
        f"(MAX_SLIDE_BYTES); score it with Beam: {beam_command(uri, settings)}"
    )


def needs_tiling(data: bytes, uri: str, model: LoadedModel) -> bool:
    """True when an encoded image is larger than the tiling rule scores whole.

    Only the header is read. An image whose header cannot be read is left to the
    patch checks, which say what is wrong with it.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # Pillow raises many types for non-images; the checks name it
        return False
    geometry = SlideGeometry(uri, "pillow", ((width, height),), (1.0,), None)
    scale = model.metadata.training_scale()
    return plan_tiles(geometry, scale, model_input_size=model.metadata.image_size).is_tiled


def score_slide_bytes(
    data: bytes, name: str, model: LoadedModel, settings: FunctionSettings, clock: StageClock
) -> ScoredSlide:
    """:func:`score_slide` for an upload held in memory (``predict_http``), called ``name``.

    The bytes go to a temporary file named like the upload (slide readers read
    files and some formats are told by their suffix); rows and reasons say ``name``.
    """
    base = storage.basename(name) or "upload"
    with tempfile.TemporaryDirectory(prefix="histoscreen-post-") as folder:
        path = f"{folder}/{base}"
        storage.write_bytes(path, data)
        try:
            return score_slide(path, model, settings, clock, name=name)
        except SlideRefused as exc:
            raise SlideRefused(exc.reason.replace(path, name), exc.stage) from exc


def score_slide(
    uri: str,
    model: LoadedModel,
    settings: FunctionSettings,
    clock: StageClock,
    *,
    name: str | None = None,
) -> ScoredSlide:
    """Tile and score one upload, draw its heatmap and the top tile's Grad-CAM.

    Args:
        uri: the upload (local or ``gs://``; a ``gs://`` slide is downloaded to a
            temporary folder removed on return).
        model: the loaded model (its metadata gives the scale and the slide rule).
        settings: the function's limits.
        clock: where the time of each stage is added.
        name: what the rows call the input, when not ``uri`` (an HTTP upload).

    Returns:
        The row and pictures to write.

    Raises:
        SlideRefused: unreadable, too many tiles for the timeout, or refused by the
            model; the reason names the upload.
    """
    slide_settings = SlideSettings.from_metadata(
        model.metadata,
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_image_bytes,
    )
    with tempfile.TemporaryDirectory(prefix="histoscreen-upload-") as cache:
        with clock.stage("read"):
            try:
                slide = open_slide(uri, max_pixels=settings.max_image_pixels, cache_dir=cache)
            except SlideError as exc:
                raise SlideRefused(str(exc), "read") from exc
        with slide:
            with clock.stage("plan"):
                try:
                    plan = plan_input(slide, slide_settings)
                except SlideError as exc:
                    raise SlideRefused(str(exc), "read") from exc
            if plan.is_tiled and len(plan.tiles) > settings.max_slide_tiles:
                raise SlideRefused(
                    f"{len(plan.tiles):,} tissue tiles, more than the "
                    f"{settings.max_slide_tiles:,} this function scores within its "
                    f"{settings.timeout_s} s timeout (at {settings.slide_tiles_per_second:g} "
                    f"tiles/s); score it with Beam: {beam_command(uri, settings)}",
                    "check",
                )
            with clock.stage("tiles"):
                score = score_input(
                    model, uri, model.identity, slide_settings, slide=slide, plan=plan
                )
            if score.row is None:
                raise SlideRefused(score.error or "could not be scored", score.stage)
            row = replace(score.row, uri=name) if name else score.row
            if not score.is_tiled:
                doc: dict[str, Any] = {"image_format": slide.geometry.vendor}
                return ScoredSlide(row, None, None, doc)
            with clock.stage("heatmap"):
                heatmap = score.heatmap_png()
            top_tiles = [
                replace(t, uri=name) if name else t for t in score.top_tiles(TOP_TILES_LISTED)
            ]
            overlay = None
            doc = {
                "image_format": slide.geometry.vendor,
                "mpp": slide.geometry.mpp,
                "top_tiles": [t.to_dict() for t in top_tiles],
                "warnings": list(plan.warnings),
            }
            if top_tiles and score.plan is not None:
                with clock.stage("explain"):
                    [top] = explain_tiles(model, slide, top_tiles[:1], score.plan.tiles)
                with clock.stage("draw"):
                    overlay = overlay_png(
                        top.pixels,
                        top.prediction,
                        top.heatmap,
                        positive_class=model.metadata.positive_class,
                    )
                doc["gradcam_tile"] = top.tile.to_dict()
    return ScoredSlide(row, heatmap, overlay, doc)
