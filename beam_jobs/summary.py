"""After a scoring run: check that no input was lost and write ``summary.json``.

Every matched file must come out as exactly one row in ``results/`` or
``errors/``. The check reads the rows back (through ``FileSystems``) and
compares their URIs with the matched ones; the summary records the outcome with
the model, the counts and the speed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from beam_jobs import files
from histo_common import DISCLAIMER
from histo_common.results import utc_now
from model_export.identity import ModelIdentity

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


class IncompleteOutputError(RuntimeError):
    """Rows in results plus errors do not account for every matched input."""


@dataclass(frozen=True)
class Completeness:
    """How the output rows account for the matched inputs."""

    matched: int
    scored: int
    failed: int
    missing: list[str] = field(default_factory=list)  # matched, but in no row
    duplicated: list[str] = field(default_factory=list)  # in more than one row
    unexpected: list[str] = field(default_factory=list)  # in a row, but never matched

    @property
    def ok(self) -> bool:
        """True when results + errors = matched, each input exactly once."""
        return (
            self.scored + self.failed == self.matched
            and not self.missing
            and not self.duplicated
            and not self.unexpected
        )


def results_pattern(output: str) -> str:
    """Glob of the JSON Lines result shards under a scoring output."""
    return files.join(output, "results", "*.jsonl")


def errors_pattern(output: str) -> str:
    """Glob of the JSON Lines error shards under a scoring output."""
    return files.join(output, "errors", "*.jsonl")


def reconcile(
    matched: Iterable[str], result_uris: list[str], error_uris: list[str]
) -> Completeness:
    """Compare the matched URIs with the URIs found in result and error rows."""
    expected = set(matched)
    seen = Counter(result_uris) + Counter(error_uris)
    return Completeness(
        matched=len(expected),
        scored=len(result_uris),
        failed=len(error_uris),
        missing=sorted(expected - seen.keys()),
        duplicated=sorted(u for u, n in seen.items() if n > 1),
        unexpected=sorted(seen.keys() - expected),
    )


def check_completeness(output: str, matched: Iterable[str]) -> Completeness:
    """Read back the rows under ``output`` and reconcile them with ``matched``."""
    result_uris = [row["uri"] for row in files.read_json_lines(results_pattern(output))]
    error_uris = [row["uri"] for row in files.read_json_lines(errors_pattern(output))]
    return reconcile(matched, result_uris, error_uris)


def summary_document(
    completeness: Completeness,
    model: ModelIdentity,
    *,
    inputs: Iterable[str],
    output: str,
    elapsed_s: float,
    counters: dict[str, int],
    runner: str,
) -> dict[str, Any]:
    """The content of ``summary.json``."""
    return {
        "inputs": list(inputs),
        "output": output,
        "matched": completeness.matched,
        "scored": completeness.scored,
        "failed": completeness.failed,
        "complete": completeness.ok,
        "missing": completeness.missing[:100],
        "duplicated": completeness.duplicated[:100],
        "unexpected": completeness.unexpected[:100],
        "model": asdict(model),
        "runner": runner,
        "elapsed_s": round(elapsed_s, 3),
        "images_per_s": round(completeness.matched / elapsed_s, 2) if elapsed_s > 0 else None,
        "counters": counters,
        "finished_at": utc_now(),
        "disclaimer": DISCLAIMER,
    }


def write_summary(output: str, document: dict[str, Any]) -> str:
    """Write ``<output>/summary.json``; return its URI."""
    uri = files.join(output, SUMMARY_FILE)
    files.write_text(uri, json.dumps(document, indent=2), mime_type="application/json")
    return uri


def read_summary(output: str) -> dict[str, Any] | None:
    """The ``summary.json`` of a scoring output, or None when it has none."""
    uri = files.join(output, SUMMARY_FILE)
    if not files.exists(uri):
        return None
    return json.loads(files.read_file(uri))


def describe(completeness: Completeness) -> str:
    """One log line: the rule and whether it held."""
    verdict = "OK" if completeness.ok else "MISMATCH"
    rows = completeness.scored + completeness.failed
    line = (
        f"Completeness {verdict}: {completeness.scored} results + {completeness.failed} errors "
        f"= {rows} rows for {completeness.matched} matched files"
    )
    if completeness.missing:
        line += f"; missing {len(completeness.missing)} (e.g. {completeness.missing[0]})"
    if completeness.duplicated:
        line += f"; duplicated {len(completeness.duplicated)} (e.g. {completeness.duplicated[0]})"
    if completeness.unexpected:
        line += f"; unexpected {len(completeness.unexpected)} (e.g. {completeness.unexpected[0]})"
    return line
