"""Result rows with and without slide fields, and tile rows."""

from __future__ import annotations

import json

import pytest

from histo_common.results import (
    ALL_RESULT_COLUMNS,
    RESULT_COLUMNS,
    SLIDE_COLUMNS,
    TILE_COLUMNS,
    Prediction,
    ResultRow,
    TileRow,
)
from histo_common.slides import SlideGeometry
from histo_common.tiling import TrainingScale, plan_tiles, summarise_tiles

KW = {"model_name": "m", "model_version": 2, "scored_at": "2026-01-01T00:00:00.000Z"}


def test_whole_input_row_has_exactly_the_patch_columns() -> None:
    row = ResultRow.build("a.png", Prediction(0.25, "benign", 0.5), width=50, height=50, **KW)
    data = json.loads(row.to_json())
    assert tuple(data) == RESULT_COLUMNS  # no slide field, not even null
    assert not row.is_tiled
    assert ResultRow.from_dict(data) == row
    assert set(row.to_columns()) == set(ALL_RESULT_COLUMNS)


def test_slide_row_carries_the_slide_rule() -> None:
    geometry = SlideGeometry("s.tif", "generic-tiff", ((500, 300),), (1.0,), None)
    plan = plan_tiles(geometry, TrainingScale(50, 50))
    plan = plan.with_tiles(plan.tiles[:20])  # the tissue tiles
    probs = [0.9, 0.8, 0.7] + [0.1] * 17
    summary = summarise_tiles(
        plan, probs, threshold=0.5, positive_class="malignant", negative_class="benign"
    )
    row = ResultRow.for_slide("s.tif", summary, width=500, height=300, **KW)
    data = json.loads(row.to_json())
    assert set(SLIDE_COLUMNS) <= set(data)
    assert row.label == "malignant" and row.probability == pytest.approx(0.8)
    assert (row.tiles_scored, row.tissue_tiles, row.grid_tiles) == (20, 20, 60)
    assert row.positive_fraction == pytest.approx(3 / 20)
    assert row.scale_assumed is True and "assumed" in (row.scale or "")
    assert ResultRow.from_dict(data) == row
    with pytest.raises(ValueError, match="missing"):
        ResultRow.from_dict({k: v for k, v in data.items() if k != "label"})


def test_tile_row_fields_are_the_published_names() -> None:
    assert TILE_COLUMNS[:7] == ("uri", "x", "y", "width", "height", "level", "probability")
    tile = TileRow("s.tif", 50, 100, 50, 50, 0, 0.75, "m", 2)
    assert TileRow.from_dict(json.loads(tile.to_json())) == tile
