"""Evaluation metrics for a binary screen, with bootstrap confidence intervals.

Pure numpy functions (no Beam, no plotting): point metrics at the model's
threshold, ranking metrics (ROC AUC, average precision), calibration (Brier
score, expected calibration error), percentile bootstrap intervals, the
confusion matrix, the classification report and the prediction distribution,
and the roll-up from images to patients. ``y`` is 1 for malignant (the positive
class), ``p`` the model's probability of malignant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

POINT_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
)
SCORE_METRICS = ("roc_auc", "average_precision", "brier_score", "expected_calibration_error")
ALL_METRICS = POINT_METRICS + SCORE_METRICS
DEFAULT_BINS = 10


def _as_arrays(
    y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=np.int64)
    p_arr = np.asarray(p, dtype=np.float64)
    if y_arr.shape != p_arr.shape or y_arr.ndim != 1:
        raise ValueError(
            f"labels and probabilities must be 1-D of one length: {y_arr.shape}, {p_arr.shape}"
        )
    if y_arr.size and not np.isin(y_arr, (0, 1)).all():
        raise ValueError("labels must be 0 (benign) or 1 (malignant)")
    return y_arr, p_arr


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def confusion_counts(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """``(tn, fp, fn, tp)`` with malignant predicted when ``p >= threshold``."""
    pred = p >= threshold
    pos = y == 1
    return (
        int(np.sum(~pred & ~pos)),
        int(np.sum(pred & ~pos)),
        int(np.sum(~pred & pos)),
        int(np.sum(pred & pos)),
    )


def point_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, balanced accuracy, sensitivity, specificity, precision and F1.

    A ratio with an empty denominator is 0 (scikit-learn's ``zero_division=0``).
    """
    tn, fp, fn, tp = confusion_counts(y, p, threshold)
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    return {
        "accuracy": _ratio(tp + tn, tn + fp + fn + tp),
        "balanced_accuracy": (sensitivity + specificity) / 2.0,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with one class."""
    n_pos = int(np.sum(y == 1))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    ranks = np.empty(y.size, dtype=np.float64)
    # Average ranks over ties.
    boundaries = np.flatnonzero(np.diff(sorted_p)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [y.size]))
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    rank_sum = float(np.sum(ranks[y == 1]))
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision as scikit-learn defines it (step-wise, no interpolation)."""
    n_pos = int(np.sum(y == 1))
    if n_pos == 0:
        return math.nan
    order = np.argsort(-p, kind="mergesort")
    sorted_p, sorted_y = p[order], y[order]
    last_of_tie = np.concatenate((np.flatnonzero(np.diff(sorted_p)), [y.size - 1]))
    tps = np.cumsum(sorted_y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between probability and outcome."""
    return float(np.mean((p - y) ** 2)) if y.size else math.nan


def _bin_index(p: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bins over [0, 1]: return the edges and each probability's bin.

    Right edges are inclusive, as in scikit-learn's ``calibration_curve``.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return edges, np.searchsorted(edges[1:-1], p, side="left")


def calibration_bins(
    y: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_BINS
) -> list[dict[str, float]]:
    """Equal-width probability bins: count, mean probability, observed malignant fraction."""
    edges, index = _bin_index(p, n_bins)
    bins = []
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "mean_probability": float(p[mask].mean()) if count else math.nan,
                "fraction_malignant": float(y[mask].mean()) if count else math.nan,
            }
        )
    return bins


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Count-weighted mean |mean probability - observed fraction| over equal-width bins."""
    if not y.size:
        return math.nan
    _, index = _bin_index(p, n_bins)
    sum_p = np.bincount(index, weights=p, minlength=n_bins)
    sum_y = np.bincount(index, weights=y.astype(np.float64), minlength=n_bins)
    return float(np.sum(np.abs(sum_p - sum_y)) / y.size)


def all_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Every metric in :data:`ALL_METRICS` at ``threshold``."""
    out = point_metrics(y, p, threshold)
    out["roc_auc"] = roc_auc(y, p)
    out["average_precision"] = average_precision(y, p)
    out["brier_score"] = brier_score(y, p)
    out["expected_calibration_error"] = expected_calibration_error(y, p)
    return out


def bootstrap_intervals(
    y: np.ndarray,
    p: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals: resample rows with replacement, recompute.

    Resamples where a metric is undefined (e.g. AUC with one class) are left out
    of that metric's interval. Returns NaN bounds with no resamples.
    """
    if n_resamples <= 0 or y.size == 0:
        return {}
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        idx = rng.integers(0, y.size, size=y.size)
        for name, value in metric_fn(y[idx], p[idx]).items():
            values.setdefault(name, []).append(value)
    alpha = (1.0 - confidence) / 2.0
    intervals = {}
    for name, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.quantile(arr, [alpha, 1.0 - alpha])
            intervals[name] = (float(low), float(high))
    return intervals


def _clean(value: float) -> float | None:
    """JSON-safe number: None for NaN, rounded to 6 places."""
    return None if value is None or math.isnan(value) else round(float(value), 6)


def classification_report(
    y: np.ndarray, p: np.ndarray, threshold: float, class_names: Sequence[str]
) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, with macro and weighted averages."""
    from sklearn.metrics import classification_report as sk_report

    pred = (p >= threshold).astype(np.int64)
    report = sk_report(
        y, pred, labels=[0, 1], target_names=list(class_names), output_dict=True, zero_division=0
    )
    return {
        k: ({m: _clean(v) for m, v in val.items()} if isinstance(val, dict) else _clean(val))
        for k, val in report.items()
    }


def prediction_distribution(
    y: np.ndarray, p: np.ndarray, class_names: Sequence[str], n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """Histogram of probabilities per true class, with mean and median."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out: dict[str, Any] = {"bin_edges": [round(float(e), 6) for e in edges]}
    for value, name in enumerate(class_names):
        values = p[y == value]
        counts, _ = np.histogram(values, bins=edges)
        out[name] = {
            "count": int(values.size),
            "histogram": [int(c) for c in counts],
            "mean": _clean(float(values.mean())) if values.size else None,
            "median": _clean(float(np.median(values))) if values.size else None,
        }
    return out


def evaluate_level(
    y: Sequence[int] | np.ndarray,
    p: Sequence[float] | np.ndarray,
    threshold: float,
    *,
    class_names: Sequence[str] = ("benign", "malignant"),
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every number of one level (images or patients), in the ``metrics.json`` shape.

    Returns:
        ``{"<metric>": {"value", "ci_low", "ci_high"}, ..., "confusion_matrix": {...},
        "classification_report": {...}, "prediction_distribution": {...},
        "calibration": [...], "count": n}``.
    """
    y_arr, p_arr = _as_arrays(y, p)
    values = all_metrics(y_arr, p_arr, threshold)
    intervals = bootstrap_intervals(
        y_arr,
        p_arr,
        lambda yy, pp: all_metrics(yy, pp, threshold),
        n_resamples=n_resamples,
        seed=seed,
    )
    out: dict[str, Any] = {}
    for name in ALL_METRICS:
        low, high = intervals.get(name, (math.nan, math.nan))
        out[name] = {"value": _clean(values[name]), "ci_low": _clean(low), "ci_high": _clean(high)}
    tn, fp, fn, tp = confusion_counts(y_arr, p_arr, threshold)
    out["confusion_matrix"] = {
        "labels": list(class_names),
        "matrix": [[tn, fp], [fn, tp]],
        "rows": "true class",
        "columns": "predicted class",
        "threshold": threshold,
    }
    out["classification_report"] = classification_report(y_arr, p_arr, threshold, class_names)
    out["prediction_distribution"] = prediction_distribution(y_arr, p_arr, class_names)
    out["calibration"] = [
        {k: _clean(v) if isinstance(v, float) else v for k, v in b.items()}
        for b in calibration_bins(y_arr, p_arr)
    ]
    out["count"] = int(y_arr.size)
    out["bootstrap_resamples"] = n_resamples
    return out


def aggregate_by_patient(
    patients: Sequence[str], y: Sequence[int], p: Sequence[float]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Roll images up to patients.

    A patient is malignant when any of their images is, and their score is the
    highest image probability (the screen flags a patient when it flags any image).

    Returns:
        ``(patient ids sorted, patient labels, patient probabilities)``.
    """
    y_arr, p_arr = _as_arrays(y, p)
    ids = sorted(set(patients))
    position = {pid: i for i, pid in enumerate(ids)}
    index = np.asarray([position[pid] for pid in patients], dtype=np.int64)
    labels = np.zeros(len(ids), dtype=np.int64)
    probs = np.full(len(ids), -np.inf)
    np.maximum.at(labels, index, y_arr)
    np.maximum.at(probs, index, p_arr)
    return ids, labels, probs
