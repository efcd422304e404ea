"""Run terraform-compliance on the offline plan cases and check each did what it should.

Each case under passing/ and failing/ is a one-line plan JSON written by
make_cases.py; expected.json says which scenarios each must fail (none for passing
cases), which it must run and pass, and what text its failures must mention. This
module is the command infra/check.sh runs, and tests/infra/test_compliance.py uses
its ``run_case`` to drive the same tool.

    .venv/bin/python infra/compliance/tests/run_cases.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CASES_DIR = Path(__file__).resolve().parent
FEATURES_DIR = CASES_DIR.parent
EXPECTED_FILE = CASES_DIR / "expected.json"
CASE_TIMEOUT_S = 180


def terraform_compliance_command() -> list[str]:
    """terraform-compliance from $TERRAFORM_COMPLIANCE, this venv, or PATH."""
    configured = os.environ.get("TERRAFORM_COMPLIANCE")
    if configured:
        return [configured]
    beside_python = Path(sys.executable).parent / "terraform-compliance"
    if beside_python.exists():
        return [str(beside_python)]
    found = shutil.which("terraform-compliance")
    if found:
        return [found]
    raise FileNotFoundError(
        "terraform-compliance is not installed: run `make setup` (it is in requirements.txt)."
    )


@dataclass(frozen=True)
class CaseRun:
    """One terraform-compliance run on one plan file."""

    name: str
    returncode: int
    output: str
    scenarios: dict[str, str]
    seconds: float

    @property
    def failed(self) -> list[str]:
        return sorted(name for name, status in self.scenarios.items() if status == "failed")

    @property
    def passed(self) -> list[str]:
        return sorted(name for name, status in self.scenarios.items() if status == "passed")

    @property
    def failure_text(self) -> str:
        """The lines terraform-compliance writes to explain failed steps."""
        return "\n".join(line.strip() for line in self.output.splitlines() if "Failure:" in line)


def scenario_statuses(report: list[dict[str, Any]]) -> dict[str, str]:
    """Status of each scenario in a radish cucumber-json report.

    Rows of a Scenario Outline ("<name> - row N") are merged under the outline's
    name: failed if any row failed, passed if any row passed and none failed,
    skipped if every row was skipped.
    """
    rows: dict[str, list[str]] = {}
    for feature in report:
        for element in feature.get("elements", []):
            name = element["name"]
            if element.get("keyword") == "Scenario Outline":
                name = name.rsplit(" - row ", 1)[0]
            steps = [step["result"]["status"] for step in element.get("steps", [])]
            if "failed" in steps:
                status = "failed"
            elif steps and all(step == "passed" for step in steps):
                status = "passed"
            elif steps and all(step in ("passed", "skipped") for step in steps):
                status = "skipped"
            else:
                status = "broken"  # undefined or untested steps: a typo in a .feature file
            rows.setdefault(name, []).append(status)

    merged = {}
    for name, statuses in rows.items():
        for status in ("broken", "failed", "passed", "skipped"):
            if status in statuses:
                merged[name] = status
                break
    return merged


def run_case(plan: Path, features: Path = FEATURES_DIR) -> CaseRun:
    """Run terraform-compliance on a copy of plan (it rewrites plan files it dislikes)."""
    with tempfile.TemporaryDirectory(prefix="histoscreen-compliance-") as scratch:
        plan_copy = Path(scratch) / "plan.json"
        shutil.copyfile(plan, plan_copy)
        report_file = Path(scratch) / "report.json"
        command = [
            *terraform_compliance_command(),
            "--planfile",
            str(plan_copy),
            "--features",
            str(features),
            "--no-ansi",
            f"--cucumber-json={report_file}",
        ]
        env = {**os.environ, "TMPDIR": scratch}  # its result cache goes in mkdtemp()
        started = time.monotonic()
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=CASE_TIMEOUT_S,
            env=env,
            check=False,
        )
        seconds = time.monotonic() - started
        report = json.loads(report_file.read_text()) if report_file.exists() else []
    return CaseRun(
        name=f"{plan.parent.name}/{plan.stem}",
        returncode=completed.returncode,
        output=completed.stdout + completed.stderr,
        scenarios=scenario_statuses(report),
        seconds=seconds,
    )


def load_expected() -> dict[str, dict[str, dict[str, Any]]]:
    return json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))


def case_paths() -> dict[str, Path]:
    """Every case by name ("passing/default"), with the plan file it lives in."""
    return {
        f"{kind}/{path.stem}": path
        for kind in ("passing", "failing")
        for path in sorted((CASES_DIR / kind).glob("*.json"))
    }


def run_all(paths: dict[str, Path], workers: int | None = None) -> dict[str, CaseRun]:
    """Run every case, a few at a time (each run is one single-threaded process)."""
    workers = workers or max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = pool.map(run_case, paths.values())
        return dict(zip(paths, runs, strict=True))


def problems_with(run: CaseRun, expectation: dict[str, Any]) -> list[str]:
    """Why this run did not do what expected.json says; empty when it did."""
    problems = []
    must_fail = sorted(expectation["fails"])
    broken = sorted(name for name, status in run.scenarios.items() if status == "broken")
    if broken:
        problems.append(f"scenarios with undefined steps: {broken}")
    if not run.scenarios:
        problems.append("terraform-compliance ran no scenario:\n" + run.output[-2000:])
    if must_fail and run.returncode == 0:
        problems.append("terraform-compliance exited 0 on a case that must fail")
    if not must_fail and run.returncode != 0:
        problems.append(f"terraform-compliance exited {run.returncode} on a passing case")
    if run.failed != must_fail:
        problems.append(f"failed scenarios {run.failed}, expected {must_fail}")
    not_run = sorted(set(expectation.get("passes", [])) - set(run.passed))
    if not_run:
        problems.append(f"scenarios that must run and pass but did not: {not_run}")
    missing = [text for text in expectation.get("messages", []) if text not in run.failure_text]
    if missing:
        problems.append(f"failure output does not mention {missing}:\n{run.failure_text}")
    return problems


def main() -> int:
    expected = load_expected()
    paths = case_paths()
    expectations = {f"{kind}/{name}": e for kind in expected for name, e in expected[kind].items()}
    unknown = sorted(set(paths) ^ set(expectations))
    if unknown:
        sys.stderr.write(f"Cases and expected.json disagree on: {unknown}\n")
        return 1

    started = time.monotonic()
    runs = run_all(paths)
    failures = 0
    for name, run in runs.items():
        problems = problems_with(run, expectations[name])
        fails = expectations[name]["fails"]
        outcome = f"fails {fails}" if fails else "passes every scenario"
        if problems:
            failures += 1
            sys.stdout.write(f"FAIL {name} ({run.seconds:.1f}s): should have {outcome}\n")
            for problem in problems:
                sys.stdout.write(f"     {problem}\n")
        else:
            sys.stdout.write(f"ok   {name} ({run.seconds:.1f}s): {outcome}\n")
    elapsed = time.monotonic() - started
    sys.stdout.write(
        f"{len(runs) - failures}/{len(runs)} compliance cases behaved as expected"
        f" in {elapsed:.1f}s\n"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
