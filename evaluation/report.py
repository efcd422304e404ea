"""The evaluation report: one self-contained HTML page a person opens in a browser.

Everything is inside the file (styles inline, plots and gallery images as
``data:`` URIs, no scripts, nothing fetched), so it can be mailed, archived or
opened from a bucket. The research-use disclaimer sits at the top.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluation.metrics import ALL_METRICS
from histo_common.layout import MetricsDocument

METRIC_TITLES = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity (recall of malignant)",
    "specificity": "Specificity",
    "precision": "Precision (PPV)",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "average_precision": "Average precision",
    "brier_score": "Brier score (lower is better)",
    "expected_calibration_error": "Expected calibration error (lower is better)",
}
PLOT_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "roc": "ROC curve",
    "pr": "Precision-recall curve",
    "calibration": "Calibration curve",
    "histogram": "Prediction histogram by class",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1rem 1.5rem;color:#1d2330;background:#fff}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}
.disclaimer{background:#fff4e5;border:2px solid #e08a00;padding:.6rem .9rem;font-weight:600;
border-radius:4px}
.verdict{padding:.6rem .9rem;border-radius:4px;font-weight:600}
.blessed{background:#e7f6ea;border:2px solid #2e8b3e}.not-blessed{background:#fdecea;
border:2px solid #c62828}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;
text-align:right}th:first-child,td:first-child{text-align:left}thead th{background:#f3f5f8}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1rem}
figure{margin:0}figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:4px;padding:.5rem;font-size:.8rem;word-break:break-all}
.card img{width:100%;height:auto}.muted{color:#666;font-size:.85rem}
"""


@dataclass(frozen=True)
class GalleryItem:
    """One of the most confident errors, with its overlay (or the plain image)."""

    uri: str
    kind: str  # "false positive" or "false negative"
    true_label: str
    predicted_label: str
    probability: float
    threshold: float
    png: bytes
    has_gradcam: bool


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI for embedding."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _metrics_table(image_level: dict[str, Any], patient_level: dict[str, Any] | None) -> str:
    head = "<tr><th>Metric</th><th>Images</th><th>95% CI</th>"
    head += "<th>Patients</th><th>95% CI</th></tr>" if patient_level else "</tr>"
    rows = []
    for name in ALL_METRICS:
        cells = [f"<td>{_e(METRIC_TITLES[name])}</td>"]
        for level in (image_level, patient_level) if patient_level else (image_level,):
            m = level[name]
            cells.append(f"<td>{_num(m['value'])}</td>")
            cells.append(f"<td>{_num(m['ci_low'])} to {_num(m['ci_high'])}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _confusion_table(cm: dict[str, Any], title: str) -> str:
    labels = cm["labels"]
    head = "".join(f"<th>predicted {_e(lab)}</th>" for lab in labels)
    body = "".join(
        f"<tr><th>true {_e(lab)}</th>" + "".join(f"<td>{int(v)}</td>" for v in row) + "</tr>"
        for lab, row in zip(labels, cm["matrix"], strict=True)
    )
    return (
        f"<h3>{_e(title)} (threshold {_num(cm['threshold'])})</h3>"
        f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _report_table(report: dict[str, Any]) -> str:
    rows = []
    for name, values in report.items():
        if isinstance(values, dict):
            rows.append(
                f"<tr><td>{_e(name)}</td><td>{_num(values.get('precision'))}</td>"
                f"<td>{_num(values.get('recall'))}</td><td>{_num(values.get('f1-score'))}</td>"
                f"<td>{_num(values.get('support'), 0)}</td></tr>"
            )
        else:
            rows.append(f"<tr><td>{_e(name)}</td><td colspan=4>{_num(values)}</td></tr>")
    head = "<tr><th></th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _distribution_table(dist: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>true {_e(name)}</td><td>{v['count']}</td><td>{_num(v['mean'])}</td>"
        f"<td>{_num(v['median'])}</td></tr>"
        for name, v in dist.items()
        if isinstance(v, dict)
    )
    head = "<tr><th>Class</th><th>images</th><th>mean p(malignant)</th><th>median</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>"


def _blessing_html(blessing: dict[str, Any] | None) -> str:
    if not blessing:
        return ""
    cls, word = ("blessed", "BLESSED") if blessing["blessed"] else ("not-blessed", "NOT BLESSED")
    reasons = "".join(f"<li>{_e(r)}</li>" for r in blessing["reasons"])
    where = blessing.get("written_to")
    return (
        f'<h2>Promotion gate</h2><div class="verdict {cls}">{word}'
        + (f"<ul>{reasons}</ul>" if reasons else " (every limit met)")
        + "</div>"
        + (f'<p class="muted">Verdict file: {_e(where)}</p>' if where else "")
    )


def _gallery_html(items: Sequence[GalleryItem]) -> str:
    if not items:
        return "<p>No misclassified images.</p>"
    cards = []
    for item in items:
        what = "Grad-CAM overlay" if item.has_gradcam else "image (no model to explain it)"
        cards.append(
            f'<div class="card"><img src="{data_uri(item.png)}" alt="{_e(what)} of {_e(item.uri)}">'
            f"<div><b>{_e(item.kind)}</b>: true {_e(item.true_label)}, predicted "
            f"{_e(item.predicted_label)}, p(malignant) = {item.probability:.3f} "
            f"(threshold {item.threshold:.3f})</div><div class=muted>{_e(item.uri)}</div></div>"
        )
    return f'<div class="gallery">{"".join(cards)}</div>'


def render_report(
    document: MetricsDocument, plots: dict[str, bytes], gallery: Sequence[GalleryItem]
) -> str:
    """Render the HTML report.

    Args:
        document: the evaluation's metrics document.
        plots: PNG bytes by plot name (``confusion_matrix``, ``roc``, ``pr``, ...).
        gallery: the most confident errors to show.

    Returns:
        A complete HTML document.
    """
    metrics = document.to_dict()
    model = metrics["model"]
    counts = metrics["counts"]
    image_level = metrics["image_level"]
    patient_level = metrics.get("patient_level")
    per_class = ", ".join(f"{_e(k)} {v}" for k, v in counts.get("per_class", {}).items())
    title = f"histoscreen evaluation: {model.get('name')} version {model.get('version')}"
    figures = "".join(
        f'<figure><img src="{data_uri(png)}" alt="{_e(PLOT_TITLES.get(name, name))}">'
        f"<figcaption>{_e(PLOT_TITLES.get(name, name))}</figcaption></figure>"
        for name, png in plots.items()
    )
    patient_note = (
        f"<p>{counts.get('patients', 0)} patients: a patient counts as malignant when any of "
        "their images is, scored by their highest image probability.</p>"
        if patient_level
        else "<p class=muted>No patient ids: patient-level metrics not computed.</p>"
    )
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="disclaimer">{_e(metrics["disclaimer"])}</p>',
        f"<p>Model <code>{_e(model.get('version_uri') or 'unknown')}</code>, threshold "
        f"{_num(model.get('threshold'))}. Generated {_e(metrics.get('generated_at', ''))}.</p>",
        f"<p>{counts['images']} images: {counts['scored']} scored, {counts['errors']} could not "
        f"be scored, {counts.get('labelled', 0)} labelled ({per_class}), "
        f"{counts.get('unlabelled', 0)} without a label.</p>",
        _blessing_html(metrics.get("blessing")),
        "<h2>Metrics</h2>",
        f"<p class=muted>95% confidence intervals: percentile bootstrap over "
        f"{image_level.get('bootstrap_resamples', 0)} resamples.</p>",
        _metrics_table(image_level, patient_level),
        patient_note,
        "<h2>Confusion matrix</h2>",
        _confusion_table(image_level["confusion_matrix"], "Images"),
        _confusion_table(patient_level["confusion_matrix"], "Patients") if patient_level else "",
        "<h2>Classification report (images)</h2>",
        _report_table(image_level["classification_report"]),
        "<h2>Prediction distribution (images)</h2>",
        _distribution_table(image_level["prediction_distribution"]),
        f'<h2>Plots</h2><div class="plots">{figures}</div>',
        "<h2>Most confident errors</h2>",
        "<p class=muted>False positives with the highest and false negatives with the lowest "
        "probability of malignant; the overlay shows where the model looked (Grad-CAM).</p>",
        _gallery_html(gallery),
        f'<p class="disclaimer">{_e(metrics["disclaimer"])}</p>',
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)
