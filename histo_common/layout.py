"""The layout of a run's outputs: one home for every file name the units write and read.

A scoring or evaluation run writes under one output URI; :class:`RunLayout`
names each of its files, and the typed :class:`Summary` (``summary.json``) and
:class:`MetricsDocument` (``metrics.json``) are the two documents written there.
The Beam jobs write through it, the gate writes the verdict files it names, and
the app reads through it. The Cloud Function writes its outputs beside each
upload under the sibling names defined here. To add an output file, add its name
here and nowhere else::

    <output>/
      manifest.jsonl                the matched inputs, one JSON object per line
      results/part-*.jsonl          result rows (always); readers read these only
      results/part-*.csv|.parquet   the same rows, when asked for (--formats)
      errors/part-*.jsonl           error rows
      tiles/part-*.jsonl            tile rows of large inputs (one JSON object per tile)
      heatmaps/<input path>.heatmap.png   reassembled heatmaps of large inputs
      gradcam/<input path>.gradcam.png    overlays; <input path> is relative to Summary.base
      summary.json                  Summary (written by the pipeline, completed by the launcher)
      stream-summary.json           StreamSummary (a bounded streaming run, at its end)
      metrics.json                  MetricsDocument (evaluation runs)
      plots/<plot>.png              evaluation plots (PLOT_FILES)
      report.html                   the evaluation report
    <model version>/BLESSED | NOT_BLESSED   the gate's verdict

No I/O here: names only, and JSON text in and out of the two documents.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from histo_common import DISCLAIMER

# Row formats a run can write -> shard suffix. Readers read JSON Lines only.
ROW_FORMATS = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
READ_FORMAT = "jsonl"

# Beside an uploaded image, the function writes <name> + one of these.
GRADCAM_SUFFIX = ".gradcam.png"
PREDICTION_SUFFIX = ".prediction.json"
ERROR_SUFFIX = ".error.json"
HEATMAP_SUFFIX = ".heatmap.png"
SIBLING_SUFFIXES = (GRADCAM_SUFFIX, PREDICTION_SUFFIX, ERROR_SUFFIX, HEATMAP_SUFFIX)

# The gate's verdict files, in the model version folder.
BLESSED = "BLESSED"
NOT_BLESSED = "NOT_BLESSED"

# Plot name -> file name under <output>/plots/.
PLOT_FILES = {
    "confusion_matrix": "confusion_matrix.png",
    "roc": "roc.png",
    "pr": "precision_recall.png",
    "calibration": "calibration.png",
    "histogram": "prediction_histogram.png",
}

SUMMARY_SCHEMA_VERSION = 1
METRICS_SCHEMA_VERSION = 1
STREAM_SUMMARY_SCHEMA_VERSION = 1


class DocumentError(ValueError):
    """A ``summary.json`` or ``metrics.json`` that cannot be read; the message names it."""


def join(base: str, *names: str) -> str:
    """Join names onto a folder URI with ``/`` (what ``gs://`` and POSIX paths share)."""
    out = base.rstrip("/")
    for name in names:
        out = f"{out}/{name.strip('/')}"
    return out


def gradcam_sibling(uri: str) -> str:
    """The overlay written beside an uploaded image."""
    return uri + GRADCAM_SUFFIX


def prediction_sibling(uri: str) -> str:
    """The prediction JSON written beside an uploaded image."""
    return uri + PREDICTION_SUFFIX


def error_sibling(uri: str) -> str:
    """The error JSON written beside an upload that can never be scored."""
    return uri + ERROR_SUFFIX


def heatmap_sibling(uri: str) -> str:
    """The heatmap written beside a large upload (slides, issue 13)."""
    return uri + HEATMAP_SUFFIX


def is_output(uri: str) -> bool:
    """True when ``uri`` is one of the files histoscreen writes beside an input."""
    return uri.endswith(SIBLING_SUFFIXES)


def relative_path(uri: str, base: str) -> str:
    """An input's path under ``base`` (its whole path without the scheme when outside it).

    ``..``, ``.`` and empty segments are dropped, so a name built from it stays
    under the folder it is joined onto.
    """
    if base and uri.startswith(base.rstrip("/") + "/"):
        rel = uri[len(base.rstrip("/")) + 1 :]
    else:
        rel = uri.split("://", 1)[-1]
    return "/".join(p for p in rel.split("/") if p not in ("", ".", ".."))


def blessing_file(model_version_uri: str, blessed: bool) -> str:
    """The verdict file the gate writes into a model version folder."""
    return join(model_version_uri, BLESSED if blessed else NOT_BLESSED)


@dataclass(frozen=True)
class RunLayout:
    """Every file of a scoring or evaluation run under ``output`` (a folder URI)."""

    output: str

    RESULTS = "results"
    ERRORS = "errors"
    TILES = "tiles"
    HEATMAPS = "heatmaps"
    GRADCAM = "gradcam"
    PLOTS = "plots"
    SHARD = "part"
    ROWS_SUFFIX = ROW_FORMATS[READ_FORMAT]  # the one format readers read
    MANIFEST = "manifest.jsonl"
    SUMMARY = "summary.json"
    STREAM_SUMMARY = "stream-summary.json"
    METRICS = "metrics.json"
    REPORT = "report.html"

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", self.output.rstrip("/"))

    def _under(self, *names: str) -> str:
        return join(self.output, *names)

    # Rows: writers name a shard prefix and a suffix; readers read the JSON Lines only.
    @property
    def results_prefix(self) -> str:
        """Shard prefix of the result rows (``WriteToText`` adds ``-00000-of-00001<suffix>``)."""
        return self._under(self.RESULTS, self.SHARD)

    @property
    def results_pattern(self) -> str:
        """The result shards readers read: JSON Lines, always written."""
        return self._under(self.RESULTS, "*" + self.ROWS_SUFFIX)

    def results_format_pattern(self, fmt: str) -> str:
        """The result shards of one format (``jsonl``, ``csv``, ``parquet``)."""
        return self._under(self.RESULTS, "*" + ROW_FORMATS[fmt])

    @property
    def errors_prefix(self) -> str:
        """Shard prefix of the error rows."""
        return self._under(self.ERRORS, self.SHARD)

    @property
    def errors_pattern(self) -> str:
        """The error shards readers read (JSON Lines)."""
        return self._under(self.ERRORS, "*" + self.ROWS_SUFFIX)

    @property
    def tiles_prefix(self) -> str:
        """Shard prefix of the tile rows (JSON Lines, one object per tile)."""
        return self._under(self.TILES, self.SHARD)

    @property
    def tiles_pattern(self) -> str:
        """The tile shards readers read."""
        return self._under(self.TILES, "*" + self.ROWS_SUFFIX)

    @property
    def gradcam_dir(self) -> str:
        """The folder of the Grad-CAM overlays."""
        return self._under(self.GRADCAM)

    def gradcam(self, input_uri: str, base: str) -> str:
        """An input's overlay: ``gradcam/<path under base>.gradcam.png``."""
        return self._under(self.GRADCAM, relative_path(input_uri, base) + GRADCAM_SUFFIX)

    def heatmap(self, input_uri: str, base: str) -> str:
        """A large input's heatmap: ``heatmaps/<path under base>.heatmap.png``."""
        return self._under(self.HEATMAPS, relative_path(input_uri, base) + HEATMAP_SUFFIX)

    @property
    def manifest(self) -> str:
        """The matched inputs the pipeline reads."""
        return self._under(self.MANIFEST)

    @property
    def summary(self) -> str:
        """``summary.json`` (a :class:`Summary`)."""
        return self._under(self.SUMMARY)

    @property
    def stream_summary(self) -> str:
        """``stream-summary.json`` (a :class:`StreamSummary`)."""
        return self._under(self.STREAM_SUMMARY)

    @property
    def metrics(self) -> str:
        """``metrics.json`` (a :class:`MetricsDocument`)."""
        return self._under(self.METRICS)

    @property
    def report(self) -> str:
        """The self-contained HTML report."""
        return self._under(self.REPORT)

    @staticmethod
    def plot_path(name: str) -> str:
        """A plot's path relative to the output folder (as ``metrics.json`` records it)."""
        return f"{RunLayout.PLOTS}/{PLOT_FILES[name]}"

    def plot(self, name: str) -> str:
        """A plot's URI."""
        return self._under(self.plot_path(name))

    @property
    def row_patterns(self) -> list[str]:
        """Every row shard, of any format: what marks a folder as holding a run."""
        return [self._under(self.RESULTS, "*"), self._under(self.ERRORS, "*")]

    def run_documents(self) -> list[str]:
        """Row shards and documents: a number of files that does not grow with the inputs.

        With :meth:`per_input_images`, every pattern a run writes here: what
        ``--overwrite`` clears.
        """
        return [
            *self.row_patterns,
            self._under(self.TILES, "*"),
            self._under(self.PLOTS, "*"),
            self.manifest,
            self.summary,
            self.stream_summary,
            self.metrics,
            self.report,
        ]

    def per_input_images(self) -> list[str]:
        """Grad-CAM overlays and slide heatmaps: one file per input (or per slide)."""
        return [self._under(self.HEATMAPS, "**"), self._under(self.GRADCAM, "**")]

    def resolve(self, path: str) -> str:
        """A path recorded in a document: absolute URIs as they are, relative ones here."""
        if "://" in path or path.startswith("/"):
            return path
        return self._under(path)


# ------------------------------------------------------------------ documents


def _check_version(data: Any, kind: str, current: int, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DocumentError(f"{source} must hold a JSON object, not {type(data).__name__}")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise DocumentError(
            f"{source} has no schema_version: it was written before {kind} was versioned; "
            "run the job again to rewrite it"
        )
    if version > current:
        raise DocumentError(
            f"{source} is {kind} schema version {version}, newer than this histoscreen "
            f"reads ({current}); upgrade histoscreen to read it"
        )
    return data


def _parse(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"{source} is not valid JSON: {exc}") from exc


def _build(cls: type, data: dict[str, Any], source: str) -> Any:
    # Unknown keys are tolerated (a same-version writer may add optional fields);
    # missing required keys are not.
    names = {f.name for f in fields(cls)}
    required = {
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    }
    missing = sorted(required - data.keys())
    if missing:
        raise DocumentError(f"{source} lacks {', '.join(missing)}")
    return cls(**{k: v for k, v in data.items() if k in names})


class _JsonDocument:
    """JSON text in and out for the run's documents (each defines ``from_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        """The document as plain JSON-ready values."""
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    def to_json(self) -> str:
        """The document's file text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Any:
        """Read the document back from parsed JSON."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, text: str, source: str = "document") -> Any:
        """Parse the document's file text (see ``from_dict``).

        Raises:
            DocumentError: when it is not valid JSON or not a document this version reads.
        """
        return cls.from_dict(_parse(text, source), source)


@dataclass(frozen=True)
class RunModel:
    """The model a run used: name, integer version and where it lives."""

    name: str
    version: int
    version_uri: str | None = None  # the model version folder; None when served elsewhere
    endpoint: str | None = None  # TensorFlow Serving host:port, when scored there


@dataclass(frozen=True)
class Summary(_JsonDocument):
    """``summary.json``: what a scoring run matched, wrote, and with which model.

    ``base`` is the folder every input sits under; overlay and heatmap paths are
    the inputs' paths relative to it (:meth:`RunLayout.gradcam`). ``failed`` counts
    every error row; ``lost`` how many of them the pipeline's reconciliation wrote
    for matched inputs no stage had a row for (``missing`` lists them). ``lost`` was
    added within schema version 1 as an optional field: summaries written before
    it read back with 0, and older readers ignore it.
    """

    inputs: list[str]
    output: str
    base: str
    model: RunModel
    matched: int
    scored: int
    failed: int
    complete: bool
    lost: int = 0
    formats: list[str] = field(default_factory=lambda: ["jsonl"])
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    runner: str = ""
    elapsed_s: float = 0.0
    images_per_s: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    finished_at: str = ""
    disclaimer: str = DISCLAIMER
    schema_version: int = SUMMARY_SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: Any, source: str = "summary.json") -> Summary:
        """Read a summary back.

        Raises:
            DocumentError: when it is not a summary this version can read.
        """
        data = _check_version(data, "summary.json", SUMMARY_SCHEMA_VERSION, source)
        model = data.get("model")
        if not isinstance(model, dict):
            raise DocumentError(f"{source} lacks model")
        values = dict(data, model=_build(RunModel, model, f"{source} model"))
        return _build(cls, values, source)


@dataclass(frozen=True)
class StreamWindow:
    """One output window of a stream: its bounds (UTC) and the rows written for it."""

    start: str
    end: str
    results: int = 0
    errors: int = 0


@dataclass(frozen=True)
class StreamSummary(_JsonDocument):
    """``stream-summary.json``: what a bounded streaming run scored, written at its end.

    ``notifications`` counts the messages the pipeline received (duplicates and
    ignored ones included); ``model_versions`` maps ``name/version`` to the rows
    it scored; ``unreceived`` counts notifications published locally that never
    reached the pipeline (0 unless something was lost).
    """

    output: str
    source: str  # the subscription, or the watched folder of a local run
    model: str  # the model root (followed) or version URI
    notifications: int
    results: int
    errors: int
    model_versions: dict[str, int]
    windows: list[StreamWindow]
    started_at: str
    finished_at: str
    elapsed_s: float
    unreceived: int = 0
    disclaimer: str = DISCLAIMER
    schema_version: int = STREAM_SUMMARY_SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: Any, source: str = "stream-summary.json") -> StreamSummary:
        """Read a stream summary back.

        Raises:
            DocumentError: when it is not a stream summary this version can read.
        """
        data = _check_version(data, "stream-summary.json", STREAM_SUMMARY_SCHEMA_VERSION, source)
        windows = [_build(StreamWindow, w, f"{source} window") for w in data.get("windows") or []]
        return _build(cls, dict(data, windows=windows), source)


@dataclass(frozen=True)
class EvaluatedModel:
    """The model an evaluation measured, with the threshold its rows were labelled at."""

    name: str | None
    version: int | None
    threshold: float
    version_uri: str | None = None


@dataclass(frozen=True)
class Counts:
    """How the evaluated images were accounted for."""

    images: int
    scored: int
    errors: int
    labelled: int
    unlabelled: int
    per_class: dict[str, int]
    patients: int


@dataclass(frozen=True)
class GateCheck:
    """One limit of the gate and whether the metric met it."""

    metric: str
    kind: str  # "min" or "max"
    limit: float
    value: float | None
    passed: bool


@dataclass(frozen=True)
class Blessing:
    """The gate's verdict, its checks, its reasons and the file it was written to."""

    blessed: bool
    checks: list[GateCheck]
    reasons: list[str]
    written_to: str | None = None

    @property
    def verdict(self) -> str:
        """``BLESSED`` or ``NOT_BLESSED``."""
        return BLESSED if self.blessed else NOT_BLESSED


@dataclass(frozen=True)
class MetricsDocument(_JsonDocument):
    """``metrics.json``: an evaluation's numbers, plots and gate verdict.

    A level (``image_level``, ``patient_level``) maps each metric name to
    ``{"value", "ci_low", "ci_high"}`` and holds the tables (``confusion_matrix``,
    ``classification_report``, ``prediction_distribution``, ``calibration``).
    """

    model: EvaluatedModel
    counts: Counts
    image_level: dict[str, Any]
    patient_level: dict[str, Any] | None = None
    plots: dict[str, str] = field(default_factory=dict)  # name -> path relative to the run
    blessing: Blessing | None = None
    source: dict[str, Any] = field(default_factory=dict)
    generated_at: str = ""
    disclaimer: str = DISCLAIMER
    schema_version: int = METRICS_SCHEMA_VERSION

    def value(self, metric: str, level: str = "image_level") -> float | None:
        """A metric's point value at one level, or None when absent."""
        section = getattr(self, level) or {}
        entry = section.get(metric)
        return entry.get("value") if isinstance(entry, dict) else None

    @classmethod
    def from_dict(cls, data: Any, source: str = "metrics.json") -> MetricsDocument:
        """Read a metrics document back.

        Raises:
            DocumentError: when it is not a metrics document this version can read.
        """
        data = _check_version(data, "metrics.json", METRICS_SCHEMA_VERSION, source)
        for key in ("model", "counts"):
            if not isinstance(data.get(key), dict):
                raise DocumentError(f"{source} lacks {key}")
        blessing = data.get("blessing")
        if isinstance(blessing, dict):
            checks = [_build(GateCheck, c, f"{source} check") for c in blessing.get("checks", [])]
            blessing = _build(Blessing, dict(blessing, checks=checks), f"{source} blessing")
        values = dict(
            data,
            model=_build(EvaluatedModel, data["model"], f"{source} model"),
            counts=_build(Counts, data["counts"], f"{source} counts"),
            blessing=blessing,
        )
        return _build(cls, values, source)
