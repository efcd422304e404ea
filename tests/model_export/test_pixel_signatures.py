"""Decoded-pixel signatures equal the bytes signatures; the training scale in the metadata;
old models (no pixel signatures, no scale) keep working."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from histo_common import storage
from histo_common.samples import encode_png, synth_patch
from histo_common.tiling import TrainingScale
from model_export import contract
from model_export.loader import load_model


def _tiles(side: int, n: int = 6) -> np.ndarray:
    return np.stack(
        [synth_patch(np.random.default_rng([side, i]), i % 2 == 1, size=side) for i in range(n)]
    )


@pytest.mark.parametrize("side", [48, 50, 64])
def test_pixel_signatures_equal_bytes_signatures(loaded_tiny_model, side: int) -> None:
    assert loaded_tiny_model.has_pixel_signatures
    tiles = _tiles(side)
    pngs = [encode_png(t) for t in tiles]
    for signature in (contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE):
        by_bytes = loaded_tiny_model.run(signature, pngs)
        by_pixels = loaded_tiny_model.run_pixels(signature, tiles)
        assert set(by_pixels) == set(by_bytes)
        for key in ("probability", "probabilities", "threshold", "heatmap"):
            if key in by_bytes:
                np.testing.assert_allclose(by_pixels[key], by_bytes[key], atol=1e-5)
        assert list(by_pixels["label"]) == list(by_bytes["label"])
    # The tiles differ and the model tells the classes apart: equality means something.
    probs = loaded_tiny_model.run_pixels(contract.PREDICT_SIGNATURE, tiles)["probability"]
    assert probs[1::2].mean() > probs[0::2].mean()
    explained = loaded_tiny_model.explain_pixels(tiles)
    assert explained[0].heatmap.shape == (48, 48)
    assert [e.prediction for e in explained] == loaded_tiny_model.predict_pixels(tiles)


def test_empty_pixel_batch(loaded_tiny_model) -> None:
    assert loaded_tiny_model.predict_pixels(np.zeros((0, 48, 48, 3), np.uint8)) == []


def test_metadata_records_the_training_scale(loaded_tiny_model) -> None:
    meta = loaded_tiny_model.metadata
    assert meta.native_size == [48, 48] and meta.mpp is None
    assert meta.training_scale() == TrainingScale(48, 48, None)


def test_scale_fields_are_validated() -> None:
    base = dict(
        model_name="m",
        version=1,
        class_names=["benign", "malignant"],
        positive_class="malignant",
        threshold=0.5,
        threshold_method="fixed",
        image_size=48,
        architecture="custom_cnn",
    )
    meta = contract.ModelMetadata(**base, native_size=[50, 50], mpp=4.0)
    assert meta.training_scale() == TrainingScale(50, 50, 4.0)
    again = contract.ModelMetadata.from_json(meta.to_json())
    assert again.training_scale() == meta.training_scale()
    for bad in ({"native_size": [50]}, {"native_size": [0, 50]}, {"mpp": 0.0}, {"mpp": -1}):
        with pytest.raises(contract.ContractError):
            contract.ModelMetadata(**base, **bad)
    # Metadata written before the fields existed: no scale, whole-image scoring.
    old = json.dumps(base)
    assert contract.ModelMetadata.from_json(old).training_scale() is None


def test_model_without_pixel_signatures_falls_back_to_png(
    loaded_tiny_model, tmp_path: Path
) -> None:
    """A model exported before the pixel signatures (bytes only, no scale in its metadata)."""
    import tensorflow as tf

    from model_export.export import ServingModule

    meta = loaded_tiny_model.metadata
    module = ServingModule(
        loaded_tiny_model.keras_model(),
        meta.class_names,
        meta.positive_class,
        meta.threshold,
        meta.image_size,
    )
    target = tmp_path / "legacy" / "1"
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(
            module,
            tmp,
            signatures={
                contract.PREDICT_SIGNATURE: module.serve.get_concrete_function(),
                contract.EXPLAIN_SIGNATURE: module.explain.get_concrete_function(),
            },
        )
        storage.copy_tree_to(tmp, str(target))
    old = {k: v for k, v in asdict(meta).items() if k not in ("native_size", "mpp")}
    old["model_name"] = "legacy"
    storage.write_text(str(target / contract.METADATA_FILE), json.dumps(old))
    legacy = load_model(str(tmp_path / "legacy"))
    assert not legacy.has_pixel_signatures
    assert legacy.metadata.training_scale() is None
    tiles = _tiles(50)
    expected = loaded_tiny_model.predict_pixels(tiles)
    got = legacy.predict_pixels(tiles)
    np.testing.assert_allclose(
        [p.probability for p in got], [p.probability for p in expected], atol=1e-5
    )
    heatmaps = legacy.run_pixels(contract.EXPLAIN_SIGNATURE, tiles)["heatmap"]
    assert heatmaps.shape == (6, 48, 48)
