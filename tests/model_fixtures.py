"""One tiny model for the whole test session (see ``tiny_model`` in conftest).

It is a real model in the contract: the custom CNN, shrunk, trained for a few
seconds on the synthetic sample set and exported with ``model_export``. It
separates the synthetic classes well enough for tests to check that outputs
mean something.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SIZE = 48
MODEL_NAME = "histo-cnn"


@dataclass(frozen=True)
class TinyModel:
    """Where the session's tiny model lives."""

    models_root: str  # <root>, holding <MODEL_NAME>/<version>/
    root_uri: str  # <root>/<MODEL_NAME>: load_model picks the latest version
    version_uri: str  # <root>/<MODEL_NAME>/1
    image_size: int
    sample_dir: Path


def export_binary(keras_model, models_root: Path, model_name: str, **fields):
    """Export a benign/malignant classifier at threshold 0.5 for a test; the ExportResult.

    ``fields`` override or add ``export_model`` arguments (``tta``, ``native_size``, ...).
    """
    from model_export.export import export_model

    return export_model(
        keras_model,
        models_root=str(models_root),
        model_name=model_name,
        **{
            "class_names": ["benign", "malignant"],
            "positive_class": "malignant",
            "threshold": 0.5,
            "threshold_method": "fixed at 0.5 (test)",
            "image_size": int(keras_model.input_shape[1]),
            "architecture": "custom_cnn",
            **fields,
        },
    )


def build_tiny_model(models_root: Path, sample_dir: Path) -> TinyModel:
    """Train and export the tiny model on ``sample_dir``."""
    import keras
    import tensorflow as tf

    from model_export.preprocessing import decode_and_resize
    from training.models import build_custom_cnn

    keras.utils.set_random_seed(0)
    paths = sorted(sample_dir.rglob("*.png"))
    labels = np.array([p.parent.name == "malignant" for p in paths], dtype=np.float32)
    images = np.stack(
        [decode_and_resize(tf.constant(p.read_bytes()), IMAGE_SIZE).numpy() for p in paths]
    )
    model = build_custom_cnn(
        IMAGE_SIZE, filters=(8, 16, 32), convs_per_block=(1, 1, 1), dense_units=(32,), dropout=0.2
    )
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(images, labels, epochs=12, batch_size=16, verbose=0)
    result = export_binary(
        model,
        models_root,
        MODEL_NAME,
        threshold_method="fixed at 0.5 (test fixture)",
        native_size=(48, 48),
        training_data={
            "images": len(paths),
            "per_class": {
                "benign": int((labels == 0).sum()),
                "malignant": int((labels == 1).sum()),
            },
        },
    )
    return TinyModel(
        models_root=str(models_root),
        root_uri=f"{models_root}/{MODEL_NAME}",
        version_uri=result.uri,
        image_size=IMAGE_SIZE,
        sample_dir=sample_dir,
    )


def publish_version(root: Path, source: Path, version: int) -> Path:
    """Publish a copy of the version folder ``source`` as ``root/<version>``.

    ``metadata.json`` (with the new version number) is written last, as the exporter
    does, so a watcher never sees a half-copied version. Returns the new folder.
    """
    target = root / str(version)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("metadata.json"))
    metadata = json.loads((source / "metadata.json").read_text())
    metadata["version"] = version
    (target / "metadata.json").write_text(json.dumps(metadata))
    return target
