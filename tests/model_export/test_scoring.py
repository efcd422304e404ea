"""The one way to score a batch: refused images become outcomes, outages propagate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from histo_common import storage
from model_export import contract
from model_export.identity import ModelIdentity
from model_export.scoring import is_input_error, score_batch
from model_export.serving_client import ServingError

MODEL = ModelIdentity("histo-cnn", 3, "/m/histo-cnn/3")
# Passes a header check's shape but not TensorFlow's decoder.
CORRUPT_PNG = b"\x89PNG\r\n\x1a\nnot really a png"


class _Fake:
    """A model that refuses a batch holding a bad image, as TF Serving does."""

    def __init__(self, bad: set[bytes], failure: Exception | None = None) -> None:
        self.bad = bad
        self.failure = failure
        self.calls: list[int] = []

    def run(self, signature: str, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        self.calls.append(len(images))
        if self.failure is not None:
            raise self.failure
        if self.bad & set(images):
            raise ServingError("Invalid PNG data\nwith a trace", status="INVALID_ARGUMENT")
        p = np.asarray([len(i) / 10 for i in images], dtype=np.float32)
        return {
            "probability": p,
            "label": np.asarray([b"malignant" if x >= 0.5 else b"benign" for x in p]),
            "threshold": np.full(len(images), 0.5, dtype=np.float32),
        }


def test_refused_images_fail_alone_and_the_rest_are_scored() -> None:
    bad = {b"xx", b"yyyyy"}
    model = _Fake(bad)
    images = [b"a", b"xx", b"abc", b"abcdef", b"yyyyy", b"abcd", b"ab", b"abcdefg"]

    outcomes = score_batch(model, images, MODEL)

    assert len(outcomes) == len(images)
    for image, outcome in zip(images, outcomes, strict=True):
        assert outcome.model == MODEL
        if image in bad:
            assert not outcome.ok
            assert outcome.error == "ServingError: Invalid PNG data"
        else:
            assert outcome.prediction.probability == pytest.approx(len(image) / 10)
    assert model.calls[0] == len(images)  # one batch first, split only on a refusal


@pytest.mark.parametrize(
    "failure",
    [
        storage.StorageUnavailable("gs://models unreachable"),
        ServingError("TF Serving at h:1 failed: UNAVAILABLE", status="UNAVAILABLE"),
        MemoryError("out of memory"),
        RuntimeError("model not loadable"),
    ],
)
def test_infrastructure_errors_propagate(failure: Exception) -> None:
    model = _Fake(set(), failure)

    with pytest.raises(type(failure)):
        score_batch(model, [b"a", b"b"], MODEL)
    assert model.calls == [2]  # not split, not retried image by image


def test_nothing_to_score_calls_no_model() -> None:
    model = _Fake(set())
    assert score_batch(model, [], MODEL) == []
    assert model.calls == []


def test_a_corrupt_image_in_a_real_batch(loaded_tiny_model, sample_dir: Path) -> None:
    paths = sorted(sample_dir.rglob("*.png"))
    good = [p.read_bytes() for p in [*paths[:3], *paths[-2:]]]  # benign and malignant
    images = [good[0], good[1], CORRUPT_PNG, *good[2:]]

    outcomes = score_batch(
        loaded_tiny_model,
        images,
        loaded_tiny_model.identity,
        signature=contract.EXPLAIN_SIGNATURE,
    )

    assert [o.ok for o in outcomes] == [True, True, False, True, True, True]
    assert "Invalid PNG" in outcomes[2].error and "\n" not in outcomes[2].error
    alone = loaded_tiny_model.explain(good)
    scored = [o for o in outcomes if o.ok]
    np.testing.assert_allclose(
        [o.prediction.probability for o in scored],
        [e.prediction.probability for e in alone],
        atol=1e-5,
    )
    assert all(o.heatmap.shape == (48, 48) for o in scored)
    assert {o.model.version for o in outcomes} == {loaded_tiny_model.version}


def test_input_errors_are_told_from_outages(loaded_tiny_model) -> None:
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        loaded_tiny_model.run(contract.PREDICT_SIGNATURE, [CORRUPT_PNG])
    assert is_input_error(refused.value)
    assert is_input_error(ServingError("bad", status="INVALID_ARGUMENT"))
    assert not is_input_error(ServingError("down", status="UNAVAILABLE"))
    assert not is_input_error(tf.errors.ResourceExhaustedError(None, None, "OOM"))
    assert not is_input_error(storage.StorageUnavailable("outage"))
    assert not is_input_error(ValueError("anything else"))
