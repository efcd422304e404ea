"""Scoring images for the app: checks, the model's ``explain`` signature, overlays.

The upload page and the run browser hand :func:`score_images` ``(name, bytes)``
pairs. Each file is checked with ``histo_common.images`` first, so a bad upload
becomes one clear reason instead of a TensorFlow error; the rest go to the
loaded model through :func:`model_export.scoring.score_batch`, the scoring
function (and error policy) the function and the bulk job use too: an image the
model refuses fails alone, with its reason; a model that fails is an error for
the page, not a verdict on the images. Drawing uses ``histo_common.overlay`` so
overlays look the same everywhere.

An upload larger than the tiling rule scores whole (a field of view, a pyramidal
TIFF, an ``.svs``/``.ndpi``/``.scn`` slide) is scored like everywhere else, by the
shared slide scorer (:mod:`model_export.slide_scoring`): it becomes a
:class:`ScoredSlide` with its row's slide fields, the heatmap of its tile
probabilities over its thumbnail and Grad-CAM of its most suspicious tiles.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from histo_common import images, overlay, storage
from histo_common.results import Prediction, ResultRow
from histo_common.slides import WSI_SUFFIXES, SlideError, open_slide
from model_export import contract
from model_export.identity import ModelIdentity
from model_export.scoring import score_batch
from model_export.slide_scoring import (
    SlideSettings,
    TileExplanation,
    explain_tiles,
    plan_input,
    score_input,
)

logger = logging.getLogger(__name__)


class ScoringModel(Protocol):
    """The part of ``model_export.loader.LoadedModel`` the app scores with."""

    @property
    def identity(self) -> ModelIdentity:
        """Name, version and URI of the model."""
        ...

    @property
    def metadata(self) -> contract.ModelMetadata:
        """The model's metadata (its positive class names the probability)."""
        ...

    def run(self, signature: str, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Call a signature on a batch of encoded images."""
        ...


@dataclass(frozen=True)
class ScoredImage:
    """An image the model scored, with what is needed to draw it."""

    name: str
    prediction: Prediction
    heatmap: np.ndarray  # [S, S] in [0, 1]
    image: np.ndarray  # H x W x 3 uint8, the original for display
    info: images.ImageInfo
    positive_class: str  # the class the probability is of (the model's metadata)


@dataclass(frozen=True)
class FailedImage:
    """An input that could not be scored, with a one-line reason for the user."""

    name: str
    reason: str


@dataclass(frozen=True)
class ScoredSlide:
    """A tiled input (slide or large field of view) scored tile by tile."""

    name: str
    row: ResultRow  # with the slide fields
    heatmap_png: bytes  # tile probabilities over the thumbnail, with legend
    top_tiles: tuple[TileExplanation, ...]  # the most suspicious tiles, with Grad-CAM
    vendor: str  # the reader's format name (``generic-tiff``, ``aperio``, ``pillow-PNG``...)
    warnings: tuple[str, ...]
    positive_class: str


Outcome = ScoredImage | ScoredSlide | FailedImage

TOP_TILES_SHOWN = 3


def score_images(model: ScoringModel, items: Sequence[tuple[str, bytes]]) -> list[Outcome]:
    """Check and score ``(name, encoded bytes)`` pairs; one outcome per pair, in order.

    Args:
        model: a loaded model (``LoadedModel``).
        items: file names (or URIs) with their encoded bytes.

    Returns:
        A :class:`ScoredImage` or a :class:`FailedImage` for each input.

    Raises:
        Exception: when the model itself fails (see ``model_export.scoring``).
    """
    outcomes: dict[int, Outcome] = {}
    ready: list[tuple[int, bytes, images.ImageInfo]] = []
    for index, (name, data) in enumerate(items):
        tiled = score_if_tiled(model, name, data)
        if tiled is not None:
            outcomes[index] = tiled
            continue
        try:
            prepared, info = images.check_and_prepare(data)
        except images.ImageError as exc:
            logger.info("Refused %s: %s", name, exc)
            outcomes[index] = FailedImage(name, str(exc))
            continue
        ready.append((index, prepared, info))
    scored = score_batch(
        model,
        [prepared for _, prepared, _ in ready],
        model.identity,
        signature=contract.EXPLAIN_SIGNATURE,
    )
    positive_class = model.metadata.positive_class
    for (index, prepared, info), result in zip(ready, scored, strict=True):
        name = items[index][0]
        if result.prediction is None or result.heatmap is None:
            logger.warning("Model could not score %s: %s", name, result.error)
            outcomes[index] = FailedImage(
                name, f"the model could not read this image: {result.error}"
            )
            continue
        outcomes[index] = ScoredImage(
            name=name,
            prediction=result.prediction,
            heatmap=result.heatmap,
            image=overlay.load_rgb(prepared),
            info=info,
            positive_class=positive_class,
        )
    return [outcomes[i] for i in range(len(items))]


def score_if_tiled(
    model: ScoringModel, name: str, data: bytes, top: int = TOP_TILES_SHOWN
) -> ScoredSlide | FailedImage | None:
    """Score ``data`` tile by tile when the tiling rule says so; None when it is scored whole.

    The bytes are written to a temporary file (the slide readers read files) named
    like the upload, opened with the one slide opener and planned with the one
    tiling rule. A plain image that cannot be opened is left to the patch checks,
    which name what is wrong with it; a slide file that cannot be opened fails here.

    Raises:
        Exception: when the model itself fails (see ``model_export.scoring``).
    """
    settings = SlideSettings.from_metadata(model.metadata)
    base = storage.basename(name.rstrip("/")) or "upload"
    with tempfile.TemporaryDirectory(prefix="histoscreen-app-") as folder:
        path = Path(folder) / base
        path.write_bytes(data)
        try:
            slide = open_slide(str(path), max_pixels=settings.max_pixels)
        except SlideError as exc:
            if not base.lower().endswith(WSI_SUFFIXES):
                return None
            return FailedImage(name, str(exc).replace(str(path), base))
        with slide:
            try:
                plan = plan_input(slide, settings)
            except SlideError as exc:
                return FailedImage(name, str(exc).replace(str(path), base))
            if not plan.is_tiled:
                return None
            score = score_input(model, str(path), model.identity, settings, slide=slide)
            if score.row is None or score.plan is None:
                reason = (score.error or "could not be scored").replace(str(path), base)
                return FailedImage(name, reason)
            heatmap = score.heatmap_png()
            explained = explain_tiles(model, slide, score.top_tiles(top), score.plan.tiles)
    logger.info("Scored %s tile by tile: %s", name, score.row.label)
    return ScoredSlide(
        name=name,
        row=replace(score.row, uri=name),
        heatmap_png=heatmap,
        top_tiles=tuple(replace(t, tile=replace(t.tile, uri=name)) for t in explained),
        vendor=slide.geometry.vendor,
        warnings=plan.warnings,
        positive_class=model.metadata.positive_class,
    )


def slide_text(row: ResultRow, positive_class: str) -> str:
    """One line a person reads about a tiled input: the slide rule's verdict and its basis."""
    share = row.positive_fraction or 0.0
    return (
        f"Slide: {row.label} (mean p({positive_class}) of the top {row.top_k} tiles = "
        f"{row.probability:.3f}, threshold {row.threshold:.3f}); {row.tiles_scored} tissue "
        f"tiles scored of {row.grid_tiles}, {share:.1%} at or over the threshold, "
        f"highest tile {row.max_probability or 0.0:.3f}"
    )


def overlay_png(scored: ScoredImage, opacity: float) -> bytes:
    """The Grad-CAM overlay PNG (heatmap, colour scale, caption) at ``opacity``."""
    return overlay.overlay_png(
        scored.image,
        scored.prediction,
        scored.heatmap,
        positive_class=scored.positive_class,
        opacity=opacity,
    )


def prediction_text(prediction: Prediction, positive_class: str) -> str:
    """One line a person reads: label, probability of the positive class, threshold."""
    return (
        f"Prediction: {prediction.label} (p({positive_class}) = {prediction.probability:.3f}, "
        f"threshold {prediction.threshold:.3f})"
    )
