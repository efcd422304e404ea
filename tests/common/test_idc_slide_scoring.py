"""Real tissue end to end through the foundations: an IDC patient reassembled into a
pyramidal TIFF, planned with the tiling rule and the tissue mask, tiles read through
OpenSlide and scored through the pixel signature of a model trained here on the
other patients; the tile-level AUC against the patch labels is close to the same
model's patch-level AUC (a patch no scored tile covers counts as probability 0, as
on a heatmap)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from histo_common.samples import reassemble_idc_patient
from histo_common.slides import open_slide
from histo_common.tiling import read_tiles, summarise_tiles
from histo_common.tissue import plan_slide

PATIENT = "8863"
IMAGE_SIZE = 48


def _quick_model(idc_dir: Path, models_root: Path):  # type: ignore[no-untyped-def]
    """A small CNN trained for a minute on patients other than ``PATIENT``."""
    import keras
    import tensorflow as tf

    from model_export.export import export_model
    from model_export.loader import load_model
    from model_export.preprocessing import decode_and_resize
    from training.models import build_custom_cnn

    with (idc_dir / "labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["patient_id"] != PATIENT]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))[:3000]]
    images = np.stack(
        [
            decode_and_resize(tf.constant((idc_dir / r["path"]).read_bytes()), IMAGE_SIZE).numpy()
            for r in rows
        ]
    )
    labels = np.array([r["label"] == "malignant" for r in rows], np.float32)
    keras.utils.set_random_seed(0)
    model = build_custom_cnn(
        IMAGE_SIZE, filters=(16, 32, 64), convs_per_block=(1, 1, 1), dense_units=(32,)
    )
    model.compile(keras.optimizers.Adam(2e-3), "binary_crossentropy")
    model.fit(images, labels, epochs=6, batch_size=64, verbose=0)
    export_model(
        model,
        models_root=str(models_root),
        model_name="idc-quick",
        class_names=["benign", "malignant"],
        positive_class="malignant",
        threshold=0.5,
        threshold_method="fixed at 0.5 (test)",
        image_size=IMAGE_SIZE,
        architecture="custom_cnn",
        native_size=(50, 50),
    )
    return load_model(str(models_root / "idc-quick"))


def _tile_origin(centre: int, stride: int) -> int:
    """Origin of the grid tile (stride = tile size) that holds a level-0 coordinate."""
    return centre - centre % stride


@pytest.mark.slow
@pytest.mark.realdata
def test_tile_auc_close_to_patch_auc_on_a_real_patient(idc_dir: Path, tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    model = _quick_model(idc_dir, tmp_path / "models")
    sample = reassemble_idc_patient(str(idc_dir), PATIENT, str(tmp_path / "slide.tif"))
    labels = np.array([p.malignant for p in sample.patches])
    patch_probs = np.array(
        [
            p.probability
            for p in model.predict([Path(p.source).read_bytes() for p in sample.patches])
        ]
    )
    with open_slide(sample.uri) as slide:
        plan = plan_slide(slide, model.metadata.training_scale())
        assert plan.is_tiled and plan.scale_assumed
        tiles = read_tiles(slide, plan.tiles)
    tile_probs = np.array([p.probability for p in model.predict_pixels(tiles)])
    by_origin = {(t.x, t.y): p for t, p in zip(plan.tiles, tile_probs, strict=True)}
    covered = [
        by_origin.get(
            (
                _tile_origin(p.x + p.width // 2, plan.stride_x),
                _tile_origin(p.y + p.height // 2, plan.stride_y),
            )
        )
        for p in sample.patches
    ]
    tile_for_patch = np.array([0.0 if c is None else c for c in covered])
    carcinoma_covered = np.mean([c is not None for c, m in zip(covered, labels, strict=True) if m])
    patch_auc = roc_auc_score(labels, patch_probs)
    tile_auc = roc_auc_score(labels, tile_for_patch)
    assert patch_auc > 0.75, f"the quick model is too weak to test with: AUC {patch_auc:.3f}"
    assert carcinoma_covered >= 0.97, f"{carcinoma_covered:.3f} of carcinoma patches scored"
    assert abs(tile_auc - patch_auc) <= 0.05, f"tile AUC {tile_auc:.3f}, patch {patch_auc:.3f}"
    summary = summarise_tiles(
        plan, tile_probs, threshold=0.5, positive_class="malignant", negative_class="benign"
    )
    # 207 of this patient's 979 patches are carcinoma: the slide rule flags it.
    assert summary.label == "malignant" and summary.tiles_scored == len(plan.tiles)
