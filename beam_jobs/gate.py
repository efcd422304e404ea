"""The promotion gate: does a model's evaluation meet the limits it was given?

``check_gate`` compares image-level point values with ``--min-*``/``--max-*``
limits and says why it fails; ``write_blessing`` puts ``BLESSED`` or
``NOT_BLESSED`` (a short text with the reasons) into the model version folder,
removing the other, so a promotion step can depend on the file alone.
"""

from __future__ import annotations

import logging
from typing import Any

from beam_jobs.config import GateConfig
from histo_common import DISCLAIMER, storage
from histo_common.results import utc_now
from model_export.contract import BLESSED, NOT_BLESSED

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


def check_gate(level: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """Compare one level's metrics with the gate's limits.

    Args:
        level: the ``image_level`` section of ``metrics.json``.
        gate: the limits.

    Returns:
        ``{"blessed": bool, "reasons": [str], "checks": [{metric, kind, limit, value, passed}]}``;
        a metric that could not be computed fails its check.
    """
    checks = []
    for kind, limits in (("min", gate.minimums), ("max", gate.maximums)):
        for metric, limit in sorted(limits.items()):
            value = (level.get(metric) or {}).get("value")
            passed = value is not None and (value >= limit if kind == "min" else value <= limit)
            checks.append(
                {"metric": metric, "kind": kind, "limit": limit, "value": value, "passed": passed}
            )
    reasons = [
        f"{c['metric']} = {_fmt(c['value'])} is "
        f"{'below the minimum' if c['kind'] == 'min' else 'above the maximum'} {c['limit']}"
        if c["value"] is not None
        else f"{c['metric']} could not be computed (limit {c['limit']})"
        for c in checks
        if not c["passed"]
    ]
    return {"blessed": not reasons, "reasons": reasons, "checks": checks}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def blessing_text(blessing: dict[str, Any], model: dict[str, Any], evaluation_uri: str) -> str:
    """The content of the ``BLESSED``/``NOT_BLESSED`` file: verdict, checks, reasons."""
    verdict = BLESSED if blessing["blessed"] else NOT_BLESSED
    lines = [
        f"{verdict}: {model.get('name')} version {model.get('version')}",
        f"evaluated at {utc_now()}; evaluation: {evaluation_uri}",
        "checks (image level):",
    ]
    for c in blessing["checks"]:
        op = ">=" if c["kind"] == "min" else "<="
        mark = "pass" if c["passed"] else "FAIL"
        lines.append(f"  {mark}: {c['metric']} {_fmt(c['value'])} {op} {c['limit']}")
    if blessing["reasons"]:
        lines.append("reasons:")
        lines.extend(f"  - {r}" for r in blessing["reasons"])
    lines.append(DISCLAIMER)
    return "\n".join(lines) + "\n"


def write_blessing(model_uri: str, blessed: bool, text: str) -> str:
    """Write the verdict file into the model version folder; remove the opposite one.

    Returns:
        The URI written.
    """
    name, other = (BLESSED, NOT_BLESSED) if blessed else (NOT_BLESSED, BLESSED)
    uri = storage.join(model_uri, name)
    storage.write_text(uri, text, content_type="text/plain")
    storage.delete(storage.join(model_uri, other), missing_ok=True)
    logger.info("Wrote %s", uri)
    return uri
