"""Grad-CAM finds a planted lesion, survives vanishing gradients, works for MobileNetV2;
the TF Serving gRPC client round-trips through a PredictionService backed by the SavedModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_fixtures import export_binary

from histo_common.samples import encode_png, synth_patch
from model_export import contract
from model_export.loader import load_model

SIZE = 48
WEIGHTS = Path(__file__).resolve().parents[2].parent / "shared" / "weights"


def _export(model, root: Path, architecture: str = "custom_cnn") -> str:
    return export_binary(model, root, "m", architecture=architecture).uri


def test_heatmap_is_higher_over_planted_lesion(tmp_path: Path) -> None:
    """A model trained to see lesions placed anywhere looks at the lesion."""
    import keras

    from training.models import build_custom_cnn

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    images, labels = [], []
    for i in range(160):
        malignant = i % 2 == 1
        lesion = (rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), 0.18) if malignant else None
        images.append(synth_patch(rng, malignant=False, size=SIZE, lesion=lesion))
        labels.append(float(malignant))
    model = build_custom_cnn(
        SIZE, filters=(8, 16, 32), convs_per_block=(1, 1, 1), dense_units=(16,), dropout=0.1
    )
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=["accuracy"])
    x = np.stack(images).astype(np.float32)
    model.fit(x, np.array(labels), epochs=15, batch_size=16, verbose=0)
    loaded = load_model(_export(model, tmp_path))

    inside, outside = [], []
    for k in range(8):
        cy, cx = [(0.3, 0.3), (0.7, 0.7), (0.3, 0.7), (0.7, 0.3)][k % 4]
        img = synth_patch(np.random.default_rng(100 + k), False, SIZE, lesion=(cy, cx, 0.18))
        heat = loaded.explain([encode_png(img)])[0].heatmap
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 0.18**2
        inside.append(heat[mask].mean())
        outside.append(heat[~mask].mean())
    assert np.mean(inside) > 2 * np.mean(outside), (inside, outside)
    assert sum(i > o for i, o in zip(inside, outside, strict=True)) >= 7


def test_heatmap_is_finite_when_gradients_vanish(tmp_path: Path) -> None:
    from training.models import build_custom_cnn

    model = build_custom_cnn(SIZE, filters=(4, 8, 8), convs_per_block=(1, 1, 1), dense_units=(4,))
    logits = model.get_layer("head").get_layer("logits")
    logits.set_weights([np.zeros_like(w) for w in logits.get_weights()])
    loaded = load_model(_export(model, tmp_path))
    img = encode_png(synth_patch(np.random.default_rng(0), True, SIZE))
    out = loaded.run(contract.EXPLAIN_SIGNATURE, [img, img])
    assert np.isfinite(out["heatmap"]).all()
    assert np.all(out["heatmap"] == 0.0)
    np.testing.assert_allclose(out["probability"], 0.5)


def test_mobilenet_v2_nested_base_exports_and_explains(tmp_path: Path) -> None:
    from training.models import build_mobilenet_v2, mobilenet_base

    weights_file = WEIGHTS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    weights = str(weights_file) if weights_file.is_file() else None
    model = build_mobilenet_v2(SIZE, weights=weights, alpha=0.35)
    assert mobilenet_base(model).name.startswith("mobilenet")
    loaded = load_model(_export(model, tmp_path, "mobilenet_v2"))
    imgs = [encode_png(synth_patch(np.random.default_rng(i), bool(i % 2), SIZE)) for i in range(3)]
    out = loaded.run(contract.EXPLAIN_SIGNATURE, imgs)
    assert out["heatmap"].shape == (3, SIZE, SIZE)
    assert np.isfinite(out["heatmap"]).all()
    assert out["heatmap"].min() >= 0.0 and out["heatmap"].max() <= 1.0
    import tensorflow as tf

    from model_export.preprocessing import decode_and_resize

    x = np.stack([decode_and_resize(tf.constant(b), SIZE).numpy() for b in imgs])
    np.testing.assert_allclose(out["probability"], model.predict(x, verbose=0)[:, 0], atol=1e-5)


def test_serving_client_round_trip(model_server, loaded_tiny_model, tiny_model) -> None:
    from model_export.serving_client import ServingClient

    images = [p.read_bytes() for p in sorted(Path(tiny_model.sample_dir).rglob("*.png"))[::10]]
    client = ServingClient(model_server, "histo-cnn")
    try:
        served = client.predict(images)
        local = loaded_tiny_model.run(contract.PREDICT_SIGNATURE, images)
        np.testing.assert_array_equal(served["probability"], local["probability"])
        assert list(served["label"]) == list(local["label"])
        explained = client.predict(images[:2], signature=contract.EXPLAIN_SIGNATURE)
        assert explained["heatmap"].shape == (2, tiny_model.image_size, tiny_model.image_size)
    finally:
        client.close()


def test_serving_client_names_endpoint_on_error(model_server) -> None:
    from model_export.serving_client import ServingClient, ServingError

    client = ServingClient(model_server, "no-such-model")
    with pytest.raises(ServingError, match="NOT_FOUND"):
        client.predict([b"x"])
    client.close()


def test_serving_config_lists_model_roots(tmp_path: Path, tiny_model) -> None:
    from model_export.__main__ import main

    out = tmp_path / "models.config"
    assert (
        main(
            [
                "serving-config",
                "--models",
                tiny_model.models_root,
                "--base-path",
                "/models",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert "name: 'histo-cnn'" in text
    assert "base_path: '/models/histo-cnn'" in text
    assert "model_platform: 'tensorflow'" in text


def test_serving_client_reports_bad_images_as_bad_input(model_server) -> None:
    """A server refusing the images says INVALID_ARGUMENT, which callers isolate per image."""
    from model_export.scoring import is_input_error
    from model_export.serving_client import ServingClient, ServingError

    client = ServingClient(model_server, "histo-cnn")
    try:
        with pytest.raises(ServingError) as err:
            client.predict([b"not an image"])
    finally:
        client.close()
    assert err.value.status == "INVALID_ARGUMENT" and err.value.bad_input
    assert is_input_error(err.value)
