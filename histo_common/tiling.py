"""The one tiling rule: how any input is scored at the model's own scale.

Given the model's training scale (:class:`TrainingScale`: the native size of its
training images and, when known, their microns per pixel) and an input's
:class:`~histo_common.slides.SlideGeometry`, :func:`plan_tiles` decides:

- **whole**: an input at most ``WHOLE_FACTOR`` (1.5x) the training size on each
  side is scored as one image, as patch-sized inputs always were;
- **tiled**: a larger one is cut into a grid of training-size tiles (stride =
  tile size unless a stride is given). When both the model and the slide know
  their mpp, a tile covers the training field of view in level-0 pixels, is read
  at the finest level no finer than needed and resampled to the training size;
  otherwise tiles are read at level 0 with the training size in pixels and the
  plan says the scale was assumed.

A :class:`TilePlan` is geometry only, like OpenSlide's ``DeepZoomGenerator``:
cheap to build, JSON-serialisable (``to_dict``/``from_dict``), so a Beam job can
fan its :class:`TileRegion` items out to workers, and :func:`read_tile` reads one
region's pixels only when it is asked for. The tissue mask
(:mod:`histo_common.tissue`) then drops tiles that are mostly glass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from histo_common.slides import Slide, SlideGeometry

WHOLE_FACTOR = 1.5
MODE_WHOLE = "whole"
MODE_TILED = "tiled"
# A model without a recorded training scale scores everything whole; above this many
# pixels per side (relative to its input size) the plan warns that detail is lost.
LEGACY_WARN_FACTOR = 4.0


class TilingError(ValueError):
    """A tiling request that cannot be planned (bad stride, bad scale)."""


@dataclass(frozen=True)
class TrainingScale:
    """The scale a model was trained at, from its metadata.

    Attributes:
        width: median width of the training images in source pixels (50 for IDC).
        height: median height of the training images in source pixels.
        mpp: microns per pixel of the training images, when known.
    """

    width: int
    height: int
    mpp: float | None = None

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise TilingError(f"training size must be positive, got {self.width}x{self.height}")
        if self.mpp is not None and not 0.0 < self.mpp <= 100.0:
            raise TilingError(f"training mpp must be in (0, 100] microns, got {self.mpp}")


@dataclass(frozen=True)
class TileRegion:
    """One region to score: where it is on the slide and how to read it.

    ``x``, ``y``, ``width``, ``height`` are level-0 pixels (the fields tile rows
    carry); ``level`` and ``read_width``/``read_height`` say how it is read;
    ``out_width``/``out_height`` the size it is resampled to before the model.
    """

    x: int
    y: int
    width: int
    height: int
    level: int
    read_width: int
    read_height: int
    out_width: int
    out_height: int
    tissue_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (a Beam work item, a tile row's position fields)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileRegion:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


@dataclass(frozen=True)
class TilePlan:
    """How one input is scored: whole or as tiles, at which scale, which regions."""

    geometry: SlideGeometry
    mode: str
    tiles: tuple[TileRegion, ...]
    tile_width: int  # level-0 pixels per tile
    tile_height: int
    stride_x: int  # level-0 pixels between tile origins
    stride_y: int
    level: int
    scale_assumed: bool
    scale: str  # in words, for result rows: e.g. "0.500 mpp (level 1, x1.00)"
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def uri(self) -> str:
        """The input's URI."""
        return self.geometry.uri

    @property
    def is_tiled(self) -> bool:
        """True when the input is scored as tiles."""
        return self.mode == MODE_TILED

    @property
    def grid(self) -> tuple[int, int]:
        """Columns and rows of the full grid (before the tissue mask)."""
        w, h = self.geometry.dimensions
        return _count(w, self.tile_width, self.stride_x), _count(h, self.tile_height, self.stride_y)

    def with_tiles(self, tiles: tuple[TileRegion, ...] | list[TileRegion]) -> TilePlan:
        """The same plan with another tile list (e.g. tissue tiles only)."""
        return replace(self, tiles=tuple(tiles))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        out = asdict(self)
        out["geometry"] = self.geometry.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TilePlan:
        """Inverse of :meth:`to_dict`."""
        return cls(
            geometry=SlideGeometry.from_dict(data["geometry"]),
            mode=data["mode"],
            tiles=tuple(TileRegion.from_dict(t) for t in data["tiles"]),
            tile_width=int(data["tile_width"]),
            tile_height=int(data["tile_height"]),
            stride_x=int(data["stride_x"]),
            stride_y=int(data["stride_y"]),
            level=int(data["level"]),
            scale_assumed=bool(data["scale_assumed"]),
            scale=str(data["scale"]),
            warnings=tuple(data.get("warnings", ())),
        )


def plan_tiles(
    geometry: SlideGeometry,
    scale: TrainingScale | None,
    *,
    stride: int | None = None,
    model_input_size: int | None = None,
    whole_factor: float = WHOLE_FACTOR,
) -> TilePlan:
    """Apply the tiling rule to one input (geometry only: no pixels are read).

    Args:
        geometry: the input's levels, sizes and mpp.
        scale: the model's training scale; None for an old model without one
            (whole-image scoring, with a warning when the input is large).
        stride: distance between tile origins in training-scale pixels (default:
            the tile size, i.e. no overlap).
        model_input_size: the model's input side S (only for the legacy warning).
        whole_factor: inputs at most this many times the training size on each
            side are scored whole.

    Returns:
        The plan; for ``tiled`` the full grid, in row-major order.
    """
    width, height = geometry.dimensions
    if scale is None:
        warns: tuple[str, ...] = ()
        side = model_input_size or 0
        if side and max(width, height) > LEGACY_WARN_FACTOR * side:
            warns = (
                f"{geometry.uri}: {width}x{height} px scored whole and resized to the model's "
                f"{side} px input: the model records no training scale (exported before "
                "scale was part of the contract), so it cannot be tiled; retrain or re-export "
                "it to score large inputs tile by tile",
            )
        return _whole(geometry, "unknown (model records no training scale)", True, warns)
    if stride is not None and stride < 1:
        raise TilingError(f"tile stride must be a positive number of pixels, got {stride}")
    # Training-scale pixels per level-0 pixel (1 when either scale is unknown).
    assumed = scale.mpp is None or geometry.mpp is None
    factor = 1.0
    if scale.mpp is not None and geometry.mpp is not None:
        factor = float(scale.mpp) / float(geometry.mpp)
    # The input's size in training-scale pixels decides whole versus tiled.
    if (
        width / factor <= whole_factor * scale.width
        and height / factor <= whole_factor * scale.height
    ):
        how = "assumed: same pixels as training" if assumed else f"{geometry.mpp:.3f} mpp"
        return _whole(geometry, how, assumed, ())
    tile_w = max(1, round(scale.width * factor))
    tile_h = max(1, round(scale.height * factor))
    stride_x = max(1, round(stride * factor)) if stride else tile_w
    stride_y = max(1, round(stride * factor)) if stride else tile_h
    level = 0 if assumed else geometry.best_level_for_downsample(factor)
    down = geometry.level_downsamples[level]
    read_w, read_h = max(1, round(tile_w / down)), max(1, round(tile_h / down))
    tiles = tuple(
        TileRegion(
            x=x,
            y=y,
            width=tile_w,
            height=tile_h,
            level=level,
            read_width=read_w,
            read_height=read_h,
            out_width=scale.width,
            out_height=scale.height,
        )
        for y in _origins(height, tile_h, stride_y)
        for x in _origins(width, tile_w, stride_x)
    )
    if assumed:
        missing = "the model" if scale.mpp is None else "the slide"
        words = f"assumed: {scale.width}x{scale.height} level-0 px per tile ({missing} has no mpp)"
    else:
        words = (
            f"{scale.mpp:.3f} mpp: level {level} (x{down:g}), "
            f"{read_w}x{read_h} px read per tile, resampled to {scale.width}x{scale.height}"
        )
    return TilePlan(
        geometry=geometry,
        mode=MODE_TILED,
        tiles=tiles,
        tile_width=tile_w,
        tile_height=tile_h,
        stride_x=stride_x,
        stride_y=stride_y,
        level=level,
        scale_assumed=assumed,
        scale=words,
    )


def read_tile(slide: Slide, region: TileRegion) -> np.ndarray:
    """Read one region's pixels and resample them to the training size.

    Returns:
        ``[out_height, out_width, 3]`` uint8 RGB (what the model's pixel signature takes).
    """
    pixels = slide.read_region(
        region.x, region.y, region.level, region.read_width, region.read_height
    )
    if (region.read_width, region.read_height) == (region.out_width, region.out_height):
        return pixels
    from PIL import Image

    resized = Image.fromarray(pixels).resize(
        (region.out_width, region.out_height),
        Image.Resampling.BOX if region.read_width > region.out_width else Image.Resampling.BILINEAR,
    )
    return np.asarray(resized)


def read_tiles(slide: Slide, regions: list[TileRegion] | tuple[TileRegion, ...]) -> np.ndarray:
    """Read several regions of one size into a ``[B, H, W, 3]`` batch."""
    if not regions:
        return np.zeros((0, 1, 1, 3), np.uint8)
    return np.stack([read_tile(slide, r) for r in regions])


def _whole(geometry: SlideGeometry, words: str, assumed: bool, warns: tuple[str, ...]) -> TilePlan:
    width, height = geometry.dimensions
    region = TileRegion(
        x=0,
        y=0,
        width=width,
        height=height,
        level=0,
        read_width=width,
        read_height=height,
        out_width=width,
        out_height=height,
    )
    return TilePlan(
        geometry=geometry,
        mode=MODE_WHOLE,
        tiles=(region,),
        tile_width=width,
        tile_height=height,
        stride_x=width,
        stride_y=height,
        level=0,
        scale_assumed=assumed,
        scale=words,
        warnings=warns,
    )


def _count(extent: int, tile: int, stride: int) -> int:
    """Tiles needed so the grid covers ``extent`` (the last one may reach past it)."""
    if extent <= tile:
        return 1
    return math.ceil((extent - tile) / stride) + 1


def _origins(extent: int, tile: int, stride: int) -> list[int]:
    return [i * stride for i in range(_count(extent, tile, stride))]


DEFAULT_TOP_K = 3


@dataclass(frozen=True)
class SlideSummary:
    """The slide fields of a tiled input's result row.

    The slide rule: the input is labelled with the positive class when the mean
    of its ``top_k`` most suspicious tile probabilities reaches the model's
    threshold. The mean of a few tiles rather than the maximum, so one noisy tile
    does not flag a slide; a few rather than all, so a small lesion in a large
    slide still does.
    """

    tiles_scored: int
    positive_fraction: float  # share of scored tiles at or over the threshold
    max_probability: float
    top_k_mean: float
    top_k: int
    threshold: float
    label: str
    scale: str
    scale_assumed: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for a result row."""
        return asdict(self)


def summarise_tiles(
    plan: TilePlan,
    probabilities: list[float] | np.ndarray,
    *,
    threshold: float,
    positive_class: str,
    negative_class: str,
    top_k: int = DEFAULT_TOP_K,
) -> SlideSummary:
    """Apply the slide rule (see :class:`SlideSummary`) to the tile probabilities.

    Args:
        plan: the plan the tiles came from (for the scale fields).
        probabilities: the positive-class probability of each scored tile.
        threshold: the model's decision threshold.
        positive_class: label when the rule fires (e.g. ``malignant``).
        negative_class: label otherwise (e.g. ``benign``).
        top_k: how many of the highest tile probabilities are averaged.

    Returns:
        The slide fields; a slide without tissue tiles gets the negative label,
        zero tiles and probabilities of 0.
    """
    if top_k < 1:
        raise TilingError(f"top_k must be at least 1, got {top_k}")
    probs = np.sort(np.asarray(probabilities, dtype=np.float64))[::-1]
    n = int(probs.size)
    k = min(top_k, n)
    top = float(probs[:k].mean()) if n else 0.0
    return SlideSummary(
        tiles_scored=n,
        positive_fraction=round(float((probs >= threshold).mean()), 6) if n else 0.0,
        max_probability=float(probs[0]) if n else 0.0,
        top_k_mean=top,
        top_k=k,
        threshold=float(threshold),
        label=positive_class if n and top >= threshold else negative_class,
        scale=plan.scale,
        scale_assumed=plan.scale_assumed,
    )
