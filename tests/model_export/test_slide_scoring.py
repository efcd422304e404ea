"""The single-process slide scorer on a real synthetic slide and a real SavedModel."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo_common.results import ResultRow, TileRow
from histo_common.samples import generate_slide
from histo_common.slides import open_slide
from histo_common.tiling import read_tiles
from model_export.slide_scoring import (
    SlideSettings,
    explain_top,
    score_input,
    tile_probabilities,
)


@pytest.fixture(scope="module")
def slide_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("slides")
    return generate_slide(str(root / "slide.tif"), 1024, 768, seed=3, mpp=None).uri


def _settings(model, **kw):
    return SlideSettings.from_metadata(model.metadata, **kw)


def test_tiled_input_scored_tile_by_tile(loaded_tiny_model, slide_uri: str) -> None:
    model = loaded_tiny_model
    score = score_input(model, slide_uri, model.identity, _settings(model, batch_size=7))
    assert score.ok and score.is_tiled and score.plan is not None
    plan, summary, row = score.plan, score.summary, score.row
    assert summary is not None and row is not None
    # Tissue tiles only, every one scored, each a tile row at its level-0 place.
    assert 0 < summary.tiles_scored == summary.tissue_tiles == len(plan.tiles) < summary.grid_tiles
    assert [(t.x, t.y) for t in score.tiles] == [(r.x, r.y) for r in plan.tiles]
    assert {(t.width, t.height, t.level) for t in score.tiles} == {(48, 48, 0)}
    # Batched reads give what one call on all tiles gives.
    with open_slide(slide_uri) as slide:
        direct = [p.probability for p in model.predict_pixels(read_tiles(slide, plan.tiles))]
    np.testing.assert_allclose([t.probability for t in score.tiles], direct, atol=1e-5)
    # The row carries the slide rule's verdict; it round-trips through JSON.
    top = sorted(direct, reverse=True)[: summary.top_k]
    assert row.probability == pytest.approx(np.mean(top), abs=1e-5)
    assert row.max_probability == pytest.approx(max(direct), abs=1e-5)
    assert (
        row.is_tiled
        and row.scale_assumed is True
        and (row.image_width, row.image_height)
        == (
            1024,
            768,
        )
    )
    assert ResultRow.from_dict(eval_json(row.to_json())) == row
    assert TileRow.from_dict(eval_json(score.tiles[0].to_json())) == score.tiles[0]
    # The heatmap is a PNG larger than the thumbnail, with the tile colours on it.
    with Image.open(io.BytesIO(score.heatmap_png())) as img:
        assert img.format == "PNG" and img.width > score.thumbnail.shape[1]


def eval_json(text: str) -> dict:
    import json

    return json.loads(text)


def test_whole_input_keeps_todays_row(loaded_tiny_model, sample_dir: Path) -> None:
    model = loaded_tiny_model
    patch = sorted((sample_dir / "malignant").glob("*.png"))[0]
    score = score_input(model, str(patch), model.identity, _settings(model))
    assert score.ok and not score.is_tiled and not score.tiles
    (expected,) = model.predict([patch.read_bytes()])
    assert score.row is not None
    assert score.row.probability == pytest.approx(expected.probability, abs=1e-6)
    # A patch row has exactly today's columns: no slide field, not even as null.
    assert "tiles_scored" not in score.row.to_json()


def test_unreadable_inputs_are_outcomes_with_reasons(loaded_tiny_model, tmp_path: Path) -> None:
    model = loaded_tiny_model
    fake = tmp_path / "notes.svs"
    fake.write_text("not a slide\n")
    score = score_input(model, str(fake), model.identity, _settings(model))
    assert not score.ok and score.stage == "read" and str(fake) in (score.error or "")
    assert score.error_row().uri == str(fake)
    with pytest.raises(ValueError):
        score.heatmap_png()


def test_explain_top_tiles(loaded_tiny_model, slide_uri: str) -> None:
    model = loaded_tiny_model
    score = score_input(model, slide_uri, model.identity, _settings(model))
    explained = explain_top(model, score, 2)
    assert [e.tile for e in explained] == score.top_tiles(2)
    for e in explained:
        assert e.prediction.probability == pytest.approx(e.tile.probability, abs=1e-5)
        assert e.heatmap.ndim == 2 and e.pixels.shape == (48, 48, 3)


def test_tile_probabilities_through_bytes_only_model(loaded_tiny_model, slide_uri: str) -> None:
    """A model without ``run_pixels`` (TF Serving's client) gets PNG tiles: same scores."""

    class BytesOnly:
        def run(self, signature, images):
            return loaded_tiny_model.run(signature, images)

    model = loaded_tiny_model
    score = score_input(model, slide_uri, model.identity, _settings(model))
    regions = score.plan.tiles[:5]
    with open_slide(slide_uri) as slide:
        via_png = tile_probabilities(BytesOnly(), slide, regions)
    np.testing.assert_allclose(via_png, [t.probability for t in score.tiles[:5]], atol=1e-4)


def test_a_new_version_judges_tiles_with_its_threshold_and_the_jobs_choices(
    loaded_tiny_model,
) -> None:
    from dataclasses import replace

    job = _settings(loaded_tiny_model, top_k=3, stride=24, min_tissue=0.2)
    newer = replace(loaded_tiny_model.metadata, version=7, threshold=0.81)
    judged = job.judged_by(newer)
    assert judged.threshold == pytest.approx(0.81)
    assert (judged.top_k, judged.stride, judged.min_tissue) == (3, 24, 0.2)
    assert judged.scale == job.scale
    # Tiles cut at one scale cannot be judged by a version trained at another.
    other = replace(newer, native_size=[100, 100], mpp=1.0)
    with pytest.raises(ValueError, match="model version 7 has another training scale"):
        job.judged_by(other)
