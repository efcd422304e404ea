"""Training configuration: one validated dataclass, filled from flags or a JSON/YAML file.

The command line (``training.__main__``) and config files are parsed at the edge
into :class:`TrainConfig`; everything after that trusts it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from model_export.contract import DEFAULT_MODEL_NAME, MODEL_NAME_RE
from training.models import ARCHITECTURES, CUSTOM_CNN, MOBILENET_V2

# Stain normalisation inside the model (model_export.preprocessing): "reinhard" matches
# each image's CIELAB mean and spread to the training set's.
STAIN_NORMALISATIONS = ("none", "reinhard")
WEIGHT_AVERAGING = ("none", "ema")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation strengths (0 turns one off). Never part of the model."""

    flip: bool = True
    rotate90: bool = True
    # Random crops: up to this fraction of the side cropped away, then resized to the
    # input size. None: 0.1 for patches, 0.3 for fields of view (training.data.resolve_input).
    zoom: float | None = None
    stain: float = 0.05  # H&E stain jitter: scale and shift in haematoxylin/eosin space
    brightness: float = 0.08
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02

    def __post_init__(self) -> None:
        for name in ("zoom", "stain", "brightness", "contrast", "saturation", "hue"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 0.5:
                raise ConfigError(f"augmentation.{name} must be in [0, 0.5], got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Defaults are the measured best within ~15 min on 2 cores."""

    data: str
    output: str
    model_name: str = DEFAULT_MODEL_NAME
    architecture: str = CUSTOM_CNN
    # Input side in px; None: from the images and the architecture
    # (training.data.default_image_size: 48 for 50 px patches, 224 for fields of view).
    image_size: int | None = None
    width: float = 1.0  # custom CNN: multiplies every layer's filters and units
    label_smoothing: float = 0.0
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    dropout: float = 0.4
    l2: float = 1e-4
    seed: int = 42
    # K > 1: K cross-fitted models (each early-stopped on a fold of patients it does
    # not train on) form the exported ensemble, and their out-of-fold predictions
    # choose the threshold. 1: one model and one validation split.
    folds: int = 3
    validation_fraction: float = 0.2
    positive_class: str = "malignant"
    # "youden": maximise sensitivity + specificity on the held-out predictions
    # (out-of-fold with folds > 1); "fixed": ``fixed_threshold``.
    threshold_method: str = "youden"
    fixed_threshold: float = 0.5
    early_stopping_patience: int = 8
    max_minutes: float | None = 14.0
    # The job warns (log and metadata "warnings") below this out-of-fold AUC, or when
    # the per-fold thresholds spread wider than this in logit space (2.0: a factor of
    # e^2, about 7, in odds; e.g. 0.27 against 0.73).
    weak_auc: float = 0.8
    max_threshold_spread: float = 2.0
    # Below this out-of-fold AUC the version is written but marked NOT_BLESSED.
    min_oof_auc: float | None = None
    # 0: the K fold models are the exported ensemble (as before). 1 or 2: the fold
    # models only give the threshold, out-of-fold metrics and warnings; then this many
    # models are trained on every training image for ``final_epochs`` and exported.
    final_models: int = 0
    # Epochs of each final model; None: the median best epoch of the fold models.
    final_epochs: int | None = None
    # Test-time augmentation in the SavedModel: every signature averages the 8
    # dihedral views (rotations and flips) of each image.
    tta: bool = False
    # "reinhard": a layer at the model's input maps each image's CIELAB mean and
    # standard deviation to the training set's (statistics stored in the model).
    stain_normalisation: str = "none"
    # "ema": the exported weights are an exponential moving average of the weights
    # over the training steps (Polyak averaging; also what is validated each epoch).
    weight_averaging: str = "none"
    ema_momentum: float = 0.99
    # Transfer learning
    weights: str = "none"  # "imagenet", a path to no-top .h5 weights, or "none"
    alpha: float | None = None
    fine_tune_epochs: int = 0
    fine_tune_layers: int = 30
    # The MobileNetV2 layer whose output feeds the head (e.g. "block_6_project_BN"):
    # a shallower, faster network; None: the whole base ("out_relu").
    mobilenet_layer: str | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)
    skip_bad_images: bool = False
    # Microns per pixel of the training images, when known: recorded in the model's
    # metadata so slides are tiled at the training scale (histo_common.tiling).
    mpp: float | None = None
    verbose: int | None = (
        None  # Keras verbosity; None: a bar on a terminal, a line per epoch otherwise
    )

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data must name a folder or labels CSV")
        if not self.output:
            raise ConfigError("output must name a models root (folder or gs:// URI)")
        if not MODEL_NAME_RE.match(self.model_name):
            raise ConfigError(
                f"model_name {self.model_name!r} must be letters, digits, '.', '_' or '-'"
            )
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        if self.image_size is not None:
            if not 16 <= self.image_size <= 512:
                raise ConfigError(f"image_size must be in [16, 512], got {self.image_size}")
            if self.architecture == MOBILENET_V2 and self.image_size < 32:
                raise ConfigError("MobileNetV2 needs image_size of at least 32")
        if not 0.125 <= self.width <= 4.0:
            raise ConfigError(f"width must be in [0.125, 4], got {self.width}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        for name in ("weak_auc", "min_oof_auc"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.max_threshold_spread <= 0:
            raise ConfigError(
                f"max_threshold_spread must be positive, got {self.max_threshold_spread}"
            )
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        if not 0.0 < self.learning_rate < 1.0:
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.l2 < 1.0:
            raise ConfigError(f"l2 must be in [0, 1), got {self.l2}")
        if not 1 <= self.folds <= 10:
            raise ConfigError(f"folds must be in [1, 10], got {self.folds}")
        if not 0.05 <= self.validation_fraction <= 0.5:
            raise ConfigError(
                f"validation_fraction must be in [0.05, 0.5], got {self.validation_fraction}"
            )
        if self.threshold_method not in ("youden", "fixed"):
            raise ConfigError(
                f"threshold_method must be 'youden' or 'fixed', got {self.threshold_method!r}"
            )
        if not 0.0 < self.fixed_threshold < 1.0:
            raise ConfigError(f"fixed_threshold must be in (0, 1), got {self.fixed_threshold}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.alpha is not None and self.alpha not in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
            raise ConfigError(
                f"alpha must be a MobileNetV2 width (0.35, 0.5, 0.75, 1.0, ...), got {self.alpha}"
            )
        if self.mpp is not None and not 0.0 < self.mpp <= 100.0:
            raise ConfigError(
                f"mpp must be microns per pixel in (0, 100] (e.g. 0.25 at 40x), got {self.mpp}"
            )
        if self.mobilenet_layer is not None and self.architecture != MOBILENET_V2:
            raise ConfigError(
                f"mobilenet_layer {self.mobilenet_layer!r} needs architecture {MOBILENET_V2!r}"
            )
        if self.fine_tune_epochs < 0 or self.fine_tune_layers < 0:
            raise ConfigError("fine_tune_epochs and fine_tune_layers must be >= 0")
        if self.final_models not in (0, 1, 2):
            raise ConfigError(f"final_models must be 0, 1 or 2, got {self.final_models}")
        if self.final_epochs is not None:
            _positive("final_epochs", self.final_epochs)
        if self.final_models and self.fine_tune_epochs:
            raise ConfigError(
                "final_models cannot be combined with fine_tune_epochs yet (final models "
                "have no validation data to stop fine-tuning on): set one of them to 0"
            )
        if not isinstance(self.tta, bool):
            raise ConfigError(f"tta must be true or false, got {self.tta!r}")
        if self.stain_normalisation not in STAIN_NORMALISATIONS:
            raise ConfigError(
                f"stain_normalisation must be one of {STAIN_NORMALISATIONS}, "
                f"got {self.stain_normalisation!r}"
            )
        if self.weight_averaging not in WEIGHT_AVERAGING:
            raise ConfigError(
                f"weight_averaging must be one of {WEIGHT_AVERAGING}, got {self.weight_averaging!r}"
            )
        if not 0.5 <= self.ema_momentum < 1.0:
            raise ConfigError(f"ema_momentum must be in [0.5, 1), got {self.ema_momentum}")

    @property
    def transfer_learning(self) -> bool:
        """True for MobileNetV2."""
        return self.architecture == MOBILENET_V2

    @property
    def weights_source(self) -> str | None:
        """Weights for ``keras.applications`` (None for random initialisation)."""
        return None if self.weights.lower() == "none" else self.weights

    @property
    def resolved_alpha(self) -> float:
        """MobileNetV2 width: as given, else read from a Keras weights file name, else 0.35."""
        if self.alpha is not None:
            return self.alpha
        match = re.search(r"_(0\.35|0\.5|0\.75|1\.0|1\.3|1\.4)_", self.weights)
        return float(match.group(1)) if match else 0.35

    @property
    def input_size(self) -> int:
        """``image_size`` once it is known (:func:`training.data.resolve_input` sets it)."""
        if self.image_size is None:
            raise ConfigError("image_size is not set: training.data.resolve_input sets it")
        return self.image_size

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (saved with the run and in the model's metadata)."""
        return asdict(self)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")


def from_mapping(values: dict[str, Any], *, source: str = "config") -> TrainConfig:
    """Build a config from a dict (a parsed file, or file values overlaid with flags)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(
            f"{source} has unknown fields: {sorted(unknown)} (known: {sorted(known)})"
        )
    values = dict(values)
    aug = values.pop("augmentation", None)
    try:
        if isinstance(aug, dict):
            aug_known = {f.name for f in fields(Augmentation)}
            bad = set(aug) - aug_known
            if bad:
                raise ConfigError(f"{source} augmentation has unknown fields: {sorted(bad)}")
            values["augmentation"] = Augmentation(**aug)
        elif isinstance(aug, Augmentation):
            values["augmentation"] = aug
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load_config_file(uri: str) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict (validated later, with the flags)."""
    from histo_common import storage

    try:
        text = storage.read_text(uri)
    except storage.StorageError as exc:
        raise ConfigError(f"cannot read config file {uri}: {exc}") from exc
    try:
        if uri.lower().endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ConfigError(f"config file {uri} is not valid JSON/YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {uri} must hold a mapping of field names to values")
    return data


__all__ = [
    "STAIN_NORMALISATIONS",
    "WEIGHT_AVERAGING",
    "Augmentation",
    "ConfigError",
    "TrainConfig",
    "from_mapping",
    "load_config_file",
    "replace",
]
