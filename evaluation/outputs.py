"""From labelled scores to the evaluation's outputs: metrics document, plots, report, verdict.

The Beam job (``beam_jobs.evaluate``) joins each result row with its true label
into a :class:`LabelledScore`, explains the most confident errors into gallery
items, and hands everything to :func:`write_evaluation` in one step. Here the
metrics of both levels are computed, the gate is decided (once), and
``metrics.json``, ``plots/``, ``report.html`` and the verdict file are written
(once) through the storage layer, at the names :class:`RunLayout` gives.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from evaluation import gate, metrics, plots
from evaluation.gate import GateConfig
from evaluation.report import GalleryItem, render_report
from histo_common import DISCLAIMER, storage
from histo_common.layout import PLOT_FILES, Counts, EvaluatedModel, MetricsDocument, RunLayout
from histo_common.results import utc_now

logger = logging.getLogger(__name__)

DEFAULT_CLASS_NAMES = ("benign", "malignant")


class EvaluationError(ValueError):
    """The scores cannot be evaluated (no labelled image); the message says what to do."""


@dataclass(frozen=True)
class EvaluationSettings:
    """How to evaluate: bootstrap, gallery and gate (validated here, once)."""

    bootstrap: int = 1000
    seed: int = 0
    gallery_size: int = 12
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ValueError("--bootstrap must be 0 (no intervals) or more")
        if self.gallery_size < 0:
            raise ValueError("--gallery-size must be 0 or more")


@dataclass(frozen=True)
class LabelledScore:
    """A scored image with its true label (``y``: index into the class names)."""

    uri: str
    y: int
    probability: float
    threshold: float
    predicted_label: str
    patient_id: str | None
    model_name: str
    model_version: int

    @classmethod
    def from_row(cls, row: dict[str, Any], y: int, patient_id: str | None) -> LabelledScore:
        """Join one result row (as a dict) with its label."""
        return cls(
            uri=row["uri"],
            y=int(y),
            probability=float(row["probability"]),
            threshold=float(row["threshold"]),
            predicted_label=str(row["label"]),
            patient_id=patient_id,
            model_name=str(row["model_name"]),
            model_version=int(row["model_version"]),
        )

    @property
    def wrong(self) -> bool:
        """True when the prediction at the row's threshold disagrees with the label."""
        return (self.probability >= self.threshold) != bool(self.y)

    @property
    def confidence(self) -> float:
        """How far the probability is from the threshold."""
        return abs(self.probability - self.threshold)


@dataclass(frozen=True)
class RunFacts:
    """What the pipeline knows about the scored set besides the labelled scores."""

    model_version_uri: str | None  # the model version evaluated (and blessed); None if unknown
    errors: int  # inputs that could not be scored
    unlabelled: int  # scored inputs without a label
    matched: int | None = None  # inputs matched by the scoring run, when known
    source: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES


def model_section(scores: Sequence[LabelledScore], version_uri: str | None) -> EvaluatedModel:
    """The (most common) model name, version and threshold of the scores."""
    identities = Counter((s.model_name, s.model_version) for s in scores)
    (name, version), _ = identities.most_common(1)[0]
    if len(identities) > 1:
        logger.warning(
            "Rows come from several models %s; reporting %s/%d", dict(identities), name, version
        )
    threshold = Counter(s.threshold for s in scores).most_common(1)[0][0]
    return EvaluatedModel(name=name, version=version, threshold=threshold, version_uri=version_uri)


def most_confident_errors(scores: Sequence[LabelledScore], n: int) -> list[LabelledScore]:
    """The ``n`` misclassified images furthest from the threshold on the wrong side."""
    return sorted((s for s in scores if s.wrong), key=lambda s: s.confidence, reverse=True)[:n]


def patient_level(
    scores: Sequence[LabelledScore],
    threshold: float,
    settings: EvaluationSettings,
    class_names: Sequence[str],
) -> tuple[dict[str, Any] | None, int]:
    """Patient-level metrics over the images that have a patient id, or None without any."""
    with_patient = [s for s in scores if s.patient_id]
    if not with_patient:
        return None, 0
    ids, y, p = metrics.aggregate_by_patient(
        [str(s.patient_id) for s in with_patient],
        [s.y for s in with_patient],
        [s.probability for s in with_patient],
    )
    level = metrics.evaluate_level(
        y,
        p,
        threshold,
        class_names=class_names,
        n_resamples=settings.bootstrap,
        seed=settings.seed,
    )
    level["images_with_patient_id"] = len(with_patient)
    return level, len(ids)


def metrics_document(
    scores: Sequence[LabelledScore], facts: RunFacts, settings: EvaluationSettings
) -> MetricsDocument:
    """Every number of the evaluation and the gate's verdict (not yet written anywhere).

    Raises:
        EvaluationError: when no scored image has a label.
    """
    if not scores:
        raise EvaluationError(
            "no scored image has a label: put images under benign/ and malignant/ folders "
            "or pass --labels with a CSV naming them"
        )
    if facts.unlabelled:
        logger.warning(
            "%d scored images have no label; they are left out of the metrics", facts.unlabelled
        )
    model = model_section(scores, facts.model_version_uri)
    y = np.asarray([s.y for s in scores])
    p = np.asarray([s.probability for s in scores])
    image = metrics.evaluate_level(
        y,
        p,
        model.threshold,
        class_names=facts.class_names,
        n_resamples=settings.bootstrap,
        seed=settings.seed,
    )
    patients, n_patients = patient_level(scores, model.threshold, settings, facts.class_names)
    scored = len(scores) + facts.unlabelled
    counts = Counts(
        images=facts.matched if facts.matched is not None else scored + facts.errors,
        scored=scored,
        errors=facts.errors,
        labelled=len(scores),
        unlabelled=facts.unlabelled,
        per_class={name: int(np.sum(y == i)) for i, name in enumerate(facts.class_names)},
        patients=n_patients,
    )
    blessing = gate.check_gate(image, settings.gate) if settings.gate.enabled else None
    return MetricsDocument(
        model=model,
        counts=counts,
        image_level=image,
        patient_level=patients,
        plots={name: RunLayout.plot_path(name) for name in PLOT_FILES},
        blessing=blessing,
        source=facts.source,
        generated_at=utc_now(),
        disclaimer=DISCLAIMER,
    )


def make_plots(
    scores: Sequence[LabelledScore], document: MetricsDocument, class_names: Sequence[str]
) -> dict[str, bytes]:
    """The five plots of the image level, as PNG bytes by name."""
    y = np.asarray([s.y for s in scores])
    p = np.asarray([s.probability for s in scores])
    image = document.image_level
    threshold = document.model.threshold
    cm = image["confusion_matrix"]
    return {
        "confusion_matrix": plots.confusion_matrix_png(cm["matrix"], cm["labels"], threshold),
        "roc": plots.roc_png(y, p, document.value("roc_auc")),
        "pr": plots.pr_png(y, p, document.value("average_precision")),
        "calibration": plots.calibration_png(
            image["calibration"], document.value("expected_calibration_error")
        ),
        "histogram": plots.histogram_png(y, p, class_names, threshold),
    }


def write_evaluation(
    scores: Sequence[LabelledScore],
    gallery: Sequence[GalleryItem],
    facts: RunFacts,
    settings: EvaluationSettings,
    output: str,
) -> MetricsDocument:
    """Compute, decide the gate, and write every output of the evaluation once.

    Writes ``metrics.json``, ``plots/*.png``, ``report.html`` under ``output`` and,
    with a gate and a known model version, ``BLESSED`` or ``NOT_BLESSED`` beside it.

    Returns:
        The metrics document as written.

    Raises:
        EvaluationError: when no scored image has a label.
    """
    run = RunLayout(output)
    document = metrics_document(scores, facts, settings)
    if document.blessing is not None:
        if facts.model_version_uri:
            text = gate.blessing_text(document.blessing, document.model, run.output)
            written = gate.write_blessing(facts.model_version_uri, document.blessing.blessed, text)
            document = _with_blessing_file(document, written)
        else:
            logger.warning("No model version known: the gate's verdict is only in %s", run.metrics)
    pngs = make_plots(scores, document, facts.class_names)
    for name, png in pngs.items():
        storage.write_bytes(run.plot(name), png, content_type="image/png")
    storage.write_text(run.metrics, document.to_json(), content_type="application/json")
    storage.write_text(run.report, render_report(document, pngs, gallery), content_type="text/html")
    logger.info("Evaluation of %d labelled images written to %s", len(scores), run.output)
    return document


def _with_blessing_file(document: MetricsDocument, uri: str) -> MetricsDocument:
    if document.blessing is None:
        return document
    return replace(document, blessing=replace(document.blessing, written_to=uri))


def describe(document: MetricsDocument, output: str) -> str:
    """One log line: the headline numbers, the verdict and where the report is."""
    line = (
        f"Evaluation: AUC {document.value('roc_auc')}, sensitivity "
        f"{document.value('sensitivity')}, specificity {document.value('specificity')} on "
        f"{document.counts.labelled} labelled images; report at {RunLayout(output).report}"
    )
    if document.blessing is not None:
        line += f"; gate: {document.blessing.verdict} {'; '.join(document.blessing.reasons)}"
    return line
