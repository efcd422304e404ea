"""Turning scored rows and true labels into ``metrics.json``, plots and ``report.html``.

The evaluation job collects every result row into one list and hands it to
:func:`write_evaluation` (a single Beam step); this module joins the rows with
their labels, computes both levels of metrics, applies the gate, draws the
plots, builds the gallery of the most confident errors and writes the outputs
through ``FileSystems``.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from beam_jobs import files, gate, metrics, plots, stages
from beam_jobs.config import GateConfig
from beam_jobs.report import GalleryItem, render_report
from histo_common import DISCLAIMER
from histo_common.errors import one_line
from histo_common.labels import LabelledImage, by_uri, read_labels_csv, true_label
from histo_common.overlay import load_rgb, overlay_png, upscale_for_display
from histo_common.results import utc_now
from model_export.contract import DEFAULT_CLASS_NAMES as CLASS_NAMES
from model_export.contract import DEFAULT_POSITIVE_CLASS

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything the evaluation step needs besides the rows."""

    output: str
    model_uri: str | None = None
    labels_csv: str | None = None  # read where the step runs, not shipped in the job graph
    matched: int | None = None
    bootstrap: int = 1000
    seed: int = 0
    gallery_size: int = 12
    gate: GateConfig = field(default_factory=GateConfig)
    max_pixels: int = 25_000_000
    max_bytes: int = 64 * 1024 * 1024
    source: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelledScore:
    """A scored image with its true label."""

    uri: str
    y: int  # 1 malignant, 0 benign
    probability: float
    threshold: float
    predicted_label: str
    patient_id: str | None


def label_rows(
    rows: Sequence[dict[str, Any]], labels: dict[str, LabelledImage] | None
) -> tuple[list[LabelledScore], list[str]]:
    """Join result rows with their true labels; return the labelled and the unlabelled URIs."""
    labelled, unlabelled = [], []
    for row in rows:
        truth = true_label(row["uri"], CLASS_NAMES, labels)
        if truth is None:
            unlabelled.append(row["uri"])
            continue
        labelled.append(
            LabelledScore(
                uri=row["uri"],
                y=CLASS_NAMES.index(truth.label),
                probability=float(row["probability"]),
                threshold=float(row["threshold"]),
                predicted_label=str(row["label"]),
                patient_id=truth.patient_id,
            )
        )
    return labelled, unlabelled


def model_section(rows: Sequence[dict[str, Any]], model_uri: str | None) -> dict[str, Any]:
    """The ``model`` section: the (most common) name, version and threshold in the rows."""
    if not rows:
        return {"name": None, "version": None, "uri": model_uri, "threshold": 0.5}
    identities = Counter((r["model_name"], int(r["model_version"])) for r in rows)
    (name, version), _ = identities.most_common(1)[0]
    if len(identities) > 1:
        logger.warning(
            "Rows come from several models %s; reporting %s/%d", dict(identities), name, version
        )
    thresholds = Counter(float(r["threshold"]) for r in rows)
    return {
        "name": name,
        "version": version,
        "uri": model_uri,
        "threshold": thresholds.most_common(1)[0][0],
    }


def most_confident_errors(scores: Sequence[LabelledScore], n: int) -> list[LabelledScore]:
    """The ``n`` misclassified images furthest from the threshold on the wrong side."""
    wrong = [s for s in scores if (s.probability >= s.threshold) != bool(s.y)]
    wrong.sort(key=lambda s: abs(s.probability - s.threshold), reverse=True)
    return wrong[:n]


def _plain_png(data: bytes) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(upscale_for_display(load_rgb(data))).save(out, format="PNG")
    return out.getvalue()


def build_gallery(
    errors: Sequence[LabelledScore], model_uri: str | None, max_pixels: int, max_bytes: int
) -> list[GalleryItem]:
    """Read the error images again and draw their Grad-CAM overlays (plain without a model)."""
    images: list[tuple[LabelledScore, stages.CheckedImage]] = []
    for score in errors:
        try:
            checked = stages.check_image(
                score.uri, files.read_file(score.uri), max_pixels=max_pixels, max_bytes=max_bytes
            )
        except Exception as exc:  # a gallery image that vanished is left out, not fatal
            logger.warning("Gallery skips %s: %s", score.uri, one_line(exc))
            continue
        if isinstance(checked, stages.CheckedImage):
            images.append((score, checked))
    explanations = None
    positive_class = DEFAULT_POSITIVE_CLASS
    if model_uri and images:
        try:
            from model_export.loader import load_model

            model = load_model(model_uri)
            positive_class = model.metadata.positive_class
            explanations = model.explain([c.data for _, c in images])
        except Exception as exc:  # no overlays is better than no report
            logger.warning("Gallery without Grad-CAM (%s): %s", model_uri, one_line(exc))
    items = []
    for i, (score, checked) in enumerate(images):
        if explanations is not None:
            png = overlay_png(
                checked.data,
                explanations[i].prediction,
                explanations[i].heatmap,
                positive_class=positive_class,
            )
        else:
            png = _plain_png(checked.data)
        items.append(
            GalleryItem(
                uri=score.uri,
                kind="false negative" if score.y else "false positive",
                true_label=CLASS_NAMES[score.y],
                predicted_label=score.predicted_label,
                probability=score.probability,
                threshold=score.threshold,
                png=png,
                has_gradcam=explanations is not None,
            )
        )
    return items


def patient_level(
    scores: Sequence[LabelledScore], threshold: float, bootstrap: int, seed: int
) -> tuple[dict[str, Any] | None, int]:
    """Patient-level metrics over the images that have a patient id, or None without any."""
    with_patient = [s for s in scores if s.patient_id]
    if not with_patient:
        return None, 0
    ids, y, p = metrics.aggregate_by_patient(
        [s.patient_id for s in with_patient],
        [s.y for s in with_patient],
        [s.probability for s in with_patient],
    )
    level = metrics.evaluate_level(
        y, p, threshold, class_names=CLASS_NAMES, n_resamples=bootstrap, seed=seed
    )
    level["images_with_patient_id"] = len(with_patient)
    return level, len(ids)


def metrics_document(
    rows: Sequence[dict[str, Any]], n_errors: int, settings: EvaluationSettings
) -> tuple[dict[str, Any], list[LabelledScore]]:
    """The ``metrics.json`` document (without plots written) and the labelled scores."""
    labels = (
        by_uri(read_labels_csv(settings.labels_csv, CLASS_NAMES)) if settings.labels_csv else None
    )
    scores, unlabelled = label_rows(rows, labels)
    if unlabelled:
        logger.warning(
            "%d scored images have no label (e.g. %s); they are left out of the metrics",
            len(unlabelled),
            unlabelled[0],
        )
    if not scores:
        raise ValueError(
            "no scored image has a label: put images under benign/ and malignant/ folders "
            "or pass --labels with a CSV naming them"
        )
    model = model_section(rows, settings.model_uri)
    threshold = float(model["threshold"])
    y = np.asarray([s.y for s in scores])
    p = np.asarray([s.probability for s in scores])
    image = metrics.evaluate_level(
        y, p, threshold, class_names=CLASS_NAMES, n_resamples=settings.bootstrap, seed=settings.seed
    )
    patients, n_patients = patient_level(scores, threshold, settings.bootstrap, settings.seed)
    blessing = gate.check_gate(image, settings.gate) if settings.gate.enabled else None
    if blessing is not None:
        name = gate.BLESSED if blessing["blessed"] else gate.NOT_BLESSED
        blessing["written_to"] = files.join(model["uri"], name) if model["uri"] else None
    counts = {
        "images": settings.matched if settings.matched is not None else len(rows) + n_errors,
        "scored": len(rows),
        "errors": n_errors,
        "labelled": len(scores),
        "unlabelled": len(unlabelled),
        "per_class": {name: int(np.sum(y == i)) for i, name in enumerate(CLASS_NAMES)},
        "patients": n_patients,
    }
    document = {
        "model": model,
        "counts": counts,
        "image_level": image,
        "patient_level": patients,
        "plots": dict(plots.PLOT_FILES),
        "blessing": blessing,
        "source": settings.source,
        "generated_at": utc_now(),
        "disclaimer": DISCLAIMER,
    }
    return document, scores


def make_plots(
    scores: Sequence[LabelledScore], image: dict[str, Any], threshold: float
) -> dict[str, bytes]:
    """The five plots of the image level, as PNG bytes by name."""
    y = np.asarray([s.y for s in scores])
    p = np.asarray([s.probability for s in scores])
    cm = image["confusion_matrix"]
    return {
        "confusion_matrix": plots.confusion_matrix_png(cm["matrix"], cm["labels"], threshold),
        "roc": plots.roc_png(y, p, image["roc_auc"]["value"]),
        "pr": plots.pr_png(y, p, image["average_precision"]["value"]),
        "calibration": plots.calibration_png(
            image["calibration"], image["expected_calibration_error"]["value"]
        ),
        "histogram": plots.histogram_png(y, p, CLASS_NAMES, threshold),
    }


def write_evaluation(
    rows: Sequence[dict[str, Any]], n_errors: int, settings: EvaluationSettings
) -> dict[str, Any]:
    """Compute everything and write ``metrics.json``, ``plots/*.png`` and ``report.html``.

    Returns:
        The ``metrics.json`` document.
    """
    document, scores = metrics_document(rows, n_errors, settings)
    threshold = float(document["model"]["threshold"])
    pngs = make_plots(scores, document["image_level"], threshold)
    for name, png in pngs.items():
        files.write_file(files.join(settings.output, plots.PLOT_FILES[name]), png, "image/png")
    gallery = build_gallery(
        most_confident_errors(scores, settings.gallery_size),
        settings.model_uri,
        settings.max_pixels,
        settings.max_bytes,
    )
    files.write_text(
        files.join(settings.output, METRICS_FILE),
        json.dumps(document, indent=2),
        mime_type="application/json",
    )
    files.write_text(
        files.join(settings.output, REPORT_FILE),
        render_report(document, pngs, gallery),
        mime_type="text/html",
    )
    logger.info("Evaluation of %d labelled images written to %s", len(scores), settings.output)
    return document
