"""The tiling rule: whole versus tiled, stride, level choice with and without mpp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histo_common.samples import synth_slide_image, write_pyramidal_tiff
from histo_common.slides import SlideGeometry, open_slide
from histo_common.tiling import (
    MODE_TILED,
    MODE_WHOLE,
    TilePlan,
    TilingError,
    TrainingScale,
    plan_tiles,
    read_tile,
    read_tiles,
)

IDC = TrainingScale(50, 50)


def _geometry(width: int, height: int, mpp: float | None = None, levels: int = 1) -> SlideGeometry:
    return SlideGeometry(
        uri="mem://slide",
        vendor="test",
        level_dimensions=tuple((width // 2**i, height // 2**i) for i in range(levels)),
        level_downsamples=tuple(float(2**i) for i in range(levels)),
        mpp=mpp,
    )


@pytest.mark.parametrize(
    ("size", "mode"),
    [
        ((50, 50), MODE_WHOLE),
        ((75, 75), MODE_WHOLE),
        ((45, 30), MODE_WHOLE),
        ((76, 50), MODE_TILED),
    ],
)
def test_whole_up_to_one_and_a_half_times_the_training_size(
    size: tuple[int, int], mode: str
) -> None:
    plan = plan_tiles(_geometry(*size), IDC)
    assert plan.mode == mode
    if mode == MODE_WHOLE:
        assert [(t.x, t.y, t.width, t.height) for t in plan.tiles] == [(0, 0, *size)]


def test_grid_covers_the_slide_with_training_size_tiles() -> None:
    plan = plan_tiles(_geometry(520, 240), IDC)
    assert plan.is_tiled and plan.scale_assumed and "assumed" in plan.scale
    assert plan.grid == (11, 5)  # the last column and row reach past the edge
    assert len(plan.tiles) == 55
    xs = sorted({t.x for t in plan.tiles})
    assert xs == list(range(0, 501, 50))
    assert {(t.width, t.height, t.level, t.read_width, t.out_width) for t in plan.tiles} == {
        (50, 50, 0, 50, 50)
    }


def test_stride_overlaps_tiles() -> None:
    plan = plan_tiles(_geometry(200, 100), IDC, stride=25)
    assert sorted({t.x for t in plan.tiles}) == [0, 25, 50, 75, 100, 125, 150]
    assert sorted({t.y for t in plan.tiles}) == [0, 25, 50]
    with pytest.raises(TilingError):
        plan_tiles(_geometry(200, 100), IDC, stride=0)


def test_level_and_resampling_from_both_mpps() -> None:
    # Trained at 1.5 um/px; slide at 0.25 um/px: a tile covers 300 level-0 px,
    # read at level 2 (x4) as 75 px and resampled to 50.
    slide = _geometry(8000, 6000, mpp=0.25, levels=4)
    plan = plan_tiles(slide, TrainingScale(50, 50, mpp=1.5))
    assert not plan.scale_assumed
    assert (plan.tile_width, plan.level) == (300, 2)
    t = plan.tiles[1]
    assert (t.x, t.width, t.read_width, t.out_width) == (300, 300, 75, 50)
    assert "level 2" in plan.scale
    assert plan.grid == (27, 20)
    # At exactly a level's downsample (2.0 / 0.25 = 8) that level is read as is.
    exact = plan_tiles(slide, TrainingScale(50, 50, mpp=2.0))
    assert (exact.level, exact.tiles[0].read_width, exact.tiles[0].width) == (3, 50, 400)
    # A stride is in training-scale pixels, so it scales too.
    assert plan_tiles(slide, TrainingScale(50, 50, mpp=2.0), stride=25).stride_x == 200
    # Physical size decides whole versus tiled: 8000 px at 0.25 is 1000 px at 2.0.
    small = _geometry(600, 600, mpp=0.25, levels=2)
    assert plan_tiles(small, TrainingScale(50, 50, mpp=2.0)).mode == MODE_WHOLE


def test_scale_assumed_when_either_side_lacks_mpp() -> None:
    slide = _geometry(8000, 6000, mpp=None, levels=4)
    plan = plan_tiles(slide, TrainingScale(50, 50, mpp=2.0))
    assert plan.scale_assumed and plan.level == 0 and plan.tile_width == 50
    assert "slide has no mpp" in plan.scale
    plan = plan_tiles(_geometry(8000, 6000, mpp=0.25, levels=4), IDC)
    assert plan.scale_assumed and "model has no mpp" in plan.scale


def test_model_without_scale_scores_whole_and_warns_on_large_inputs() -> None:
    big = plan_tiles(_geometry(3000, 2000), None, model_input_size=48)
    assert big.mode == MODE_WHOLE and big.scale_assumed
    assert len(big.warnings) == 1 and "records no training scale" in big.warnings[0]
    assert plan_tiles(_geometry(60, 60), None, model_input_size=48).warnings == ()


def test_plan_round_trips_through_json() -> None:
    plan = plan_tiles(_geometry(8000, 6000, mpp=0.25, levels=4), TrainingScale(50, 50, 2.0))
    again = TilePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


def test_read_tile_gives_training_size_pixels(tmp_path: Path) -> None:
    image, _ = synth_slide_image(800, 600, seed=1)
    path = tmp_path / "s.tif"
    write_pyramidal_tiff(image, str(path), mpp=0.5, min_side=128)
    with open_slide(str(path)) as slide:
        plan = plan_tiles(slide.geometry, TrainingScale(48, 48, mpp=2.0))
        assert plan.level == 2 and plan.tiles[0].read_width == 48
        batch = read_tiles(slide, plan.tiles[:5])
        assert batch.shape == (5, 48, 48, 3) and batch.dtype == np.uint8
        plan1 = plan_tiles(slide.geometry, TrainingScale(48, 48, mpp=1.5))
        assert plan1.level == 1 and plan1.tiles[0].read_width == 72
        tile = read_tile(slide, plan1.tiles[7])
        assert tile.shape == (48, 48, 3)
        region = plan1.tiles[7]
        direct = image[region.y : region.y + 144, region.x : region.x + 144].astype(float)
        coarse = direct.reshape(48, 3, 48, 3, 3).mean(axis=(1, 3))
        assert np.abs(tile - coarse).mean() < 12


def test_slide_rule_on_known_probabilities() -> None:
    from histo_common.tiling import summarise_tiles

    plan = plan_tiles(_geometry(500, 500), IDC)
    kw = {"threshold": 0.5, "positive_class": "malignant", "negative_class": "benign"}
    one_noisy = summarise_tiles(plan, [0.9] + [0.1] * 40, **kw)
    assert one_noisy.label == "benign" and one_noisy.max_probability == 0.9
    assert one_noisy.top_k_mean == pytest.approx((0.9 + 0.1 + 0.1) / 3)
    lesion = summarise_tiles(plan, [0.8, 0.7, 0.6] + [0.05] * 97, **kw)
    assert lesion.label == "malignant" and lesion.positive_fraction == pytest.approx(0.03)
    assert lesion.tiles_scored == 100 and lesion.scale_assumed
    few = summarise_tiles(plan, [0.6], **kw)
    assert few.top_k == 1 and few.label == "malignant"
    empty = summarise_tiles(plan, [], **kw)
    assert empty.label == "benign" and empty.tiles_scored == 0
    with pytest.raises(TilingError):
        summarise_tiles(plan, [0.5], top_k=0, **kw)
