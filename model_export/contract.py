"""The SavedModel contract: names, layout and metadata shared by every unit.

A model version lives at ``<models>/<model-name>/<integer version>/`` (the layout
TensorFlow Serving expects) and holds:

- ``saved_model.pb`` + ``variables/``: signatures that take a batch of raw encoded
  images under the input ``image_bytes`` (``tf.string``, shape ``[None]``):

  - ``serving_default`` -> ``probability`` [B] (of the positive class),
    ``probabilities`` [B, C], ``label`` [B] (class name), ``threshold`` [B];
  - ``explain`` -> the same plus ``heatmap`` [B, S, S], Grad-CAM in [0, 1] at the
    model's input size S, for the positive class.

- ``metadata.json``: a :class:`ModelMetadata`.
- optionally ``BLESSED`` or ``NOT_BLESSED``: a short text with the reasons, written by
  the evaluation gate or by training (``--min-oof-auc``); the loader's "latest" skips
  versions marked ``NOT_BLESSED``.
- the same two on decoded pixels, under the input ``image_pixels`` (uint8
  ``[B, H, W, 3]``, one size per batch; resized to S in the graph exactly as the
  bytes signatures resize a decoded image): ``serving_pixels`` and
  ``explain_pixels``. Tiles read from a slide go in as pixels, never re-encoded.
  Models exported before these existed lack them (see ``LoadedModel``).

- ``metadata.json``: a :class:`ModelMetadata`, including the training scale
  (``native_size``: median width and height of the training images in source
  pixels; ``mpp``: their microns per pixel when known) that the tiling rule
  (:mod:`histo_common.tiling`) reads through :meth:`ModelMetadata.training_scale`.

- ``metadata.json``'s ``serving``: the steps inside the signatures beyond decoding,
  resizing and the network: test-time augmentation (the 8 dihedral views averaged)
  and stain normalisation (method and reference statistics), each None when off.

Decoding, resizing and normalisation are inside the signatures, so no caller
re-implements them. This module has no TensorFlow import: readers of metadata
(the app, infra checks) stay light.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

# Verdict files beside a version (the evaluation gate and training write them): the
# run layout names them; re-exported for the loader and the function zip.
from histo_common.layout import BLESSED as BLESSED
from histo_common.layout import NOT_BLESSED as NOT_BLESSED
from histo_common.tiling import TilingError, TrainingScale

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
SAVED_MODEL_FILE = "saved_model.pb"
KERAS_FILE = "model.keras"

INPUT_KEY = "image_bytes"
PREDICT_SIGNATURE = "serving_default"
EXPLAIN_SIGNATURE = "explain"
PREDICT_OUTPUTS = ("probability", "probabilities", "label", "threshold")
EXPLAIN_OUTPUTS = (*PREDICT_OUTPUTS, "heatmap")
PIXELS_INPUT_KEY = "image_pixels"
PREDICT_PIXELS_SIGNATURE = "serving_pixels"
EXPLAIN_PIXELS_SIGNATURE = "explain_pixels"

DEFAULT_MODEL_NAME = "histo-cnn"
# Where no model is at hand (training a new one, reading rows without a model), the
# classes are these; wherever a model is at hand, its metadata's class names rule.
DEFAULT_CLASS_NAMES = ("benign", "malignant")
DEFAULT_POSITIVE_CLASS = DEFAULT_CLASS_NAMES[1]
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ContractError(ValueError):
    """A model folder or metadata file that does not follow the contract."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a model version is: written beside the SavedModel as ``metadata.json``."""

    model_name: str
    version: int
    class_names: list[str]
    positive_class: str
    threshold: float
    threshold_method: str
    image_size: int
    architecture: str
    training_data: dict[str, Any] = field(default_factory=dict)
    validation_metrics: dict[str, Any] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    run_uri: str | None = None
    # One sentence per reason to doubt the model (weak out-of-fold AUC, ...); empty if none.
    warnings: list[str] = field(default_factory=list)
    # The training scale: [width, height] median of the training images in source
    # pixels, and their microns per pixel. None in models exported before them.
    native_size: list[int] | None = None
    mpp: float | None = None
    # What the signatures do beyond decode, resize and the network, for a reader:
    # "test_time_augmentation" and "stain_normalisation" (each a dict, or None when off).
    # Empty in models exported before it.
    serving: dict[str, Any] = field(default_factory=dict)
    tensorflow_version: str = ""
    keras_version: str = ""
    project_version: str = ""
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    disclaimer: str = ""

    def __post_init__(self) -> None:
        if not MODEL_NAME_RE.match(self.model_name):
            raise ContractError(f"model name {self.model_name!r} is not a valid name")
        if not isinstance(self.version, int) or self.version < 1:
            raise ContractError(f"version must be a positive integer, got {self.version!r}")
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ContractError(f"class_names must be 2 or more distinct names: {self.class_names}")
        if self.positive_class not in self.class_names:
            raise ContractError(
                f"positive_class {self.positive_class!r} is not one of {self.class_names}"
            )
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ContractError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.image_size < 8:
            raise ContractError(f"image_size must be at least 8, got {self.image_size}")
        if self.native_size is not None and (
            len(self.native_size) != 2
            or not all(isinstance(v, int) and v >= 1 for v in self.native_size)
        ):
            raise ContractError(
                f"native_size must be [width, height] in positive pixels, got {self.native_size}"
            )
        if self.mpp is not None and not (
            isinstance(self.mpp, (int, float)) and 0.0 < self.mpp <= 100.0
        ):
            raise ContractError(f"mpp must be in (0, 100] microns per pixel, got {self.mpp}")

    def training_scale(self) -> TrainingScale | None:
        """The scale the tiling rule needs, or None for a model that records none.

        Callers then score whole images and warn on large ones.
        """
        if self.native_size is None:
            return None
        try:
            return TrainingScale(
                width=int(self.native_size[0]),
                height=int(self.native_size[1]),
                mpp=None if self.mpp is None else float(self.mpp),
            )
        except TilingError as exc:
            raise ContractError(str(exc)) from exc

    def to_json(self) -> str:
        """Serialise as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "metadata.json") -> ModelMetadata:
        """Parse and validate; errors name ``source``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{source} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ContractError(f"{source} must hold a JSON object")
        if data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise ContractError(
                f"{source} has schema_version {data['schema_version']}, newer than this "
                f"code understands ({SCHEMA_VERSION}); upgrade histoscreen"
            )
        known = set(cls.__dataclass_fields__)
        required = {
            n
            for n, f in cls.__dataclass_fields__.items()
            if f.default is f.default_factory is MISSING
        }
        missing = required - data.keys()
        if missing:
            raise ContractError(f"{source} is missing fields: {sorted(missing)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ContractError(f"{source} has a field of the wrong type: {exc}") from exc


def version_uri(models_root: str, model_name: str, version: int) -> str:
    """``<models_root>/<model_name>/<version>``."""
    return f"{models_root.rstrip('/')}/{model_name}/{int(version)}"
