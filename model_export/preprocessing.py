"""Decoding and resizing of encoded images: the one definition, used in the graph.

The SavedModel's signatures call :func:`decode_batch`, and the training input
pipeline calls :func:`decode_and_resize` on the same bytes, so what the model saw
in training and what it sees in serving cannot drift. Normalisation
(scaling to the backbone's range) is a layer inside the Keras model itself, as is
the optional stain normalisation (:class:`ReinhardNormalisation`), so training and
every signature apply the same steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode one PNG/JPEG/BMP/GIF to RGB and resize it to ``image_size`` square.

    Grayscale is replicated to three channels, alpha is dropped, 16-bit images are
    scaled to 8-bit. Returns float32 in [0, 255], shape ``[S, S, 3]``.
    """
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return resize_decoded(image, image_size)


def resize_decoded(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize decoded uint8 RGB (``[H, W, 3]`` or ``[B, H, W, 3]``) to ``image_size`` square.

    The one resize both the bytes and the pixel signatures use. Returns float32
    in [0, 255].
    """
    resized = tf.image.resize(images, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def decode_batch(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode a ``[B]`` string tensor of encoded images to ``[B, S, S, 3]`` float32."""
    return tf.map_fn(
        lambda b: decode_and_resize(b, image_size),
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        parallel_iterations=16,
    )


# ------------------------------------------------------------ stain normalisation
#
# Reinhard et al. (2001) colour transfer, as used for H&E: each image's per-channel
# mean and standard deviation in CIELAB are mapped to a reference's (the training
# set's). Chosen over Macenko because it is a few element-wise ops per image: cheap
# and stable on 50 px patches, including nearly uniform ones, where Macenko's stain
# vectors (an eigen-decomposition of optical densities and angle percentiles) are
# ill-defined; and it has no data-dependent branches to trace into the graph.

# sRGB (D65) to CIE XYZ, and the D65 white point.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE = (0.950456, 1.0, 1.088754)
_DELTA = 6.0 / 29.0
# A floor on an image's channel spread (CIELAB units): a nearly uniform image is
# shifted to the reference mean rather than its noise blown up.
MIN_LAB_STD = 1.0


def rgb_to_lab(images: tf.Tensor) -> tf.Tensor:
    """Convert sRGB float in [0, 255] (last axis 3) to CIELAB (L in [0, 100])."""
    rgb = tf.clip_by_value(images / 255.0, 0.0, 1.0)
    linear = tf.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = tf.linalg.matvec(tf.constant(_XYZ_FROM_RGB), linear) / tf.constant(_WHITE)
    f = tf.where(
        xyz > _DELTA**3,
        tf.pow(tf.maximum(xyz, _DELTA**3), 1.0 / 3.0),
        xyz / (3 * _DELTA**2) + 4.0 / 29.0,
    )
    fx, fy, fz = tf.unstack(f, axis=-1)
    return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """Convert CIELAB to sRGB float in [0, 255] (out-of-gamut colours clipped)."""
    big_l, a, b = tf.unstack(lab, axis=-1)
    fy = (big_l + 16.0) / 116.0
    f = tf.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
    xyz = tf.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * tf.constant(_WHITE)
    rgb_from_xyz = tf.linalg.inv(tf.constant(_XYZ_FROM_RGB, dtype=tf.float64))
    linear = tf.linalg.matvec(tf.cast(rgb_from_xyz, tf.float32), xyz)
    linear = tf.clip_by_value(linear, 0.0, 1.0)
    srgb = tf.where(
        linear <= 0.0031308,
        12.92 * linear,
        1.055 * tf.pow(tf.maximum(linear, 0.0031308), 1.0 / 2.4) - 0.055,
    )
    return tf.clip_by_value(srgb * 255.0, 0.0, 255.0)


def lab_statistics(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-image CIELAB channel means and standard deviations of ``[B, H, W, 3]`` images.

    Returns:
        ``(mean [B, 3], std [B, 3])``.
    """
    lab = rgb_to_lab(images)
    mean, variance = tf.nn.moments(lab, axes=[1, 2])
    return mean, tf.sqrt(variance)


def reinhard_normalise(
    images: tf.Tensor, reference_mean: tf.Tensor, reference_std: tf.Tensor
) -> tf.Tensor:
    """Map each image's CIELAB mean and spread to the reference's (Reinhard colour transfer).

    Args:
        images: ``[B, H, W, 3]`` float in [0, 255].
        reference_mean: ``[3]`` CIELAB means of the reference (the training set).
        reference_std: ``[3]`` CIELAB standard deviations of the reference.

    Returns:
        ``[B, H, W, 3]`` float in [0, 255].
    """
    lab = rgb_to_lab(images)
    mean, variance = tf.nn.moments(lab, axes=[1, 2], keepdims=True)
    std = tf.maximum(tf.sqrt(variance), MIN_LAB_STD)
    matched = (lab - mean) / std * reference_std + reference_mean
    return lab_to_rgb(matched)


@keras.saving.register_keras_serializable(package="histoscreen")
class ReinhardNormalisation(keras.layers.Layer):
    """The model's first step: Reinhard stain normalisation to stored reference statistics.

    Being a layer of the model, it runs in training (after augmentation) and in every
    exported signature alike; its statistics are saved with the model and recorded
    in ``metadata.json`` (``serving["stain_normalisation"]``).
    """

    def __init__(self, lab_mean: Sequence[float], lab_std: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(lab_mean) != 3 or len(lab_std) != 3 or min(lab_std) <= 0:
            raise ValueError(
                f"Reinhard reference needs 3 means and 3 positive stds, got {lab_mean}, {lab_std}"
            )
        self.lab_mean = [float(v) for v in lab_mean]
        self.lab_std = [float(v) for v in lab_std]

    def call(self, inputs: Any) -> Any:  # a symbolic or eager tensor
        """Normalise a batch of RGB images in [0, 255]."""
        return reinhard_normalise(
            tf.cast(inputs, tf.float32), tf.constant(self.lab_mean), tf.constant(self.lab_std)
        )

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Same shape as the input."""
        return input_shape

    def get_config(self) -> dict[str, Any]:
        """Serialisable configuration (the reference statistics)."""
        return {**super().get_config(), "lab_mean": self.lab_mean, "lab_std": self.lab_std}

    def describe(self) -> dict[str, Any]:
        """What ``metadata.json`` records of this step."""
        return {
            "method": "reinhard",
            "space": "CIELAB (D65)",
            "reference_lab_mean": [round(v, 4) for v in self.lab_mean],
            "reference_lab_std": [round(v, 4) for v in self.lab_std],
        }
