"""The heatmap of a tiled input: tile probabilities over its thumbnail, for people to read.

Each scored tile is painted at its place on the slide's thumbnail in the colour
of its probability (the same colour map as the Grad-CAM overlays,
:func:`histo_common.overlay.colormap`: blue low, red high), blended over the
tissue so the tissue stays visible; glass and tiles the tissue mask dropped are
left as they are. Beside it a colour scale from 0 to 1 with the decision
threshold marked, and above it a title: the input's name, the slide label and
the top-k mean probability. Pure: numpy/PIL in, PNG bytes out; the Beam job,
the function and the app all call :func:`render_slide_heatmap`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from histo_common.overlay import colormap

MIN_DISPLAY_SIDE = 512  # small thumbnails are enlarged to at least this (longer side)
MAX_DISPLAY_SIDE = 1024
DEFAULT_OPACITY = 0.6
_BAR_WIDTH = 20
_MARGIN = 10
_TITLE_LINE = 18
_MIN_BAR = 120


@dataclass(frozen=True)
class TileBox:
    """A scored tile's level-0 rectangle and probability (what the heatmap paints)."""

    x: int
    y: int
    width: int
    height: int
    probability: float


def paint_tiles(shape: tuple[int, int], downsample: float, tiles: Sequence[TileBox]) -> np.ndarray:
    """Tile probabilities on a grid of ``shape`` pixels that each cover ``downsample`` level-0 px.

    Where tiles overlap (a stride smaller than the tile) the higher probability
    wins, as the more suspicious one should be seen.

    Returns:
        ``[h, w]`` float32: the probability under each pixel, NaN where no tile is.
    """
    h, w = shape
    heat = np.full((h, w), np.nan, np.float32)
    for t in tiles:
        x0 = int(np.floor(t.x / downsample))
        y0 = int(np.floor(t.y / downsample))
        x1 = max(x0 + 1, int(np.ceil((t.x + t.width) / downsample)))
        y1 = max(y0 + 1, int(np.ceil((t.y + t.height) / downsample)))
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        block = heat[y0:y1, x0:x1]
        np.fmax(block, np.float32(t.probability), out=block)
    return heat


def _display(thumbnail: np.ndarray) -> tuple[np.ndarray, float]:
    """The thumbnail at a readable size, and display pixels per thumbnail pixel."""
    h, w = thumbnail.shape[:2]
    side = max(h, w)
    factor = 1.0
    if side < MIN_DISPLAY_SIDE:
        factor = float(int(np.ceil(MIN_DISPLAY_SIDE / side)))  # whole factor: crisp pixels
    elif side > MAX_DISPLAY_SIDE:
        factor = MAX_DISPLAY_SIDE / side
    if factor == 1.0:
        return thumbnail, 1.0
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    how = Image.Resampling.NEAREST if factor > 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(thumbnail).resize(size, how)), factor


def heatmap_title(name: str, label: str, top_k_mean: float, top_k: int, tiles: int) -> str:
    """The heatmap's title line."""
    return f"{name}   {label}   top-{top_k} mean p={top_k_mean:.3f}   {tiles} tiles"


def render_slide_heatmap(
    thumbnail: np.ndarray,
    downsample: float,
    tiles: Sequence[TileBox],
    *,
    threshold: float,
    title: str,
    subtitle: str = "",
    opacity: float = DEFAULT_OPACITY,
) -> bytes:
    """Draw a tiled input's heatmap PNG.

    Args:
        thumbnail: ``[h, w, 3]`` uint8 RGB of the whole input.
        downsample: level-0 pixels per thumbnail pixel.
        tiles: the scored tiles (level-0 rectangles) with their probabilities.
        threshold: the model's threshold, marked on the colour scale.
        title: first line (see :func:`heatmap_title`).
        subtitle: second line (e.g. the scale and the research-use note).
        opacity: weight of the tile colours over the tissue, in (0, 1].

    Returns:
        PNG bytes.
    """
    if not 0.0 < opacity <= 1.0:
        raise ValueError(f"opacity must be in (0, 1], got {opacity}")
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or downsample <= 0:
        raise ValueError("thumbnail must be [h, w, 3] RGB with a positive downsample")
    shown, factor = _display(np.asarray(thumbnail, np.uint8))
    heat = paint_tiles(shown.shape[:2], downsample / factor, tiles)
    painted = ~np.isnan(heat)
    out = shown.astype(np.float32)
    colours = colormap(np.nan_to_num(heat)).astype(np.float32)
    out[painted] = (1.0 - opacity) * out[painted] + opacity * colours[painted]
    image = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))

    font = ImageFont.load_default(size=14)
    lines = [line for line in (title, subtitle) if line]
    title_h = _TITLE_LINE * len(lines) + (_MARGIN if lines else 0)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((int(probe.textlength(line, font=font)) for line in lines), default=0)
    legend_w = 3 * _MARGIN + _BAR_WIDTH + 140
    width = max(image.width + legend_w, text_w + 2 * _MARGIN)
    height = _MARGIN + title_h + max(image.height, _MIN_BAR) + _TITLE_LINE + _MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    top = _MARGIN + title_h
    canvas.paste(image, (_MARGIN, top))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((_MARGIN, _MARGIN + i * _TITLE_LINE), line, fill="black", font=font)
    _draw_legend(draw, canvas, _MARGIN * 2 + image.width, top, image.height, threshold, font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _draw_legend(
    draw: ImageDraw.ImageDraw,
    canvas: Image.Image,
    x: int,
    top: int,
    height: int,
    threshold: float,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """A vertical colour scale (1 at the top) with ticks and the threshold marked."""
    bar_h = max(height, _MIN_BAR)
    ramp = np.linspace(1.0, 0.0, bar_h)[:, None].repeat(_BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray(colormap(ramp)), (x, top))
    draw.rectangle((x, top, x + _BAR_WIDTH - 1, top + bar_h - 1), outline="black")
    label_x = x + _BAR_WIDTH + 4
    for value in (1.0, 0.5, 0.0):
        y = top + round((1.0 - value) * (bar_h - 1))
        draw.line((x + _BAR_WIDTH, y, x + _BAR_WIDTH + 3, y), fill="black")
        draw.text(
            (label_x, min(max(top, y - 7), top + bar_h - 14)),
            f"{value:.1f}",
            font=font,
            fill="black",
        )
    t = float(np.clip(threshold, 0.0, 1.0))
    y = top + round((1.0 - t) * (bar_h - 1))
    draw.line((x - 3, y, x + _BAR_WIDTH + 2, y), fill="black", width=2)
    draw.text((label_x + 28, y - 7), f"threshold {t:.2f}", font=font, fill="black")
    draw.text((x, top + bar_h + 2), "probability", font=font, fill="black")
