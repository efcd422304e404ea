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


# Test-time augmentation: the dihedral group of the square, 4 rotations x 2 flips.
DIHEDRAL_VIEWS = 8
TTA_DESCRIPTION = {
    "views": DIHEDRAL_VIEWS,
    "kind": "dihedral: rotations by 0, 90, 180, 270 degrees, unflipped and flipped",
    "probability": "mean of the views' class probabilities",
    "heatmap": "mean of the views' Grad-CAM maps, each turned back to the image's "
    "orientation, rescaled to a peak of 1",
}


def dihedral_views(images: tf.Tensor) -> tf.Tensor:
    """The 8 rotations and flips of ``[B, S, S, C]`` images as ``[8 * B, S, S, C]``, view-major.

    View ``v`` is ``rot90(flip_left_right(x) if v >= 4 else x, k=v % 4)``.
    """
    views = []
    for flip in (False, True):
        base = tf.image.flip_left_right(images) if flip else images
        views += [tf.image.rot90(base, k) for k in range(4)]
    return tf.concat(views, axis=0)


def undo_dihedral_views(maps: tf.Tensor) -> tf.Tensor:
    """Turn the views' ``[8 * B, S, S, C]`` maps back to the image's orientation.

    Returns:
        ``[8, B, S, S, C]``: view ``v``'s maps, un-rotated then un-flipped.
    """
    out = []
    for v, view in enumerate(tf.split(maps, DIHEDRAL_VIEWS, axis=0)):
        back = tf.image.rot90(view, (4 - v % 4) % 4)
        out.append(tf.image.flip_left_right(back) if v >= 4 else back)
    return tf.stack(out, axis=0)


class ServingModule(tf.Module):
    """The exported graph: decode -> [8 views] -> backbone -> head -> probabilities (+ Grad-CAM)."""

    def __init__(
        self,
        keras_model: tf.keras.Model,
        class_names: list[str],
        positive_class: str,
        threshold: float,
        image_size: int,
        tta: bool = False,
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
        self.tta = bool(tta)
        spec = tf.TensorSpec([None], tf.string, name=contract.INPUT_KEY)
        self.serve = tf.function(self._serve, input_signature=[spec])
        self.explain = tf.function(self._explain, input_signature=[spec])
        pixels = tf.TensorSpec([None, None, None, 3], tf.uint8, name=contract.PIXELS_INPUT_KEY)
        self.serve_pixels = tf.function(self._serve_pixels, input_signature=[pixels])
        self.explain_pixels = tf.function(self._explain_pixels, input_signature=[pixels])

    def _probabilities(self, logits: tf.Tensor) -> tf.Tensor:
        """``[B, C]`` class probabilities in class-name order."""
        if self.n_classes == 2 and logits.shape[-1] == 1:
            p = tf.sigmoid(logits[:, 0])
            probabilities = tf.stack([1.0 - p, p], axis=-1)
            if self.positive_index == 0:
                probabilities = tf.reverse(probabilities, axis=[-1])
            return probabilities
        return tf.nn.softmax(logits, axis=-1)

    def _view_mean(self, probabilities: tf.Tensor) -> tf.Tensor:
        """Average ``[8 * B, C]`` per-view probabilities to ``[B, C]`` (identity without TTA)."""
        if not self.tta:
            return probabilities
        views = tf.reshape(probabilities, [DIHEDRAL_VIEWS, -1, tf.shape(probabilities)[-1]])
        return tf.reduce_mean(views, axis=0)

    def _outputs(self, probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
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

    def _views(self, images: tf.Tensor) -> tf.Tensor:
        return dihedral_views(images) if self.tta else images

    def _score(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        features = self.backbone(self._views(images), training=False)
        logits = self.head(features, training=False)
        return self._outputs(self._view_mean(self._probabilities(logits)))

    def _score_and_explain(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        index, sign = self._explained_logit()
        logits, heatmap = gradcam_heatmap(
            self.backbone, self.head, self._views(images), index, self.image_size, sign=sign
        )
        out = self._outputs(self._view_mean(self._probabilities(logits)))
        if self.tta:
            mean = tf.reduce_mean(undo_dihedral_views(heatmap[..., None])[..., 0], axis=0)
            peak = tf.reduce_max(mean, axis=(1, 2), keepdims=True)
            heatmap = tf.math.divide_no_nan(mean, peak)
        out["heatmap"] = heatmap
        return out


def serving_steps(keras_model: tf.keras.Model, tta: bool) -> dict[str, Any]:
    """What the exported graph does beyond decode, resize and the network (``metadata.serving``)."""
    from model_export.preprocessing import ReinhardNormalisation

    backbone = keras_model.get_layer(BACKBONE_LAYER)
    normalisers = [
        layer.describe()
        for layer in backbone._flatten_layers(include_self=False)
        if isinstance(layer, ReinhardNormalisation)
    ]
    return {
        "test_time_augmentation": dict(TTA_DESCRIPTION) if tta else None,
        "stain_normalisation": normalisers[0] if normalisers else None,
    }


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
    tta: bool = False,
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
        tta: average the 8 dihedral views of each image in every signature
            (probabilities, and Grad-CAM maps turned back; see ``TTA_DESCRIPTION``).

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
        serving=serving_steps(keras_model, tta),
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
        project_version=_project_version(),
        created_at=utc_now(),
        disclaimer=DISCLAIMER,
    )
    module = ServingModule(
        keras_model, list(class_names), positive_class, threshold, image_size, tta=tta
    )
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
