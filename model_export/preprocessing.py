"""Decoding and resizing of encoded images: the one definition, used in the graph.

The SavedModel's signatures call :func:`decode_batch`, and the training input
pipeline calls :func:`decode_and_resize` on the same bytes, so what the model saw
in training and what it sees in serving cannot drift. Normalisation
(scaling to the backbone's range) is a layer inside the Keras model itself.
"""

from __future__ import annotations

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
