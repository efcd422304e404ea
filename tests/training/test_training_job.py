"""The training job end to end (CLI, config, gs://), its errors, and its container."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from histo_common import storage
from training.__main__ import config_from_args, main
from training.config import ConfigError, TrainConfig

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--epochs", "2", "--image-size", "32", "--batch-size", "16", "--verbose", "0"]


def test_cli_trains_and_exports_locally(sample_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "models"
    assert main(["--data", str(sample_dir), "--output", str(out), *QUICK, "--mpp", "4"]) == 0
    printed = capsys.readouterr().out
    assert "histo-cnn/1" in printed and "Research use only" in printed
    version = out / "histo-cnn" / "1"
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["class_names"] == ["benign", "malignant"]
    assert meta["image_size"] == 32
    # The training scale: source pixels of the 48 px samples, not the 32 px input.
    assert meta["native_size"] == [48, 48] and meta["mpp"] == 4.0
    assert 0.0 < meta["threshold"] < 1.0
    assert "Youden" in meta["threshold_method"] and "out-of-fold" in meta["threshold_method"]
    assert "ensemble of 3" in meta["architecture"]
    assert meta["training_data"]["images"] == 80
    assert meta["training_data"]["split"] == "stratified"
    assert meta["training_data"]["folds"] == 3
    assert meta["training_config"]["epochs"] == 2
    for key in ("roc_auc", "accuracy", "sensitivity", "specificity", "balanced_accuracy"):
        assert key in meta["validation_metrics"]
    run = Path(meta["run_uri"])
    assert run == out / "runs" / "histo-cnn" / "1"
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("fold,epoch") and len(history) == 1 + 3 * 2
    split = (run / "split.csv").read_text().splitlines()
    assert len(split) == 81 and split[0] == "uri,label,patient_id,validation_fold"
    assert sorted({line.rsplit(",", 1)[1] for line in split[1:]}) == ["0", "1", "2"]
    assert all((run / f"fold{k}" / "checkpoint.keras").is_file() for k in range(3))
    # The exported ensemble is one model: the signatures equal its Keras form.
    from model_export.loader import load_model

    loaded = load_model(str(out / "histo-cnn"))
    assert loaded.keras_model().get_layer("head").get_layer("mean_logit") is not None
    assert list(run.rglob("logs/**/events.out.tfevents.*"))
    # A second run becomes version 2; the first stays.
    assert main(["--data", str(sample_dir), "--output", str(out), *QUICK, "--folds", "1"]) == 0
    assert (out / "histo-cnn" / "2" / "metadata.json").is_file()


def test_train_from_and_to_gcs_then_load(sample_dir: Path, gcs_bucket: str) -> None:
    from model_export.loader import load_model

    data = f"{gcs_bucket}/training-data"
    for path in sorted(sample_dir.rglob("*.png")):
        storage.write_bytes(f"{data}/{path.parent.name}/{path.name}", path.read_bytes())
    models = f"{gcs_bucket}/models"
    flags = [*QUICK, "--model-name", "gcs-model", "--folds", "1"]
    assert main(["--data", data, "--output", models, *flags]) == 0
    model = load_model(f"{models}/gcs-model")
    assert model.uri == f"{models}/gcs-model/1"
    assert storage.exists(f"{models}/runs/gcs-model/1/history.csv")
    images = [p.read_bytes() for p in sorted(sample_dir.rglob("*.png"))[:4]]
    assert all(0.0 <= p.probability <= 1.0 for p in model.predict(images))


def test_config_file_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "data: gs://bucket/data\noutput: gs://bucket/models\nepochs: 7\ndropout: 0.3\n"
        "augmentation:\n  stain: 0.1\n  flip: false\n"
    )
    config = config_from_args(["--config", str(cfg), "--epochs", "9", "--aug-hue", "0.05"])
    assert config.epochs == 9  # the flag wins
    assert config.dropout == 0.3  # from the file
    assert config.augmentation.stain == 0.1 and config.augmentation.flip is False
    assert config.augmentation.hue == 0.05
    js = tmp_path / "train.json"
    js.write_text(json.dumps({"data": "d", "output": "o", "architecture": "mobilenet_v2"}))
    assert config_from_args(["--config", str(js)]).transfer_learning


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning-rate", "2"], "learning_rate"),
        (["--image-size", "8"], "image_size"),
        (["--dropout", "1.5"], "dropout"),
        (["--model-name", "../evil"], "model_name"),
        (["--aug-zoom", "0.9"], "augmentation.zoom"),
        (["--validation-fraction", "0.9"], "validation_fraction"),
        (["--folds", "0"], "folds"),
        (["--mpp", "0"], "mpp"),
    ],
)
def test_bad_flags_name_the_field(flags: list[str], message: str, capsys) -> None:
    assert main(["--data", "d", "--output", "o", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert "Traceback" not in err


def test_unknown_config_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text('{"data": "d", "output": "o", "epoch": 3}')
    with pytest.raises(ConfigError, match="unknown fields: \\['epoch'\\]"):
        config_from_args(["--config", str(cfg)])


def test_bad_data_folder_fails_clearly(tmp_path: Path, capsys) -> None:
    assert main(["--data", str(tmp_path / "none"), "--output", str(tmp_path / "m")]) == 2
    assert "no labelled images found under" in capsys.readouterr().err


def test_transfer_learning_weights_errors(tmp_path: Path, monkeypatch) -> None:
    import keras

    from training.train import TrainingError, build_model

    config = TrainConfig(
        data="d",
        output="o",
        architecture="mobilenet_v2",
        weights=str(tmp_path / "missing.h5"),
        image_size=48,
    )
    with pytest.raises(TrainingError, match="does not exist"):
        build_model(config, 2)

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    import keras.src.applications.mobilenet_v2 as mnv2

    monkeypatch.setattr(mnv2.file_utils, "get_file", offline)
    with pytest.raises(
        TrainingError, match=r"could not download the ImageNet weights.*--weights PATH"
    ):
        build_model(
            TrainConfig(
                data="d", output="o", architecture="mobilenet_v2", weights="imagenet", image_size=48
            ),
            2,
        )


def test_mobilenet_layer_cuts_the_base_and_a_wrong_name_is_refused() -> None:
    from training.__main__ import config_from_args
    from training.train import TrainingError, build_model

    flags = ["--data", "d", "--output", "o", "--architecture", "mobilenet_v2"]
    flags += ["--image-size", "64", "--mobilenet-layer", "block_6_project_BN"]
    config = config_from_args(flags)
    backbone = build_model(config, 2).get_layer("backbone")
    assert tuple(backbone.output.shape[1:]) == (4, 4, 24)  # stride 16, not the whole base's 32
    whole = build_model(replace(config, mobilenet_layer=None), 2)
    assert tuple(whole.get_layer("backbone").output.shape[1:]) == (2, 2, 1280)
    with pytest.raises(TrainingError, match="no layer 'block_99_add'"):
        build_model(replace(config, mobilenet_layer="block_99_add"), 2)
    with pytest.raises(ConfigError, match="mobilenet_layer 'block_6_add' needs architecture"):
        TrainConfig(data="d", output="o", mobilenet_layer="block_6_add")


def test_alpha_is_read_from_weights_file_name() -> None:
    config = TrainConfig(
        data="d",
        output="o",
        architecture="mobilenet_v2",
        weights="/w/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5",
    )
    assert config.resolved_alpha == 0.5


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_youden_threshold_on_separable_scores_sits_mid_gap() -> None:
    from training.train import binary_metrics, choose_threshold

    # Out-of-fold probabilities crowded near 0, as the demo model's are.
    benign = np.array([0.0001, 0.0002, 0.0003, 0.0005, 0.0008])
    malignant = np.array([0.02, 0.05, 0.3, 0.9, 0.99])
    y = np.r_[np.zeros(5), np.ones(5)].astype(int)
    threshold, how = choose_threshold(y, np.r_[benign, malignant], "youden", 0.5)
    assert benign.max() < threshold < malignant.min()
    middle = (_logit(benign.max()) + _logit(malignant.min())) / 2
    assert _logit(threshold) == pytest.approx(middle, abs=1e-6)
    assert "0.0008" in how and "0.02" in how and "middle in logit space" in how
    assert binary_metrics(y, np.r_[benign, malignant], threshold)["balanced_accuracy"] == 1.0


def test_youden_unique_optimum_on_overlapping_scores() -> None:
    from training.train import choose_threshold

    y = np.array([0, 0, 0, 0, 1, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    threshold, how = choose_threshold(y, s, "youden", 0.5)
    # J is 0.8 only for thresholds in (0.4, 0.5] (0.67 or less elsewhere): its middle.
    assert 0.4 < threshold <= 0.5
    assert _logit(threshold) == pytest.approx((_logit(0.4) + _logit(0.5)) / 2, abs=1e-6)
    assert "J = 0.800" in how and "tied" not in how


def test_youden_tie_between_distinct_optima_takes_the_middle() -> None:
    from training.train import binary_metrics, choose_threshold

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.8, 0.9, 0.95])
    threshold, how = choose_threshold(y, s, "youden", 0.5)
    # Two gaps tie at J = 0.75: (0.3, 0.6] and (0.7, 0.8]. The logit middle of the whole
    # optimal range (0.3 to 0.8) is 0.567, inside the first gap, so it is kept.
    assert threshold == pytest.approx(1 / (1 + np.exp(-(_logit(0.3) + _logit(0.8)) / 2)))
    assert 0.3 < threshold <= 0.6
    assert "2 tied optimal ranges from 0.3 to 0.8" in how
    m = binary_metrics(y, s, threshold)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.75


def test_middle_of_apart_optima_keeps_an_optimal_threshold() -> None:
    from training.train import middle_of_optimal_range

    # The span's logit middle (0.5) is in neither interval: take the middle of the
    # interval nearest it, never a point between the optima.
    threshold = middle_of_optimal_range([(0.05, 0.1), (0.6, 0.95)])
    assert 0.6 < threshold <= 0.95
    assert _logit(threshold) == pytest.approx((_logit(0.6) + _logit(0.95)) / 2)
    # Probabilities at 0 and 1 are clipped before the logit, so the middle stays inside.
    assert middle_of_optimal_range([(0.0, 1e-9)]) == pytest.approx(5e-10)
    assert middle_of_optimal_range([(0.0, 1.0)]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("y", "s", "why"),
    [
        ([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], "one class only"),
        ([0, 0, 1, 1], [0.3, 0.3, 0.3, 0.3], "beats chance"),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], "beats chance"),
    ],
)
def test_youden_without_a_useful_threshold_falls_back_to_fixed(
    y: list[int], s: list[float], why: str
) -> None:
    from training.train import choose_threshold

    threshold, how = choose_threshold(np.array(y), np.array(s), "youden", 0.4)
    assert threshold == 0.4
    assert how.startswith("fixed at 0.4") and why in how


def test_fixed_threshold_and_diverged_scores() -> None:
    from training.train import TrainingError, choose_threshold

    y, s = np.array([0, 1]), np.array([0.2, 0.8])
    assert choose_threshold(y, s, "fixed", 0.4) == (0.4, "fixed at 0.4")
    assert choose_threshold(y, s, "fixed", 0.5)[0] == 0.5
    with pytest.raises(TrainingError, match="NaN"):
        choose_threshold(y, np.array([0.2, np.nan]), "youden", 0.5)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    return pins


def test_dockerfile_entrypoint_and_requirements_match() -> None:
    dockerfile = (REPO / "training" / "Dockerfile").read_text()
    assert re.search(r'ENTRYPOINT \["python", "-m", "training"\]', dockerfile)
    for package in ("histo_common", "model_export", "evaluation", "training"):
        assert re.search(rf"COPY {package}/? ", dockerfile), package
    assert "COPY training/requirements.txt" in dockerfile
    job, top = _pins(REPO / "training" / "requirements.txt"), _pins(REPO / "requirements.txt")
    assert {"tensorflow", "keras", "google-cloud-storage", "tensorboard"} <= set(job)
    for name, version in job.items():
        assert version, f"{name} is not pinned in training/requirements.txt"
        assert top.get(name) == version, f"{name}=={version} differs from requirements.txt"
    # Every module the job imports from outside the project is installed by its requirements.
    import_names = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow"}
    sources = " ".join(p.read_text() for p in (REPO / "training").glob("*.py"))
    for module, package in import_names.items():
        if re.search(rf"^\s*(import|from) {module}\b", sources, re.M):
            assert package in job, f"training imports {module} but does not install {package}"
