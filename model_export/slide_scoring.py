"""Scoring one input whatever its size: the single-process slide loop every unit shares.

:func:`score_input` opens an input (:mod:`histo_common.slides`), applies the
tiling rule and the tissue mask with the model's training scale
(:func:`histo_common.tissue.plan_slide`), and then:

- a **whole** input (at most about 1.5x the training size) keeps today's path:
  its bytes are checked (:func:`histo_common.images.check_and_prepare`) and
  scored through the bytes signature by :func:`model_export.scoring.score_batch`;
- a **tiled** input has its tissue tiles read region by region, ``batch_size`` at
  a time (never the slide whole), scored through the pixel signature
  (:func:`tile_outputs`), summarised by the slide rule
  (:func:`histo_common.tiling.summarise_tiles`) into a :class:`SlideScore`: its
  result row with the slide fields, its tile rows and its thumbnail for the
  heatmap (:meth:`SlideScore.heatmap_png`).

:func:`explain_tiles` gives Grad-CAM for the top-N tiles (``explain_pixels``) for
overlays. The error policy is :mod:`model_export.scoring`'s: an input that cannot
be read or that the model refuses is an outcome with a one-line reason
(:attr:`SlideScore.error`), while a failing model or service raises. The
function, the app and the benchmark's baseline call this module; the Beam job
(:mod:`beam_jobs.slides`) uses the same pieces spread over workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from histo_common import DISCLAIMER, storage
from histo_common.errors import one_line
from histo_common.heatmap import TileBox, heatmap_title, render_slide_heatmap
from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, check_and_prepare
from histo_common.results import ErrorRow, Prediction, ResultRow, TileRow
from histo_common.slides import (
    DEFAULT_THUMBNAIL_SIDE,
    Slide,
    SlideError,
    open_slide,
    reader_only_png,
)
from histo_common.tiling import (
    DEFAULT_TOP_K,
    SlideSummary,
    TilePlan,
    TileRegion,
    TrainingScale,
    read_tiles,
    summarise_tiles,
)
from histo_common.tissue import DEFAULT_MIN_TISSUE_FRACTION, plan_slide
from model_export import contract
from model_export.identity import ModelIdentity
from model_export.scoring import predictions_from_outputs, score_batch

logger = logging.getLogger(__name__)

DEFAULT_TILE_BATCH = 128
DEFAULT_EXPLAIN_TOP = 3


class PixelRunner(Protocol):
    """A model that takes encoded images (``run``); a ``LoadedModel`` also takes pixels."""

    def run(self, signature: str, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Call ``signature`` on a batch of encoded images; numpy outputs."""
        ...


@dataclass(frozen=True)
class SlideSettings:
    """How inputs are tiled and judged: the model's scale and rule, and the job's choices.

    Attributes:
        scale: the model's training scale; None (an old model) scores everything whole.
        threshold: the model's decision threshold.
        positive_class: the label when the slide rule fires.
        negative_class: the label otherwise.
        model_input_size: the model's input side (for the legacy warning).
        stride: tile stride in training-scale pixels (None: the tile size).
        min_tissue: a tile is scored when at least this share of it is tissue.
        top_k: tiles averaged by the slide rule.
        batch_size: tiles read and scored per model call.
        max_pixels: the pixel limit for inputs without a pyramid.
        max_bytes: the size limit of whole inputs (read into memory).
    """

    scale: TrainingScale | None
    threshold: float
    positive_class: str
    negative_class: str
    model_input_size: int | None = None
    stride: int | None = None
    min_tissue: float = DEFAULT_MIN_TISSUE_FRACTION
    top_k: int = DEFAULT_TOP_K
    batch_size: int = DEFAULT_TILE_BATCH
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"tile batch size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")

    @classmethod
    def from_metadata(cls, metadata: contract.ModelMetadata, **overrides: Any) -> SlideSettings:
        """Settings from a model's metadata (scale, threshold, classes), with overrides."""
        values: dict[str, Any] = {"scale": metadata.training_scale(), **_judged_by(metadata)}
        values.update(overrides)
        return cls(**values)

    def judged_by(self, metadata: contract.ModelMetadata) -> SlideSettings:
        """These settings for another version of the model: its threshold and classes.

        The job's choices (stride, tissue share, top k, limits) stay. A slide's
        tiles were cut at this scale, so a version trained at another cannot judge
        them.

        Raises:
            ValueError: the version was trained at another scale.
        """
        scale = metadata.training_scale()
        if scale != self.scale:
            raise ValueError(
                f"model version {metadata.version} has another training scale ({scale}) "
                f"than the one its tiles were cut for ({self.scale})"
            )
        return replace(self, **_judged_by(metadata))


def _judged_by(metadata: contract.ModelMetadata) -> dict[str, Any]:
    """The settings a model's metadata decides besides its scale: threshold and classes."""
    negatives = [c for c in metadata.class_names if c != metadata.positive_class]
    return {
        "threshold": float(metadata.threshold),
        "positive_class": metadata.positive_class,
        "negative_class": negatives[0],
        "model_input_size": metadata.image_size,
    }


@dataclass(frozen=True)
class SlideScore:
    """What scoring one input gave: its row (with slide fields when tiled) or a reason.

    Attributes:
        uri: the input.
        row: the result row, None when the input could not be scored.
        plan: the plan it was scored by (tissue tiles only), None when unreadable.
        summary: the slide fields of a tiled input (None for a whole one).
        tiles: one row per scored tile (empty for a whole input).
        thumbnail: the input's thumbnail for the heatmap (tiled inputs).
        thumbnail_downsample: level-0 pixels per thumbnail pixel.
        error: the one-line reason when it could not be scored.
        stage: where it failed (``read``, ``check`` or ``score``).
    """

    uri: str
    row: ResultRow | None
    plan: TilePlan | None = None
    summary: SlideSummary | None = None
    tiles: tuple[TileRow, ...] = ()
    thumbnail: np.ndarray | None = field(default=None, repr=False)
    thumbnail_downsample: float = 1.0
    error: str | None = None
    stage: str = "score"

    @property
    def ok(self) -> bool:
        """True when the input was scored."""
        return self.row is not None

    @property
    def is_tiled(self) -> bool:
        """True when the input was scored as tiles."""
        return self.summary is not None

    def error_row(self) -> ErrorRow:
        """The error row of an input that could not be scored."""
        if self.error is None:
            raise ValueError(f"{self.uri} was scored; it has no error row")
        return ErrorRow.build(self.uri, self.error, self.stage)

    def heatmap_png(self) -> bytes:
        """The heatmap PNG of a tiled input (tile probabilities over its thumbnail)."""
        if self.summary is None or self.thumbnail is None:
            raise ValueError(f"{self.uri} was not tiled; it has no heatmap")
        return slide_heatmap_png(
            self.uri, self.thumbnail, self.thumbnail_downsample, self.tiles, self.summary
        )

    def top_tiles(self, n: int) -> list[TileRow]:
        """The ``n`` most suspicious tiles, highest probability first."""
        return sorted(self.tiles, key=lambda t: -t.probability)[:n]


def tile_outputs(model: PixelRunner, signature: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Call ``signature`` on decoded tiles: the pixel signature when the model has one.

    A ``LoadedModel`` takes the pixels through ``serving_pixels``/``explain_pixels``
    (or PNG-encodes them for a model exported before those); a TF Serving client
    only takes encoded images, so each tile is PNG-encoded for it (slower, same
    scores: the bytes signature resizes the decoded image the same way).
    """
    run_pixels = getattr(model, "run_pixels", None)
    if run_pixels is not None:
        return run_pixels(signature, pixels)
    from histo_common.samples import encode_png

    return model.run(signature, [encode_png(tile) for tile in pixels])


def tile_probabilities(
    model: PixelRunner,
    slide: Slide,
    regions: Sequence[TileRegion],
    batch_size: int = DEFAULT_TILE_BATCH,
) -> np.ndarray:
    """Read and score ``regions`` of ``slide`` ``batch_size`` at a time.

    Returns:
        The positive-class probability of each region, in order (float64).

    Raises:
        SlideError: when a region cannot be read.
    """
    out = np.zeros(len(regions), np.float64)
    for start in range(0, len(regions), batch_size):
        batch = list(regions[start : start + batch_size])
        pixels = read_tiles(slide, batch)
        outputs = tile_outputs(model, contract.PREDICT_SIGNATURE, pixels)
        out[start : start + len(batch)] = np.asarray(outputs["probability"], np.float64)
    return out


def tile_rows(
    uri: str,
    regions: Sequence[TileRegion],
    probabilities: Sequence[float] | np.ndarray,
    model: ModelIdentity,
) -> list[TileRow]:
    """One :class:`TileRow` per scored region."""
    return [
        TileRow(
            uri=uri,
            x=r.x,
            y=r.y,
            width=r.width,
            height=r.height,
            level=r.level,
            probability=round(float(p), 6),
            model_name=model.name,
            model_version=model.version,
        )
        for r, p in zip(regions, probabilities, strict=True)
    ]


def slide_heatmap_png(
    uri: str,
    thumbnail: np.ndarray,
    downsample: float,
    tiles: Sequence[TileRow],
    summary: SlideSummary,
) -> bytes:
    """The heatmap PNG of a tiled input from its tile rows and slide fields."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    title = heatmap_title(
        name, summary.label, summary.top_k_mean, summary.top_k, summary.tiles_scored
    )
    subtitle = f"scale: {summary.scale}   {DISCLAIMER.split('.')[0]}"
    boxes = [TileBox(t.x, t.y, t.width, t.height, t.probability) for t in tiles]
    return render_slide_heatmap(
        thumbnail, downsample, boxes, threshold=summary.threshold, title=title, subtitle=subtitle
    )


def summarise(
    plan: TilePlan, probabilities: Sequence[float] | np.ndarray, settings: SlideSettings
) -> SlideSummary:
    """The slide rule with the settings' threshold, classes and top-k."""
    return summarise_tiles(
        plan,
        probabilities,
        threshold=settings.threshold,
        positive_class=settings.positive_class,
        negative_class=settings.negative_class,
        top_k=settings.top_k,
    )


def plan_input(slide: Slide, settings: SlideSettings) -> TilePlan:
    """The tiling rule and the tissue mask for an open input (:func:`plan_slide`)."""
    return plan_slide(
        slide,
        settings.scale,
        stride=settings.stride,
        model_input_size=settings.model_input_size,
        min_tissue=settings.min_tissue,
    )


def score_input(
    model: PixelRunner,
    uri: str,
    identity: ModelIdentity,
    settings: SlideSettings,
    *,
    slide: Slide | None = None,
    plan: TilePlan | None = None,
    thumbnail_side: int = DEFAULT_THUMBNAIL_SIDE,
) -> SlideScore:
    """Score one input of any size (see the module docstring).

    Args:
        model: a ``LoadedModel`` (or a TF Serving client).
        uri: the input (local, ``file://`` or ``gs://``).
        identity: the model identity stamped on the rows.
        settings: tiling and slide-rule settings (:meth:`SlideSettings.from_metadata`).
        slide: the input already open (it is then left open); else it is opened here.
        plan: ``slide``'s plan when the caller has made it (:func:`plan_input`), so the
            tissue mask is not computed twice.
        thumbnail_side: the thumbnail's longer side, for the heatmap.

    Returns:
        The :class:`SlideScore`; an unreadable input or one the model refuses has
        ``error`` set (one line naming the input) and no row.

    Raises:
        Exception: failures of the model or service (see :mod:`model_export.scoring`).
    """
    try:
        opened = slide if slide is not None else open_slide(uri, max_pixels=settings.max_pixels)
    except SlideError as exc:
        return SlideScore(uri, None, error=str(exc), stage="read")
    try:
        return _score_open(model, opened, identity, settings, thumbnail_side, plan)
    finally:
        if slide is None:
            opened.close()


def _score_open(
    model: PixelRunner,
    slide: Slide,
    identity: ModelIdentity,
    settings: SlideSettings,
    thumbnail_side: int,
    plan: TilePlan | None = None,
) -> SlideScore:
    uri = slide.geometry.uri
    width, height = slide.geometry.dimensions
    if plan is None:
        try:
            plan = plan_input(slide, settings)
        except SlideError as exc:
            return SlideScore(uri, None, error=str(exc), stage="read")
    for warning in plan.warnings:
        logger.warning(warning)
    if not plan.is_tiled:
        try:
            data = reader_only_png(slide)
        except SlideError as exc:
            return SlideScore(uri, None, plan=plan, error=str(exc), stage="read")
        return _score_whole(model, uri, plan, identity, settings, data)
    try:
        probabilities = tile_probabilities(model, slide, plan.tiles, settings.batch_size)
        thumbnail, downsample = slide.thumbnail(thumbnail_side)
    except SlideError as exc:
        return SlideScore(uri, None, plan=plan, error=str(exc), stage="read")
    summary = summarise(plan, probabilities, settings)
    row = ResultRow.for_slide(
        uri,
        summary,
        model_name=identity.name,
        model_version=identity.version,
        width=width,
        height=height,
    )
    logger.info(
        "Scored %s: %d tissue tiles of %d, %s (top-%d mean %.3f)",
        uri,
        summary.tiles_scored,
        summary.grid_tiles,
        summary.label,
        summary.top_k,
        summary.top_k_mean,
    )
    return SlideScore(
        uri,
        row,
        plan=plan,
        summary=summary,
        tiles=tuple(tile_rows(uri, plan.tiles, probabilities, identity)),
        thumbnail=thumbnail,
        thumbnail_downsample=downsample,
    )


def _score_whole(
    model: PixelRunner,
    uri: str,
    plan: TilePlan,
    identity: ModelIdentity,
    settings: SlideSettings,
    data: bytes | None = None,
) -> SlideScore:
    """Today's path for an input the size of a training image: its bytes, checked, scored.

    ``data``: the input as PNG when only the slide reader decodes its file.
    """
    try:
        if data is None:
            data = storage.read_bytes(uri)
        ready, info = check_and_prepare(
            data, max_pixels=settings.max_pixels, max_bytes=settings.max_bytes
        )
    except ImageError as exc:
        return SlideScore(uri, None, plan=plan, error=str(exc), stage="check")
    except Exception as exc:  # storage or Pillow failures are this input's, not the run's
        return SlideScore(uri, None, plan=plan, error=f"cannot read: {one_line(exc)}", stage="read")
    (outcome,) = score_batch(model, [ready], identity)
    if outcome.prediction is None:
        reason = f"model could not score it: {outcome.error}"
        return SlideScore(uri, None, plan=plan, error=reason, stage="score")
    row = ResultRow.build(
        uri,
        outcome.prediction,
        model_name=identity.name,
        model_version=identity.version,
        width=info.width,
        height=info.height,
    )
    return SlideScore(uri, row, plan=plan)


@dataclass(frozen=True)
class TileExplanation:
    """Grad-CAM of one tile: where it is, its pixels, what the model said and why."""

    tile: TileRow
    pixels: np.ndarray
    prediction: Prediction
    heatmap: np.ndarray


def explain_tiles(
    model: PixelRunner, slide: Slide, tiles: Sequence[TileRow], regions: Sequence[TileRegion]
) -> list[TileExplanation]:
    """Grad-CAM (``explain_pixels``) for the given tiles, e.g. :meth:`SlideScore.top_tiles`.

    Args:
        model: the model that scored them.
        slide: the open input.
        tiles: the tile rows to explain.
        regions: the plan's regions; each tile is read through the one at its place.

    Returns:
        One explanation per tile, in order (overlays: ``histo_common.overlay.overlay_png``).
    """
    if not tiles:
        return []
    by_place = {(r.x, r.y): r for r in regions}
    chosen = [by_place[(t.x, t.y)] for t in tiles]
    pixels = read_tiles(slide, chosen)
    outputs = tile_outputs(model, contract.EXPLAIN_SIGNATURE, pixels)
    predictions = predictions_from_outputs(outputs)
    return [
        TileExplanation(tile=t, pixels=p, prediction=pred, heatmap=np.asarray(h, np.float32))
        for t, p, pred, h in zip(tiles, pixels, predictions, outputs["heatmap"], strict=True)
    ]


def explain_top(
    model: PixelRunner, score: SlideScore, top_n: int = DEFAULT_EXPLAIN_TOP
) -> list[TileExplanation]:
    """Grad-CAM for the ``top_n`` most suspicious tiles of a scored tiled input."""
    if score.plan is None or not score.is_tiled:
        return []
    with open_slide(score.uri) as slide:
        return explain_tiles(model, slide, score.top_tiles(top_n), score.plan.tiles)
