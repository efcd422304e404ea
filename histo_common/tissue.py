"""Tissue masks on a low-resolution view of a slide, and each tile's share of tissue.

Method (after TIAToolbox's ``OtsuTissueMasker``, with optical density instead of
grey level): each thumbnail pixel's optical density ``OD = -log10((I + 1) / 256)``
is averaged over R, G and B. Glass transmits nearly all light (OD near 0),
stained tissue absorbs (haematoxylin-dense carcinoma most, pale fat least).
Otsu's threshold on that OD, scaled by ``threshold_scale`` (0.5) and never below
``min_od`` (so a slide of clean glass is not split into "tissue" and "less clean
glass"), marks tissue. The scaling matters on real slides: where tissue covers
most of the view, Otsu's cut falls between dense and pale tissue rather than
between tissue and glass, and pale carcinoma would be lost; halving it moves the
cut towards glass (measured on three reassembled IDC patients: 98.5-100% of
carcinoma patches under kept tiles, 0.7-4.8% of glass tiles kept, against
96-100% and 0.1-1% at the bare Otsu cut). Then a morphological
closing joins nuclei and stroma into one region, holes are filled, and specks
smaller than ``min_area_fraction`` of the thumbnail are removed.

Like TIAToolbox's maskers it is an object with ``fit`` (learn the threshold on
one or more thumbnails) and ``transform`` (apply it); :func:`tile_tissue_fractions`
turns a mask into the fraction of tissue under each tile of a
:class:`~histo_common.tiling.TilePlan`, :func:`keep_tissue_tiles` drops the
tiles that are mostly glass, and :func:`plan_slide` does rule + mask in one call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from histo_common.slides import DEFAULT_THUMBNAIL_SIDE, Slide
from histo_common.tiling import TilePlan, TrainingScale, plan_tiles

DEFAULT_MIN_OD = 0.05
DEFAULT_MIN_TISSUE_FRACTION = 0.25


@dataclass
class TissueMasker:
    """Otsu on optical density with a morphological clean-up (see the module docstring).

    Attributes:
        min_od: the lowest mean OD that can count as tissue (clean glass is ~0.02).
        threshold_scale: the fitted cut is Otsu's threshold times this.
        closing_radius: radius in thumbnail pixels of the closing that joins tissue.
        min_area_fraction: tissue regions smaller than this share of the thumbnail
            are dropped as specks (dust, pen dots).
        threshold: the fitted OD threshold (set by :meth:`fit`).
    """

    min_od: float = DEFAULT_MIN_OD
    threshold_scale: float = 0.5
    closing_radius: int = 2
    min_area_fraction: float = 0.0005
    threshold: float | None = None

    def fit(self, thumbnails: list[np.ndarray] | np.ndarray) -> TissueMasker:
        """Learn the OD threshold from RGB thumbnail(s) (uint8 ``[h, w, 3]``)."""
        images = [thumbnails] if isinstance(thumbnails, np.ndarray) else list(thumbnails)
        od = np.concatenate([optical_density(im).ravel() for im in images])
        self.threshold = max(self.min_od, self.threshold_scale * otsu_threshold(od))
        return self

    def transform(self, thumbnails: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Boolean tissue masks, one per thumbnail, at the thumbnail's size."""
        from scipy import ndimage

        if self.threshold is None:
            raise ValueError("TissueMasker.transform called before fit")
        images = [thumbnails] if isinstance(thumbnails, np.ndarray) else list(thumbnails)
        masks = []
        for image in images:
            mask = optical_density(image) > self.threshold
            r = self.closing_radius
            if r > 0:
                yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
                disc = xx**2 + yy**2 <= r * r
                mask = ndimage.binary_closing(mask, structure=disc, border_value=0)
            mask = ndimage.binary_fill_holes(mask)
            labels, n = ndimage.label(mask)
            if n:
                sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
                keep = np.flatnonzero(sizes >= self.min_area_fraction * mask.size) + 1
                mask = np.isin(labels, keep)
            masks.append(mask)
        return masks

    def fit_transform(self, thumbnail: np.ndarray) -> np.ndarray:
        """Fit on one thumbnail and return its mask."""
        return self.fit(thumbnail).transform(thumbnail)[0]


def optical_density(image: np.ndarray) -> np.ndarray:
    """Mean optical density over R, G, B of a uint8 RGB image, ``[h, w]`` float32."""
    rgb = image[..., :3].astype(np.float32)
    return (-np.log10((rgb + 1.0) / 256.0)).mean(axis=-1)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of ``values``."""
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def tile_tissue_fractions(plan: TilePlan, mask: np.ndarray) -> list[float]:
    """The share of each tile's area that the mask calls tissue.

    Args:
        plan: the tiles (level-0 regions).
        mask: a boolean mask of the whole slide at any size (e.g. the thumbnail's).

    Returns:
        One fraction in [0, 1] per tile, in the plan's order; parts of a tile past
        the slide's edge count as glass.
    """
    width, height = plan.geometry.dimensions
    mh, mw = mask.shape
    sx, sy = mw / width, mh / height
    # Summed-area table: each tile's tissue count in O(1).
    table = np.zeros((mh + 1, mw + 1), np.float64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    out = []
    for t in plan.tiles:
        x0, x1 = t.x * sx, (t.x + t.width) * sx
        y0, y1 = t.y * sy, (t.y + t.height) * sy
        c0, c1 = int(np.clip(np.floor(x0), 0, mw)), int(np.clip(np.ceil(x1), 0, mw))
        r0, r1 = int(np.clip(np.floor(y0), 0, mh)), int(np.clip(np.ceil(y1), 0, mh))
        full = max((np.ceil(x1) - np.floor(x0)) * (np.ceil(y1) - np.floor(y0)), 1.0)
        inside = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
        out.append(float(min(1.0, inside / full)))
    return out


def keep_tissue_tiles(
    plan: TilePlan, mask: np.ndarray, min_fraction: float = DEFAULT_MIN_TISSUE_FRACTION
) -> TilePlan:
    """The plan with only tiles whose tissue fraction reaches ``min_fraction``.

    Each kept tile records its ``tissue_fraction``. A whole-image plan is returned
    unchanged: a patch is always scored.
    """
    if not plan.is_tiled:
        return plan
    fractions = tile_tissue_fractions(plan, mask)
    kept = [
        replace(t, tissue_fraction=round(f, 4))
        for t, f in zip(plan.tiles, fractions, strict=True)
        if f >= min_fraction
    ]
    return plan.with_tiles(kept)


def plan_slide(
    slide: Slide,
    scale: TrainingScale | None,
    *,
    stride: int | None = None,
    model_input_size: int | None = None,
    min_tissue: float = DEFAULT_MIN_TISSUE_FRACTION,
    thumbnail_side: int = DEFAULT_THUMBNAIL_SIDE,
) -> TilePlan:
    """The tiling rule and the tissue mask in one call: what every unit scores.

    A whole-image plan is returned as is (no thumbnail is read); a tiled plan
    keeps only its tissue tiles, each with its ``tissue_fraction``.
    """
    plan = plan_tiles(slide.geometry, scale, stride=stride, model_input_size=model_input_size)
    if not plan.is_tiled:
        return plan
    thumbnail, _ = slide.thumbnail(thumbnail_side)
    return keep_tissue_tiles(plan, TissueMasker().fit_transform(thumbnail), min_tissue)
