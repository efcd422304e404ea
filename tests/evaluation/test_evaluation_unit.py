"""The evaluation unit's boundaries: what it imports, and training's metrics from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

FORBIDDEN = ("beam_jobs", "training", "functions", "app", "apache_beam", "tensorflow")


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=os.environ
    )
    return {name.split(".")[0] for name in json.loads(out.stdout.splitlines()[-1])}


def test_evaluation_imports_none_of_its_users() -> None:
    loaded = _modules_after(
        "import evaluation.outputs, evaluation.gate, evaluation.report, evaluation.plots"
    )
    assert "evaluation" in loaded
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)


def test_the_metrics_module_needs_no_matplotlib() -> None:
    loaded = _modules_after("import evaluation.metrics")
    assert "matplotlib" not in loaded and "sklearn" not in loaded


@pytest.mark.parametrize("seed", [0, 1])
def test_training_reports_the_evaluation_metrics_under_their_names(seed: int) -> None:
    from evaluation.metrics import ALL_METRICS, all_metrics
    from training.train import binary_metrics

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 50)
    p = np.clip(y * 0.3 + rng.random(50) * 0.7, 0, 1)
    values = binary_metrics(y, p, 0.5)
    assert set(ALL_METRICS) <= set(values) and "auc" not in values
    expected = all_metrics(y, p, 0.5)
    assert {k: values[k] for k in ALL_METRICS} == pytest.approx(expected)
    assert (values["threshold"], values["n"]) == (0.5, 50)
