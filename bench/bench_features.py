"""How far can the IDC patches take a model across patients? A probe in a minute.

Frozen ImageNet MobileNetV2 (alpha 0.35, 96 px, ``../shared/weights``) features,
mean- and std-pooled at a few depths, each fed to a logistic regression, held out
two ways on the same images:

- **by patient**: the three disjoint patient groups of the training protocol
  (``bench_training.pick_groups``), what the README's quality table uses;
- **by image**: three stratified folds of patches (``bench_training.image_folds``),
  patients on both sides of the split, an optimistic bound.

For the patient split it also reports what the pooled figure hides: for each held-out
patient, the quartiles of the probabilities given to each class's patches and, when
the patient has both classes, the AUC within that patient; and the balanced accuracy
at 0.5 beside the best any threshold could reach on the held-out group itself (an
oracle, so an upper bound on what threshold choice can recover).
Writes ``bench/results/features_idc.json``. ``--colour gray`` and ``--colour
per-image`` (each image's channel statistics set to the set's) ask whether colour
is what differs between patients (``features_idc-gray.json``, ...).

    python bench/bench_features.py
    python bench/bench_features.py --colour gray
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from bench_training import (
    DATASETS,
    MOBILENET_035,
    REPO,
    Row,
    image_folds,
    pick_groups,
    read_rows,
)

LAYERS = ("block_3_project_BN", "block_6_project_BN", "block_13_project_BN", "out_relu")
RESULTS = REPO / "bench" / "results"
COLOURS = ("rgb", "gray", "per-image")
CLASS_NAMES = ("benign", "malignant")
QUARTILES = (25, 50, 75)


def recoloured(images: np.ndarray, colour: str) -> np.ndarray:
    """The images as given (``rgb``), in grey (``gray``), or with each image's channel
    means and deviations set to the whole set's (``per-image``)."""
    if colour == "gray":
        return images.mean(-1, keepdims=True).repeat(3, -1)
    if colour == "per-image":
        mean, std = images.mean((0, 1, 2)), images.std((0, 1, 2))
        own_mean, own_std = images.mean((1, 2), keepdims=True), images.std((1, 2), keepdims=True)
        return np.clip((images - own_mean) / (own_std + 1.0) * std + mean, 0, 255)
    return images


def features(
    rows: list[Row], size: int, layers: tuple[str, ...], colour: str = "rgb"
) -> dict[str, np.ndarray]:
    """Mean- and std-pooled MobileNetV2 activations of each image at each layer."""
    import keras
    import tensorflow as tf
    from PIL import Image

    images = np.stack(
        [np.asarray(Image.open(r.path).convert("RGB").resize((50, 50))) for r in rows]
    ).astype("float32")
    images = recoloured(images, colour)
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=0.35, include_top=False, weights=str(MOBILENET_035)
    )
    model = keras.Model(base.input, [base.get_layer(n).output for n in layers])
    x = tf.image.resize(images, (size, size)) / 127.5 - 1.0
    outs = model.predict(x, batch_size=256, verbose=0)
    pooled = (np.concatenate([o.mean((1, 2)), o.std((1, 2))], 1) for o in outs)
    return dict(zip(layers, pooled, strict=True))


def _fit_predict(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    clf.fit(x[train], y[train])
    return clf.predict_proba(x[~train])[:, 1]


def best_balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """The highest balanced accuracy any threshold reaches on (y, p): an oracle.

    Balanced accuracy is (1 + Youden's J) / 2, so this is the maximum J over the ROC
    curve, as ``training.train.choose_threshold`` finds it (tied scores stay together).
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    return float(max(0.5, (1.0 + (tpr - fpr).max()) / 2))


def probe(rows: list[Row], x: np.ndarray) -> dict:
    """One feature set held out by patient and by image."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y = np.array([r.label == "malignant" for r in rows], dtype=int)
    patients = np.array([r.patient for r in rows])
    by_patient = []
    for group in pick_groups(rows, 3):
        test = np.isin(patients, group)
        p = _fit_predict(x, y, ~test)
        yt, pt = y[test], patients[test]
        per_patient = {}
        for q in group:
            yq, pq = yt[pt == q], p[pt == q]
            summary: dict = {
                CLASS_NAMES[c]: [round(float(v), 2) for v in np.percentile(pq[yq == c], QUARTILES)]
                for c in sorted(set(yq))
            }
            if len(summary) > 1:
                summary["auc"] = round(float(roc_auc_score(yq, pq)), 3)
            per_patient[q] = summary
        by_patient.append(
            {
                "patients": group,
                "auc": float(roc_auc_score(yt, p)),
                "balanced_accuracy_at_0.5": float(balanced_accuracy_score(yt, p > 0.5)),
                "best_balanced_accuracy": best_balanced_accuracy(yt, p),
                "per_patient": per_patient,
            }
        )
    by_image = []
    for idx in image_folds(rows, 3):
        test = np.zeros(len(rows), bool)
        test[idx] = True
        by_image.append(float(roc_auc_score(y[test], _fit_predict(x, y, ~test))))
    return {
        "by_patient": by_patient,
        "by_patient_auc_mean": float(np.mean([g["auc"] for g in by_patient])),
        "by_image_auc": by_image,
        "by_image_auc_mean": float(np.mean(by_image)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument(
        "--colour",
        choices=COLOURS,
        default="rgb",
        help="feed the images as they are, in grey, or each standardised to the set's colour",
    )
    args = parser.parse_args(argv)
    spec = DATASETS["idc"]
    if not spec.labels_csv.is_file() or not MOBILENET_035.is_file():
        print(f"skipped: {spec.labels_csv} or {MOBILENET_035} not found (development data)")
        return 0
    rows = read_rows(spec.labels_csv)
    start = time.perf_counter()
    feats = features(rows, args.size, LAYERS, args.colour)
    report = {"size": args.size, "colour": args.colour, "images": len(rows), "layers": {}}
    print(
        "| layer | dims | AUC by image | AUC by patient (per group) | bal. acc. at 0.5 "
        "| best bal. acc. (oracle) |"
    )
    print("| --- | ---: | --- | --- | --- | --- |")
    for name, x in feats.items():
        r = probe(rows, x)
        report["layers"][name] = {"dims": x.shape[1], **r}
        groups = r["by_patient"]
        print(
            f"| {name} | {x.shape[1]} | {r['by_image_auc_mean']:.3f} "
            f"| {r['by_patient_auc_mean']:.3f} {[round(g['auc'], 3) for g in groups]} "
            f"| {np.mean([g['balanced_accuracy_at_0.5'] for g in groups]):.3f} "
            f"| {np.mean([g['best_balanced_accuracy'] for g in groups]):.3f} |"
        )
    shown = report["layers"][LAYERS[1]]["by_patient"]  # per patient, for one layer
    for g in shown:
        print(f"{LAYERS[1]}, held out {', '.join(g['patients'])}: {g['per_patient']}")
    report["seconds"] = round(time.perf_counter() - start, 1)
    suffix = "" if args.colour == "rgb" else f"-{args.colour}"
    result = RESULTS / f"features_idc{suffix}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved: {result} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
