"""Grad-CAM maths (Selvaraju et al. 2017), kept apart from any rendering.

The classifier is two Keras models in sequence, ``backbone`` (image -> last
convolutional feature map) and ``head`` (feature map -> logits), so the same code
serves the custom CNN and MobileNetV2, whose base is a nested model.
"""

from __future__ import annotations

import tensorflow as tf

_EPS = 1e-8


def gradcam_heatmap(
    backbone: tf.keras.Model,
    head: tf.keras.Model,
    images: tf.Tensor,
    class_index: int,
    output_size: int,
    sign: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Compute logits and the Grad-CAM heatmap for one class.

    Args:
        backbone: image batch -> feature maps ``[B, h, w, C]``.
        head: feature maps -> logits ``[B, K]`` (K = 1 for a sigmoid binary model).
        images: ``[B, S, S, 3]`` float32 in [0, 255].
        class_index: which logit to explain (0 for a binary model's single logit).
        output_size: side of the returned heatmap (bilinear upsampling).
        sign: -1 explains the opposite of the logit (class 0 of a sigmoid model).

    Returns:
        ``(logits [B, K], heatmap [B, output_size, output_size])`` with heatmap
        values in [0, 1]; an image whose evidence is all zero gets an all-zero
        heatmap, never NaN.
    """
    features = backbone(images, training=False)
    with tf.GradientTape() as tape:
        tape.watch(features)
        logits = head(features, training=False)
        target = sign * logits[:, class_index]
    grads = tape.gradient(target, features)
    grads = tf.where(tf.math.is_finite(grads), grads, tf.zeros_like(grads))
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))  # [B, h, w]
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, tf.maximum(peak, _EPS))
    cam = tf.image.resize(cam[..., None], [output_size, output_size], method="bilinear")[..., 0]
    return logits, tf.clip_by_value(cam, 0.0, 1.0)
