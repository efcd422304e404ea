"""Rendering of Grad-CAM heatmaps over images, for people to look at.

The heatmap maths lives in the SavedModel (``model_export``); this module only
draws: the original image with the heatmap blended over it, a colour scale, and a
caption with the prediction. The function, the bulk job, the evaluation gallery
and the app all call :func:`overlay_png`, so an overlay looks the same wherever it
was made, and show small images through :func:`upscale_for_display`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from histo_common.results import Prediction

MIN_SIDE = 256  # patches are tiny (50 px); draw them large enough to read
_BAR_WIDTH = 18
_MARGIN = 8


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
    shown = Image.fromarray(upscale_for_display(blend(image, heatmap, opacity)))
    font = ImageFont.load_default(size=13)
    caption_h = 22 if caption else 0
    caption_w = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(caption, font=font))
    width = max(shown.width + 3 * _MARGIN + _BAR_WIDTH + 34, caption_w + 2 * _MARGIN)
    height = shown.height + 2 * _MARGIN + caption_h
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(shown, (_MARGIN, _MARGIN + caption_h))
    draw = ImageDraw.Draw(canvas)
    if caption:
        draw.text((_MARGIN, 4), caption, fill="black", font=font)
    # Colour scale: high at the top, low at the bottom.
    bar_x = shown.width + 2 * _MARGIN
    bar_top = _MARGIN + caption_h
    ramp = np.linspace(1.0, 0.0, shown.height)[:, None].repeat(_BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray(colormap(ramp)), (bar_x, bar_top))
    draw.rectangle(
        (bar_x, bar_top, bar_x + _BAR_WIDTH - 1, bar_top + shown.height - 1), outline="black"
    )
    label_x = bar_x + _BAR_WIDTH + 3
    draw.text((label_x, bar_top), "1.0", fill="black", font=font)
    draw.text((label_x, bar_top + shown.height // 2 - 7), "0.5", fill="black", font=font)
    draw.text((label_x, bar_top + shown.height - 14), "0.0", fill="black", font=font)
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


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
    pixels = load_rgb(image) if isinstance(image, bytes) else image
    caption = overlay_caption(
        prediction.label, prediction.probability, prediction.threshold, positive_class
    )
    return render_overlay(pixels, heatmap, caption=caption, opacity=opacity)
