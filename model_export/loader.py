"""Loading a model version in the contract: the one loader every unit uses.

``load_model(uri)`` takes a model root (``<models>/<name>``: the latest complete
version not marked ``NOT_BLESSED`` is picked) or one version
(``<models>/<name>/<version>``), local or ``gs://``; checks the metadata and the
signatures; and returns a :class:`LoadedModel` whose ``predict``/``explain`` take
raw encoded image bytes.
Any problem is one :class:`ModelLoadError` sentence naming the URI and what to do.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histo_common import storage
from histo_common.errors import one_line
from histo_common.results import Prediction
from model_export import contract
from model_export.identity import (
    ModelIdentity,
    ModelLoadError,
    read_metadata,
    resolve_model,
    resolve_version,
)
from model_export.scoring import predictions_from_outputs

if TYPE_CHECKING:
    import keras

__all__ = [
    "Explanation",
    "LoadedModel",
    "ModelLoadError",
    "load_model",
    "read_metadata",
    "resolve_version",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Explanation:
    """A prediction with its Grad-CAM heatmap (``[S, S]`` in [0, 1])."""

    prediction: Prediction
    heatmap: np.ndarray


def _local_copy(version_uri: str, cache_dir: str | None) -> Path:
    if not storage.is_gcs(version_uri):
        return storage.local_path(version_uri)
    root = Path(cache_dir or tempfile.gettempdir()) / "histoscreen-models"
    # Key by the object's generation too: the same URI can name another model
    # (a bucket re-created, an emulator restarted), and a stale copy must not load.
    pb = storage.stat(storage.join(version_uri, contract.SAVED_MODEL_FILE))
    key = f"{version_uri}#{pb.generation}#{pb.size}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    target = root / digest
    marker = target / ".complete"
    if not marker.exists():
        # Versions are immutable, so one download per process tree is enough.
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        storage.copy_tree_from(version_uri, tmp)
        (tmp / ".complete").write_text(version_uri)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


class LoadedModel:
    """A loaded model version: metadata plus callable signatures on raw bytes."""

    def __init__(self, uri: str, metadata: contract.ModelMetadata, saved_model: Any) -> None:
        self.uri = uri
        self.metadata = metadata
        self._saved = saved_model
        self._predict_fn = saved_model.signatures[contract.PREDICT_SIGNATURE]
        self._explain_fn = saved_model.signatures[contract.EXPLAIN_SIGNATURE]
        # Models exported before the pixel signatures lack them: callers fall back to PNG.
        self._pixel_fns = {
            name: saved_model.signatures[pixels]
            for name, pixels in (
                (contract.PREDICT_SIGNATURE, contract.PREDICT_PIXELS_SIGNATURE),
                (contract.EXPLAIN_SIGNATURE, contract.EXPLAIN_PIXELS_SIGNATURE),
            )
            if pixels in saved_model.signatures
        }

    @property
    def name(self) -> str:
        """The model's name."""
        return self.metadata.model_name

    @property
    def version(self) -> int:
        """The model's integer version."""
        return self.metadata.version

    @property
    def identity(self) -> ModelIdentity:
        """Name, version and version URI, as stamped on result rows."""
        return ModelIdentity(self.name, self.version, self.uri)

    @property
    def threshold(self) -> float:
        """Decision threshold on the positive class probability."""
        return self.metadata.threshold

    def run(self, signature: str, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Call a signature on a batch of encoded images; return numpy outputs."""
        import tensorflow as tf

        fn = self._explain_fn if signature == contract.EXPLAIN_SIGNATURE else self._predict_fn
        outputs = fn(**{contract.INPUT_KEY: tf.constant(list(images), dtype=tf.string)})
        return {k: v.numpy() for k, v in outputs.items()}

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        """Score a batch of encoded images (``serving_default``)."""
        if not images:
            return []
        return predictions_from_outputs(self.run(contract.PREDICT_SIGNATURE, images))

    def explain(self, images: Sequence[bytes]) -> list[Explanation]:
        """Score a batch and return Grad-CAM heatmaps (``explain``)."""
        if not images:
            return []
        out = self.run(contract.EXPLAIN_SIGNATURE, images)
        return [
            Explanation(prediction=p, heatmap=h)
            for p, h in zip(predictions_from_outputs(out), out["heatmap"], strict=True)
        ]

    @property
    def has_pixel_signatures(self) -> bool:
        """True when the model takes decoded pixels (``serving_pixels``/``explain_pixels``)."""
        return len(self._pixel_fns) == 2

    def run_pixels(self, signature: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Call ``signature`` (``serving_default`` or ``explain``) on uint8 pixels.

        The pixels are ``[B, H, W, 3]``; they go through the signature's pixel twin,
        or PNG-encoded for an older model.
        """
        if signature in self._pixel_fns:
            import tensorflow as tf

            fn = self._pixel_fns[signature]
            outputs = fn(**{contract.PIXELS_INPUT_KEY: tf.constant(pixels, dtype=tf.uint8)})
            return {k: v.numpy() for k, v in outputs.items()}
        from histo_common.samples import encode_png

        return self.run(signature, [encode_png(image) for image in pixels])

    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        """Score a batch of decoded tiles (uint8 ``[B, H, W, 3]``)."""
        if len(pixels) == 0:
            return []
        return predictions_from_outputs(self.run_pixels(contract.PREDICT_SIGNATURE, pixels))

    def explain_pixels(self, pixels: np.ndarray) -> list[Explanation]:
        """Score decoded tiles and return Grad-CAM heatmaps."""
        if len(pixels) == 0:
            return []
        out = self.run_pixels(contract.EXPLAIN_SIGNATURE, pixels)
        return [
            Explanation(prediction=p, heatmap=h)
            for p, h in zip(predictions_from_outputs(out), out["heatmap"], strict=True)
        ]

    def keras_model(self) -> keras.Model:
        """Load the Keras model saved beside the SavedModel (architecture, summary)."""
        import keras

        # Importing these registers the ensemble's and the stain normaliser's layers.
        import model_export.ensemble
        import model_export.preprocessing  # noqa: F401

        path = storage.join(self.uri, contract.KERAS_FILE)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / contract.KERAS_FILE
            local.write_bytes(storage.read_bytes(path))
            return keras.saving.load_model(local, compile=False)


def _check_signatures(uri: str, saved: object) -> None:
    signatures = getattr(saved, "signatures", {})
    for name, outputs in (
        (contract.PREDICT_SIGNATURE, contract.PREDICT_OUTPUTS),
        (contract.EXPLAIN_SIGNATURE, contract.EXPLAIN_OUTPUTS),
    ):
        if name not in signatures:
            raise ModelLoadError(
                f"{uri} has no '{name}' signature (has {sorted(signatures)}): "
                "export it with model_export"
            )
        fn = signatures[name]
        inputs = fn.structured_input_signature[1]
        if list(inputs) != [contract.INPUT_KEY]:
            raise ModelLoadError(
                f"{uri} signature '{name}' takes {sorted(inputs)}, expected "
                f"['{contract.INPUT_KEY}'] (raw encoded image bytes)"
            )
        missing = set(outputs) - set(fn.structured_outputs)
        if missing:
            raise ModelLoadError(f"{uri} signature '{name}' lacks outputs {sorted(missing)}")


def load_model(uri: str, *, cache_dir: str | None = None) -> LoadedModel:
    """Load a model root (latest version) or a version, local or ``gs://``.

    Raises:
        ModelLoadError: with one sentence naming the URI and what is wrong.
    """
    resolved = resolve_model(uri)
    version_uri, version = resolved.identity.uri, resolved.identity.version
    metadata = resolved.metadata
    assert metadata is not None  # resolve_model reads it from the version folder
    try:
        local = _local_copy(version_uri, cache_dir)
    except storage.ObjectNotFound as exc:
        raise ModelLoadError(f"{version_uri} has no {contract.SAVED_MODEL_FILE}") from exc
    except storage.StorageError as exc:
        raise ModelLoadError(f"cannot download model {version_uri}: {exc}") from exc
    if not (local / contract.SAVED_MODEL_FILE).is_file():
        raise ModelLoadError(f"{version_uri} has no {contract.SAVED_MODEL_FILE}")
    import tensorflow as tf

    try:
        saved = tf.saved_model.load(str(local))
    except Exception as exc:  # TensorFlow raises many types for a broken SavedModel
        raise ModelLoadError(
            f"{version_uri} is not a loadable SavedModel: {one_line(exc)}"
        ) from exc
    _check_signatures(version_uri, saved)
    logger.info("Loaded model %s version %d from %s", metadata.model_name, version, version_uri)
    return LoadedModel(version_uri, metadata, saved)
