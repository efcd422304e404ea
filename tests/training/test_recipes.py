"""Recipe options of the training job, each on a real SavedModel or a real (tiny) run.

- test-time augmentation inside the SavedModel (the 8 dihedral views averaged);
- Reinhard stain normalisation as the model's first layer;
- EMA weight averaging (the exported weights are the averaged ones);
- final models trained on every image after the fold models set the threshold.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.config import ConfigError, TrainConfig

QUICK = {"image_size": 32, "batch_size": 16, "verbose": 0, "max_minutes": None}


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(out, format="PNG")
    return out.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _views(image: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral views, written with numpy (not the graph's own code)."""
    return [np.rot90(base, k) for base in (image, np.fliplr(image)) for k in range(4)]


@pytest.fixture(scope="module")
def sample_images(tiny_model) -> list[np.ndarray]:
    paths = sorted(Path(tiny_model.sample_dir).rglob("*.png"))[::8]
    return [_pixels(p.read_bytes()) for p in paths]


def _export(keras_model, root: Path, **fields):
    from model_fixtures import export_binary

    from model_export.loader import load_model

    return load_model(export_binary(keras_model, root, "recipe", **fields).uri)


# ------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("final_models", 3, "final_models"),
        ("final_epochs", 0, "final_epochs"),
        ("stain_normalisation", "macenko", "stain_normalisation"),
        ("weight_averaging", "swa", "weight_averaging"),
        ("ema_momentum", 1.0, "ema_momentum"),
        ("tta", "yes", "tta"),
    ],
)
def test_recipe_options_are_validated(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(data="d", output="o", **{field: value})


def test_final_models_refuse_fine_tuning() -> None:
    with pytest.raises(ConfigError, match="fine_tune_epochs"):
        TrainConfig(data="d", output="o", final_models=1, fine_tune_epochs=2)


def test_defaults_keep_the_fold_ensemble_and_a_plain_graph() -> None:
    config = TrainConfig(data="d", output="o")
    assert (config.final_models, config.tta) == (0, False)
    assert (config.stain_normalisation, config.weight_averaging) == ("none", "none")


def test_cli_flags_reach_the_config() -> None:
    from training.__main__ import config_from_args

    flags = ["--final-models", "2", "--final-epochs", "5", "--tta", "true"]
    flags += ["--stain-normalisation", "reinhard", "--weight-averaging", "ema"]
    config = config_from_args(["--data", "d", "--output", "o", *flags, "--ema-momentum", "0.995"])
    assert (config.final_models, config.final_epochs, config.tta) == (2, 5, True)
    assert config.stain_normalisation == "reinhard" and config.weight_averaging == "ema"
    assert config.ema_momentum == 0.995


def test_budget_gives_every_model_time_for_as_many_epochs() -> None:
    from training.train import plan_budget

    assert plan_budget(None, 3, 1, 0.2) == (None, None)
    assert plan_budget(12.0, 3, 0, 0.2) == (4.0, None)
    per_fold, finals = plan_budget(12.0, 3, 1, 0.2)
    # A final model sees 3/2 of a fold model's images: it gets 3/2 of a fold's time.
    assert finals == pytest.approx(1.5 * per_fold)
    assert 3 * per_fold + finals == pytest.approx(12.0)
    per_fold, finals = plan_budget(10.0, 1, 2, 0.2)  # one split: 1 / (1 - 0.2) as much data
    assert finals / 2 == pytest.approx(1.25 * per_fold)


def test_final_epochs_are_the_folds_median_best_with_that_folds_schedule() -> None:
    from training.train import _Member, plan_export

    def member(best: int, rates: tuple[float, ...]) -> _Member:
        return _Member(None, np.empty(0), len(rates), best, rates, 0)

    members = [
        member(3, (1e-3, 1e-3, 5e-4, 5e-4)),
        member(7, (1e-3,) * 6 + (5e-4, 5e-4)),
        member(4, (1e-3, 1e-3, 1e-3, 2.5e-4, 2.5e-4)),
    ]
    config = TrainConfig(data="d", output="o", final_models=1)
    plan = plan_export(config, members)
    assert plan.final_epochs == 4 and "median best epoch" in plan.epochs_from
    assert plan.learning_rates == (1e-3, 1e-3, 1e-3, 2.5e-4)  # the fold whose best was 4
    config = TrainConfig(data="d", output="o", final_models=1, final_epochs=10)
    fixed = plan_export(config, members)  # follows the fold whose best (7) is nearest
    assert fixed.final_epochs == 10 and len(fixed.learning_rates) == 10
    assert fixed.learning_rates[6:] == (5e-4,) * 4  # the schedule's last rate carries on
    assert plan_export(TrainConfig(data="d", output="o"), members).final_models == 0


# ------------------------------------------------------------ test-time augmentation


@pytest.fixture(scope="module")
def tta_model(loaded_tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    return _export(loaded_tiny_model.keras_model(), root, tta=True)


def test_tta_probability_is_the_mean_of_the_eight_views_scored_alone(
    tta_model, loaded_tiny_model, sample_images
) -> None:
    images = [_png(x) for x in sample_images]
    served = tta_model.run("serving_default", images)["probability"]
    views = [_png(v) for x in sample_images for v in _views(x)]
    alone = loaded_tiny_model.run("serving_default", views)["probability"].reshape(-1, 8)
    np.testing.assert_allclose(served, alone.mean(axis=1), atol=1e-5)
    assert np.abs(alone - alone.mean(axis=1, keepdims=True)).max() > 1e-4  # views do differ
    explained = tta_model.run("explain", images)
    np.testing.assert_allclose(explained["probability"], served, atol=1e-6)
    pixels = tta_model.run_pixels("serving_default", np.stack(sample_images))
    np.testing.assert_allclose(pixels["probability"], served, atol=1e-5)
    meta = tta_model.metadata.serving
    assert meta["test_time_augmentation"]["views"] == 8
    assert meta["stain_normalisation"] is None
    assert loaded_tiny_model.metadata.serving["test_time_augmentation"] is None


def test_tta_heatmap_turns_with_the_image(tta_model, sample_images) -> None:
    image = sample_images[0]
    turned = np.rot90(np.fliplr(image), 1)
    out = tta_model.run("explain", [_png(image), _png(turned)])
    first, second = out["heatmap"]
    # The views of a turned image are the same 8 views: same score, and its heatmap is
    # the original's turned the same way (each view's map was turned back).
    assert out["probability"][0] == pytest.approx(out["probability"][1], abs=1e-5)
    np.testing.assert_allclose(second, np.rot90(np.fliplr(first), 1), atol=1e-4)
    assert first.max() == pytest.approx(1.0, abs=1e-5) and first.min() >= 0.0


# ------------------------------------------------------------ stain normalisation


def _shift_stain(image: np.ndarray) -> np.ndarray:
    """A colour-shifted copy: another stain batch or scanner (channel gains and offsets)."""
    shifted = image.astype(np.float32) * np.array([0.85, 0.95, 1.1]) + np.array([12, -8, 5])
    return np.clip(shifted, 0, 255).astype(np.uint8)


def test_reinhard_layer_maps_a_shifted_copy_back_to_the_original(sample_images) -> None:
    import tensorflow as tf

    from model_export.preprocessing import ReinhardNormalisation, lab_statistics

    original = np.stack(sample_images).astype(np.float32)
    shifted = np.stack([_shift_stain(x) for x in sample_images]).astype(np.float32)
    mean, std = lab_statistics(tf.constant(original))
    layer = ReinhardNormalisation(mean.numpy().mean(0), std.numpy().mean(0))
    before = np.abs(shifted - original).mean()
    after = np.abs(layer(shifted).numpy() - layer(original).numpy()).mean()
    assert after < 0.35 * before
    # The output has the reference statistics.
    out_mean, _ = lab_statistics(layer(original))
    np.testing.assert_allclose(out_mean.numpy().mean(0), layer.lab_mean, atol=1.5)
    with pytest.raises(ValueError, match="3 positive stds"):
        ReinhardNormalisation([50, 0, 0], [1, 0, 1])


def test_stain_normalised_savedmodel_scores_a_shifted_copy_closer(
    loaded_tiny_model, sample_images, tmp_path: Path
) -> None:
    import tensorflow as tf
    from model_fixtures import IMAGE_SIZE

    from model_export.preprocessing import ReinhardNormalisation, lab_statistics
    from training.models import build_custom_cnn

    plain = loaded_tiny_model.keras_model()
    mean, std = lab_statistics(tf.constant(np.stack(sample_images).astype(np.float32)))
    layer = ReinhardNormalisation(mean.numpy().mean(0), std.numpy().mean(0), name="stain")
    normalised = build_custom_cnn(
        IMAGE_SIZE,
        filters=(8, 16, 32),
        convs_per_block=(1, 1, 1),
        dense_units=(32,),
        dropout=0.2,
        normaliser=layer,
    )
    normalised.set_weights(plain.get_weights())  # the normaliser has no weights
    served = _export(normalised, tmp_path)
    originals = [_png(x) for x in sample_images]
    shifted = [_png(_shift_stain(x)) for x in sample_images]

    def gap(model) -> float:
        a = model.run("serving_default", originals)["probability"]
        b = model.run("serving_default", shifted)["probability"]
        return float(np.abs(np.log(a / (1 - a)) - np.log(b / (1 - b))).mean())

    assert gap(served) < 0.5 * gap(loaded_tiny_model)
    recorded = served.metadata.serving["stain_normalisation"]
    assert recorded["method"] == "reinhard"
    np.testing.assert_allclose(recorded["reference_lab_mean"], layer.lab_mean, atol=1e-3)
    # The Keras file beside the SavedModel loads with its normaliser.
    reloaded = served.keras_model()
    assert isinstance(reloaded.get_layer("backbone").get_layer("stain"), ReinhardNormalisation)


# ------------------------------------------------------------ real training runs


def _train(sample_dir: Path, out: Path, **overrides):
    from training.config import from_mapping
    from training.train import train

    config = from_mapping(
        {"data": str(sample_dir), "output": str(out), **QUICK, **overrides}, source="test"
    )
    return config, train(config)


def _trainable(model) -> np.ndarray:
    return np.concatenate([np.ravel(w) for w in model.trainable_weights])


def test_ema_exports_the_averaged_weights(sample_dir: Path, tmp_path: Path) -> None:
    import keras

    from model_export.loader import load_model
    from training.data import load_examples, resolve_input
    from training.train import build_model

    common = {"folds": 1, "epochs": 3, "batch_size": 8, "early_stopping_patience": 10}
    config, raw = _train(sample_dir, tmp_path / "raw", **common)
    _, ema = _train(
        sample_dir, tmp_path / "ema", weight_averaging="ema", ema_momentum=0.999, **common
    )
    config, _ = resolve_input(config, load_examples(str(sample_dir)))
    keras.utils.set_random_seed(config.seed)  # fold 0's initial weights (see _fit_member)
    start = _trainable(build_model(config, 2))
    moved_raw = np.abs(_trainable(load_model(raw.model_uri).keras_model()) - start).mean()
    moved_ema = np.abs(_trainable(load_model(ema.model_uri).keras_model()) - start).mean()
    # An average over the steps with 0.999 per step stays near the first steps' weights.
    assert moved_raw > 0
    assert moved_ema < 0.5 * moved_raw
    meta = load_model(ema.model_uri).metadata
    assert meta.training_config["weight_averaging"] == "ema"


def test_final_models_with_tta_and_stain_normalisation(sample_dir: Path, tmp_path: Path) -> None:
    from model_export.loader import load_model

    _, result = _train(
        sample_dir,
        tmp_path / "models",
        folds=2,
        epochs=2,
        final_models=2,
        tta=True,
        stain_normalisation="reinhard",
    )
    model = load_model(result.model_uri)
    meta = model.metadata
    exported = meta.training_data["exported"]
    assert exported["kind"] == "final models" and exported["models"] == 2
    assert exported["trained_on_images"] == 80
    best = exported["fold_best_epochs"]
    assert len(best) == 2 and exported["epochs"] == int(np.ceil(np.median(best)))
    assert exported["epochs_run"] == [exported["epochs"]] * 2
    assert "trained on all images" in meta.architecture and "2 cross-fitted" in meta.architecture
    assert "out-of-fold" in meta.threshold_method  # the folds still set the threshold
    assert meta.serving["test_time_augmentation"]["views"] == 8
    assert meta.serving["stain_normalisation"]["method"] == "reinhard"
    run = Path(meta.run_uri)
    folds = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert sorted(set(folds)) == ["0", "1", "final0", "final1"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["exported"] == exported and metrics["train_images_per_s"] > 0
    assert result.train_images_per_s > 0 and result.exported == exported
    # The exported ensemble is the two final models, normaliser inside each.
    keras_model = model.keras_model()
    assert keras_model.get_layer("head").get_layer("mean_logit") is not None
    images = [p.read_bytes() for p in sorted(sample_dir.rglob("*.png"))[:6]]
    assert all(0.0 <= p.probability <= 1.0 for p in model.predict(images))
