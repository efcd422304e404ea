"""Validated configuration of the Beam jobs, parsed from flags at the edge.

``score`` and ``evaluate`` parse their own flags with ``parse_known_args`` into
these dataclasses (everything else goes to Beam's ``PipelineOptions``); stages
receive plain values from them. :class:`ScoringOptions` (the model, the image
limits and the batching) is the part both jobs share: it is built from the same
flags by one function (``score.options_from_args``) and validated here, once;
the evaluation job derives the scoring config it runs from its own
(:meth:`EvaluateConfig.scoring`) rather than copying fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evaluation.gate import GateConfig
from evaluation.outputs import EvaluationSettings
from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from histo_common.layout import ROW_FORMATS
from model_export.contract import DEFAULT_MODEL_NAME, MODEL_NAME_RE
from model_export.slide_scoring import DEFAULT_TILE_BATCH

RESULT_FORMATS = tuple(ROW_FORMATS)
DEFAULT_FORMATS = RESULT_FORMATS
DEFAULT_MIN_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_SIZE = 256

__all__ = [
    "ConfigError",
    "EvaluateConfig",
    "EvaluationSettings",
    "GateConfig",
    "ScoreConfig",
    "ScoringOptions",
]


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag."""


@dataclass(frozen=True)
class ScoringOptions:
    """How images are read and scored, shared by the scoring and evaluation jobs.

    Attributes:
        model: model root (latest version) or version URI; with ``model_endpoint``
            it only names the model in the rows.
        model_endpoint: ``host:port`` of TensorFlow Serving, to score there instead.
        serving_model_name: the served model's name when only ``model_endpoint`` is given.
        max_pixels: pixel limit per image.
        max_bytes: file size limit.
        min_batch_size / max_batch_size: RunInference batching.
        large_model: share one model across worker processes.
        overwrite: replace a run already under the output folder.
    """

    model: str | None = None
    model_endpoint: str | None = None
    serving_model_name: str = DEFAULT_MODEL_NAME
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    min_batch_size: int = DEFAULT_MIN_BATCH_SIZE
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    large_model: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.model_endpoint and ":" not in self.model_endpoint:
            raise ConfigError(f"--model-endpoint {self.model_endpoint!r} must be host:port")
        if not MODEL_NAME_RE.match(self.serving_model_name):
            raise ConfigError(
                f"--serving-model-name {self.serving_model_name!r} is not a model name "
                "(letters, digits, '_.-')"
            )
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise ConfigError("--max-pixels and --max-bytes must be positive")
        if not 1 <= self.min_batch_size <= self.max_batch_size:
            raise ConfigError(
                f"batch sizes must satisfy 1 <= --min-batch-size <= --max-batch-size, got "
                f"{self.min_batch_size} and {self.max_batch_size}"
            )

    @property
    def has_model(self) -> bool:
        """True when a model or a serving endpoint was named."""
        return bool(self.model or self.model_endpoint)


@dataclass(frozen=True)
class ScoreConfig:
    """What the scoring job does.

    Attributes:
        inputs: glob patterns or URIs of the images (``gs://`` or local).
        output: folder URI of the run (its files: ``histo_common.layout.RunLayout``).
        options: the model, image limits and batching.
        gradcam: write Grad-CAM overlays.
        gradcam_top: only for the N most suspicious images (None: every image).
        formats: result formats; ``jsonl`` is always written.
        num_shards: output shards (0: the runner decides).
        tile_stride: distance between tile origins of large inputs, in training-scale
            pixels (None: the tile size, no overlap).
        tile_batch: tiles of a large input per work item and model call.
    """

    inputs: tuple[str, ...]
    output: str
    options: ScoringOptions = field(default_factory=ScoringOptions)
    gradcam: bool = False
    gradcam_top: int | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS
    num_shards: int = 0
    tile_stride: int | None = None
    tile_batch: int = DEFAULT_TILE_BATCH

    def __post_init__(self) -> None:
        if not self.inputs or any(not p.strip() for p in self.inputs):
            raise ConfigError("--input needs at least one non-empty pattern")
        if not self.output.strip():
            raise ConfigError("--output must name a folder")
        if not self.options.has_model:
            raise ConfigError("give --model (a model root or version) or --model-endpoint")
        unknown = set(self.formats) - set(RESULT_FORMATS)
        if unknown:
            raise ConfigError(f"--formats: unknown {sorted(unknown)}; choose from {RESULT_FORMATS}")
        if "jsonl" not in self.formats:
            object.__setattr__(self, "formats", ("jsonl", *self.formats))
        if self.gradcam_top is not None and self.gradcam_top < 1:
            raise ConfigError(f"--gradcam-top must be at least 1, got {self.gradcam_top}")
        if self.num_shards < 0:
            raise ConfigError("--num-shards must be 0 (runner decides) or more")
        if self.tile_stride is not None and self.tile_stride < 1:
            raise ConfigError(f"--tile-stride must be at least 1 pixel, got {self.tile_stride}")
        if self.tile_batch < 1:
            raise ConfigError(f"--tile-batch must be at least 1 tile, got {self.tile_batch}")


@dataclass(frozen=True)
class EvaluateConfig:
    """What the evaluation job does.

    Attributes:
        output: folder URI for ``metrics.json``, ``report.html``, ``plots/`` (and, when
            scoring, the scoring run's files).
        options: the model (for scoring, the Grad-CAM gallery and the gate), image
            limits and batching, as in the scoring job.
        evaluation: bootstrap, gallery and gate.
        inputs: labelled image patterns to score (or empty with ``scores``).
        scores: an existing scoring output folder to read instead of scoring.
        labels: a labels CSV (``path``/``uri``, ``label``, optional ``patient_id``).
        strict_gate: exit non-zero when the model is not blessed.
    """

    output: str
    options: ScoringOptions = field(default_factory=ScoringOptions)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    inputs: tuple[str, ...] = ()
    scores: str | None = None
    labels: str | None = None
    strict_gate: bool = False

    def __post_init__(self) -> None:
        if bool(self.inputs) == bool(self.scores):
            raise ConfigError("give either --input (to score) or --scores (a scoring output)")
        if self.inputs and not self.options.has_model:
            raise ConfigError("scoring with --input needs --model or --model-endpoint")
        if not self.output.strip():
            raise ConfigError("--output must name a folder")

    def scoring(self) -> ScoreConfig:
        """The scoring run this evaluation makes with ``--input`` (JSON Lines rows only)."""
        return ScoreConfig(
            inputs=self.inputs, output=self.output, options=self.options, formats=("jsonl",)
        )
