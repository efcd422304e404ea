"""The tissue mask: on synthetic slides, and on real IDC patients reassembled as slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histo_common.samples import SlideSample, generate_slide, reassemble_idc_patient
from histo_common.slides import open_slide
from histo_common.tiling import TrainingScale, plan_tiles
from histo_common.tissue import (
    TissueMasker,
    keep_tissue_tiles,
    otsu_threshold,
    tile_tissue_fractions,
)


def _coverage(sample: SlideSample, kept: set[tuple[int, int]], tile: int) -> tuple[float, float]:
    """Share of malignant and of benign patches whose centre lies in a kept tile."""

    def covered(p) -> bool:
        cx, cy = p.x + p.width / 2, p.y + p.height / 2
        return (int(cx // tile) * tile, int(cy // tile) * tile) in kept

    mal = [covered(p) for p in sample.patches if p.malignant]
    ben = [covered(p) for p in sample.patches if not p.malignant]
    return float(np.mean(mal)), float(np.mean(ben))


def _glass_kept(sample: SlideSample, kept: set[tuple[int, int]], n_tiles: int, tile: int):
    occupied = {
        (int((p.x + p.width / 2) // tile) * tile, int((p.y + p.height / 2) // tile) * tile)
        for p in sample.patches
    }
    return len(kept - occupied), n_tiles - len(occupied)


def test_otsu_splits_two_populations() -> None:
    rng = np.random.default_rng(0)
    glass, tissue = rng.normal(0.02, 0.01, 5000), rng.normal(0.4, 0.05, 2000)
    cut = otsu_threshold(np.concatenate([glass, tissue]))
    assert (glass < cut).mean() > 0.999 and (tissue > cut).mean() > 0.999
    assert otsu_threshold(np.full(10, 0.3)) == pytest.approx(0.3)


def test_clean_glass_has_no_tissue() -> None:
    rng = np.random.default_rng(1)
    glass = np.clip(242 + rng.normal(0, 2, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not TissueMasker().fit_transform(glass).any()


def test_synthetic_slide_islands_kept_glass_dropped(tmp_path: Path) -> None:
    sample = generate_slide(str(tmp_path / "s.tif"), 1536, 1024, seed=5, mpp=None)
    with open_slide(sample.uri) as slide:
        thumb, _ = slide.thumbnail(512)
        mask = TissueMasker().fit_transform(thumb)
        plan = plan_tiles(slide.geometry, TrainingScale(64, 64))
    kept = keep_tissue_tiles(plan, mask)
    assert 0 < len(kept.tiles) < len(plan.tiles)
    assert all(t.tissue_fraction is not None and t.tissue_fraction >= 0.25 for t in kept.tiles)
    positions = {(t.x, t.y) for t in kept.tiles}
    malignant, benign = _coverage(sample, positions, 64)
    assert malignant == 1.0 and benign > 0.9
    glass_kept, glass = _glass_kept(sample, positions, len(plan.tiles), 64)
    assert glass > 100 and glass_kept / glass < 0.1
    fractions = tile_tissue_fractions(plan, mask)
    assert len(fractions) == len(plan.tiles) and min(fractions) == 0.0 and max(fractions) == 1.0


@pytest.mark.realdata
@pytest.mark.parametrize("patient", ["8863", "8864", "8867"])
def test_real_idc_patient_carcinoma_in_tissue_tiles(
    idc_dir: Path, tmp_path: Path, patient: str
) -> None:
    """Nearly every carcinoma patch lies under a kept tile; few glass tiles are kept.

    Benign patches of pale fat may be dropped (little stain): that is allowed.
    """
    sample = reassemble_idc_patient(str(idc_dir), patient, str(tmp_path / "slide.tif"))
    with open_slide(sample.uri) as slide:
        assert slide.geometry.level_count >= 3
        thumb, _ = slide.thumbnail()
        mask = TissueMasker().fit_transform(thumb)
        plan = plan_tiles(slide.geometry, TrainingScale(50, 50))
    kept = keep_tissue_tiles(plan, mask)
    positions = {(t.x, t.y) for t in kept.tiles}
    malignant, _ = _coverage(sample, positions, 50)
    glass_kept, glass = _glass_kept(sample, positions, len(plan.tiles), 50)
    assert malignant >= 0.97, f"patient {patient}: {malignant:.3f} of carcinoma patches kept"
    assert glass_kept / glass <= 0.06, f"patient {patient}: {glass_kept} of {glass} glass kept"


def test_plan_slide_masks_tiled_plans_only(tmp_path: Path) -> None:
    from histo_common.tissue import plan_slide

    sample = generate_slide(str(tmp_path / "s.tif"), 1024, 768, seed=2, mpp=0.5)
    with open_slide(sample.uri) as slide:
        tiled = plan_slide(slide, TrainingScale(64, 64, mpp=1.0))
        full = plan_tiles(slide.geometry, TrainingScale(64, 64, mpp=1.0))
        whole = plan_slide(slide, TrainingScale(1000, 800))
    assert tiled.level == 1 and 0 < len(tiled.tiles) < len(full.tiles)
    assert all(t.tissue_fraction is not None for t in tiled.tiles)
    assert whole.mode == "whole" and whole.tiles[0].tissue_fraction is None
