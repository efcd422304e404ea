"""Classifier architectures: the original custom CNN and MobileNetV2 transfer learning.

Each classifier is ``inputs -> backbone -> head -> probabilities``, where
``backbone`` and ``head`` are named sub-models: the SavedModel contract computes
Grad-CAM between them, for both architectures. Inputs are RGB float in [0, 255];
each backbone scales them itself, so the exported graph needs no extra step.
"""

from __future__ import annotations

import logging

import keras
from keras import layers, regularizers

logger = logging.getLogger(__name__)

CUSTOM_CNN = "custom_cnn"
MOBILENET_V2 = "mobilenet_v2"
ARCHITECTURES = (CUSTOM_CNN, MOBILENET_V2)


def _conv_block(
    x: keras.KerasTensor,
    filters: int,
    convs: int,
    l2: float,
    dropout: float,
    pool: bool,
    name: str,
) -> keras.KerasTensor:
    """3x3 convolutions with batch norm and ReLU; then pooling and dropout if asked."""
    for i in range(1, convs + 1):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=False,
            kernel_regularizer=regularizers.l2(l2) if l2 else None,
            name=f"{name}_conv{i}",
        )(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    if pool:
        x = layers.MaxPooling2D(name=f"{name}_pool")(x)
        x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


def build_custom_cnn(
    image_size: int,
    n_outputs: int = 1,
    *,
    filters: tuple[int, ...] = (32, 64, 128),
    convs_per_block: tuple[int, ...] = (1, 2, 2),
    dense_units: tuple[int, ...] = (128,),
    dropout: float = 0.5,
    l2: float = 1e-4,
    normaliser: layers.Layer | None = None,
) -> keras.Model:
    """Build the original app's CNN, grown a little.

    Conv blocks of 32, 64, 128 filters with batch norm, pooling and dropout, then
    global average pooling and a dense head.

    Compared with the original (one convolution per block, Flatten, dense 256 -> 128)
    the later blocks have two convolutions (more depth where the maps are small and
    cheap) and global pooling replaces Flatten (fewer weights, less over-fitting to
    position). The backbone ends at the last block's convolutions, before its pooling,
    so Grad-CAM has the finest map; pooling, dropout and the dense layers form the head.
    ``normaliser`` (e.g. stain normalisation) is the backbone's first step when given.
    """
    if len(convs_per_block) != len(filters):
        raise ValueError("convs_per_block needs one entry per block in filters")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(_normalised(inputs, normaliser))
    for i, f in enumerate(filters):
        last = i == len(filters) - 1
        x = _conv_block(
            x, f, convs_per_block[i], l2, dropout * 0.5, pool=not last, name=f"block{i + 1}"
        )
    backbone = keras.Model(inputs, x, name="backbone")

    feat = keras.Input(backbone.output.shape[1:], name="features")
    h = layers.MaxPooling2D(name="pool")(feat)
    h = layers.Dropout(dropout * 0.5, name="pool_drop")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    for j, units in enumerate(dense_units):
        h = layers.Dense(
            units,
            use_bias=False,
            kernel_regularizer=regularizers.l2(l2) if l2 else None,
            name=f"dense{j + 1}",
        )(h)
        h = layers.BatchNormalization(momentum=0.9, name=f"dense{j + 1}_bn")(h)
        h = layers.Activation("relu", name=f"dense{j + 1}_relu")(h)
        h = layers.Dropout(dropout, name=f"dense{j + 1}_drop")(h)
    logits = layers.Dense(n_outputs, name="logits")(h)
    head = keras.Model(feat, logits, name="head")
    return _assemble(inputs, backbone, head, n_outputs, CUSTOM_CNN)


def build_mobilenet_v2(
    image_size: int,
    n_outputs: int = 1,
    *,
    weights: str | None = None,
    alpha: float = 0.35,
    dropout: float = 0.3,
    l2: float = 1e-4,
    dense_units: int = 128,
    normaliser: layers.Layer | None = None,
    feature_layer: str | None = None,
) -> keras.Model:
    """MobileNetV2 (a nested model, frozen at first) with GAP -> Dense -> Dropout -> logits.

    Args:
        image_size: side of the square RGB input.
        n_outputs: number of logits (1 for a sigmoid binary model).
        weights: ``"imagenet"``, a path to Keras's no-top ``.h5`` weights, or None.
        alpha: width multiplier; must match the weights file.
        dropout: dropout rate after the dense layer.
        l2: L2 weight on the dense layer's kernel (0 for none).
        dense_units: width of the dense layer.
        normaliser: a layer applied to the RGB input first (e.g. stain normalisation).
        feature_layer: the base's layer whose output feeds the head (the base is cut
            there: fewer blocks, finer Grad-CAM); None: the whole base.

    Raises:
        ValueError: when the base has no layer ``feature_layer``.
    """
    inputs = keras.Input((image_size, image_size, 3), name="image")
    base = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3),
        alpha=alpha,
        include_top=False,
        weights=weights,
    )
    if feature_layer is not None:
        names = [layer.name for layer in base.layers]
        if feature_layer not in names:
            raise ValueError(
                f"MobileNetV2 has no layer {feature_layer!r}; its block outputs are named "
                "like block_6_project_BN or block_12_add"
            )
        base = keras.Model(base.input, base.get_layer(feature_layer).output, name=base.name)
    base.trainable = False
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(_normalised(inputs, normaliser))
    x = base(x, training=False)
    backbone = keras.Model(inputs, x, name="backbone")

    feat = keras.Input(backbone.output.shape[1:], name="features")
    h = layers.GlobalAveragePooling2D(name="gap")(feat)
    h = layers.Dense(
        dense_units,
        activation="relu",
        kernel_regularizer=regularizers.l2(l2) if l2 else None,
        name="dense1",
    )(h)
    h = layers.Dropout(dropout, name="dense1_drop")(h)
    logits = layers.Dense(n_outputs, name="logits")(h)
    head = keras.Model(feat, logits, name="head")
    return _assemble(inputs, backbone, head, n_outputs, MOBILENET_V2)


def _normalised(inputs: keras.KerasTensor, normaliser: layers.Layer | None) -> keras.KerasTensor:
    """``normaliser(inputs)``, or the inputs themselves."""
    return inputs if normaliser is None else normaliser(inputs)


def _assemble(
    inputs: keras.KerasTensor,
    backbone: keras.Model,
    head: keras.Model,
    n_outputs: int,
    name: str,
) -> keras.Model:
    """Chain ``backbone`` and ``head`` and end in sigmoid (one output) or softmax."""
    activation = "sigmoid" if n_outputs == 1 else "softmax"
    outputs = layers.Activation(activation, name="probabilities", dtype="float32")(
        head(backbone(inputs))
    )
    return keras.Model(inputs, outputs, name=name)


def mobilenet_base(model: keras.Model) -> keras.Model:
    """The nested MobileNetV2 inside a classifier's backbone (for fine-tuning)."""
    backbone = model.get_layer("backbone")
    for layer in backbone.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(f"{model.name} has no nested base model")
