"""Is the trained model weak? Warnings for the log and ``metadata.json``, and NOT_BLESSED.

After the out-of-fold predictions are in, :func:`weak_model_warnings` says in one
sentence each what should make a reader doubt the model: a low out-of-fold AUC, or
per-fold thresholds that disagree widely (the folds' patients want different
operating points, so the one exported threshold fits none of them well). With
``--min-oof-auc`` :func:`mark_not_blessed` writes the promotion gate's
``NOT_BLESSED`` file (same name and format as ``evaluation.gate``) into the version
folder, so the loader's "latest" skips it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

_EPS = 1e-6


def threshold_spread(thresholds: Sequence[float]) -> float:
    """Largest minus smallest threshold in logit space (0 for fewer than two)."""
    if len(thresholds) < 2:
        return 0.0
    t = np.clip(np.asarray(thresholds, dtype=np.float64), _EPS, 1 - _EPS)
    logits = np.log(t / (1 - t))
    return float(logits.max() - logits.min())


def fold_thresholds(
    labels: np.ndarray, scores: np.ndarray, folds: np.ndarray, method: str, fixed: float
) -> list[float]:
    """Each fold's own threshold on its held-out predictions (folds holding both classes).

    Args:
        labels: 0/1 labels of the out-of-fold predictions.
        scores: the positive class's probabilities.
        folds: the fold that held out each prediction.
        method: ``youden`` or ``fixed`` (fixed gives no spread to report: an empty list).
        fixed: the fixed threshold, passed on to ``choose_threshold``.
    """
    from training.train import choose_threshold

    if method != "youden":
        return []
    out = []
    for fold in np.unique(folds):
        mask = folds == fold
        if len(np.unique(labels[mask])) == 2:
            out.append(choose_threshold(labels[mask], scores[mask], method, fixed)[0])
    return out


def threshold_cost(
    labels: np.ndarray,
    scores: np.ndarray,
    folds: np.ndarray,
    threshold: float,
    own_thresholds: Sequence[float],
) -> float:
    """The most balanced accuracy any fold loses at ``threshold`` instead of its own.

    Widely spread fold thresholds matter only when one threshold cannot serve every
    fold: on folds whose classes separate with a wide gap, thresholds anywhere in
    the gap are equally right, spread or not, and this cost is 0.

    Args:
        labels: 0/1 labels of the out-of-fold predictions.
        scores: the positive class's probabilities.
        folds: the fold that held out each prediction.
        threshold: the exported threshold.
        own_thresholds: each two-class fold's own threshold, in fold order
            (:func:`fold_thresholds`).
    """
    from evaluation.metrics import point_metrics

    two_class = [f for f in np.unique(folds) if len(np.unique(labels[folds == f])) == 2]
    cost = 0.0
    for fold, own in zip(two_class, own_thresholds, strict=False):
        y, p = labels[folds == fold], scores[folds == fold]
        best = point_metrics(y, p, own)["balanced_accuracy"]
        cost = max(cost, best - point_metrics(y, p, threshold)["balanced_accuracy"])
    return cost


def weak_model_warnings(
    auc: float,
    thresholds: Sequence[float],
    *,
    weak_auc: float,
    max_spread: float,
    where: str,
    cost: float | None = None,
    max_cost: float = 0.02,
) -> list[str]:
    """Sentences (possibly none) saying why the model should not be trusted as it is.

    Args:
        auc: the held-out AUC (out-of-fold with folds > 1); NaN when not computable.
        thresholds: the per-fold thresholds (see :func:`fold_thresholds`).
        weak_auc: warn below this AUC.
        max_spread: warn when the thresholds spread more than this in logit space.
        where: what the AUC was measured on, in words.
        cost: :func:`threshold_cost` of the exported threshold, when known: a spread
            is only reported when the exported threshold costs some fold more than
            ``max_cost`` balanced accuracy.
        max_cost: see ``cost``.
    """
    warnings = []
    if not np.isfinite(auc):
        warnings.append(f"the AUC on {where} could not be computed (one class only)")
    elif auc < weak_auc:
        warnings.append(
            f"weak model: AUC {auc:.3f} on {where} is below {weak_auc:.2f}; it may not "
            "tell the classes apart on patients it has not seen"
        )
    spread = threshold_spread(thresholds)
    if spread > max_spread and (cost is None or cost > max_cost):
        listed = ", ".join(f"{t:.3f}" for t in thresholds)
        warnings.append(
            f"unstable threshold: the folds' own thresholds ({listed}) spread {spread:.2f} "
            f"in logit space (more than {max_spread:.2f}); the exported threshold may not "
            "fit new patients"
        )
    return warnings


def not_blessed_reasons(auc: float, min_auc: float | None) -> list[str]:
    """Why the version fails ``--min-oof-auc`` (empty when it passes or no limit is set)."""
    if min_auc is None:
        return []
    if not np.isfinite(auc):
        return [f"out-of-fold AUC could not be computed (--min-oof-auc {min_auc})"]
    if auc < min_auc:
        return [f"out-of-fold AUC {auc:.4f} is below --min-oof-auc {min_auc}"]
    return []


def mark_not_blessed(
    version_uri: str,
    *,
    model_name: str,
    version: int,
    auc: float,
    min_auc: float,
    run_uri: str,
) -> str:
    """Write the gate's ``NOT_BLESSED`` file (its name and format) into ``version_uri``.

    Returns:
        The URI written.
    """
    from evaluation.gate import blessing_text, write_blessing
    from histo_common.layout import Blessing, EvaluatedModel, GateCheck

    value = float(auc) if np.isfinite(auc) else None
    blessing = Blessing(
        blessed=False,
        checks=[GateCheck("oof_roc_auc", "min", min_auc, value, passed=False)],
        reasons=not_blessed_reasons(auc, min_auc),
    )
    model = EvaluatedModel(name=model_name, version=version, threshold=float("nan"))
    text = blessing_text(blessing, model, run_uri)
    return write_blessing(version_uri, False, text)
