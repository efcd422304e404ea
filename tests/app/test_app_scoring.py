"""Scoring uploads for the app: checks, the model's explain signature, overlays."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from app import scoring
from histo_common.results import Prediction
from histo_common.tiling import TrainingScale
from model_export.identity import ModelIdentity
from model_export.serving_client import ServingError


def _sample(sample_dir: Path, cls: str, index: int = 0) -> tuple[str, bytes]:
    path = sorted((sample_dir / cls).glob("*.png"))[index]
    return path.name, path.read_bytes()


def test_score_images_scores_good_files_and_explains_bad_ones(
    loaded_tiny_model, sample_dir: Path
) -> None:
    good_benign = _sample(sample_dir, "benign")
    good_malignant = _sample(sample_dir, "malignant")
    items = [
        good_benign,
        ("notes.png", b"hello, not an image"),
        good_malignant,
        ("empty.jpg", b""),
    ]

    outcomes = scoring.score_images(loaded_tiny_model, items)

    assert [type(o).__name__ for o in outcomes] == [
        "ScoredImage",
        "FailedImage",
        "ScoredImage",
        "FailedImage",
    ]
    assert outcomes[1].reason.startswith("not an image")
    assert outcomes[3].reason == "empty file (0 bytes)"
    benign, malignant = outcomes[0], outcomes[2]
    assert benign.prediction.probability < malignant.prediction.probability
    assert malignant.prediction.label == "malignant"
    assert benign.prediction.threshold == pytest.approx(0.5)
    assert benign.heatmap.shape == (48, 48)
    assert benign.image.shape == (48, 48, 3)
    assert benign.info.format == "PNG"


def test_score_images_transcodes_tiff(loaded_tiny_model, sample_dir: Path) -> None:
    name, png = _sample(sample_dir, "malignant")
    tiff = io.BytesIO()
    Image.open(io.BytesIO(png)).save(tiff, format="TIFF")

    [from_png, from_tiff] = scoring.score_images(
        loaded_tiny_model, [(name, png), ("x.tif", tiff.getvalue())]
    )

    assert from_tiff.info.format == "TIFF"
    assert from_tiff.prediction.probability == pytest.approx(from_png.prediction.probability)


class _FussyModel:
    """Refuses any batch holding the marked image, as a model does for undecodable bytes."""

    identity = ModelIdentity("histo-cnn", 1, "/m/histo-cnn/1")

    def __init__(self, bad: bytes, failure: Exception | None = None) -> None:
        self.bad = bad
        self.failure = failure
        self.calls: list[int] = []
        self.metadata = SimpleNamespace(
            positive_class="malignant",
            class_names=["benign", "malignant"],
            threshold=0.5,
            image_size=48,
            training_scale=lambda: TrainingScale(48, 48),
        )

    def run(self, signature: str, images):
        self.calls.append(len(images))
        if self.failure is not None:
            raise self.failure
        if self.bad in images:
            raise ServingError("Invalid PNG data\nstack trace follows", status="INVALID_ARGUMENT")
        n = len(images)
        return {
            "probability": np.full(n, 0.7, np.float32),
            "label": np.asarray([b"malignant"] * n),
            "threshold": np.full(n, 0.5, np.float32),
            "heatmap": np.ones((n, 4, 4), np.float32),
        }


def test_a_batch_failure_is_isolated_to_the_bad_image(sample_dir: Path) -> None:
    good = _sample(sample_dir, "benign")
    bad = _sample(sample_dir, "malignant", 1)
    model = _FussyModel(bad[1])

    outcomes = scoring.score_images(model, [good, bad])

    assert model.calls == [2, 1, 1]
    assert isinstance(outcomes[0], scoring.ScoredImage)
    assert outcomes[1] == scoring.FailedImage(
        bad[0], "the model could not read this image: ServingError: Invalid PNG data"
    )


def test_a_failing_model_is_not_blamed_on_the_images(sample_dir: Path) -> None:
    model = _FussyModel(b"", failure=MemoryError("out of memory"))

    with pytest.raises(MemoryError):
        scoring.score_images(
            model, [_sample(sample_dir, "benign"), _sample(sample_dir, "benign", 1)]
        )
    assert model.calls == [2]


def test_nothing_to_score_calls_no_model() -> None:
    model = _FussyModel(b"")

    assert scoring.score_images(model, [("a.png", b"")])[0].reason == "empty file (0 bytes)"
    assert model.calls == []


def test_overlay_follows_the_opacity(loaded_tiny_model, sample_dir: Path) -> None:
    [scored] = scoring.score_images(loaded_tiny_model, [_sample(sample_dir, "malignant")])

    faint = Image.open(io.BytesIO(scoring.overlay_png(scored, 0.0)))
    strong = Image.open(io.BytesIO(scoring.overlay_png(scored, 1.0)))

    assert faint.size == strong.size
    assert faint.width >= 256
    assert np.abs(np.asarray(faint, float) - np.asarray(strong, float)).mean() > 5


def test_prediction_text_names_label_probability_and_threshold() -> None:
    text = scoring.prediction_text(Prediction(0.87312, "malignant", 0.42), "malignant")

    assert text == "Prediction: malignant (p(malignant) = 0.873, threshold 0.420)"
