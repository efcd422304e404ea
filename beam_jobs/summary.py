"""Inside the scoring pipeline: account for every matched input, and write ``summary.json``.

Every matched file must come out as exactly one row in ``results/`` or
``errors/``. :class:`Reconcile` joins the matched URIs with the URIs of the
result and error rows (``CoGroupByKey``, on the workers, never in the
launcher): a matched file with no row becomes an error row with the reason
``lost``, and the counts (matched, results, errors, lost, duplicated and
unexpected URIs) become the typed :class:`histo_common.layout.Summary`, written
by the pipeline at the name :class:`histo_common.layout.RunLayout` gives. After
the run the launcher reads that one small document back and adds what only it
knows (its own elapsed time, Beam's counters).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs import files
from beam_jobs.model_handler import METRICS_NAMESPACE
from histo_common.layout import RunLayout, RunModel, Summary
from histo_common.results import ErrorRow, utc_now

logger = logging.getLogger(__name__)

LOST_REASON = "lost"  # the reason of an error row for a matched input no stage wrote a row for
LOST_STAGE = "reconcile"
LOST = "lost"
MAX_LISTED = 100  # URIs listed per kind of mismatch in summary.json


class IncompleteOutputError(RuntimeError):
    """Rows in results plus errors do not account for every matched input."""


@dataclass(frozen=True)
class Completeness:
    """How the output rows account for the matched inputs.

    ``failed`` counts every error row, the ``lost`` ones included; the lists hold
    at most :data:`MAX_LISTED` URIs each.
    """

    matched: int
    scored: int
    failed: int
    lost: int = 0
    missing: list[str] = field(default_factory=list)  # matched, but in no row (now lost rows)
    duplicated: list[str] = field(default_factory=list)  # in more than one row
    unexpected: list[str] = field(default_factory=list)  # in a row, but never matched

    @property
    def ok(self) -> bool:
        """True when results + errors = matched, each input exactly once, none lost."""
        return (
            self.scored + self.failed == self.matched
            and not self.lost
            and not self.missing
            and not self.duplicated
            and not self.unexpected
        )


@dataclass(frozen=True)
class UriTally:
    """What the join found for one URI: matched or not, and its rows of each kind."""

    uri: str
    matched: bool
    results: int
    errors: int

    @property
    def lost(self) -> bool:
        """Matched, but no stage wrote a row for it."""
        return self.matched and self.results + self.errors == 0


def tally_uri(
    joined: tuple[str, dict[str, Iterable[Any]]],
) -> Iterator[UriTally | beam.pvalue.TaggedOutput]:
    """One URI's join -> its tally, plus an error row (on ``lost``) when it was lost."""
    uri, groups = joined
    tally = UriTally(
        uri=uri,
        matched=any(True for _ in groups["matched"]),
        results=sum(1 for _ in groups["results"]),
        errors=sum(1 for _ in groups["errors"]),
    )
    if tally.lost:
        logger.error("Lost %s: matched, but no stage wrote a row for it", uri)
        yield beam.pvalue.TaggedOutput(LOST, ErrorRow.build(uri, LOST_REASON, LOST_STAGE))
    yield tally


class CountCompleteness(beam.CombineFn):
    """``UriTally`` -> one :class:`Completeness` (lost rows counted as errors)."""

    def create_accumulator(self) -> dict[str, Any]:
        """Zero counts and empty URI lists."""
        return {
            "matched": 0,
            "scored": 0,
            "failed": 0,
            "lost": 0,
            "missing": [],
            "duplicated": [],
            "unexpected": [],
        }

    def add_input(self, acc: dict[str, Any], tally: UriTally) -> dict[str, Any]:
        """Count one URI."""
        acc["matched"] += int(tally.matched)
        acc["scored"] += tally.results
        acc["failed"] += tally.errors + int(tally.lost)
        acc["lost"] += int(tally.lost)
        for kind, listed in (
            ("missing", tally.lost),
            ("duplicated", tally.results + tally.errors > 1),
            ("unexpected", not tally.matched),
        ):
            if listed and len(acc[kind]) < MAX_LISTED:
                acc[kind].append(tally.uri)
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Add the counts; keep the first URIs of each list."""
        merged = self.create_accumulator()
        for acc in accumulators:
            for key, value in acc.items():
                if isinstance(value, list):
                    merged[key] = (merged[key] + value)[:MAX_LISTED]
                else:
                    merged[key] += value
        return merged

    def extract_output(self, acc: dict[str, Any]) -> Completeness:
        """The counts as a :class:`Completeness` (URI lists sorted)."""
        lists = {k: sorted(acc[k]) for k in ("missing", "duplicated", "unexpected")}
        return Completeness(
            matched=acc["matched"],
            scored=acc["scored"],
            failed=acc["failed"],
            lost=acc["lost"],
            **lists,
        )


@dataclass(frozen=True)
class RunFacts:
    """What the summary records besides the counts, known when the pipeline is built."""

    inputs: list[str]
    output: str
    base: str
    model: RunModel
    formats: list[str]
    runner: str
    launched_at: float  # time.time() at launch, for the elapsed time the pipeline records


def write_pipeline_summary(completeness: Completeness, facts: RunFacts) -> str:
    """Write ``summary.json`` from inside the pipeline; return its URI."""
    document = build_summary(
        completeness,
        facts.model,
        inputs=facts.inputs,
        output=facts.output,
        base=facts.base,
        formats=facts.formats,
        elapsed_s=time.time() - facts.launched_at,
        counters={},
        runner=facts.runner,
    )
    uri = write_summary(document)
    (logger.info if completeness.ok else logger.error)(describe(document))
    return uri


class Reconcile(beam.PTransform):
    """``{"matched", "results", "errors"}`` -> lost error rows; writes ``summary.json``.

    Joins the matched files' URIs with the URIs of the result and error rows
    (``CoGroupByKey``); a matched URI with no row comes out as an error row with
    the reason ``lost`` (the returned PCollection, for ``WriteErrors``). The
    counts go into the run's summary, written once the join is done.

    Args:
        facts: what the summary records besides the counts.
    """

    def __init__(self, facts: RunFacts) -> None:
        super().__init__()
        self.facts = facts

    def expand(self, rows: dict[str, beam.PCollection]) -> beam.PCollection:
        """Join, count and write the summary; return the lost inputs' error rows."""
        keyed = {
            "matched": rows["matched"] | "KeyMatched" >> beam.Map(lambda m: (m.uri, None)),
            "results": rows["results"] | "KeyResults" >> beam.Map(lambda r: (r.uri, None)),
            "errors": rows["errors"] | "KeyErrors" >> beam.Map(lambda e: (e.uri, None)),
        }
        tallies = (
            keyed
            | "JoinByUri" >> beam.CoGroupByKey()
            | "Tally" >> beam.FlatMap(tally_uri).with_outputs(LOST, main="tallies")
        )
        lost = tallies[LOST] | "CountLost" >> beam.Map(_count_lost)
        _ = (
            tallies.tallies
            | "CountRows" >> beam.CombineGlobally(CountCompleteness())
            | "WriteSummary" >> beam.Map(write_pipeline_summary, self.facts)
        )
        return lost


_LOST_COUNTER = Metrics.counter(METRICS_NAMESPACE, "rows_lost")


def _count_lost(row: ErrorRow) -> ErrorRow:
    _LOST_COUNTER.inc()
    return row


def build_summary(
    completeness: Completeness,
    model: RunModel,
    *,
    inputs: Iterable[str],
    output: str,
    base: str,
    formats: Iterable[str],
    elapsed_s: float,
    counters: dict[str, int],
    runner: str,
) -> Summary:
    """The run's :class:`Summary` (``summary.json``)."""
    return Summary(
        inputs=list(inputs),
        output=output,
        base=base,
        model=model,
        matched=completeness.matched,
        scored=completeness.scored,
        failed=completeness.failed,
        lost=completeness.lost,
        complete=completeness.ok,
        formats=list(formats),
        missing=completeness.missing[:MAX_LISTED],
        duplicated=completeness.duplicated[:MAX_LISTED],
        unexpected=completeness.unexpected[:MAX_LISTED],
        runner=runner,
        elapsed_s=round(elapsed_s, 3),
        images_per_s=_rate(completeness.matched, elapsed_s),
        counters=counters,
        finished_at=utc_now(),
    )


def _rate(count: int, elapsed_s: float) -> float | None:
    return round(count / elapsed_s, 2) if elapsed_s > 0 else None


def with_launcher_facts(summary: Summary, elapsed_s: float, counters: dict[str, int]) -> Summary:
    """The pipeline's summary with the launcher's elapsed time and Beam's counters."""
    return replace(
        summary,
        elapsed_s=round(elapsed_s, 3),
        images_per_s=_rate(summary.matched, elapsed_s),
        counters=counters,
        finished_at=utc_now(),
    )


def write_summary(summary: Summary) -> str:
    """Write ``<output>/summary.json``; return its URI."""
    uri = RunLayout(summary.output).summary
    files.write_text(uri, summary.to_json(), mime_type="application/json")
    return uri


def read_summary(output: str) -> Summary | None:
    """The summary of a scoring output, or None when it has none.

    Raises:
        histo_common.layout.DocumentError: when it is not a summary this version reads.
    """
    uri = RunLayout(output).summary
    if not files.exists(uri):
        return None
    return Summary.from_json(files.read_file(uri).decode("utf-8"), source=uri)


def describe(summary: Summary) -> str:
    """One log line: the rule and whether it held."""
    verdict = "OK" if summary.complete else "MISMATCH"
    rows = summary.scored + summary.failed
    line = (
        f"Completeness {verdict}: {summary.scored} results + {summary.failed} errors "
        f"= {rows} rows for {summary.matched} matched files"
    )
    if summary.lost:
        line += f"; lost {summary.lost} (error rows written, e.g. {summary.missing[0]})"
    if summary.duplicated:
        line += f"; duplicated {len(summary.duplicated)} (e.g. {summary.duplicated[0]})"
    if summary.unexpected:
        line += f"; unexpected {len(summary.unexpected)} (e.g. {summary.unexpected[0]})"
    return line
