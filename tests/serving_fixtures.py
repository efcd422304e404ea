"""An in-process stand-in for TensorFlow Serving, backed by a real loaded model.

The TF Serving binary is not installable here, so tests start the two gRPC
services the project calls, on 127.0.0.1, with the real SavedModel behind them:

- ``PredictionService.Predict``: runs the requested signature; a bad image is
  answered INVALID_ARGUMENT, as TF Serving answers it; an unknown model name or
  version NOT_FOUND;
- ``ModelService.GetModelStatus``: reports the model's version AVAILABLE.
"""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass
from typing import Any

from model_export import contract


@dataclass
class ModelServer:
    """A running server: its ``host:port`` and the gRPC server to stop."""

    endpoint: str
    server: Any

    def stop(self) -> None:
        """Stop serving at once."""
        self.server.stop(0)


def start_model_server(model: Any) -> ModelServer:
    """Serve ``model`` (a ``LoadedModel``) under its name and version on a free port."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from model_export.serving_client import from_ndarray, to_ndarray

    def check_spec(spec: Any, context: Any) -> None:
        if spec.name != model.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for {spec.name}")
        if spec.HasField("version") and spec.version.value != model.version:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"{spec.name} has no version {spec.version.value}"
            )

    class Predictions(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
            check_spec(request.model_spec, context)
            images = [bytes(b) for b in to_ndarray(request.inputs[contract.INPUT_KEY]).ravel()]
            signature = request.model_spec.signature_name or contract.PREDICT_SIGNATURE
            try:
                outputs = model.run(signature, images)
            except tf.errors.InvalidArgumentError as exc:  # as TF Serving answers a bad image
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(request.model_spec)
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(from_ndarray(value))
            return response

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
            check_spec(request.model_spec, context)
            status = get_model_status_pb2.ModelVersionStatus(
                version=model.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
            )
            return get_model_status_pb2.GetModelStatusResponse(model_version_status=[status])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Predictions(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return ModelServer(f"127.0.0.1:{port}", server)
