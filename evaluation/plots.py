"""The evaluation plots as PNG bytes.

Confusion matrix, ROC, precision-recall, calibration curve and prediction
histogram by class.

Pure functions of labels and probabilities (matplotlib's Agg backend, no
display); :mod:`evaluation.outputs` writes them where the run layout says
(``histo_common.layout.PLOT_FILES``) and embeds them in the report.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_FOOTNOTE = "Research use only"
# Where each plot's legend goes (matplotlib's names): clear of its curves.
LegendPlace = Literal["lower right", "lower left", "upper left", "upper center"]


def _figure() -> tuple[Figure, Axes]:
    """A figure (Agg backend, no display) and its one set of axes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.4), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig: Figure) -> bytes:
    """Footnote the figure and render it as PNG bytes."""
    fig.text(0.99, 0.01, _FOOTNOTE, ha="right", va="bottom", fontsize=7, color="grey")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _model_label(metric: str, value: float | None) -> str:
    """The model curve's legend entry, with its summary figure when there is one."""
    return f"model ({metric} {value:.3f})" if value is not None else "model"


def _finish_axes(
    ax: Axes, title: str, xlabel: str, ylabel: str, legend: LegendPlace, top: float | None = None
) -> None:
    """Title, axis labels and legend; with ``top``, limits of [0, 1] x [0, top]."""
    if top is not None:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend)


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], threshold: float
) -> bytes:
    """Confusion matrix (rows true, columns predicted) with counts and row shares."""
    fig, ax = _figure()
    arr = np.asarray(matrix, dtype=np.float64)
    shares = arr / np.maximum(arr.sum(axis=1, keepdims=True), 1.0)
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            colour = "white" if shares[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{int(arr[i, j])}\n{shares[i, j]:.1%}",
                ha="center",
                va="center",
                color=colour,
            )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix at threshold {threshold:.3f}")
    return _png(fig)


def roc_png(y: np.ndarray, p: np.ndarray, auc: float | None) -> bytes:
    """ROC curve with the chance diagonal."""
    from sklearn.metrics import roc_curve

    fig, ax = _figure()
    if len(set(y.tolist())) == 2:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=_model_label("AUC", auc))
    else:
        ax.text(0.5, 0.5, "needs both classes", ha="center")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    _finish_axes(
        ax,
        "ROC curve",
        "1 - specificity (false positive rate)",
        "sensitivity (true positive rate)",
        "lower right",
    )
    return _png(fig)


def pr_png(y: np.ndarray, p: np.ndarray, ap: float | None) -> bytes:
    """Precision-recall curve with the prevalence line."""
    from sklearn.metrics import precision_recall_curve

    fig, ax = _figure()
    if y.size and y.sum() > 0:
        precision, recall, _ = precision_recall_curve(y, p)
        ax.step(recall, precision, where="post", label=_model_label("AP", ap))
        ax.axhline(float(y.mean()), linestyle="--", color="grey", label="prevalence")
    else:
        ax.text(0.5, 0.5, "needs malignant examples", ha="center")
    _finish_axes(
        ax, "Precision-recall curve", "recall (sensitivity)", "precision", "lower left", 1.02
    )
    return _png(fig)


def calibration_png(bins: Sequence[dict], ece: float | None) -> bytes:
    """Reliability diagram: observed malignant fraction against mean probability per bin."""
    fig, ax = _figure()
    xs = [b["mean_probability"] for b in bins if b["count"]]
    ys = [b["fraction_malignant"] for b in bins if b["count"]]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.plot(xs, ys, marker="o", label=_model_label("ECE", ece))
    _finish_axes(
        ax,
        "Calibration curve",
        "mean predicted probability of malignant",
        "observed fraction malignant",
        "upper left",
        1.0,
    )
    return _png(fig)


def histogram_png(
    y: np.ndarray, p: np.ndarray, class_names: Sequence[str], threshold: float
) -> bytes:
    """Histogram of the malignant probability for each true class, with the threshold."""
    fig, ax = _figure()
    edges = np.linspace(0.0, 1.0, 21)
    for value, name in enumerate(class_names):
        ax.hist(p[y == value], bins=list(edges), alpha=0.6, label=f"true {name}")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    _finish_axes(
        ax,
        "Predictions by true class",
        "predicted probability of malignant",
        "images",
        "upper center",
    )
    return _png(fig)
