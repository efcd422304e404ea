"""Scoring images for the app: checks, the model's ``explain`` signature, overlays.

The upload page and the run browser hand :func:`score_images` ``(name, bytes)``
pairs. Each file is checked with ``histo_common.images`` first, so a bad upload
becomes one clear reason instead of a TensorFlow error; the rest go to the
loaded model (the SavedModel contract, the same one the function and the bulk
job use) in one batch, and one by one if that batch fails. Drawing uses
``histo_common.overlay`` so overlays look the same everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from histo_common import images, overlay
from histo_common.results import Prediction

logger = logging.getLogger(__name__)

DISPLAY_MIN_SIDE = overlay.MIN_SIDE  # draw tiny patches as large as their overlay


class ExplainResult(Protocol):
    """What ``LoadedModel.explain`` returns per image."""

    prediction: Prediction
    heatmap: np.ndarray


class Explainer(Protocol):
    """The part of ``model_export.loader.LoadedModel`` the app scores with."""

    def explain(self, images: Sequence[bytes]) -> Sequence[ExplainResult]:
        """Score encoded images and return predictions with Grad-CAM heatmaps."""
        ...


@dataclass(frozen=True)
class ScoredImage:
    """An image the model scored, with what is needed to draw it."""

    name: str
    prediction: Prediction
    heatmap: np.ndarray  # [S, S] in [0, 1]
    image: np.ndarray  # H x W x 3 uint8, the original for display
    info: images.ImageInfo


@dataclass(frozen=True)
class FailedImage:
    """An input that could not be scored, with a one-line reason for the user."""

    name: str
    reason: str


Outcome = ScoredImage | FailedImage


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def score_images(model: Explainer, items: Sequence[tuple[str, bytes]]) -> list[Outcome]:
    """Check and score ``(name, encoded bytes)`` pairs; one outcome per pair, in order.

    Args:
        model: a loaded model (``LoadedModel``) or anything with ``explain``.
        items: file names (or URIs) with their encoded bytes.

    Returns:
        A :class:`ScoredImage` or a :class:`FailedImage` for each input.
    """
    outcomes: dict[int, Outcome] = {}
    ready: list[tuple[int, bytes, images.ImageInfo]] = []
    for index, (name, data) in enumerate(items):
        try:
            prepared, info = images.check_and_prepare(data)
        except images.ImageError as exc:
            logger.info("Refused %s: %s", name, exc)
            outcomes[index] = FailedImage(name, str(exc))
            continue
        ready.append((index, prepared, info))
    explained = _explain_each(model, [p for _, p, _ in ready], [items[i][0] for i, _, _ in ready])
    for (index, prepared, info), result in zip(ready, explained, strict=True):
        name = items[index][0]
        if isinstance(result, str):
            outcomes[index] = FailedImage(name, result)
            continue
        outcomes[index] = ScoredImage(
            name=name,
            prediction=result.prediction,
            heatmap=np.asarray(result.heatmap, dtype=np.float32),
            image=overlay.load_rgb(prepared),
            info=info,
        )
    return [outcomes[i] for i in range(len(items))]


def _explain_each(
    model: Explainer, batch: list[bytes], names: list[str]
) -> list[ExplainResult | str]:
    """Explain the batch; if it fails, each image alone, so one bad file fails alone.

    Returns:
        Per image, the model's result or a one-line reason it could not be scored.
    """
    if not batch:
        return []
    try:
        return list(model.explain(batch))
    except Exception as exc:  # TensorFlow raises several types for an undecodable image
        logger.warning("Batch of %d failed (%s); scoring one by one", len(batch), _one_line(exc))
    out: list[ExplainResult | str] = []
    for name, data in zip(names, batch, strict=True):
        try:
            out.append(model.explain([data])[0])
        except Exception as exc:
            logger.warning("Model could not score %s: %s", name, _one_line(exc))
            out.append(f"the model could not read this image: {_one_line(exc)}")
    return out


def enlarge(image: np.ndarray, min_side: int = DISPLAY_MIN_SIDE) -> np.ndarray:
    """Scale a small image up by a whole factor (nearest neighbour) to ``min_side``."""
    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if scale == 1:
        return image
    return np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST))


def overlay_png(scored: ScoredImage, opacity: float) -> bytes:
    """The Grad-CAM overlay PNG (heatmap, colour scale, caption) at ``opacity``."""
    p = scored.prediction
    caption = overlay.overlay_caption(p.label, p.probability, p.threshold)
    return overlay.render_overlay(scored.image, scored.heatmap, caption=caption, opacity=opacity)


def prediction_text(prediction: Prediction, positive_class: str = "malignant") -> str:
    """One line a person reads: label, probability of the positive class, threshold."""
    return (
        f"Prediction: {prediction.label} (p({positive_class}) = {prediction.probability:.3f}, "
        f"threshold {prediction.threshold:.3f})"
    )
