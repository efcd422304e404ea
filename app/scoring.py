"""Scoring images for the app: checks, the model's ``explain`` signature, overlays.

The upload page and the run browser hand :func:`score_images` ``(name, bytes)``
pairs. Each file is checked with ``histo_common.images`` first, so a bad upload
becomes one clear reason instead of a TensorFlow error; the rest go to the
loaded model through :func:`model_export.scoring.score_batch`, the scoring
function (and error policy) the function and the bulk job use too: an image the
model refuses fails alone, with its reason; a model that fails is an error for
the page, not a verdict on the images. Drawing uses ``histo_common.overlay`` so
overlays look the same everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from histo_common import images, overlay
from histo_common.results import Prediction
from model_export import contract
from model_export.identity import ModelIdentity
from model_export.scoring import score_batch

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


Outcome = ScoredImage | FailedImage


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
