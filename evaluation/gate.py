"""The promotion gate: does a model's evaluation meet the limits it was given?

``check_gate`` compares image-level point values with ``--min-*``/``--max-*``
limits and says why it fails; ``write_blessing`` puts ``BLESSED`` or
``NOT_BLESSED`` (a short text with the reasons) into the model version folder
(names from :mod:`histo_common.layout`), removing the other, so a promotion step
can depend on the file alone. The verdict is decided once, by the evaluation
that computed the metrics, and written once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from histo_common import DISCLAIMER, layout, storage
from histo_common.layout import Blessing, EvaluatedModel, GateCheck
from histo_common.results import utc_now

logger = logging.getLogger(__name__)

# Flag name (after --min- / --max-) -> metric key in metrics.json.
MIN_FLAGS = {
    "auc": "roc_auc",
    "average-precision": "average_precision",
    "accuracy": "accuracy",
    "balanced-accuracy": "balanced_accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "precision": "precision",
    "f1": "f1",
}
MAX_FLAGS = {"brier": "brier_score", "ece": "expected_calibration_error"}


@dataclass(frozen=True)
class GateConfig:
    """Minimums and maximums a model must meet to be blessed (image-level point values)."""

    minimums: dict[str, float] = field(default_factory=dict)
    maximums: dict[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """True when at least one limit was given."""
        return bool(self.minimums or self.maximums)


def check_gate(level: dict[str, Any], gate: GateConfig) -> Blessing:
    """Compare one level's metrics with the gate's limits.

    Args:
        level: the ``image_level`` section of the metrics document.
        gate: the limits.

    Returns:
        The verdict with every check and the reasons it failed; a metric that could
        not be computed fails its check.
    """
    checks = []
    for kind, limits in (("min", gate.minimums), ("max", gate.maximums)):
        for metric, limit in sorted(limits.items()):
            value = (level.get(metric) or {}).get("value")
            passed = value is not None and (value >= limit if kind == "min" else value <= limit)
            checks.append(GateCheck(metric, kind, limit, value, passed))
    reasons = [
        f"{c.metric} = {_fmt(c.value)} is "
        f"{'below the minimum' if c.kind == 'min' else 'above the maximum'} {c.limit}"
        if c.value is not None
        else f"{c.metric} could not be computed (limit {c.limit})"
        for c in checks
        if not c.passed
    ]
    return Blessing(blessed=not reasons, checks=checks, reasons=reasons)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def blessing_text(blessing: Blessing, model: EvaluatedModel, evaluation_uri: str) -> str:
    """The content of the ``BLESSED``/``NOT_BLESSED`` file: verdict, checks, reasons."""
    lines = [
        f"{blessing.verdict}: {model.name} version {model.version}",
        f"evaluated at {utc_now()}; evaluation: {evaluation_uri}",
        "checks (image level):",
    ]
    for c in blessing.checks:
        op = ">=" if c.kind == "min" else "<="
        mark = "pass" if c.passed else "FAIL"
        lines.append(f"  {mark}: {c.metric} {_fmt(c.value)} {op} {c.limit}")
    if blessing.reasons:
        lines.append("reasons:")
        lines.extend(f"  - {r}" for r in blessing.reasons)
    lines.append(DISCLAIMER)
    return "\n".join(lines) + "\n"


def write_blessing(model_version_uri: str, blessed: bool, text: str) -> str:
    """Write the verdict file into the model version folder; remove the opposite one.

    Returns:
        The URI written.
    """
    uri = layout.blessing_file(model_version_uri, blessed)
    storage.write_text(uri, text, content_type="text/plain")
    storage.delete(layout.blessing_file(model_version_uri, not blessed), missing_ok=True)
    logger.info("Wrote %s", uri)
    return uri
