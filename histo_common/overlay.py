"""Rendering of Grad-CAM heatmaps over images, for people to look at.

The heatmap maths lives in the SavedModel (``model_export``); this module only
draws: the original image with the heatmap blended over it, a colour scale, and a
caption with the prediction. The function, the bulk job, the evaluation gallery
and the app all call :func:`overlay_png`, so an overlay looks the same wherever it
was made, and show small images through :func:`upscale_for_display`.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageFont

from histo_common.results import Prediction

MIN_SIDE = 256  # patches are tiny (50 px); draw them large enough to read
_BAR_WIDTH = 18
_MARGIN = 8
_FONT_SIZE = 13
_LINE_HEIGHT = 18  # pixels: the caption font's ascent plus descent, with room


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with the 'jet' colour map (blue low, red high)."""
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def blend(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """Blend a heatmap (H'xW' in [0,1], any size) over an RGB uint8 image.

    Args:
        image: HxWx3 uint8.
        heatmap: 2-D array of values in [0, 1].
        opacity: weight of the heatmap colours, 0 (image only) to 1 (heatmap only).

    Returns:
        HxWx3 uint8.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    h, w = image.shape[:2]
    grey = Image.fromarray((np.clip(np.nan_to_num(heatmap), 0, 1) * 255).astype(np.uint8))
    heat = np.asarray(grey.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    colours = colormap(heat).astype(np.float32)
    out = (1.0 - opacity) * image.astype(np.float32) + opacity * colours
    return np.clip(out, 0, 255).astype(np.uint8)


def upscale_for_display(image: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Scale a small image up, nearest neighbour, to a shorter side of at least ``min_side``.

    The factor is the smallest whole one that reaches ``min_side``; larger images are
    returned as they are.

    The factor is rounded up (ceil), not down: with floor a 100 px patch would be
    shown at 200 px, under the size meant to be readable, and a 200 px one not
    enlarged at all. A whole factor keeps every pixel a square block, so nothing
    is invented between pixels.

    Args:
        image: HxW or HxWxC uint8.
        min_side: the shorter side to reach.

    Returns:
        The enlarged image (or ``image`` itself when no enlarging is needed).
    """
    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if scale == 1:
        return image
    return np.asarray(
        Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    )


def load_rgb(data: bytes) -> np.ndarray:
    """Decode image bytes to RGB uint8 for drawing (not for the model)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    caption: str = "",
    opacity: float = 0.45,
) -> bytes:
    """Draw the Grad-CAM overlay as a PNG: image with heatmap, colour scale, caption.

    Args:
        image: HxWx3 uint8 original image.
        heatmap: 2-D Grad-CAM values in [0, 1].
        caption: a line such as ``"malignant p=0.93 (threshold 0.50)"``.
        opacity: heatmap weight in the blend.

    Returns:
        PNG bytes.
    """
    return encode_overlay_png(draw_overlay(image, heatmap, caption=caption, opacity=opacity))


def draw_overlay(
    image: np.ndarray, heatmap: np.ndarray, *, caption: str = "", opacity: float = 0.45
) -> np.ndarray:
    """The overlay picture as RGB uint8 (see :func:`render_overlay`), not yet encoded.

    Drawn with numpy at the display size, once: the colour scale with its labels
    is made once per height and the caption is laid out from cached glyphs, so
    no text is rasterised per image (FreeType took most of the drawing time).
    """
    shown = upscale_for_display(blend(image, heatmap, opacity))
    height_shown, width_shown = shown.shape[:2]
    text = _text_mask(caption) if caption else None
    caption_h = 22 if caption else 0
    legend = _legend(height_shown)
    width = max(
        width_shown + 2 * _MARGIN + legend.shape[1],
        (text.shape[1] if text is not None else 0) + 2 * _MARGIN,
    )
    height = height_shown + 2 * _MARGIN + caption_h
    canvas = np.full((height, width, 3), 255, np.uint8)
    top = _MARGIN + caption_h
    canvas[top : top + height_shown, _MARGIN : _MARGIN + width_shown] = shown
    bar_x = width_shown + 2 * _MARGIN
    canvas[top : top + height_shown, bar_x : bar_x + legend.shape[1]] = legend
    if text is not None:
        region = canvas[4 : 4 + text.shape[0], _MARGIN : _MARGIN + text.shape[1]]
        np.minimum(region, (255 - text)[..., None], out=region)  # black text on white
    return canvas


def encode_overlay_png(canvas: np.ndarray) -> bytes:
    """Encode an RGB uint8 picture as PNG, fast, for overlays.

    Every row is stored with PNG's "Up" filter: an overlay is enlarged by a whole
    factor, so most rows repeat the one above and filter to zeros, which zlib's
    fastest level packs well. About twice as fast as Pillow's adaptive filtering
    at its fastest level, and smaller; the pixels are exactly the same.
    """
    pixels = np.ascontiguousarray(canvas, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {pixels.shape}")
    h, w, _ = pixels.shape
    rows = pixels.reshape(h, w * 3)
    filtered = np.empty((h, 1 + w * 3), np.uint8)
    filtered[0, 0] = 0  # the first row has no row above: filter "None"
    filtered[0, 1:] = rows[0]
    filtered[1:, 0] = 2  # "Up": each byte minus the byte above, modulo 256
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:], dtype=np.uint8, casting="unsafe")
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(filtered.data, 1)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=_FONT_SIZE)
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow's wheels always have FreeType
        raise RuntimeError("this Pillow was built without FreeType, which overlay captions need")
    return font


@functools.lru_cache(maxsize=256)
def _glyph(char: str) -> tuple[np.ndarray, int, int, int]:
    """One character's coverage mask, its offset in the line and its advance, in pixels."""
    font = _font()
    mask, (dx, dy) = font.getmask2(char)
    coverage = np.asarray(mask, dtype=np.uint8).reshape(mask.size[1], mask.size[0])
    return coverage, int(dx), int(dy), int(np.ceil(font.getlength(char)))


@functools.lru_cache(maxsize=64)
def _text_mask(text: str) -> np.ndarray:
    """A line of text as a coverage mask (uint8, 255 = ink), laid out from cached glyphs."""
    glyphs = [_glyph(char) for char in text]
    width = max(1, sum(advance for *_, advance in glyphs) + 2)
    mask = np.zeros((_LINE_HEIGHT, width), np.uint8)
    x = 0
    for coverage, dx, dy, advance in glyphs:
        h, w = coverage.shape
        y0, x0 = max(0, dy), x + max(0, dx)
        h, w = min(h, _LINE_HEIGHT - y0), min(w, width - x0)
        if h > 0 and w > 0:
            target = mask[y0 : y0 + h, x0 : x0 + w]
            np.maximum(target, coverage[:h, :w], out=target)
        x += advance
    return mask


@functools.lru_cache(maxsize=8)
def _legend(height: int) -> np.ndarray:
    """The colour scale (high at the top) with its 1.0 / 0.5 / 0.0 labels, for one height."""
    legend = np.full((height, _BAR_WIDTH + 34, 3), 255, np.uint8)
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(_BAR_WIDTH, axis=1)
    legend[:, :_BAR_WIDTH] = colormap(ramp)
    legend[[0, -1], :_BAR_WIDTH] = 0  # outline
    legend[:, [0, _BAR_WIDTH - 1]] = 0
    for label, y in (("1.0", 0), ("0.5", height // 2 - 7), ("0.0", height - 14)):
        text = _text_mask(label)
        h, w = min(text.shape[0], height - max(0, y)), min(text.shape[1], 31)
        region = legend[max(0, y) : max(0, y) + h, _BAR_WIDTH + 3 : _BAR_WIDTH + 3 + w]
        np.minimum(region, (255 - text[:h, :w])[..., None], out=region)
    legend.setflags(write=False)
    return legend


def overlay_caption(label: str, probability: float, threshold: float, positive_class: str) -> str:
    """Caption text shared by every overlay; ``probability`` is of ``positive_class``."""
    return (
        f"{label}  p({positive_class})={probability:.3f}  threshold={threshold:.3f}  "
        "research use only"
    )


def overlay_png(
    image: bytes | np.ndarray,
    prediction: Prediction,
    heatmap: np.ndarray,
    *,
    positive_class: str,
    opacity: float = 0.45,
) -> bytes:
    """The Grad-CAM overlay PNG of one scored image, captioned with its prediction.

    Args:
        image: the encoded image (as the model read it) or its RGB pixels.
        prediction: what the model said.
        heatmap: the Grad-CAM heatmap in [0, 1].
        positive_class: the class ``prediction.probability`` is of (model metadata).
        opacity: heatmap weight in the blend.

    Returns:
        PNG bytes.
    """
    return encode_overlay_png(
        overlay_picture(image, prediction, heatmap, positive_class=positive_class, opacity=opacity)
    )


def overlay_picture(
    image: bytes | np.ndarray,
    prediction: Prediction,
    heatmap: np.ndarray,
    *,
    positive_class: str,
    opacity: float = 0.45,
) -> np.ndarray:
    """What :func:`overlay_png` encodes: the captioned overlay as RGB uint8 pixels."""
    pixels = load_rgb(image) if isinstance(image, bytes) else image
    caption = overlay_caption(
        prediction.label, prediction.probability, prediction.threshold, positive_class
    )
    return draw_overlay(pixels, heatmap, caption=caption, opacity=opacity)
