"""Scoring a batch of encoded images with one error policy: the one way every unit scores.

The Beam model handlers, the function and the app all call :func:`score_batch`
on a model in the contract: a :class:`model_export.loader.LoadedModel` in this
process, or a :class:`model_export.serving_client.ServingClient` for TensorFlow
Serving (both have ``run(signature, images)``). The policy:

- an image the model refuses (TensorFlow's ``InvalidArgumentError``, TF Serving's
  ``INVALID_ARGUMENT``: an undecodable image) becomes an outcome with a one-line
  reason, and the rest of its batch is still scored. One bad image makes the
  whole signature call fail, so the batch is split in halves until the bad images
  are alone;
- anything else (storage outage, model not loadable, out of memory, TF Serving
  unavailable) propagates, so the caller retries or reports it as an outage,
  never as a property of the image.

No TensorFlow import here: :func:`is_input_error` only looks for TensorFlow's
error type when TensorFlow is already loaded (it is, whenever a model ran).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from histo_common.errors import one_line
from histo_common.results import Prediction
from model_export import contract
from model_export.identity import ModelIdentity


class SignatureRunner(Protocol):
    """A model in the contract: ``LoadedModel`` or ``ServingClient``."""

    def run(self, signature: str, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Call ``signature`` on a batch of encoded images; numpy outputs."""
        ...


@dataclass(frozen=True)
class ScoreOutcome:
    """What the model said about one image: a prediction (and heatmap) or a reason."""

    prediction: Prediction | None
    model: ModelIdentity
    heatmap: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image was scored."""
        return self.prediction is not None


def is_input_error(exc: BaseException) -> bool:
    """True when the model refused the images themselves, not when the model or service failed.

    Recognises TensorFlow's ``InvalidArgumentError`` (an in-process model that
    cannot decode an image), ``ServingError`` with ``bad_input`` and a gRPC
    ``INVALID_ARGUMENT`` (TF Serving refusing one).
    """
    from model_export.serving_client import ServingError

    if isinstance(exc, ServingError):
        return exc.bad_input
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(exc, tf.errors.InvalidArgumentError):
        return True
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() == grpc.StatusCode.INVALID_ARGUMENT
    return False


def predictions_from_outputs(outputs: dict[str, Any]) -> list[Prediction]:
    """One :class:`Prediction` per image from a signature's batched numpy outputs."""
    return [
        Prediction(
            probability=float(p),
            label=label.decode("utf-8") if isinstance(label, bytes) else str(label),
            threshold=round(float(t), 6),
        )
        for p, label, t in zip(
            outputs["probability"], outputs["label"], outputs["threshold"], strict=True
        )
    ]


def outcomes_from_outputs(
    outputs: dict[str, Any], count: int, model: ModelIdentity
) -> list[ScoreOutcome]:
    """Turn a signature's batched outputs into one outcome per image."""
    predictions = predictions_from_outputs(outputs)
    if len(predictions) != count:
        raise ValueError(f"the model returned {len(predictions)} predictions for {count} images")
    heatmaps = outputs.get("heatmap")
    return [
        ScoreOutcome(
            prediction=prediction,
            model=model,
            heatmap=None if heatmaps is None else np.asarray(heatmaps[i], dtype=np.float32),
        )
        for i, prediction in enumerate(predictions)
    ]


def score_batch(
    model: SignatureRunner,
    images: Sequence[bytes],
    identity: ModelIdentity,
    *,
    signature: str = contract.PREDICT_SIGNATURE,
    input_error: Callable[[BaseException], bool] = is_input_error,
) -> list[ScoreOutcome]:
    """Score encoded images; images the model refuses get an outcome with the reason.

    Args:
        model: a ``LoadedModel`` or ``ServingClient`` (anything with ``run``).
        images: encoded image bytes, already checked (``histo_common.images``).
        identity: the model identity stamped on every outcome.
        signature: ``serving_default``, or ``explain`` for heatmaps too.
        input_error: tells refused images from failures of the model or service.

    Returns:
        One outcome per image, in order.

    Raises:
        Exception: whatever the model or service raised that is not about the
            images (see the module docstring).
    """
    if not images:
        return []
    try:
        return outcomes_from_outputs(model.run(signature, list(images)), len(images), identity)
    except Exception as exc:
        if not input_error(exc):
            raise
        if len(images) == 1:
            return [ScoreOutcome(prediction=None, model=identity, error=one_line(exc))]
    mid = len(images) // 2
    return [
        *score_batch(model, images[:mid], identity, signature=signature, input_error=input_error),
        *score_batch(model, images[mid:], identity, signature=signature, input_error=input_error),
    ]
