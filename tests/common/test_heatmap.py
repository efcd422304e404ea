"""The slide heatmap renderer on real pixels: tile colours land at their places."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from histo_common.heatmap import TileBox, paint_tiles, render_slide_heatmap
from histo_common.overlay import colormap


def _png_pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_paint_tiles_places_probabilities_and_keeps_the_higher_on_overlap() -> None:
    tiles = [TileBox(0, 0, 100, 100, 0.2), TileBox(50, 0, 100, 100, 0.9)]
    heat = paint_tiles((12, 20), 10.0, tiles)
    assert heat[0, 0] == pytest.approx(0.2)
    assert heat[0, 7] == pytest.approx(0.9)  # overlap: the more suspicious tile shows
    assert heat[0, 12] == pytest.approx(0.9)
    assert np.isnan(heat[5, 18]) and np.isnan(heat[11, 0])  # no tile there


def test_hot_tile_is_hot_at_its_place_and_glass_is_untouched() -> None:
    # A 600x400 px thumbnail of a 6000x4000 slide: tiles of 1000 level-0 px = 100 thumb px.
    thumb = np.full((400, 600, 3), 235, np.uint8)
    tiles = [TileBox(0, 0, 1000, 1000, 1.0), TileBox(3000, 2000, 1000, 1000, 0.0)]
    png = render_slide_heatmap(thumb, 10.0, tiles, threshold=0.5, title="slide.tif  malignant")
    pixels = _png_pixels(png)
    # Where the thumbnail is drawn: render again without tiles and compare.
    plain = _png_pixels(
        render_slide_heatmap(thumb, 10.0, [], threshold=0.5, title="slide.tif  malignant")
    )
    changed = np.any(pixels != plain, axis=-1)
    ys, xs = np.nonzero(changed)
    top, left = ys.min(), xs.min()
    hot = pixels[top + 50, left + 50].astype(int)
    cold = pixels[top + 250, left + 350].astype(int)
    glass = pixels[top + 150, left + 550].astype(int)
    assert hot[0] > hot[2] + 60, f"p=1 tile is not red: {hot}"
    assert cold[2] > cold[0] + 60, f"p=0 tile is not blue: {cold}"
    assert (glass == 235).all(), "glass without a tile must keep the thumbnail's colour"
    # The hot tile is painted with the colour map's top colour blended over the tissue.
    top_colour = colormap(np.array([1.0]))[0].astype(int)
    expected = np.round(0.4 * 235 + 0.6 * top_colour)
    assert np.abs(hot - expected).max() <= 1


def test_legend_marks_the_threshold_and_title_is_drawn() -> None:
    thumb = np.full((300, 300, 3), 240, np.uint8)
    low = _png_pixels(render_slide_heatmap(thumb, 1.0, [], threshold=0.2, title="a"))
    high = _png_pixels(render_slide_heatmap(thumb, 1.0, [], threshold=0.8, title="a"))
    assert low.shape == high.shape
    diff_rows = np.nonzero(np.any(low != high, axis=(1, 2)))[0]
    assert diff_rows.size, "the threshold mark does not move with the threshold"
    # A legend in colour: the jet ramp's red and blue are both present right of the image.
    right = low[:, 615:].astype(int)  # the 300 px thumbnail is drawn at 600 px
    for value in (0.98, 0.02):
        colour = colormap(np.array([value]))[0].astype(int)
        assert (np.abs(right - colour).max(axis=-1) <= 3).any(), f"no {value} on the scale"
    titled = _png_pixels(render_slide_heatmap(thumb, 1.0, [], threshold=0.2, title="slide 42"))
    untitled = _png_pixels(render_slide_heatmap(thumb, 1.0, [], threshold=0.2, title=""))
    assert titled.shape[0] > untitled.shape[0]


def test_small_thumbnail_enlarged_and_bad_arguments_refused() -> None:
    thumb = np.full((40, 60, 3), 200, np.uint8)
    pixels = _png_pixels(render_slide_heatmap(thumb, 5.0, [], threshold=0.5, title="x"))
    assert pixels.shape[1] >= 512
    with pytest.raises(ValueError):
        render_slide_heatmap(thumb[..., 0], 5.0, [], threshold=0.5, title="x")
    with pytest.raises(ValueError):
        render_slide_heatmap(thumb, 5.0, [], threshold=0.5, title="x", opacity=0.0)
