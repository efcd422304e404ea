"""What the app reads: sample images, scoring runs, evaluation runs, training history.

Plain functions from URIs (local or ``gs://``, through ``histo_common.storage``)
to pandas DataFrames and small dataclasses, so the pages only draw and the tests
can call the logic directly. Readers are tolerant: the other units write these
files, and a missing optional file (``summary.json``, a plot, ``history.csv``)
is reported as absent rather than failing the page.

Every file name comes from :class:`histo_common.layout.RunLayout`:

- scoring run: the JSON Lines result and error shards only (a run may also hold
  the same rows as CSV and Parquet; reading those too would count every image
  twice), the typed ``summary.json`` and the overlays it locates
  (``gradcam/<path under Summary.base>.gradcam.png``; never guessed from names);
  for tiled inputs (rows with the slide fields) the heatmaps it locates the same
  way (``heatmaps/<path under Summary.base>.heatmap.png``) and, read only when a
  slide is looked at, its tile rows (``tiles/*.jsonl``);
- evaluation run: the typed ``metrics.json`` (metrics with confidence intervals
  and relative plot paths) and ``report.html``;
- training history ``<run_uri>/history.csv`` (Keras ``CSVLogger``).
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from histo_common import layout, storage
from histo_common.images import has_image_suffix
from histo_common.layout import DocumentError, MetricsDocument, RunLayout, Summary
from histo_common.results import ERROR_COLUMNS, RESULT_COLUMNS, TILE_COLUMNS
from model_export.contract import ModelMetadata

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"


class DataError(ValueError):
    """A file the app reads that is missing or malformed; the message names it."""


# ---------------------------------------------------------------- sample images


def list_images(folder_uri: str) -> list[str]:
    """Image URIs below ``folder_uri`` (any depth), without Grad-CAM outputs, sorted."""
    return [
        uri
        for uri in storage.list_uris(folder_uri)
        if has_image_suffix(uri) and not layout.is_output(uri)
    ]


def pick_random_image(uris: Sequence[str], rng: random.Random | None = None) -> str:
    """Pick one URI at random.

    Raises:
        DataError: when there is nothing to pick from.
    """
    if not uris:
        raise DataError("there are no images to pick from")
    return (rng or random.Random()).choice(list(uris))


# ----------------------------------------------------------------- scoring runs


@dataclass(frozen=True)
class ScoringRun:
    """One bulk scoring run read back: its rows, errors and optional extras."""

    uri: str
    results: pd.DataFrame
    errors: pd.DataFrame
    summary: Summary | None
    gradcam_uris: tuple[str, ...] = ()
    skipped_lines: int = 0  # lines in the row files that were not JSON objects
    summary_problem: str | None = None  # why summary.json could not be read, if it could not
    heatmap_uris: tuple[str, ...] = ()

    def saved_gradcam(self, image_uri: str) -> str | None:
        """The overlay the run saved for ``image_uri``, located by the layout, if it exists.

        Without a readable summary (which records the base folder) there is no
        overlay to find: names are never guessed.
        """
        if self.summary is None:
            return None
        uri = RunLayout(self.uri).gradcam(image_uri, self.summary.base)
        return uri if uri in self.gradcam_uris else None

    def saved_heatmap(self, input_uri: str) -> str | None:
        """The heatmap the run saved for a tiled input, located by the layout, if it exists."""
        if self.summary is None:
            return None
        uri = RunLayout(self.uri).heatmap(input_uri, self.summary.base)
        return uri if uri in self.heatmap_uris else None


def is_tiled_row(row: pd.Series | dict[str, Any]) -> bool:
    """True for a result row of a tiled input (its slide fields are filled in)."""
    value = row.get("tiles_scored")
    return value is not None and not pd.isna(value)


def slide_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The result rows of tiled inputs (an empty frame when the run tiled nothing)."""
    if "tiles_scored" not in results.columns:
        return results.iloc[0:0]
    return results[results["tiles_scored"].notna()].reset_index(drop=True)


def load_tiles(run_uri: str, input_uri: str) -> pd.DataFrame:
    """The tile rows one input got in a run, most suspicious first (empty when none).

    Tile rows can be many, so they are read when one input is looked at, not with
    the run.
    """
    files = storage.list_uris(RunLayout(run_uri).tiles_pattern)
    tiles, _ = load_rows(files, TILE_COLUMNS)
    tiles = tiles[tiles["uri"] == input_uri]
    tiles = tiles.assign(probability=pd.to_numeric(tiles["probability"], errors="coerce"))
    return tiles.sort_values("probability", ascending=False).reset_index(drop=True)


def _run_folder(relative: str) -> str | None:
    """The run folder (relative) that a file path belongs to, or None if it marks no run."""
    parts = relative.split("/")
    name = parts[-1]
    rows = (RunLayout.RESULTS, RunLayout.ERRORS)
    if len(parts) >= 2 and parts[-2] in rows and name.endswith(RunLayout.ROWS_SUFFIX):
        return "/".join(parts[:-2])
    if name in (RunLayout.SUMMARY, RunLayout.METRICS):
        return "/".join(parts[:-1])
    return None


def list_runs(root: str) -> dict[str, list[str]]:
    """Runs under ``root`` (or ``root`` itself), as ``{"scoring": [...], "evaluation": [...]}``.

    A scoring run is a folder with ``results/``/``errors/`` row files or a
    ``summary.json``; an evaluation run is a folder with ``metrics.json``. One
    listing of ``root`` serves both.
    """
    base = root.rstrip("/")
    prefix = base + "/"
    scoring: set[str] = set()
    evaluation: set[str] = set()
    for uri in storage.list_uris(base):
        if not uri.startswith(prefix):
            continue
        relative = uri[len(prefix) :]
        folder = _run_folder(relative)
        if folder is None:
            continue
        run = f"{base}/{folder}" if folder else base
        if storage.basename(relative) == RunLayout.METRICS:
            evaluation.add(run)
        else:
            scoring.add(run)
    return {"scoring": sorted(scoring), "evaluation": sorted(evaluation)}


def parse_rows(text: str, *, source: str) -> tuple[list[dict[str, Any]], int]:
    """Parse JSON Lines text into dicts; return them and how many lines were skipped.

    A line that is not a JSON object (a half-written last line, say) is skipped
    and counted rather than failing the whole run.
    """
    rows: list[dict[str, Any]] = []
    skipped = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
            logger.warning("Skipped line %d of %s: not a JSON object", number, source)
    return rows, skipped


def load_rows(uris: Sequence[str], columns: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """Read JSON Lines row files into one DataFrame with at least ``columns``.

    Returns:
        The rows (known columns first, extra columns kept) and the skipped line count.
    """
    frames: list[pd.DataFrame] = []
    skipped = 0
    for uri in uris:
        rows, bad = parse_rows(storage.read_text(uri), source=uri)
        skipped += bad
        frames.append(pd.DataFrame(rows))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for column in columns:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype="object")
    extra = [c for c in frame.columns if c not in columns]
    return frame[[*columns, *extra]], skipped


def load_scoring_run(run_uri: str) -> ScoringRun:
    """Read a scoring run's result rows, error rows, summary and Grad-CAM file list.

    Raises:
        DataError: when the folder holds none of a scoring run's files.
    """
    run = RunLayout(run_uri)
    result_files = storage.list_uris(run.results_pattern)
    error_files = storage.list_uris(run.errors_pattern)
    summary, problem = None, None
    try:
        summary = read_summary(run)
    except DocumentError as exc:
        problem = str(exc)
        logger.warning("%s", problem)
    if not result_files and not error_files and summary is None and problem is None:
        raise DataError(
            f"{run.output} is not a scoring run: it has no {run.results_pattern}, "
            f"{run.errors_pattern} or {run.summary}"
        )
    results, bad_results = load_rows(result_files, RESULT_COLUMNS)
    errors, bad_errors = load_rows(error_files, ERROR_COLUMNS)
    if "probability" in results:
        results["probability"] = pd.to_numeric(results["probability"], errors="coerce")
    gradcams = tuple(
        uri for uri in storage.list_uris(run.gradcam_dir) if uri.endswith(layout.GRADCAM_SUFFIX)
    )
    heatmaps = tuple(
        uri
        for uri in storage.list_uris(layout.join(run.output, RunLayout.HEATMAPS))
        if uri.endswith(layout.HEATMAP_SUFFIX)
    )
    return ScoringRun(
        uri=run.output,
        results=results,
        errors=errors,
        summary=summary,
        gradcam_uris=gradcams,
        skipped_lines=bad_results + bad_errors,
        summary_problem=problem,
        heatmap_uris=heatmaps,
    )


def read_summary(run: RunLayout) -> Summary | None:
    """The run's typed ``summary.json``, or None when it has none.

    Raises:
        DocumentError: when it is not a summary this version reads.
    """
    try:
        text = storage.read_text(run.summary)
    except storage.ObjectNotFound:
        return None
    return Summary.from_json(text, source=run.summary)


@dataclass(frozen=True)
class ResultFilter:
    """What a user asked to see of the result rows."""

    labels: tuple[str, ...] = ()  # empty: every label
    min_probability: float = 0.0
    max_probability: float = 1.0
    uri_contains: str = ""
    sort_by: str = "probability"
    descending: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_probability <= self.max_probability <= 1.0:
            raise ValueError(
                f"probability range must satisfy 0 <= min <= max <= 1, got "
                f"[{self.min_probability}, {self.max_probability}]"
            )


def filter_results(results: pd.DataFrame, wanted: ResultFilter) -> pd.DataFrame:
    """Rows matching the filter, sorted; the index is reset so positions match the table."""
    keep = pd.Series(True, index=results.index)
    if wanted.labels:
        keep &= results["label"].isin(wanted.labels)
    probability = pd.to_numeric(results["probability"], errors="coerce")
    keep &= probability.between(wanted.min_probability, wanted.max_probability)
    if wanted.uri_contains:
        keep &= (
            results["uri"].astype(str).str.contains(wanted.uri_contains, case=False, regex=False)
        )
    out = results[keep]
    if wanted.sort_by in out.columns:
        out = out.sort_values(wanted.sort_by, ascending=not wanted.descending, kind="stable")
    return out.reset_index(drop=True)


# -------------------------------------------------------------- evaluation runs


@dataclass(frozen=True)
class EvaluationReport:
    """An evaluation run's ``metrics.json`` with its plot and report locations."""

    uri: str
    metrics: MetricsDocument
    plots: dict[str, str] = field(default_factory=dict)  # name -> absolute URI
    report_uri: str | None = None


def load_evaluation(run_uri: str) -> EvaluationReport:
    """Read the run's typed ``metrics.json`` and locate its plots and ``report.html``.

    Raises:
        DataError: when ``metrics.json`` is missing, malformed or of a newer schema.
    """
    run = RunLayout(run_uri)
    try:
        text = storage.read_text(run.metrics)
    except storage.ObjectNotFound:
        raise DataError(
            f"{run.output} is not an evaluation run: {run.metrics} does not exist"
        ) from None
    try:
        metrics = MetricsDocument.from_json(text, source=run.metrics)
    except DocumentError as exc:
        raise DataError(str(exc)) from exc
    plots = {name: run.resolve(path) for name, path in metrics.plots.items() if path}
    return EvaluationReport(
        uri=run.output,
        metrics=metrics,
        plots=plots,
        report_uri=run.report if storage.exists(run.report) else None,
    )


def metric_table(section: dict[str, Any] | None) -> pd.DataFrame:
    """Scalar metrics of one level (image or patient) as rows: metric, value, CI bounds.

    Entries may be ``{"value", "ci_low", "ci_high"}`` or bare numbers; nested tables
    (confusion matrix, classification report) are left to their own functions.
    """
    rows = []
    for name, entry in (section or {}).items():
        if isinstance(entry, dict) and "value" in entry:
            rows.append(
                {
                    "metric": name,
                    "value": entry.get("value"),
                    "ci_low": entry.get("ci_low"),
                    "ci_high": entry.get("ci_high"),
                }
            )
        elif isinstance(entry, int | float) and not isinstance(entry, bool):
            rows.append({"metric": name, "value": entry, "ci_low": None, "ci_high": None})
    return pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high"])


def confusion_frame(section: dict[str, Any] | None) -> pd.DataFrame | None:
    """The confusion matrix (rows: true class, columns: predicted class), if present."""
    matrix = (section or {}).get("confusion_matrix")
    if not isinstance(matrix, dict) or "matrix" not in matrix:
        return None
    labels = [str(x) for x in matrix.get("labels") or range(len(matrix["matrix"]))]
    return pd.DataFrame(
        matrix["matrix"],
        index=pd.Index([f"true {x}" for x in labels]),
        columns=[f"predicted {x}" for x in labels],
    )


def classification_report_frame(section: dict[str, Any] | None) -> pd.DataFrame | None:
    """scikit-learn's ``classification_report(output_dict=True)`` as a table, if present."""
    report = (section or {}).get("classification_report")
    if not isinstance(report, dict) or not report:
        return None
    # Like scikit-learn's printed report, a lone score (accuracy) sits under f1-score.
    has_f1 = any(isinstance(v, dict) and "f1-score" in v for v in report.values())
    lone = "f1-score" if has_f1 else "value"
    rows = {
        name: values if isinstance(values, dict) else {lone: values}
        for name, values in report.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index")


# ------------------------------------------------------------- training history


def load_history(uri: str) -> pd.DataFrame:
    """Read a Keras ``CSVLogger`` file; ``epoch`` becomes the index when present.

    Raises:
        DataError: when the file is empty or not CSV.
        histo_common.storage.ObjectNotFound: when it is missing.
    """
    text = storage.read_text(uri)
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{uri} is not a CSV training history: {exc}") from exc
    if frame.empty:
        raise DataError(f"{uri} has no epochs")
    if "epoch" in frame.columns:
        frame = frame.set_index("epoch")
    return frame.apply(pd.to_numeric, errors="coerce")


def history_charts(history: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Group history columns into charts: each metric with its ``val_`` twin.

    ``loss`` and ``val_loss`` share a chart, as do ``auc``/``val_auc``; a column
    without a twin (``learning_rate``) gets a chart of its own. Any subset works.
    """
    charts: dict[str, pd.DataFrame] = {}
    columns = list(history.columns)
    for column in columns:
        base = column.removeprefix("val_")
        if base in charts:
            continue
        members = [c for c in (base, f"val_{base}") if c in columns]
        charts[base] = history[members]
    return charts


def history_uri_for(run_uri: str | None) -> str | None:
    """Where a training run keeps its history, or None when the run is unknown."""
    return storage.join(run_uri, HISTORY_FILE) if run_uri else None


# ------------------------------------------------------------------ the model


def model_facts(metadata: ModelMetadata, version_uri: str) -> pd.DataFrame:
    """What a model version is, as ``field``/``value`` rows for a table."""
    facts: list[tuple[str, Any]] = [
        ("name", metadata.model_name),
        ("version", metadata.version),
        ("location", version_uri),
        ("classes", ", ".join(metadata.class_names)),
        ("positive class", metadata.positive_class),
        ("threshold", f"{metadata.threshold:.4f}"),
        ("threshold method", metadata.threshold_method),
        ("input size", f"{metadata.image_size} x {metadata.image_size} px"),
        ("architecture", metadata.architecture),
        ("created at", metadata.created_at),
        ("training run", metadata.run_uri or "(not recorded)"),
        ("TensorFlow", metadata.tensorflow_version),
        ("Keras", metadata.keras_version),
        ("histoscreen", metadata.project_version),
        ("metadata schema", metadata.schema_version),
    ]
    return pd.DataFrame(
        [(name, str(value)) for name, value in facts if value not in ("", None)],
        columns=["field", "value"],
    )
