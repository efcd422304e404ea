"""Evaluation metrics checked against scikit-learn on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from evaluation import metrics


@pytest.fixture(params=[0, 1, 2])
def case(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities, with ties (rounded) and imbalance."""
    rng = np.random.default_rng(request.param)
    n = (9, 60, 500)[request.param]
    y = (rng.random(n) < 0.35).astype(int)
    y[:2] = [0, 1]  # both classes present
    p = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1).round(2)
    return y, p


def test_point_metrics_match_sklearn(case) -> None:
    y, p = case
    threshold = 0.45
    pred = (p >= threshold).astype(int)
    got = metrics.point_metrics(y, p, threshold)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert got["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))


def test_score_metrics_match_sklearn(case) -> None:
    y, p = case
    assert metrics.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    assert metrics.average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p))
    assert metrics.brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p))


def test_confusion_matrix_matches_sklearn(case) -> None:
    y, p = case
    level = metrics.evaluate_level(y, p, 0.5, n_resamples=0)
    expected = skm.confusion_matrix(y, (p >= 0.5).astype(int), labels=[0, 1])
    assert level["confusion_matrix"]["matrix"] == expected.tolist()
    report = skm.classification_report(
        y,
        (p >= 0.5).astype(int),
        labels=[0, 1],
        target_names=["benign", "malignant"],
        output_dict=True,
        zero_division=0,
    )
    assert level["classification_report"]["malignant"]["recall"] == pytest.approx(
        report["malignant"]["recall"], abs=1e-6
    )
    assert level["classification_report"]["macro avg"]["f1-score"] == pytest.approx(
        report["macro avg"]["f1-score"], abs=1e-6
    )


def test_expected_calibration_error_by_hand() -> None:
    # Bin [0.1, 0.2): p 0.1, 0.1 with y 0, 1 -> |0.1 - 0.5| weight 2/4.
    # Bin [0.9, 1.0]: p 0.9, 1.0 with y 1, 1 -> |0.95 - 1| weight 2/4.
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 1.0])
    assert metrics.expected_calibration_error(y, p) == pytest.approx(0.5 * 0.4 + 0.5 * 0.05)
    perfect = metrics.expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0]))
    assert perfect == pytest.approx(0.0)


def test_calibration_bins_agree_with_sklearn(case) -> None:
    from sklearn.calibration import calibration_curve

    y, p = case
    bins = [b for b in metrics.calibration_bins(y, p) if b["count"]]
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    assert [b["fraction_malignant"] for b in bins] == pytest.approx(prob_true.tolist())
    assert [b["mean_probability"] for b in bins] == pytest.approx(prob_pred.tolist())


def test_bootstrap_interval_brackets_the_value(case) -> None:
    y, p = case
    level = metrics.evaluate_level(y, p, 0.5, n_resamples=300, seed=1)
    for name in metrics.ALL_METRICS:
        m = level[name]
        assert m["ci_low"] is not None and m["ci_high"] is not None, name
        assert m["ci_low"] <= m["ci_high"], name
        # The percentile interval need not contain the point value for tiny n; it does here
        # for the larger cases.
        if y.size >= 60:
            assert m["ci_low"] - 1e-9 <= m["value"] <= m["ci_high"] + 1e-9, name
    again = metrics.evaluate_level(y, p, 0.5, n_resamples=300, seed=1)
    assert again["roc_auc"] == level["roc_auc"]  # seeded: reproducible


def test_one_class_gives_undefined_ranking_metrics() -> None:
    y = np.zeros(5, dtype=int)
    p = np.linspace(0, 1, 5)
    assert math.isnan(metrics.roc_auc(y, p))
    assert math.isnan(metrics.average_precision(y, p))
    level = metrics.evaluate_level(y, p, 0.5, n_resamples=20)
    assert level["roc_auc"]["value"] is None  # JSON-safe
    assert level["specificity"]["value"] == pytest.approx(0.4)  # 0 and 0.25 of 5 below 0.5


def test_aggregate_by_patient_uses_any_and_max() -> None:
    ids, y, p = metrics.aggregate_by_patient(
        ["b", "a", "a", "b", "c"], [0, 0, 1, 0, 0], [0.2, 0.1, 0.7, 0.4, 0.3]
    )
    assert ids == ["a", "b", "c"]
    assert y.tolist() == [1, 0, 0]
    assert p.tolist() == pytest.approx([0.7, 0.4, 0.3])


def test_prediction_distribution_counts(case) -> None:
    y, p = case
    dist = metrics.prediction_distribution(y, p, ("benign", "malignant"))
    assert sum(dist["benign"]["histogram"]) == int((y == 0).sum())
    assert sum(dist["malignant"]["histogram"]) == int((y == 1).sum())
    assert dist["malignant"]["mean"] == pytest.approx(float(p[y == 1].mean()), abs=1e-6)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="0 \\(benign\\) or 1"):
        metrics.evaluate_level([0, 2], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="one length"):
        metrics.evaluate_level([0, 1], [0.1], 0.5)
