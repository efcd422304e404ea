"""Real-data benchmark of the default training job on held-out IDC patients.

For each seed: train the default job (``training.train.train`` with TrainConfig
defaults) on the IDC patients outside the test set, then score the test
patients' images through the exported SavedModel (raw bytes, as every user of
the model does) and report ROC AUC, balanced accuracy, F1, training time and
peak memory. ``--baseline`` also trains the original app's CNN (its README's
architecture at 64 px, with the same time budget) on the same split, so the
comparison is made in the same run on the same machine.

    python bench/bench_training.py --seeds 1 2 [--baseline] [--max-minutes 14]

Needs ../shared/data/idc (development data, never committed).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import histo_common.tensorflow_env  # noqa: E402, F401  (sets up TensorFlow first)

IDC = REPO.parent / "shared" / "data" / "idc"
# One patient with both classes and three with IDC only, never seen in training.
TEST_PATIENTS = ("8864", "8918", "8955", "8974")


def write_split_csv(out_dir: Path) -> tuple[Path, list[tuple[str, int, str]]]:
    """Labels CSV of the training patients, and the test images (path, label, patient)."""
    rows = list(csv.DictReader((IDC / "labels.csv").open()))
    train_csv = out_dir / "train_labels.csv"
    test = []
    with train_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id"])
        for row in rows:
            path = str(IDC / row["path"])
            if row["patient_id"] in TEST_PATIENTS:
                test.append((path, int(row["label"] == "malignant"), row["patient_id"]))
            else:
                writer.writerow([path, row["label"], row["patient_id"]])
    return train_csv, test


def score_test(model_uri: str, test: list[tuple[str, int, str]]) -> dict[str, float]:
    """Score test images through the SavedModel and compute held-out metrics."""
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    from model_export.loader import load_model

    model = load_model(model_uri)
    data = [Path(p).read_bytes() for p, _, _ in test]
    y = np.array([label for _, label, _ in test])
    probs = []
    for i in range(0, len(data), 256):
        probs.extend(p.probability for p in model.predict(data[i : i + 256]))
    p = np.array(probs)
    pred = (p >= model.threshold).astype(int)
    return {
        "auc": float(roc_auc_score(y, p)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred)),
        "balanced_accuracy_at_0.5": float(balanced_accuracy_score(y, (p >= 0.5).astype(int))),
        "threshold": model.threshold,
        "test_images": len(y),
    }


def build_original_cnn(image_size: int):  # type: ignore[no-untyped-def]
    """The original app's CNN (README): 3 x (Conv -> BN -> MaxPool -> Dropout), Flatten,
    Dense 256 -> 128 -> 1, L2 1e-3, dropout 0.5; as backbone + head for our exporter."""
    import keras
    from keras import layers, regularizers

    reg = regularizers.l2(1e-3)
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 255.0)(inputs)
    for i, f in enumerate((32, 64, 128)):
        x = layers.Conv2D(f, 3, padding="same", activation="relu", kernel_regularizer=reg)(x)
        x = layers.BatchNormalization()(x)
        if i < 2:
            x = layers.MaxPooling2D()(x)
            x = layers.Dropout(0.25)(x)
    backbone = keras.Model(inputs, x, name="backbone")
    feat = keras.Input(backbone.output.shape[1:])
    h = layers.MaxPooling2D()(feat)
    h = layers.Dropout(0.25)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(256, activation="relu", kernel_regularizer=reg)(h)
    h = layers.Dropout(0.5)(h)
    h = layers.Dense(128, activation="relu", kernel_regularizer=reg)(h)
    h = layers.Dropout(0.5)(h)
    head = keras.Model(feat, layers.Dense(1)(h), name="head")
    out = layers.Activation("sigmoid", name="probabilities")(head(backbone(inputs)))
    return keras.Model(inputs, out, name="original_cnn")


def run_one(kind: str, seed: int, work: Path, train_csv: Path, test, max_minutes: float) -> dict:
    """Train one model (default job or original CNN) and score the test patients."""
    from training import train as train_mod
    from training.config import Augmentation, TrainConfig

    config = TrainConfig(
        data=str(train_csv),
        output=str(work / f"models-{kind}-{seed}"),
        seed=seed,
        max_minutes=max_minutes,
        verbose=2,
    )
    original_build = train_mod.build_model
    if kind == "original":
        # The original app: one model, Adam 1e-3, flips/rotation/zoom only, threshold 0.5,
        # batch 16 in its README (32 here to fit the time budget).
        config = replace(
            config,
            folds=1,
            batch_size=32,
            threshold_method="fixed",
            fixed_threshold=0.5,
            augmentation=Augmentation(stain=0, brightness=0, contrast=0, saturation=0, hue=0),
        )
        train_mod.build_model = lambda cfg, n: build_original_cnn(cfg.image_size)
    start = time.monotonic()
    try:
        result = train_mod.train(config)
    finally:
        train_mod.build_model = original_build
    metrics = score_test(result.model_uri, test)
    metrics.update(
        kind=kind,
        seed=seed,
        train_seconds=round(result.train_seconds, 1),
        wall_seconds=round(time.monotonic() - start, 1),
        epochs=result.epochs_run,
        validation_auc=result.validation_metrics.get("roc_auc"),
    )
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--baseline", action="store_true", help="also train the original CNN")
    parser.add_argument("--max-minutes", type=float, default=14.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "training_idc.json"))
    args = parser.parse_args()
    if not (IDC / "labels.csv").is_file():
        print(f"skipped: real IDC data not found at {IDC}")
        return 0
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_csv, test = write_split_csv(work)
        kinds = ["default"] + (["original"] if args.baseline else [])
        for seed in args.seeds:
            for kind in kinds:
                results.append(run_one(kind, seed, work, train_csv, test, args.max_minutes))
                print(json.dumps(results[-1]), flush=True)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    report = {"test_patients": TEST_PATIENTS, "runs": results, "peak_rss_gib": round(peak_gib, 2)}
    Path(args.out).write_text(json.dumps(report, indent=2))
    header = ("kind", "seed", "AUC", "bal.acc", "F1", "train s", "epochs")
    print("\n{:<9} {:>4} {:>6} {:>8} {:>6} {:>8} {:>6}".format(*header))
    for r in results:
        print(
            f"{r['kind']:<9} {r['seed']:>4} {r['auc']:>6.3f} {r['balanced_accuracy']:>8.3f} "
            f"{r['f1']:>6.3f} {r['train_seconds']:>8.0f} {r['epochs']:>6}"
        )
    print(f"peak RSS {peak_gib:.2f} GiB; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
