"""The promotion gate: checks, reasons and the verdict file."""

from __future__ import annotations

from pathlib import Path

from evaluation import gate
from evaluation.gate import GateConfig
from histo_common.layout import EvaluatedModel


def test_gate_checks_minimums_and_maximums() -> None:
    level = {
        "roc_auc": {"value": 0.91},
        "sensitivity": {"value": 0.7},
        "brier_score": {"value": 0.2},
        "expected_calibration_error": {"value": None},
    }
    passed = gate.check_gate(level, GateConfig(minimums={"roc_auc": 0.9}))
    assert passed.blessed and passed.reasons == []
    failed = gate.check_gate(
        level,
        GateConfig(
            minimums={"roc_auc": 0.9, "sensitivity": 0.8},
            maximums={"brier_score": 0.1, "expected_calibration_error": 0.1},
        ),
    )
    assert not failed.blessed
    assert len(failed.reasons) == 3
    assert any("sensitivity = 0.7000 is below the minimum 0.8" in r for r in failed.reasons)
    assert any("could not be computed" in r for r in failed.reasons)
    text = gate.blessing_text(failed, EvaluatedModel("m", 2, 0.5), "/out")
    assert text.startswith("NOT_BLESSED: m version 2") and "Research use only" in text


def test_verdict_file_replaces_the_opposite_one(tmp_path: Path) -> None:
    version = tmp_path / "m" / "2"
    version.mkdir(parents=True)
    gate.write_blessing(str(version), True, "yes\n")
    assert (version / "BLESSED").read_text() == "yes\n"
    gate.write_blessing(str(version), False, "no\n")
    assert not (version / "BLESSED").exists()
    assert (version / "NOT_BLESSED").read_text() == "no\n"
