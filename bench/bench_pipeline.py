"""Training input pipeline and exported-model inference, as ratios measured in one run.

1. Input-pipeline efficiency: images/s of a training epoch fed by the job's own
   tf.data pipeline (``training.data.make_dataset``: decode, cache, shuffle,
   augmentation, prefetch) divided by images/s of the same model fitting the same
   images already decoded in memory as tensors (no input work at all). 1.0 means
   the pipeline never keeps the model waiting.
2. Exported-model inference: images/s of the SavedModel's ``serving_default`` on raw
   PNG bytes in batches of 256 (decoding in the graph) divided by images/s of the
   Keras model's ``predict`` on pre-decoded tensors, same batches.

Uses IDC patches from ../shared/data/idc when present, else synthetic ones.

    python bench/bench_pipeline.py [--images 2048] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import histo_common.tensorflow_env  # noqa: E402, F401  (sets up TensorFlow first)

IDC = REPO.parent / "shared" / "data" / "idc"


def load_images(n: int, work: Path) -> tuple[list[bytes], np.ndarray, str]:
    """Encoded images and labels: real IDC patches if present, else synthetic."""
    paths = sorted(IDC.rglob("*.png"))
    source = "IDC patches"
    if len(paths) < n:
        from histo_common.samples import generate_samples

        generate_samples(str(work / "s"), count=n, seed=0, size=50)
        paths, source = sorted((work / "s").rglob("*.png")), "synthetic patches"
    rng = np.random.default_rng(0)
    chosen = [paths[i] for i in rng.choice(len(paths), n, replace=False)]
    labels = np.array([p.parent.name == "malignant" for p in chosen], dtype=np.float32)
    return [p.read_bytes() for p in chosen], labels, source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs timed of each (after a warm-up)"
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "pipeline.json"))
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    from benchkit import fastest_alternating

    from model_export.export import export_model
    from model_export.loader import load_model
    from model_export.preprocessing import decode_and_resize
    from training.config import Augmentation, TrainConfig
    from training.data import Example, make_dataset
    from training.train import _compile, build_model

    config = TrainConfig(data="-", output="-", image_size=48)  # the IDC patches' default
    size, batch = config.image_size, config.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        data, labels, source = load_images(args.images, Path(tmp))
        examples = [
            Example(str(i), int(y), None, b)
            for i, (b, y) in enumerate(zip(data, labels, strict=True))
        ]
        idx = list(range(len(examples)))
        keras.utils.set_random_seed(0)

        def fresh_model():
            model = build_model(config, 2)
            _compile(model, config.learning_rate, 2)
            return model

        # 1. The job's pipeline vs tensors in memory, same architecture, same images.
        # Epochs of the two alternate and the fastest of each counts: on a shared
        # machine, interference only ever slows an epoch down.
        ds = make_dataset(
            examples,
            idx,
            image_size=size,
            batch_size=batch,
            training=True,
            augmentation=Augmentation(),
            seed=0,
        )
        decoded = np.stack([decode_and_resize(tf.constant(b), size).numpy() for b in data])
        # The baseline: decoded tensors already in memory, only shuffled and batched.
        tensors = (
            tf.data.Dataset.from_tensor_slices((tf.constant(decoded), tf.constant(labels)))
            .shuffle(len(idx), seed=0)
            .batch(batch)
            .prefetch(tf.data.AUTOTUNE)
        )
        on_pipeline, in_memory = fresh_model(), fresh_model()
        on_pipeline.fit(ds, epochs=1, verbose=0)  # fills the cache, traces the step
        in_memory.fit(tensors, epochs=1, verbose=0)
        pipeline_s, memory_s = fastest_alternating(
            args.epochs,
            lambda: on_pipeline.fit(ds, epochs=1, verbose=0),
            lambda: in_memory.fit(tensors, epochs=1, verbose=0),
        )
        pipeline_ips = len(idx) / pipeline_s
        memory_ips = len(idx) / memory_s

        # 2. Exported signature on bytes vs Keras predict on decoded tensors.
        model = fresh_model()
        result = export_model(
            model,
            models_root=tmp + "/models",
            model_name="bench",
            class_names=["benign", "malignant"],
            positive_class="malignant",
            threshold=0.5,
            threshold_method="bench",
            image_size=size,
            architecture="custom_cnn",
        )
        loaded = load_model(result.uri)
        batches = [data[i : i + 256] for i in range(0, len(data), 256)]
        loaded.run("serving_default", batches[0])  # warm-up (tracing)
        model.predict(decoded[:256], batch_size=256, verbose=0)
        serve_s, keras_s = fastest_alternating(
            3,
            lambda: [loaded.run("serving_default", b) for b in batches],
            lambda: model.predict(decoded, batch_size=256, verbose=0),
        )
        serve_ips = len(data) / serve_s
        keras_ips = len(data) / keras_s

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "images": len(data),
        "source": source,
        "image_size": size,
        "batch_size": batch,
        "train_pipeline_images_per_s": round(pipeline_ips, 1),
        "train_in_memory_images_per_s": round(memory_ips, 1),
        "pipeline_efficiency": round(pipeline_ips / memory_ips, 3),
        "serving_default_bytes_images_per_s": round(serve_ips, 1),
        "keras_predict_tensors_images_per_s": round(keras_ips, 1),
        "serving_vs_keras": round(serve_ips / keras_ips, 3),
        "peak_rss_mib": round(peak),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{len(data)} {source}, {size} px, batch {batch}")
    print(f"training, job's tf.data pipeline   {pipeline_ips:8.1f} img/s")
    print(f"training, tensors in memory        {memory_ips:8.1f} img/s")
    print(f"  pipeline efficiency              {pipeline_ips / memory_ips:8.3f}")
    print(f"inference, serving_default on PNG  {serve_ips:8.1f} img/s")
    print(f"inference, Keras predict, tensors  {keras_ips:8.1f} img/s")
    print(f"  serving / keras                  {serve_ips / keras_ips:8.3f}")
    print(f"peak RSS {peak:.0f} MiB; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
