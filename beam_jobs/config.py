"""Validated configuration of the Beam jobs, parsed from flags at the edge.

``score`` and ``evaluate`` parse their own flags with ``parse_known_args`` into
these dataclasses (everything else goes to Beam's ``PipelineOptions``); stages
receive plain values from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from model_export.contract import DEFAULT_MODEL_NAME, MODEL_NAME_RE

RESULT_FORMATS = ("jsonl", "csv", "parquet")
DEFAULT_FORMATS = ("jsonl", "csv", "parquet")


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag."""


@dataclass(frozen=True)
class ScoreConfig:
    """What the scoring job does.

    Attributes:
        inputs: glob patterns or URIs of the images (``gs://`` or local).
        output: folder URI for ``results/``, ``errors/``, ``gradcam/``, ``summary.json``.
        model: model root (latest version) or version URI; with ``model_endpoint``
            it only names the model in the rows.
        model_endpoint: ``host:port`` of TensorFlow Serving, to score there instead.
        serving_model_name: the served model's name when only ``model_endpoint`` is given.
        gradcam: write Grad-CAM overlays.
        gradcam_top: only for the N most suspicious images (None: every image).
        formats: result formats; ``jsonl`` is always written.
        max_pixels: pixel limit per image.
        max_bytes: file size limit.
        min_batch_size / max_batch_size: RunInference batching.
        large_model: share one model across worker processes.
        num_shards: output shards (0: the runner decides).
        overwrite: replace results already under ``output``.
    """

    inputs: tuple[str, ...]
    output: str
    model: str | None = None
    model_endpoint: str | None = None
    serving_model_name: str = DEFAULT_MODEL_NAME
    gradcam: bool = False
    gradcam_top: int | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    min_batch_size: int = 32
    max_batch_size: int = 256
    large_model: bool = False
    num_shards: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.inputs or any(not p.strip() for p in self.inputs):
            raise ConfigError("--input needs at least one non-empty pattern")
        if not self.output.strip():
            raise ConfigError("--output must name a folder")
        if not self.model and not self.model_endpoint:
            raise ConfigError("give --model (a model root or version) or --model-endpoint")
        if self.model_endpoint and ":" not in self.model_endpoint:
            raise ConfigError(f"--model-endpoint {self.model_endpoint!r} must be host:port")
        _check_serving_name(self.serving_model_name)
        unknown = set(self.formats) - set(RESULT_FORMATS)
        if unknown:
            raise ConfigError(f"--formats: unknown {sorted(unknown)}; choose from {RESULT_FORMATS}")
        if "jsonl" not in self.formats:
            object.__setattr__(self, "formats", ("jsonl", *self.formats))
        if self.gradcam_top is not None and self.gradcam_top < 1:
            raise ConfigError(f"--gradcam-top must be at least 1, got {self.gradcam_top}")
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise ConfigError("--max-pixels and --max-bytes must be positive")
        if not 1 <= self.min_batch_size <= self.max_batch_size:
            raise ConfigError(
                f"batch sizes must satisfy 1 <= --min-batch-size <= --max-batch-size, got "
                f"{self.min_batch_size} and {self.max_batch_size}"
            )
        if self.num_shards < 0:
            raise ConfigError("--num-shards must be 0 (runner decides) or more")


@dataclass(frozen=True)
class GateConfig:
    """Minimums and maximums a model must meet to be blessed (image-level point values)."""

    minimums: dict[str, float] = field(default_factory=dict)
    maximums: dict[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """True when at least one limit was given."""
        return bool(self.minimums or self.maximums)


@dataclass(frozen=True)
class EvaluateConfig:
    """What the evaluation job does.

    Attributes:
        output: folder URI for ``metrics.json``, ``report.html``, ``plots/`` (and, when
            scoring, ``results/`` and ``errors/``).
        inputs: labelled image patterns to score (or None with ``scores``).
        scores: an existing scoring output folder to read instead of scoring.
        model: model root or version (for scoring, the Grad-CAM gallery and the gate).
        labels: a labels CSV (``path``/``uri``, ``label``, optional ``patient_id``).
        gate: promotion limits; empty means no gate.
        bootstrap: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.
        gallery_size: how many of the most confident errors to show.
        strict_gate: exit non-zero when the model is not blessed.
    """

    output: str
    inputs: tuple[str, ...] = ()
    scores: str | None = None
    model: str | None = None
    model_endpoint: str | None = None
    serving_model_name: str = DEFAULT_MODEL_NAME
    labels: str | None = None
    gate: GateConfig = field(default_factory=GateConfig)
    bootstrap: int = 1000
    seed: int = 0
    gallery_size: int = 12
    strict_gate: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    min_batch_size: int = 32
    max_batch_size: int = 256
    large_model: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if bool(self.inputs) == bool(self.scores):
            raise ConfigError("give either --input (to score) or --scores (a scoring output)")
        if self.inputs and not (self.model or self.model_endpoint):
            raise ConfigError("scoring with --input needs --model or --model-endpoint")
        _check_serving_name(self.serving_model_name)
        if not self.output.strip():
            raise ConfigError("--output must name a folder")
        if self.bootstrap < 0:
            raise ConfigError("--bootstrap must be 0 (no intervals) or more")
        if self.gallery_size < 0:
            raise ConfigError("--gallery-size must be 0 or more")


def _check_serving_name(name: str) -> None:
    """Refuse a ``--serving-model-name`` TF Serving could not be serving."""
    if not MODEL_NAME_RE.match(name):
        raise ConfigError(
            f"--serving-model-name {name!r} is not a model name (letters, digits, '_.-')"
        )
