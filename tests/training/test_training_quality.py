"""The job says when a model is weak, marks it NOT_BLESSED on request, and sizes its input.

Pure checks on numbers and tiny datasets, then one short real training run on
labels that carry no signal (so the model is weak by construction).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from histo_common.samples import encode_png, synth_patch
from model_export import contract
from training.config import Augmentation, TrainConfig
from training.data import (
    FIELD_ZOOM,
    PATCH_ZOOM,
    Dataset,
    Example,
    crop_cache_size,
    default_image_size,
    downscale_warning,
    resolve_input,
)
from training.models import CUSTOM_CNN, MOBILENET_V2
from training.quality import (
    fold_thresholds,
    not_blessed_reasons,
    threshold_cost,
    threshold_spread,
    weak_model_warnings,
)


def test_threshold_spread_is_measured_in_logit_space() -> None:
    assert threshold_spread([0.5]) == 0.0
    assert threshold_spread([0.5, 0.5, 0.5]) == pytest.approx(0.0)
    # 0.27 and 0.73 are logits -0.995 and +0.995.
    assert threshold_spread([0.27, 0.5, 0.73]) == pytest.approx(1.99, abs=0.01)
    # The same gap in probability is a wider one near the edges.
    assert threshold_spread([0.01, 0.05]) > threshold_spread([0.48, 0.52]) * 10


def test_weak_model_warnings_name_the_reason() -> None:
    kwargs = {"weak_auc": 0.8, "max_spread": 2.0, "where": "out-of-fold predictions"}
    assert weak_model_warnings(0.95, [0.4, 0.6], **kwargs) == []
    (low,) = weak_model_warnings(0.62, [0.4, 0.6], **kwargs)
    assert "weak model" in low and "0.620" in low and "below 0.80" in low
    (wide,) = weak_model_warnings(0.95, [0.1, 0.5, 0.9], **kwargs)
    assert "unstable threshold" in wide and "0.100, 0.500, 0.900" in wide
    assert len(weak_model_warnings(0.5, [0.05, 0.95], **kwargs)) == 2
    (nan,) = weak_model_warnings(float("nan"), [], **kwargs)
    assert "could not be computed" in nan


def test_fold_thresholds_are_each_folds_own() -> None:
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 0])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.1, 0.2])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])  # fold 2 holds one class only
    low, high = fold_thresholds(labels, scores, folds, "youden", 0.5)
    assert 0.2 < low < 0.3 and 0.7 < high < 0.8
    assert fold_thresholds(labels, scores, folds, "fixed", 0.5) == []


def test_not_blessed_reasons() -> None:
    assert not_blessed_reasons(0.7, None) == []
    assert not_blessed_reasons(0.9, 0.8) == []
    (reason,) = not_blessed_reasons(0.7, 0.8)
    assert "0.7000 is below --min-oof-auc 0.8" in reason
    assert "could not be computed" in not_blessed_reasons(math.nan, 0.8)[0]


# ------------------------------------------------------------ input size


@pytest.mark.parametrize(
    ("architecture", "short_side", "expected"),
    [
        (CUSTOM_CNN, 50, 48),  # IDC patches: the measured default
        (CUSTOM_CNN, 20, 32),
        (CUSTOM_CNN, 460, 128),
        (MOBILENET_V2, 460, 224),  # BreakHis fields of view: never 48
        (MOBILENET_V2, 150, 128),
        (MOBILENET_V2, 50, 96),
    ],
)
def test_default_image_size(architecture: str, short_side: int, expected: int) -> None:
    assert default_image_size(architecture, short_side) == expected


def test_downscale_warning_beyond_four_times() -> None:
    assert downscale_warning((700, 460), 224) is None
    warning = downscale_warning((700, 460), 48)
    assert warning is not None and "9.6x" in warning and "700 x 460" in warning


def _field_dataset(side: int, n: int = 4) -> Dataset:
    rngs = [np.random.default_rng(i) for i in range(n)]
    pngs = [encode_png(synth_patch(rng, i % 2 == 1, side)) for i, rng in enumerate(rngs)]
    examples = [Example(f"img{i}.png", i % 2, None, png) for i, png in enumerate(pngs)]
    return Dataset(examples, ["benign", "malignant"])


def test_resolve_input_from_the_images() -> None:
    fields = _field_dataset(200)
    config = TrainConfig(data="d", output="o", architecture=MOBILENET_V2)
    resolved, warnings = resolve_input(config, fields)
    assert resolved.image_size == 192 and warnings == []
    assert resolved.augmentation.zoom == PATCH_ZOOM  # 200 px is not twice 192
    small = TrainConfig(data="d", output="o", image_size=32)
    resolved, warnings = resolve_input(small, fields)
    assert resolved.image_size == 32 and resolved.augmentation.zoom == FIELD_ZOOM
    assert len(warnings) == 1 and "6.2x" in warnings[0]
    given = TrainConfig(data="d", output="o", image_size=32, augmentation=Augmentation(zoom=0.0))
    assert resolve_input(given, fields)[0].augmentation.zoom == 0.0
    patches = _field_dataset(50)
    assert resolve_input(TrainConfig(data="d", output="o"), patches)[0].image_size == 48


def test_training_crops_come_from_a_larger_cache() -> None:
    import tensorflow as tf

    from training.data import augment, make_dataset

    assert crop_cache_size(48, Augmentation(zoom=0.1)) == 54
    assert crop_cache_size(48, Augmentation(zoom=0.0)) == 48
    fields = _field_dataset(200)
    aug = Augmentation(zoom=0.3)
    ds = make_dataset(
        fields.examples, [0, 1, 2, 3], image_size=64, batch_size=4, training=True, augmentation=aug
    )
    images, _labels = next(iter(ds))
    assert images.shape == (4, 64, 64, 3)
    big = tf.constant(synth_patch(np.random.default_rng(0), True, 92).astype(np.float32))
    assert augment(big, aug, 64).shape == (64, 64, 3)


# ------------------------------------------------------------ the job, end to end


def _noise_labels_csv(sample_dir: Path, path: Path) -> Path:
    """The sample images with labels drawn at random: nothing to learn."""
    images = sorted(sample_dir.rglob("*.png"))
    labels = np.random.default_rng(0).permutation([i % 2 for i in range(len(images))])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for image, label in zip(images, labels, strict=True):
            writer.writerow([str(image), ("benign", "malignant")[label]])
    return path


def test_weak_model_is_flagged_and_not_blessed(sample_dir: Path, tmp_path: Path, capsys) -> None:
    from model_export.loader import ModelLoadError, load_model
    from training.__main__ import main

    data = _noise_labels_csv(sample_dir, tmp_path / "labels.csv")
    out = tmp_path / "models"
    flags = ["--epochs", "1", "--image-size", "32", "--batch-size", "32", "--verbose", "0"]
    assert main(["--data", str(data), "--output", str(out), *flags, "--folds", "2",
                 "--min-oof-auc", "0.9"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "Warning:    weak model" in printed and "NOT_BLESSED" in printed
    version = out / "histo-cnn" / "1"
    meta = json.loads((version / contract.METADATA_FILE).read_text())
    assert any(w.startswith("weak model: AUC") for w in meta["warnings"])
    text = (version / contract.NOT_BLESSED).read_text()
    assert text.startswith("NOT_BLESSED: histo-cnn version 1")
    assert "is below --min-oof-auc 0.9" in text and "Research use only" in text
    with pytest.raises(ModelLoadError, match="NOT_BLESSED"):
        load_model(str(out / "histo-cnn"))
    assert load_model(str(version)).version == 1


def test_spread_is_not_reported_when_one_threshold_serves_every_fold() -> None:
    # Two folds separated with wide gaps: their own thresholds sit far apart in logit
    # space, yet 0.3 separates both perfectly, so the spread costs nothing.
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    scores = np.array([0.001, 0.002, 0.5, 0.6, 0.05, 0.1, 0.9, 0.95])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    own = fold_thresholds(labels, scores, folds, "youden", 0.5)
    kwargs = {"weak_auc": 0.8, "max_spread": 1.0, "where": "oof"}
    assert threshold_spread(own) > 1.0
    assert threshold_cost(labels, scores, folds, 0.3, own) == pytest.approx(0.0)
    assert weak_model_warnings(1.0, own, cost=0.0, **kwargs) == []
    # The same spread, where one threshold cannot serve both folds, is reported.
    cost = threshold_cost(labels, scores, folds, 0.7, own)
    assert cost == pytest.approx(0.5)  # fold 0 loses its malignant images
    (wide,) = weak_model_warnings(1.0, own, cost=cost, **kwargs)
    assert "unstable threshold" in wide
