"""Real tissue end to end: an IDC patient reassembled into a pyramidal TIFF and scored
by the slide scorer (:func:`model_export.slide_scoring.score_input`: tiling rule,
tissue mask, OpenSlide reads, pixel signature) with a model trained here on the
other patients; the tile-level AUC against the patch labels is close to the same
model's patch-level AUC (a patch no scored tile covers counts as probability 0, as
on a heatmap), nearly every carcinoma patch is under a scored tile, few glass tiles
are scored, and the Beam job's fan-out gives the same tiles and verdict."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from histo_common.samples import reassemble_idc_patient
from histo_common.slides import read_geometry
from histo_common.tiling import plan_tiles
from model_export.slide_scoring import SlideSettings, score_input

PATIENT = "8863"
IMAGE_SIZE = 48


def _quick_model(idc_dir: Path, models_root: Path):
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
    score = score_input(
        model, sample.uri, model.identity, SlideSettings.from_metadata(model.metadata)
    )
    assert score.ok and score.is_tiled and score.plan is not None and score.summary is not None
    plan = score.plan
    assert plan.scale_assumed
    tile_probs = np.array([t.probability for t in score.tiles])
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
    # Few glass tiles scored: a grid tile under no patch is glass (or background).
    grid = plan_tiles(read_geometry(sample.uri), model.metadata.training_scale()).tiles
    under_patch = {
        (_tile_origin(x, plan.stride_x), _tile_origin(y, plan.stride_y))
        for p in sample.patches
        for x in (p.x, p.x + p.width - 1)
        for y in (p.y, p.y + p.height - 1)
    }
    glass = {(t.x, t.y) for t in grid} - under_patch
    glass_scored = len(glass & set(by_origin)) / len(glass)
    assert glass_scored <= 0.05, f"{glass_scored:.3f} of glass tiles scored"
    summary = score.summary
    # 207 of this patient's 979 patches are carcinoma: the slide rule flags it.
    assert summary.label == "malignant" and summary.tiles_scored == len(plan.tiles)
    _same_through_beam(tmp_path, sample.uri, score)


def _same_through_beam(tmp_path: Path, slide: str, score) -> None:
    """The Beam job on the same slide: the same tiles, probabilities and verdict."""
    import json

    from beam_jobs import score as score_job

    output = tmp_path / "run"
    score_job.run(
        [
            "--input",
            slide,
            "--model",
            str(tmp_path / "models" / "idc-quick"),
            "--output",
            str(output),
        ]
    )
    tiles = [
        json.loads(line)
        for part in sorted((output / "tiles").glob("*.jsonl"))
        for line in part.read_text().splitlines()
    ]
    beam_probs = {(t["x"], t["y"]): t["probability"] for t in tiles}
    alone = {(t.x, t.y): t.probability for t in score.tiles}
    assert beam_probs.keys() == alone.keys()
    assert max(abs(beam_probs[k] - alone[k]) for k in alone) < 1e-4
    (row,) = [
        json.loads(line)
        for part in (output / "results").glob("*.jsonl")
        for line in part.read_text().splitlines()
    ]
    assert row["label"] == score.row.label and row["tiles_scored"] == len(alone)
    assert list((output / "heatmaps").rglob("*.heatmap.png"))
