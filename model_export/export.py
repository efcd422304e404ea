"""Writing a trained Keras classifier as a model version in the SavedModel contract.

The training job calls :func:`export_model` at its end; ``python -m model_export
export`` calls it on an existing ``.keras`` checkpoint. Either way the result is
``<models>/<name>/<version>/`` with a SavedModel whose signatures take raw image
bytes, the Keras file, and ``metadata.json`` written last (a version without
metadata is never picked up as the latest).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from histo_common import DISCLAIMER, storage
from histo_common.results import utc_now
from model_export import contract
from model_export.gradcam import gradcam_heatmap
from model_export.preprocessing import decode_batch, resize_decoded

logger = logging.getLogger(__name__)

BACKBONE_LAYER = "backbone"
HEAD_LAYER = "head"


class ServingModule(tf.Module):
    """The exported graph: decode -> backbone -> head -> probabilities (+ Grad-CAM)."""

    def __init__(
        self,
        keras_model: tf.keras.Model,
        class_names: list[str],
        positive_class: str,
        threshold: float,
        image_size: int,
    ) -> None:
        super().__init__(name="histo_serving")
        self.keras_model = keras_model
        self.backbone = keras_model.get_layer(BACKBONE_LAYER)
        self.head = keras_model.get_layer(HEAD_LAYER)
        self.class_names = tf.constant(class_names)
        self.positive_index = class_names.index(positive_class)
        self.n_classes = len(class_names)
        self.threshold = tf.constant(float(threshold), dtype=tf.float32)
        self.image_size = int(image_size)
        spec = tf.TensorSpec([None], tf.string, name=contract.INPUT_KEY)
        self.serve = tf.function(self._serve, input_signature=[spec])
        self.explain = tf.function(self._explain, input_signature=[spec])
        pixels = tf.TensorSpec([None, None, None, 3], tf.uint8, name=contract.PIXELS_INPUT_KEY)
        self.serve_pixels = tf.function(self._serve_pixels, input_signature=[pixels])
        self.explain_pixels = tf.function(self._explain_pixels, input_signature=[pixels])

    def _outputs(self, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        if self.n_classes == 2 and logits.shape[-1] == 1:
            p = tf.sigmoid(logits[:, 0])
            probabilities = tf.stack([1.0 - p, p], axis=-1)
            if self.positive_index == 0:
                probabilities = tf.reverse(probabilities, axis=[-1])
        else:
            probabilities = tf.nn.softmax(logits, axis=-1)
        probability = probabilities[:, self.positive_index]
        batch = tf.shape(probability)[0]
        threshold = tf.fill([batch], self.threshold)
        best = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        if self.n_classes == 2:
            best = tf.fill([batch], 1 - self.positive_index)
        index = tf.where(probability >= threshold, self.positive_index, best)
        return {
            "probability": probability,
            "probabilities": probabilities,
            "label": tf.gather(self.class_names, index),
            "threshold": threshold,
        }

    def _explained_logit(self) -> tuple[int, float]:
        """Which logit to explain for the positive class, and with which sign."""
        if self.n_classes == 2:
            # One sigmoid logit: it speaks for class 1 and, negated, for class 0.
            return 0, 1.0 if self.positive_index == 1 else -1.0
        return self.positive_index, 1.0

    def _serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._score(decode_batch(image_bytes, self.image_size))

    def _explain(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._score_and_explain(decode_batch(image_bytes, self.image_size))

    def _serve_pixels(self, image_pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._score(resize_decoded(image_pixels, self.image_size))

    def _explain_pixels(self, image_pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._score_and_explain(resize_decoded(image_pixels, self.image_size))

    def _score(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        features = self.backbone(images, training=False)
        return self._outputs(self.head(features, training=False))

    def _score_and_explain(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        index, sign = self._explained_logit()
        logits, heatmap = gradcam_heatmap(
            self.backbone, self.head, images, index, self.image_size, sign=sign
        )
        out = self._outputs(logits)
        out["heatmap"] = heatmap
        return out


@dataclass(frozen=True)
class ExportResult:
    """Where a model version was written and what it is."""

    uri: str
    version: int
    metadata: contract.ModelMetadata


def next_version(model_root: str) -> int:
    """One more than any version folder present, complete or not."""
    prefix = model_root.rstrip("/") + "/"
    seen = [0]
    for uri in storage.list_uris(model_root):
        first = uri[len(prefix) :].split("/", 1)[0] if uri.startswith(prefix) else ""
        if first.isdigit():
            seen.append(int(first))
    return max(seen) + 1


def export_model(
    keras_model: tf.keras.Model,
    *,
    models_root: str,
    model_name: str,
    class_names: list[str],
    positive_class: str,
    threshold: float,
    threshold_method: str,
    image_size: int,
    architecture: str,
    training_data: dict[str, Any] | None = None,
    validation_metrics: dict[str, Any] | None = None,
    training_config: dict[str, Any] | None = None,
    run_uri: str | None = None,
    version: int | None = None,
    warnings: list[str] | None = None,
    native_size: tuple[int, int] | None = None,
    mpp: float | None = None,
) -> ExportResult:
    """Export a classifier (Keras model with ``backbone`` and ``head`` sub-models).

    Args:
        keras_model: the trained classifier; its input is ``[S, S, 3]`` float in [0, 255].
        models_root: URI of the models root (local, ``file://`` or ``gs://``).
        model_name: folder name under the root.
        class_names: class names in the model's output order.
        positive_class: the class whose probability is reported and explained.
        threshold: decision threshold on the positive class probability.
        threshold_method: how the threshold was chosen, in words.
        image_size: the model's input side S.
        architecture: e.g. ``"custom_cnn"`` or ``"mobilenet_v2"``.
        training_data: counts and patients of the training data.
        validation_metrics: metrics measured on validation data.
        training_config: the configuration the model was trained with.
        run_uri: where the training run's logs and history are.
        version: explicit version; default is one more than the highest present.
        warnings: reasons to doubt the model, one sentence each (``metadata.json``).
        native_size: median ``(width, height)`` of the training images in source
            pixels (the training scale the tiling rule uses).
        mpp: microns per pixel of the training images, when known.

    Returns:
        The version's URI, number and metadata.
    """
    import keras

    model_root = f"{models_root.rstrip('/')}/{model_name}"
    version = version or next_version(model_root)
    metadata = contract.ModelMetadata(
        model_name=model_name,
        version=version,
        class_names=list(class_names),
        positive_class=positive_class,
        threshold=float(threshold),
        threshold_method=threshold_method,
        image_size=int(image_size),
        architecture=architecture,
        training_data=training_data or {},
        validation_metrics=validation_metrics or {},
        training_config=training_config or {},
        run_uri=run_uri,
        warnings=list(warnings or []),
        native_size=None if native_size is None else [int(v) for v in native_size],
        mpp=None if mpp is None else float(mpp),
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
        project_version=_project_version(),
        created_at=utc_now(),
        disclaimer=DISCLAIMER,
    )
    module = ServingModule(keras_model, list(class_names), positive_class, threshold, image_size)
    target = contract.version_uri(models_root, model_name, version)
    with tempfile.TemporaryDirectory(prefix="histo-export-") as tmp:
        local = Path(tmp) / "model"
        tf.saved_model.save(
            module,
            str(local),
            signatures={
                contract.PREDICT_SIGNATURE: module.serve.get_concrete_function(),
                contract.EXPLAIN_SIGNATURE: module.explain.get_concrete_function(),
                contract.PREDICT_PIXELS_SIGNATURE: module.serve_pixels.get_concrete_function(),
                contract.EXPLAIN_PIXELS_SIGNATURE: module.explain_pixels.get_concrete_function(),
            },
        )
        keras_model.save(local / contract.KERAS_FILE)
        storage.copy_tree_to(local, target)
    storage.write_text(storage.join(target, contract.METADATA_FILE), metadata.to_json())
    logger.info("Exported %s version %d to %s", model_name, version, target)
    return ExportResult(uri=target, version=version, metadata=metadata)


def _project_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("histoscreen")
    except metadata.PackageNotFoundError:
        return "0+unknown"
