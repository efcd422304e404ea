"""The exported SavedModel keeps the contract: signatures equal Keras, deterministic, Grad-CAM."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo_common import storage
from model_export import contract
from model_export.loader import ModelLoadError, load_model


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode=mode).save(out, format="PNG")
    return out.getvalue()


def _encode(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def sample_bytes(tiny_model) -> list[bytes]:
    paths = sorted(Path(tiny_model.sample_dir).rglob("*.png"))
    return [p.read_bytes() for p in paths[::4]]


def test_signatures_equal_keras_in_inference_mode(loaded_tiny_model, sample_bytes) -> None:
    import tensorflow as tf

    from model_export.preprocessing import decode_and_resize

    keras_model = loaded_tiny_model.keras_model()
    size = loaded_tiny_model.metadata.image_size
    decoded = np.stack([decode_and_resize(tf.constant(b), size).numpy() for b in sample_bytes])
    expected = keras_model.predict(decoded, verbose=0)[:, 0]
    served = loaded_tiny_model.run(contract.PREDICT_SIGNATURE, sample_bytes)
    np.testing.assert_allclose(served["probability"], expected, atol=1e-5)
    explained = loaded_tiny_model.run(contract.EXPLAIN_SIGNATURE, sample_bytes)
    np.testing.assert_allclose(explained["probability"], expected, atol=1e-5)
    # The model separates the synthetic classes: outputs mean something.
    labels = [b"malignant" if p >= 0.5 else b"benign" for p in expected]
    assert list(served["label"]) == labels


def test_signatures_are_deterministic(loaded_tiny_model, sample_bytes) -> None:
    first = loaded_tiny_model.run(contract.EXPLAIN_SIGNATURE, sample_bytes)
    for _ in range(3):
        again = loaded_tiny_model.run(contract.EXPLAIN_SIGNATURE, sample_bytes)
        np.testing.assert_array_equal(again["probability"], first["probability"])
        np.testing.assert_array_equal(again["heatmap"], first["heatmap"])


def test_outputs_shapes_and_ranges(loaded_tiny_model, sample_bytes) -> None:
    out = loaded_tiny_model.run(contract.EXPLAIN_SIGNATURE, sample_bytes)
    n, size = len(sample_bytes), loaded_tiny_model.metadata.image_size
    assert out["probability"].shape == (n,)
    assert out["probabilities"].shape == (n, 2)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out["probabilities"][:, 1], out["probability"], atol=1e-7)
    assert out["threshold"].shape == (n,)
    assert np.all(out["threshold"] == np.float32(loaded_tiny_model.threshold))
    heat = out["heatmap"]
    assert heat.shape == (n, size, size)
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.reshape(n, -1).max(axis=1).max() > 0.5  # not all empty


def test_decodes_formats_and_colour_modes(loaded_tiny_model, sample_bytes) -> None:
    rgb = np.asarray(Image.open(io.BytesIO(sample_bytes[0])).convert("RGB"))
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    base = loaded_tiny_model.predict([_png(rgb)])[0].probability
    p_rgba = loaded_tiny_model.predict([_png(rgba, "RGBA")])[0].probability
    assert p_rgba == pytest.approx(base, abs=1e-6)  # alpha dropped, colours kept
    p_gray = loaded_tiny_model.predict([_png(gray, "L")])[0].probability
    p_gray_rgb = loaded_tiny_model.predict([_png(np.dstack([gray] * 3))])[0].probability
    assert p_gray == pytest.approx(p_gray_rgb, abs=1e-6)  # grayscale replicated to RGB
    for fmt in ("BMP", "GIF"):
        assert 0.0 <= loaded_tiny_model.predict([_encode(rgb, fmt)])[0].probability <= 1.0
    p_jpeg = loaded_tiny_model.predict([_encode(rgb, "JPEG")])[0].probability
    assert p_jpeg == pytest.approx(base, abs=0.15)  # lossy, but the same picture
    big = np.asarray(Image.fromarray(rgb).resize((200, 200)))
    assert 0.0 <= loaded_tiny_model.predict([_png(big)])[0].probability <= 1.0


def test_metadata_describes_the_model(loaded_tiny_model, tiny_model) -> None:
    meta = loaded_tiny_model.metadata
    assert meta.class_names == ["benign", "malignant"]
    assert meta.positive_class == "malignant"
    assert meta.image_size == tiny_model.image_size
    assert meta.architecture == "custom_cnn"
    assert meta.version == 1 and meta.model_name == "histo-cnn"
    assert meta.tensorflow_version and meta.keras_version and meta.project_version
    assert meta.created_at.endswith("Z")
    assert "not a medical device" in meta.disclaimer
    assert meta.training_data["images"] == 80
    on_disk = json.loads(storage.read_text(storage.join(tiny_model.version_uri, "metadata.json")))
    assert on_disk["threshold"] == meta.threshold


def test_latest_version_is_picked(tmp_path: Path, tiny_model) -> None:
    root = tmp_path / "histo-cnn"
    storage.copy_tree_to(tiny_model.version_uri, str(root / "1"))
    storage.copy_tree_to(tiny_model.version_uri, str(root / "3"))
    meta = json.loads((root / "3" / "metadata.json").read_text())
    meta["version"] = 3
    (root / "3" / "metadata.json").write_text(json.dumps(meta))
    (root / "7").mkdir()  # an export in progress: no metadata yet, must be ignored
    (root / "7" / "saved_model.pb").write_bytes(b"partial")
    assert load_model(str(root)).version == 3
    assert load_model(str(root / "1")).version == 1


def test_latest_skips_versions_marked_not_blessed(tmp_path: Path, tiny_model, caplog) -> None:
    root = tmp_path / "histo-cnn"
    for version in (1, 2):
        storage.copy_tree_to(tiny_model.version_uri, str(root / str(version)))
        meta = json.loads((root / str(version) / "metadata.json").read_text())
        (root / str(version) / "metadata.json").write_text(json.dumps({**meta, "version": version}))
    (root / "2" / contract.NOT_BLESSED).write_text("NOT_BLESSED: histo-cnn version 2\n")
    assert load_model(str(root)).version == 1
    with caplog.at_level("WARNING", logger="model_export.loader"):
        assert load_model(str(root / "2")).version == 2  # named explicitly: still loads
    assert "marked NOT_BLESSED" in caplog.text
    (root / "1" / contract.NOT_BLESSED).write_text("NOT_BLESSED: histo-cnn version 1\n")
    with pytest.raises(ModelLoadError, match=r"every version under .* is marked NOT_BLESSED"):
        load_model(str(root))


def test_gcs_model_loads_and_agrees(tiny_model_gcs, loaded_tiny_model, sample_bytes) -> None:
    remote = load_model(tiny_model_gcs)
    assert remote.uri.startswith("gs://")
    local = loaded_tiny_model.run(contract.PREDICT_SIGNATURE, sample_bytes)["probability"]
    served = remote.run(contract.PREDICT_SIGNATURE, sample_bytes)["probability"]
    np.testing.assert_array_equal(local, served)


# ------------------------------------------------------------------ bad models


def test_missing_model_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no model versions found under"):
        load_model(str(tmp_path / "nothing-here"))


def test_version_without_metadata(tmp_path: Path) -> None:
    (tmp_path / "m" / "4").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"no metadata\.json"):
        load_model(str(tmp_path / "m" / "4"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"model_name": "x"}', "missing fields"),
        ('["a list"]', "JSON object"),
    ],
)
def test_bad_metadata(tmp_path: Path, tiny_model, content: str, message: str) -> None:
    target = tmp_path / "m" / "1"
    storage.copy_tree_to(tiny_model.version_uri, str(target))
    (target / "metadata.json").write_text(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(target))


def test_metadata_with_bad_values(tmp_path: Path, tiny_model) -> None:
    target = tmp_path / "m" / "1"
    storage.copy_tree_to(tiny_model.version_uri, str(target))
    meta = json.loads((target / "metadata.json").read_text())
    meta["positive_class"] = "tumour"
    (target / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="positive_class 'tumour'"):
        load_model(str(target))


def test_savedmodel_without_explain_signature(tmp_path: Path, tiny_model) -> None:
    import tensorflow as tf

    class OnlyServe(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            n = tf.shape(image_bytes)[0]
            return {
                "probability": tf.zeros([n]),
                "probabilities": tf.zeros([n, 2]),
                "label": tf.fill([n], "benign"),
                "threshold": tf.fill([n], 0.5),
            }

    target = tmp_path / "m" / "1"
    module = OnlyServe()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    storage.copy_tree_to(tiny_model.version_uri + "/", str(tmp_path / "donor"))
    (target / "metadata.json").write_text((tmp_path / "donor" / "metadata.json").read_text())
    with pytest.raises(ModelLoadError, match="no 'explain' signature"):
        load_model(str(target))


def test_corrupt_savedmodel(tmp_path: Path, tiny_model) -> None:
    target = tmp_path / "m" / "1"
    storage.copy_tree_to(tiny_model.version_uri, str(target))
    (target / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="not a loadable SavedModel"):
        load_model(str(target))
