"""Client for a model served by TensorFlow Serving (gRPC), and its ``models.config``.

TF Serving serves the same SavedModel folders (``<base>/<name>/<version>/``); this
client sends raw encoded images to a signature and returns numpy outputs with the
same keys as :meth:`model_export.loader.LoadedModel.run` (``run`` has the same
signature too), so callers can switch between an in-process model and a served
one. :meth:`ServingClient.available_version` asks the server's ``ModelService``
which version it serves, so rows name the version that scored them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from model_export import contract

if TYPE_CHECKING:
    import grpc
    from tensorflow.core.framework.tensor_pb2 import TensorProto

DEFAULT_TIMEOUT_S = 30.0


class ServingError(RuntimeError):
    """The TF Serving endpoint could not answer; the message names it.

    ``status`` is the gRPC status name; ``bad_input`` says the server refused the
    request's images (INVALID_ARGUMENT), as opposed to being unavailable.
    """

    def __init__(self, message: str, status: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.status = status

    @property
    def bad_input(self) -> bool:
        """True when the server rejected the images themselves."""
        return self.status == "INVALID_ARGUMENT"


def _string_tensor(values: Sequence[bytes]) -> TensorProto:
    """A 1-D DT_STRING TensorProto holding ``values``."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
        ),
        string_val=list(values),
    )


def to_ndarray(proto: TensorProto) -> np.ndarray:
    """Convert a TensorProto (from a PredictResponse) to numpy."""
    import tensorflow as tf

    return tf.make_ndarray(proto)


def from_ndarray(array: np.ndarray) -> TensorProto:
    """Convert numpy to a TensorProto (for servers and tests)."""
    import tensorflow as tf

    return tf.make_tensor_proto(array)


class ServingClient:
    """Sends batches of encoded images to a TF Serving ``PredictionService``."""

    def __init__(
        self,
        endpoint: str,
        model_name: str = contract.DEFAULT_MODEL_NAME,
        *,
        version: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        if ":" not in endpoint:
            raise ValueError(f"endpoint {endpoint!r} must be host:port (TF Serving's gRPC port)")
        self.endpoint = endpoint
        self.model_name = model_name
        self.version = version
        self.timeout_s = timeout_s
        options = [
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ]
        self._channel = grpc.insecure_channel(endpoint, options=options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _failed(self, exc: grpc.RpcError) -> ServingError:
        """A :class:`ServingError` naming the endpoint and model for a gRPC failure."""
        return ServingError(
            f"TF Serving at {self.endpoint} failed for model {self.model_name}: "
            f"{exc.code().name}: {exc.details()}",
            status=exc.code().name,
        )

    def predict(
        self, images: Sequence[bytes], signature: str = contract.PREDICT_SIGNATURE
    ) -> dict[str, np.ndarray]:
        """Call ``signature`` on a batch of encoded images; outputs as numpy arrays.

        Raises:
            ServingError: the server failed or refused; ``bad_input`` tells which.
        """
        import grpc
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = self.version
        request.inputs[contract.INPUT_KEY].CopyFrom(_string_tensor(images))
        try:
            response = self._stub.Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._failed(exc) from exc
        return {key: to_ndarray(value) for key, value in response.outputs.items()}

    def run(self, signature: str, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Same as :meth:`predict`, in ``LoadedModel.run``'s argument order."""
        return self.predict(images, signature=signature)

    def available_version(self) -> int:
        """The highest version of the model the server reports AVAILABLE.

        Raises:
            ServingError: the server cannot be asked, or has no available version
                of the model (status ``NOT_FOUND``).
        """
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        try:
            response = stub.GetModelStatus(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._failed(exc) from exc
        available_state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        statuses = list(response.model_version_status)
        available = [s.version for s in statuses if s.state == available_state]
        if not available:
            states = {
                s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
                for s in statuses
            }
            raise ServingError(
                f"TF Serving at {self.endpoint} has no AVAILABLE version of model "
                f"{self.model_name} (versions: {states or 'none'})",
                status="NOT_FOUND",
            )
        return max(available)

    def close(self) -> None:
        """Close the gRPC channel."""
        self._channel.close()


def serving_config(models: dict[str, str]) -> str:
    """TF Serving ``models.config`` text for ``{model name: base path}``.

    The base path is the model root (``<models>/<name>``), which TF Serving scans
    for integer versions and serves the latest of.
    """
    entries = []
    for name, base_path in sorted(models.items()):
        if not contract.MODEL_NAME_RE.match(name):
            raise ValueError(f"model name {name!r} is not valid")
        entries.append(
            "  config {\n"
            f"    name: '{name}'\n"
            f"    base_path: '{base_path.rstrip('/')}'\n"
            "    model_platform: 'tensorflow'\n"
            "    model_version_policy { latest { num_versions: 1 } }\n"
            "  }"
        )
    return "model_config_list {\n" + "\n".join(entries) + "\n}\n"
