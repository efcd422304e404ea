"""The infra/ policies, tested offline.

terraform-compliance runs (as a subprocess, the way `make infra-plan` runs it) on the
committed plan cases under infra/compliance/tests/: every passing case must pass with
its key scenarios actually run, and every failing case must fail exactly the
scenarios expected.json names, with a failure message about the right resource.
The cases run once, in parallel, in a session fixture. The remaining tests keep the
cases honest: up to date with make_cases.py, one change away from the passing
plan, and describing the same resources as the .tf files.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
CASES = INFRA / "compliance" / "tests"


def _load(name: str, path: Path) -> ModuleType:
    """Import a script that lives outside any package."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


run_cases = _load("histoscreen_infra_run_cases", CASES / "run_cases.py")
make_cases = _load("histoscreen_infra_make_cases", CASES / "make_cases.py")
EXPECTED = run_cases.load_expected()


def _plan(kind: str, name: str) -> dict:
    return json.loads((CASES / kind / f"{name}.json").read_text(encoding="utf-8"))


def _planned(plan: dict) -> dict[str, dict]:
    return {change["address"]: change["change"]["after"] for change in plan["resource_changes"]}


@pytest.fixture(scope="session")
def case_runs() -> dict:
    """terraform-compliance on every case, run once for the whole session."""
    return run_cases.run_all(run_cases.case_paths())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED["passing"]))
def test_passing_case_passes(case_runs: dict, name: str) -> None:
    run = case_runs[f"passing/{name}"]
    assert run.returncode == 0, run.output
    assert run.failed == [], run.failure_text
    must_run = set(EXPECTED["passing"][name]["passes"])
    assert must_run <= set(run.passed), f"skipped, not passed: {sorted(must_run - set(run.passed))}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED["failing"]))
def test_failing_case_fails_for_its_reason(case_runs: dict, name: str) -> None:
    expectation = EXPECTED["failing"][name]
    run = case_runs[f"failing/{name}"]
    assert run.returncode != 0, f"{name} ({expectation['description']}) passed:\n{run.output}"
    assert run.failed == sorted(expectation["fails"]), run.output
    for text in expectation["messages"]:
        assert text in run.failure_text


@pytest.mark.slow
def test_every_scenario_is_broken_by_some_failing_case(case_runs: dict) -> None:
    scenarios = set(case_runs["passing/default"].scenarios)
    broken = {scenario for case in EXPECTED["failing"].values() for scenario in case["fails"]}
    assert len(scenarios) >= 12
    assert scenarios - broken == set(), "scenarios no failing case proves can fail"


@pytest.mark.slow
def test_the_verdict_on_a_case_can_fail(case_runs: dict) -> None:
    """check.sh's judgement reports a case that does not do what it was written for."""
    failing = case_runs["failing/bucket_uniform_access_off"]
    passing = case_runs["passing/default"]
    assert run_cases.problems_with(failing, {"fails": []})
    assert run_cases.problems_with(passing, EXPECTED["failing"]["bucket_uniform_access_off"])
    assert run_cases.problems_with(failing, EXPECTED["failing"]["models_versioning_missing"])
    assert not run_cases.problems_with(failing, EXPECTED["failing"]["bucket_uniform_access_off"])


def test_cases_are_what_make_cases_writes() -> None:
    assert make_cases.stale_files(make_cases.rendered_files()) == []
    assert set(EXPECTED["failing"]) == set(make_cases.FAILING)


@pytest.mark.parametrize("path", sorted(CASES.glob("*ing/*.json")), ids=lambda p: p.stem)
def test_case_is_a_one_line_plan_of_creations(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 1 and text.endswith("\n"), "terraform-compliance reads one line"
    plan = json.loads(text)
    assert plan["format_version"] and plan["terraform_version"].startswith("1.")
    assert plan["configuration"]["root_module"]["resources"]
    planned = {entry["address"] for entry in plan["planned_values"]["root_module"]["resources"]}
    assert planned == set(_planned(plan))
    assert {tuple(c["change"]["actions"]) for c in plan["resource_changes"]} == {("create",)}


@pytest.mark.parametrize("name", sorted(EXPECTED["failing"]))
def test_failing_case_changes_one_resource_of_the_passing_plan(name: str) -> None:
    base, case = _planned(_plan("passing", "default")), _planned(_plan("failing", name))
    assert set(base) <= set(case), "a failing case only adds or changes"
    changed = [address for address in case if base.get(address) != case[address]]
    assert len(changed) == 1, changed


def test_cases_describe_the_resources_of_the_tf_files() -> None:
    declared = set()
    for tf in INFRA.glob("*.tf"):
        text = tf.read_text(encoding="utf-8")
        declared |= set(re.findall(r'^resource "(\w+)" "(\w+)"', text, flags=re.MULTILINE))
        declared |= {
            (f"data.{kind}", name)
            for kind, name in re.findall(r'^data "(\w+)" "(\w+)"', text, flags=re.MULTILINE)
        }
    blocks = _plan("passing", "default")["configuration"]["root_module"]["resources"]
    in_plan = {
        (("data." if block["mode"] == "data" else "") + block["type"], block["name"])
        for block in blocks
    }
    assert in_plan == declared


def test_case_variables_are_module_variables() -> None:
    text = (INFRA / "variables.tf").read_text(encoding="utf-8")
    declared = set(re.findall(r'^variable "(\w+)"', text, flags=re.MULTILINE))
    assert set(_plan("passing", "default")["variables"]) <= declared


def test_terraform_fmt_check() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed")
    completed = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(INFRA)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_moved_blocks_lead_to_planned_instances() -> None:
    """Each `moved` target is an instance the module plans, so no rename strands state."""
    text = (INFRA / "moved.tf").read_text(encoding="utf-8")
    targets = re.findall(r"^\s*to\s*=\s*(\S+)\s*$", text, flags=re.MULTILINE)
    sources = re.findall(r"^\s*from\s*=\s*(\S+)\s*$", text, flags=re.MULTILINE)
    assert targets and len(targets) == len(sources)
    planned = set(_planned(_plan("passing", "default")))
    assert sorted(set(targets) - planned) == []
    assert sorted(set(sources) & planned) == [], "a moved block's source is still declared"
