"""The one error-reason helper and the one overlay wrapper and display upscale."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from histo_common.errors import one_line
from histo_common.overlay import MIN_SIDE, overlay_png, upscale_for_display
from histo_common.results import Prediction


def test_one_line_keeps_what_went_wrong() -> None:
    tf_message = (
        "Graph execution error:\n\nDetected at node map/DecodeImage defined at (most recent "
        "call last):\n<stack traces unavailable>\nInvalid PNG. Failed to initialize decoder.\n"
        "\t [[{{node map/DecodeImage}}]] [Op:__inference_signature_wrapper_2175]"
    )
    assert one_line(ValueError(tf_message)) == (
        "ValueError: Invalid PNG. Failed to initialize decoder."
    )
    assert one_line(KeyError("KeyError inside")) == "'KeyError inside'"
    assert one_line(RuntimeError("")) == "RuntimeError"
    assert one_line("x" * 400).endswith("...") and len(one_line("x" * 400)) == 300


def test_upscale_reaches_the_minimum_side_by_a_whole_factor() -> None:
    small = np.arange(48 * 50 * 3, dtype=np.uint32).astype(np.uint8).reshape(48, 50, 3)
    big = upscale_for_display(small)
    assert big.shape == (288, 300, 3)  # ceil(256 / 48) = 6; floor would stop at 240
    assert min(big.shape[:2]) >= MIN_SIDE
    np.testing.assert_array_equal(big[::6, ::6], small)  # each pixel a 6x6 block
    assert upscale_for_display(np.zeros((100, 120, 3), np.uint8)).shape == (300, 360, 3)
    unchanged = np.zeros((300, 400, 3), dtype=np.uint8)
    assert upscale_for_display(unchanged) is unchanged


def test_overlay_png_from_bytes_or_pixels_is_the_same_picture() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    heat = rng.random((8, 8)).astype(np.float32)
    prediction = Prediction(0.8, "tumour", 0.5)

    from_bytes = overlay_png(encoded.getvalue(), prediction, heat, positive_class="tumour")
    from_pixels = overlay_png(pixels, prediction, heat, positive_class="tumour")
    faint = overlay_png(pixels, prediction, heat, positive_class="tumour", opacity=0.0)

    assert from_bytes == from_pixels
    drawn = np.asarray(Image.open(io.BytesIO(from_pixels)).convert("RGB"), dtype=float)
    assert min(drawn.shape[:2]) > MIN_SIDE
    assert np.abs(drawn - np.asarray(Image.open(io.BytesIO(faint)).convert("RGB"))).mean() > 5


def test_overlay_png_encoder_keeps_every_pixel() -> None:
    from histo_common.overlay import encode_overlay_png

    rng = np.random.default_rng(1)
    for shape in ((1, 1, 3), (7, 5, 3), (120, 90, 3)):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        pixels[len(pixels) // 2 :] = pixels[len(pixels) // 2 : len(pixels) // 2 + 1]  # repeats
        decoded = np.asarray(Image.open(io.BytesIO(encode_overlay_png(pixels))).convert("RGB"))
        assert np.array_equal(decoded, pixels)
    with pytest.raises(ValueError, match="RGB"):
        encode_overlay_png(np.zeros((4, 4), np.uint8))
