"""``RunInference`` model handlers for the SavedModel contract.

Beam's stock ``TFModelHandlerTensor`` cannot load our SavedModel under Keras 3,
so :class:`HistoModelHandler` loads it with ``model_export.loader.load_model``
(the one loader every unit uses) and calls its signature on raw image bytes.
:class:`ServingModelHandler` sends the same bytes to TensorFlow Serving over gRPC
instead. Both return one ``PredictionResult`` per input whose ``inference`` is a
:class:`~beam_jobs.stages.ScoreOutcome`; an image the model refuses becomes an
outcome with a reason instead of failing its batch.

Model sharing: RunInference keeps one loaded model per worker process in a
``shared.Shared`` handle, so every DoFn thread of that process uses the same
model. Sharing one copy across processes (``large_model=True``) is off by
default: the tiny CNN loads in a second and the cross-process proxy would pickle
every batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_jobs.stages import CheckedImage, ModelIdentity, score_batch
from model_export import contract

logger = logging.getLogger(__name__)

DEFAULT_MIN_BATCH = 32
DEFAULT_MAX_BATCH = 256
METRICS_NAMESPACE = "histoscreen"


def is_tf_input_error(exc: BaseException) -> bool:
    """True when TensorFlow refused the inputs (an undecodable image), not the model."""
    import tensorflow as tf

    return isinstance(exc, tf.errors.InvalidArgumentError)


def is_grpc_input_error(exc: BaseException) -> bool:
    """True when TensorFlow Serving answered INVALID_ARGUMENT (a bad image)."""
    import grpc

    from model_export.serving_client import ServingError

    if isinstance(exc, ServingError):
        return exc.bad_input
    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT


class _ContractHandler(ModelHandler[CheckedImage, PredictionResult, Any]):
    """What both handlers share: batching, byte counting, metrics namespace."""

    def __init__(
        self,
        *,
        identity: ModelIdentity,
        signature: str = contract.PREDICT_SIGNATURE,
        min_batch_size: int = DEFAULT_MIN_BATCH,
        max_batch_size: int = DEFAULT_MAX_BATCH,
        large_model: bool = False,
    ) -> None:
        if signature not in (contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE):
            raise ValueError(f"unknown signature {signature!r}")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"batch sizes must satisfy 1 <= min <= max, got {min_batch_size}, {max_batch_size}"
            )
        super().__init__(
            min_batch_size=min_batch_size, max_batch_size=max_batch_size, large_model=large_model
        )
        self.identity = identity
        self.signature = signature

    def get_num_bytes(self, batch: Sequence[CheckedImage]) -> int:
        """Bytes of encoded images in the batch (Beam's ``num_bytes`` metric)."""
        return sum(len(image.data) for image in batch)

    def get_metrics_namespace(self) -> str:
        """Namespace of RunInference's own metrics."""
        return METRICS_NAMESPACE

    def _call(self, model: Any, images: list[bytes]) -> dict[str, Any]:
        """Run the signature on a batch of encoded images (each handler's own way)."""
        raise NotImplementedError

    def _is_bad_input(self, exc: BaseException) -> bool:
        """True when ``exc`` means the images themselves were refused."""
        raise NotImplementedError

    def run_inference(
        self,
        batch: Sequence[CheckedImage],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Score one batch; images the model refuses get an outcome with the reason."""
        outcomes = score_batch(
            [image.data for image in batch],
            lambda images: self._call(model, images),
            self.identity,
            self._is_bad_input,
        )
        model_id = f"{self.identity.name}/{self.identity.version}"
        return [
            PredictionResult(im, out, model_id) for im, out in zip(batch, outcomes, strict=True)
        ]


class HistoModelHandler(_ContractHandler):
    """Loads a model version in the contract and scores raw image bytes with it.

    Args:
        model_uri: a model root (the latest integer version is loaded) or a version URI.
            The scoring job pins the version it resolved at launch, so every worker
            loads the same one even if a newer version appears mid-job.
        identity: name, version and URI stamped on every row.
        signature: ``serving_default``, or ``explain`` to get Grad-CAM heatmaps too.
    """

    def __init__(self, model_uri: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_uri = model_uri

    def load_model(self):  # type: ignore[no-untyped-def]
        """Load the model with the project's loader (local or ``gs://``)."""
        from model_export.loader import load_model

        return load_model(self.model_uri)

    def _call(self, model: Any, images: list[bytes]) -> dict[str, Any]:
        return model.run(self.signature, images)

    def _is_bad_input(self, exc: BaseException) -> bool:
        return is_tf_input_error(exc)


class ServingModelHandler(_ContractHandler):
    """Scores through TensorFlow Serving's gRPC API (``--model-endpoint host:port``).

    Args:
        endpoint: ``host:port`` of the model server.
        identity: name and version stamped on rows (from the model's metadata when
            the job was given ``--model``, else the endpoint).
        client_factory: builds the client from the endpoint; defaults to
            ``model_export.serving_client.ServingClient``.
    """

    def __init__(self, endpoint: str, client_factory: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.client_factory = client_factory

    def load_model(self):  # type: ignore[no-untyped-def]
        """Create the gRPC client (one per worker process, shared by its threads)."""
        logger.info("Scoring through TensorFlow Serving at %s", self.endpoint)
        if self.client_factory is not None:
            return self.client_factory(self.endpoint)
        from model_export.serving_client import ServingClient

        return ServingClient(self.endpoint, self.identity.name)

    def _call(self, model: Any, images: list[bytes]) -> dict[str, Any]:
        return model.predict(images, signature=self.signature)

    def _is_bad_input(self, exc: BaseException) -> bool:
        return is_grpc_input_error(exc)
