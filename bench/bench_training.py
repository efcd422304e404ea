"""Patient-grouped, repeated benchmark of training recipes on held-out patients.

The protocol (IDC, ``../shared/data/idc``): the 13 patients are split into
disjoint held-out groups that together cover every patient, each holding both
classes (:func:`pick_groups`, deterministic, printed). For every recipe, group
and seed, the recipe trains on the patients outside the group, and the group's
patches are scored through the exported SavedModel from raw bytes at the model's
own threshold: ROC AUC, balanced accuracy and F1; with them, the run's training
images/s, peak memory, and the SavedModel's serving images/s on those patches (its
bytes signature: a recipe's serving cost, e.g. of test-time augmentation, is part
of its score). The original app's CNN
(``original_cnn``) is trained in the same runs as the baseline. ``--table`` gives
each recipe's mean and range over groups x seeds (JSON and Markdown).

Each (recipe, group, seed) result is saved as its own JSON under
``bench/results/training/<dataset>/<mode>/<recipe>/`` as soon as it finishes, and
a rerun skips those already saved, so the full protocol can span sessions. Each
run is a child process, so its peak memory (RSS) is its own.

    python bench/bench_training.py --mode quick --recipes default original_cnn
    python bench/bench_training.py --mode full            # the README's table (hours)
    python bench/bench_training.py --mode full --table    # summary of what is saved
    python bench/bench_training.py --dataset breakhis --mode quick   # fields of view
    python bench/bench_training.py --list                 # the recipes, one line each
    # a dry run of the machinery (seconds of training), kept out of bench/results:
    python bench/bench_training.py --recipes default final1 --groups-used 1 \
        --max-minutes 0.2 --results /tmp/bench-dry-run

``--dataset breakhis`` (``../shared/data/breakhis_100x``, 15 patients) compares a
split by patient with a split by image and pools the out-of-fold predictions:
image-level figures for both, patient-level accuracy for the patient split.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import histo_common.tensorflow_env  # noqa: E402, F401  (sets up TensorFlow first)

# The development data and weights beside the project (HISTO_SHARED_DIR, as in the tests).
SHARED = Path(os.environ.get("HISTO_SHARED_DIR") or REPO.parent / "shared")
WEIGHTS = SHARED / "weights"
MOBILENET_035 = WEIGHTS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
MOBILENET_050 = WEIGHTS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
RESULTS = REPO / "bench" / "results" / "training"
BASELINE = "original_cnn"
METRICS = ("roc_auc", "balanced_accuracy", "f1")

logger = logging.getLogger("bench_training")


@dataclass(frozen=True)
class Recipe:
    """A named training configuration: TrainConfig overrides, plus how it is built.

    Attributes:
        overrides: fields of ``training.config.TrainConfig`` (``augmentation`` as a dict).
        original_cnn: build the original app's CNN instead of the job's architecture.
        about: one line saying what the recipe tests (``--list``); not part of its key.
    """

    overrides: dict[str, Any] = field(default_factory=dict)
    original_cnn: bool = False
    about: str = field(default="", compare=False)

    def key(self) -> dict[str, Any]:
        """What a saved result must match to be reused (the data folder's place aside)."""
        spec = {k: v for k, v in asdict(self).items() if k != "about"}
        text = json.dumps(spec, sort_keys=True).replace(str(SHARED), "$SHARED")
        return json.loads(text)


_NO_STAIN = {"stain": 0, "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
_MOBILENET = {"architecture": "mobilenet_v2", "weights": str(MOBILENET_035)}
# One line per configuration; ablations are recipes too. Test-time augmentation,
# stain normalisation and weight averaging are TrainConfig fields, so the exported
# SavedModel carries them and the held-out images are scored through it as any
# user would score them.
RECIPES: dict[str, Recipe] = {
    BASELINE: Recipe(
        {
            "image_size": 64,
            "folds": 1,
            "batch_size": 32,
            "threshold_method": "fixed",
            "augmentation": _NO_STAIN,
        },
        original_cnn=True,
        about="the original app: 64 px, one model, flips/rotation/zoom only, threshold "
        "0.5; batch 32 (16 in its README) to fit the time budget",
    ),
    "default": Recipe(about="the job's defaults"),
    "folds1": Recipe({"folds": 1}, about="one model and one validation split"),
    "folds2": Recipe({"folds": 2}, about="two cross-fitted fold models"),
    "size64": Recipe({"image_size": 64}, about="64 px input instead of 48"),
    "width0.5": Recipe({"width": 0.5}, about="half the filters and units"),
    "width1.5": Recipe({"width": 1.5}, about="1.5 times the filters and units"),
    "smooth0.1": Recipe({"label_smoothing": 0.1}, about="label smoothing 0.1"),
    "no_stain_aug": Recipe(
        {"augmentation": _NO_STAIN}, about="no stain or colour jitter in augmentation"
    ),
    # Spend the budget better: folds for the threshold, then models on every patient.
    "final1": Recipe(
        {"final_models": 1},
        about="3 cheap fold models set the threshold; 1 model on all patients is exported",
    ),
    "final2": Recipe(
        {"final_models": 2}, about="as final1, with an ensemble of 2 models on all patients"
    ),
    "final1_folds2": Recipe(
        {"final_models": 1, "folds": 2},
        about="as final1 with 2 fold models (more time for the exported model)",
    ),
    "tta": Recipe({"tta": True}, about="the 8 dihedral views averaged inside the SavedModel"),
    "final1_tta": Recipe({"final_models": 1, "tta": True}, about="final1 with TTA"),
    "reinhard": Recipe(
        {"stain_normalisation": "reinhard"},
        about="Reinhard stain normalisation (CIELAB, training-set reference) in the model",
    ),
    "reinhard_no_stain_aug": Recipe(
        {"stain_normalisation": "reinhard", "augmentation": {"stain": 0}},
        about="Reinhard normalisation instead of H&E stain jitter",
    ),
    "ema": Recipe({"weight_averaging": "ema"}, about="EMA of the weights (0.99 per step)"),
    "final1_ema": Recipe(
        {"final_models": 1, "weight_averaging": "ema"}, about="final1 with EMA weights"
    ),
    "final1_tta_ema": Recipe(
        {"final_models": 1, "tta": True, "weight_averaging": "ema"},
        about="final1 with TTA and EMA weights",
    ),
    "mobilenet96": Recipe(
        {**_MOBILENET, "image_size": 96}, about="MobileNetV2 (ImageNet, frozen) at 96 px"
    ),
    "mobilenet96_final1": Recipe(
        {**_MOBILENET, "image_size": 96, "final_models": 1},
        about="mobilenet96, fold models for the threshold, 1 model on all patients exported",
    ),
    "mobilenet96_ft": Recipe(
        {**_MOBILENET, "image_size": 96, "fine_tune_epochs": 3},
        about="mobilenet96, then 3 epochs fine-tuning the last 30 layers",
    ),
    "mobilenet96_a050": Recipe(
        {"architecture": "mobilenet_v2", "weights": str(MOBILENET_050), "image_size": 96},
        about="mobilenet96 with the wider MobileNetV2 (alpha 0.5)",
    ),
    "mobilenet96_b6": Recipe(
        {**_MOBILENET, "image_size": 96, "mobilenet_layer": "block_6_project_BN"},
        about="mobilenet96 cut after block 6 (stride 16, 24 channels): shallower, faster",
    ),
    "mobilenet96_b13": Recipe(
        {**_MOBILENET, "image_size": 96, "mobilenet_layer": "block_13_project_BN"},
        about="mobilenet96 cut after block 13 (stride 32): no top blocks, no 1280-wide conv",
    ),
    "mobilenet128": Recipe(
        {**_MOBILENET, "image_size": 128}, about="MobileNetV2 (ImageNet, frozen) at 128 px"
    ),
    # Fields of view (BreakHis): the size comes from the images (224 px for MobileNetV2).
    "mobilenet_auto": Recipe(_MOBILENET, about="MobileNetV2, input size from the images"),
    "mobilenet_auto_ft": Recipe(
        {**_MOBILENET, "fine_tune_epochs": 5}, about="mobilenet_auto, then 5 epochs fine-tuning"
    ),
}


@dataclass(frozen=True)
class Mode:
    """How much of the protocol to run."""

    groups_used: int | None  # the first N held-out groups (None: all)
    seeds: tuple[int, ...]
    max_minutes: float


MODES = {
    "quick": Mode(groups_used=2, seeds=(1,), max_minutes=4.0),
    "full": Mode(groups_used=None, seeds=(1, 2), max_minutes=14.0),
}


@dataclass(frozen=True)
class DatasetSpec:
    """A labelled set and how it is split into held-out groups."""

    name: str
    labels_csv: Path
    groups: int
    split: str = "patient"  # "patient" or "image"
    default_recipes: tuple[str, ...] = (BASELINE, "default")
    pooled: bool = False  # keep per-image predictions and pool them in the table


DATASETS = {
    "idc": DatasetSpec("idc", SHARED / "data" / "idc" / "labels.csv", groups=3),
    "breakhis": DatasetSpec(
        "breakhis",
        SHARED / "data" / "breakhis_100x" / "labels.csv",
        groups=4,
        default_recipes=("mobilenet_auto",),
        pooled=True,
    ),
}


# ----------------------------------------------------------------- groups


@dataclass(frozen=True)
class Row:
    """One labelled image of the benchmark set."""

    path: str
    label: str
    patient: str


def read_rows(labels_csv: Path) -> list[Row]:
    """The labels CSV's rows, with paths made absolute."""
    from histo_common.labels import read_labels_csv
    from model_export.contract import DEFAULT_CLASS_NAMES

    items = read_labels_csv(str(labels_csv), DEFAULT_CLASS_NAMES)
    return [Row(item.uri, item.label, item.patient_id or "") for item in items]


def pick_groups(rows: list[Row], n_groups: int) -> list[list[str]]:
    """Split the patients into ``n_groups`` disjoint groups, each holding every class.

    Deterministic: for each class, rarest in patients first, every group that lacks
    it gets the unassigned patient with the most images of it; the other patients
    then go, largest first, to the group with the fewest images.

    Raises:
        ValueError: when a class has fewer patients than there are groups.
    """
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        counts.setdefault(row.patient, Counter())[row.label] += 1
    classes = sorted({row.label for row in rows})
    carriers = {c: [p for p in sorted(counts) if counts[p][c]] for c in classes}
    for c in classes:
        if len(carriers[c]) < n_groups:
            raise ValueError(
                f"cannot make {n_groups} groups that each hold class {c!r}: only "
                f"{len(carriers[c])} patients have it ({', '.join(carriers[c])})"
            )
    groups: list[list[str]] = [[] for _ in range(n_groups)]
    sizes = [0] * n_groups
    assigned: set[str] = set()

    def put(patient: str, g: int) -> None:
        groups[g].append(patient)
        sizes[g] += sum(counts[patient].values())
        assigned.add(patient)

    for c in sorted(classes, key=lambda c: (len(carriers[c]), c)):
        for g in range(n_groups):
            if any(counts[p][c] for p in groups[g]):
                continue
            free = [p for p in carriers[c] if p not in assigned]
            if not free:
                raise ValueError(f"ran out of patients with class {c!r} for group {g}")
            put(min(free, key=lambda p: (-counts[p][c], p)), g)
    for p in sorted(set(counts) - assigned, key=lambda p: (-sum(counts[p].values()), p)):
        put(p, min(range(n_groups), key=lambda g: (sizes[g], g)))
    return [sorted(g) for g in groups]


def image_folds(rows: list[Row], n_groups: int) -> list[list[int]]:
    """Row indices of ``n_groups`` stratified folds by image (patients ignored; seed 0)."""
    rng = np.random.default_rng(0)
    folds: list[list[int]] = [[] for _ in range(n_groups)]
    for label in sorted({r.label for r in rows}):
        idx = rng.permutation([i for i, r in enumerate(rows) if r.label == label])
        for k, i in enumerate(idx):
            folds[k % n_groups].append(int(i))
    return [sorted(f) for f in folds]


def held_out_sets(rows: list[Row], spec: DatasetSpec) -> list[tuple[list[int], list[str]]]:
    """Each held-out group as (row indices, patients), patient- or image-split."""
    if spec.split == "image":
        return [
            (idx, sorted({rows[i].patient for i in idx})) for idx in image_folds(rows, spec.groups)
        ]
    out = []
    for patients in pick_groups(rows, spec.groups):
        members = set(patients)
        out.append(([i for i, r in enumerate(rows) if r.patient in members], patients))
    return out


# ----------------------------------------------------------------- one run


def build_original_cnn(image_size: int):
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


def score_saved_model(model_uri: str, images: list[bytes]) -> tuple[np.ndarray, float, float]:
    """Probabilities of ``images`` through the SavedModel's bytes signature, its threshold,
    and serving throughput (images/s, model loading and graph tracing excluded)."""
    from model_export.loader import load_model

    model = load_model(model_uri)
    model.predict(images[:8])  # the first call traces the graph: not serving speed
    start = time.perf_counter()
    probs: list[float] = []
    for i in range(0, len(images), 256):
        probs.extend(x.probability for x in model.predict(images[i : i + 256]))
    seconds = time.perf_counter() - start
    return np.array(probs), model.threshold, len(images) / max(seconds, 1e-9)


def run_one(
    recipe_name: str,
    recipe: Recipe,
    rows: list[Row],
    held_out: list[int],
    *,
    seed: int,
    max_minutes: float,
    work: Path,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Train ``recipe`` on the rows outside ``held_out``; score the held-out rows.

    Returns:
        The result document (metrics, time, memory, serving speed, warnings).
    """
    from training import train as train_mod
    from training.config import from_mapping

    held = set(held_out)
    train_csv = work / "train_labels.csv"
    with train_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id"])
        writer.writerows([r.path, r.label, r.patient] for i, r in enumerate(rows) if i not in held)
    config = from_mapping(
        {
            "data": str(train_csv),
            "output": str(work / "models"),
            "seed": seed,
            "max_minutes": max_minutes,
            "verbose": 2,
            **recipe.overrides,
        },
        source=f"recipe {recipe_name}",
    )
    original_build = train_mod.build_model
    if recipe.original_cnn:
        train_mod.build_model = lambda cfg, n, stain=None: build_original_cnn(cfg.image_size)
    start = time.monotonic()
    try:
        result = train_mod.train(config)
    finally:
        train_mod.build_model = original_build
    wall = time.monotonic() - start
    test = [rows[i] for i in held_out]
    images = [Path(r.path).read_bytes() for r in test]
    y = np.array([r.label == config.positive_class for r in test], dtype=int)
    probs, threshold, images_per_s = score_saved_model(result.model_uri, images)
    metrics = train_mod.binary_metrics(y, probs, threshold)
    doc: dict[str, Any] = {
        **{k: metrics[k] for k in (*METRICS, "sensitivity", "specificity")},
        "threshold": threshold,
        "test_images": len(test),
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "epochs": result.epochs_run,
        "validation_auc": result.validation_metrics.get("roc_auc"),
        "warnings": list(result.warnings),
        "serving_images_per_s": round(images_per_s, 1),
        "train_images_per_s": round(result.train_images_per_s, 1),
        "exported": result.exported,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if keep_predictions:
        doc["predictions"] = [
            {"patient": r.patient, "label": int(t), "probability": round(float(p), 5)}
            for r, t, p in zip(test, y, probs, strict=True)
        ]
    return doc


# ----------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class Task:
    """One (recipe, group, seed) of the protocol and where its result goes."""

    recipe: str
    group: int
    seed: int
    patients: list[str]
    path: Path


def plan(
    spec: DatasetSpec, recipes: list[str], mode: Mode, results: Path, rows: list[Row]
) -> list[Task]:
    """Every task of the protocol, baseline first in each (group, seed)."""
    sets = held_out_sets(rows, spec)
    used = sets[: mode.groups_used] if mode.groups_used else sets
    ordered = sorted(recipes, key=lambda r: (r != BASELINE, recipes.index(r)))
    return [
        Task(r, g, s, patients, results / r / f"group{g}-seed{s}.json")
        for s in mode.seeds
        for g, (_idx, patients) in enumerate(used)
        for r in ordered
    ]


def saved_result(task: Task, recipe: Recipe, mode: Mode, spec: DatasetSpec) -> dict | None:
    """The saved result of ``task`` when it was made the same way, else None."""
    if not task.path.is_file():
        return None
    doc = json.loads(task.path.read_text())
    same = (
        doc.get("recipe_spec") == recipe.key()
        and doc.get("held_out_patients") == task.patients
        and doc.get("max_minutes") == mode.max_minutes
        and doc.get("split") == spec.split
    )
    if not same:
        logger.warning("%s was made differently (recipe, group or budget): rerunning", task.path)
        return None
    return doc


def execute(task: Task, spec: DatasetSpec, mode: Mode, rows: list[Row]) -> dict[str, Any]:
    """Run one task in this process and save its result (atomically)."""
    recipe = RECIPES[task.recipe]
    held_idx = held_out_sets(rows, spec)[task.group][0]
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        doc = run_one(
            task.recipe,
            recipe,
            rows,
            held_idx,
            seed=task.seed,
            max_minutes=mode.max_minutes,
            work=Path(tmp),
            keep_predictions=spec.pooled,
        )
    doc = {
        "dataset": spec.name,
        "split": spec.split,
        "recipe": task.recipe,
        "recipe_spec": recipe.key(),
        "group": task.group,
        "held_out_patients": task.patients,
        "seed": task.seed,
        "max_minutes": mode.max_minutes,
        **doc,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    task.path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = task.path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(doc, indent=1))
    tmp_path.replace(task.path)
    return doc


def run_protocol(
    spec: DatasetSpec,
    recipes: list[str],
    mode: Mode,
    results: Path,
    *,
    in_process: bool = False,
) -> list[Task]:
    """Run every task not saved yet. Returns the tasks that were run."""
    rows = read_rows(spec.labels_csv)
    for g, (idx, patients) in enumerate(held_out_sets(rows, spec)):
        logger.info("Held-out group %d (%d images): %s", g, len(idx), ", ".join(patients))
    tasks = plan(spec, recipes, mode, results, rows)
    ran = []
    for task in tasks:
        if saved_result(task, RECIPES[task.recipe], mode, spec) is not None:
            logger.info("Saved already: %s", task.path)
            continue
        logger.info("Running %s on group %d, seed %d", task.recipe, task.group, task.seed)
        if in_process:
            execute(task, spec, mode, rows)
        else:
            _execute_in_child(task, spec, mode)
        ran.append(task)
    return ran


def _execute_in_child(task: Task, spec: DatasetSpec, mode: Mode) -> None:
    """One task in a child process, so its peak RSS is its own."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        json.dumps(
            {
                "task": {**asdict(task), "path": str(task.path)},
                "spec": {**asdict(spec), "labels_csv": str(spec.labels_csv)},
                "mode": asdict(mode),
            }
        ),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, check=True, env=env)


def _child(payload: str) -> int:
    data = json.loads(payload)
    task = Task(**{**data["task"], "path": Path(data["task"]["path"])})
    spec = DatasetSpec(
        **{
            **data["spec"],
            "labels_csv": Path(data["spec"]["labels_csv"]),
            "default_recipes": tuple(data["spec"]["default_recipes"]),
        }
    )
    mode = Mode(**{**data["mode"], "seeds": tuple(data["mode"]["seeds"])})
    doc = execute(task, spec, mode, read_rows(spec.labels_csv))
    print(json.dumps({k: v for k, v in doc.items() if k != "predictions"}), flush=True)
    return 0


# ----------------------------------------------------------------- the table


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.array(values, dtype=float)
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


def summarize(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per recipe: mean and range of each metric over groups x seeds, cost, and wins.

    ``beats_baseline`` counts the (group, seed) pairs where the recipe's AUC is above
    the original CNN's on the same held-out patients and seed.
    """
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_recipe.setdefault(doc["recipe"], []).append(doc)
    base = {(d["group"], d["seed"]): d for d in by_recipe.get(BASELINE, [])}
    out: dict[str, Any] = {}
    for name, runs in sorted(by_recipe.items(), key=lambda kv: (kv[0] != BASELINE, kv[0])):
        entry: dict[str, Any] = {
            "runs": len(runs),
            "groups": sorted({d["group"] for d in runs}),
            "seeds": sorted({d["seed"] for d in runs}),
            **{m: _stats([d[m] for d in runs]) for m in METRICS},
            "train_seconds": _stats([d["train_seconds"] for d in runs])["mean"],
            "peak_rss_gib": max(d["peak_rss_gib"] for d in runs),
            "serving_images_per_s": _stats([d["serving_images_per_s"] for d in runs])["mean"],
            # Results saved before training speed was recorded lack it: NaN, shown as "-".
            "train_images_per_s": _stats([d.get("train_images_per_s", np.nan) for d in runs])[
                "mean"
            ],
            "runs_with_warnings": sum(bool(d.get("warnings")) for d in runs),
        }
        paired = [
            (d, base[(d["group"], d["seed"])]) for d in runs if (d["group"], d["seed"]) in base
        ]
        if name != BASELINE and paired:
            wins = sum(d["roc_auc"] > b["roc_auc"] for d, b in paired)
            entry["beats_baseline"] = f"{wins}/{len(paired)}"
        if any("predictions" in d for d in runs):
            entry["pooled"] = pooled_figures(runs)
        out[name] = entry
    return out


def pooled_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Out-of-fold predictions pooled over groups, per seed then averaged: image level
    (AUC, balanced accuracy, F1 at each model's threshold) and patient level (majority
    of a patient's images; accuracy over patients)."""
    from training.train import binary_metrics

    per_seed = []
    for seed in sorted({d["seed"] for d in runs}):
        preds = [(p, d["threshold"]) for d in runs if d["seed"] == seed for p in d["predictions"]]
        y = np.array([p["label"] for p, _ in preds])
        prob = np.array([p["probability"] for p, _ in preds])
        called = np.array([p["probability"] >= t for p, t in preds])
        image = binary_metrics(y, prob, 0.5)
        image["balanced_accuracy"] = _balanced(y, called)
        patients: dict[str, list[tuple[int, bool]]] = {}
        for (p, _), c in zip(preds, called, strict=True):
            patients.setdefault(p["patient"], []).append((p["label"], bool(c)))
        correct = [(np.mean([c for _, c in v]) >= 0.5) == bool(v[0][0]) for v in patients.values()]
        per_seed.append(
            {
                "image_auc": image["roc_auc"],
                "image_balanced_accuracy": image["balanced_accuracy"],
                "patient_accuracy": float(np.mean(correct)),
                "patients": len(patients),
            }
        )
    return {k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0]}


def _balanced(y: np.ndarray, called: np.ndarray) -> float:
    sens = (called & (y == 1)).sum() / max(1, (y == 1).sum())
    spec = (~called & (y == 0)).sum() / max(1, (y == 0).sum())
    return float((sens + spec) / 2)


def markdown_table(summary: dict[str, Any], title: str) -> str:
    """The summary as a Markdown table: mean [min, max] over groups x seeds."""

    def cell(s: dict[str, float]) -> str:
        return f"{s['mean']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"

    lines = [
        f"#### {title}",
        "",
        "| recipe | runs | ROC AUC | balanced acc. | F1 | beats original (AUC) "
        "| train s | train img/s | peak RSS GiB | serving img/s |",
        "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, e in summary.items():
        train_speed = e.get("train_images_per_s", float("nan"))
        train_cell = f"{train_speed:.0f}" if np.isfinite(train_speed) else "-"
        lines.append(
            f"| {name} | {e['runs']} | {cell(e['roc_auc'])} | {cell(e['balanced_accuracy'])} "
            f"| {cell(e['f1'])} | {e.get('beats_baseline', '-')} | {e['train_seconds']:.0f} "
            f"| {train_cell} | {e['peak_rss_gib']:.2f} | {e['serving_images_per_s']:.0f} |"
        )
    pooled = {n: e["pooled"] for n, e in summary.items() if "pooled" in e}
    if pooled:
        lines += [
            "",
            "| recipe | pooled image AUC | pooled image bal. acc. | patient accuracy |",
            "| --- | --- | --- | --- |",
        ]
        for name, p in pooled.items():
            lines.append(
                f"| {name} | {p['image_auc']:.3f} | {p['image_balanced_accuracy']:.3f} "
                f"| {p['patient_accuracy']:.3f} ({p['patients']:.0f} patients) |"
            )
    return "\n".join(lines) + "\n"


def build_table(results: Path, title: str) -> dict[str, Any]:
    """Summarise every saved result under ``results``; write summary.json and table.md."""
    docs = [json.loads(p.read_text()) for p in sorted(results.glob("*/group*-seed*.json"))]
    if not docs:
        raise SystemExit(f"no saved results under {results}")
    groups = {d["group"]: d["held_out_patients"] for d in docs}
    summary = summarize(docs)
    report = {"groups": {str(g): p for g, p in sorted(groups.items())}, "recipes": summary}
    (results / "summary.json").write_text(json.dumps(report, indent=2))
    (results / "table.md").write_text(markdown_table(summary, title))
    return report


# ----------------------------------------------------------------- command line


def _specs(args: argparse.Namespace) -> list[DatasetSpec]:
    spec = DATASETS[args.dataset]
    if args.labels:
        spec = replace(spec, labels_csv=Path(args.labels).resolve())
    if args.groups:
        spec = replace(spec, groups=args.groups)
    by_image = replace(spec, name=f"{spec.name}-by-image", split="image")
    if args.split == "image":  # an optimistic bound: patients on both sides of the split
        return [by_image]
    if args.dataset == "breakhis":  # the patient split and, beside it, a split by image
        return [spec, by_image]
    return [spec]


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the protocol, then print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="idc")
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", help="override the mode's seeds")
    parser.add_argument("--groups-used", type=int, help="override the mode's number of groups")
    parser.add_argument("--groups", type=int, help="number of held-out groups to split into")
    parser.add_argument("--max-minutes", type=float, help="override the mode's training budget")
    parser.add_argument(
        "--split",
        choices=("patient", "image"),
        default="patient",
        help="hold out groups of patients (the protocol) or of images (an optimistic bound)",
    )
    parser.add_argument("--labels", help="another labels CSV (path,label,patient_id)")
    parser.add_argument("--results", default=str(RESULTS), help="where results are saved")
    parser.add_argument("--table", action="store_true", help="only summarise saved results")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--in-process", action="store_true", help="no child process per run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        return _child(args.child)
    if args.list:
        for name, recipe in RECIPES.items():
            print(f"{name:24} {recipe.about}")
        return 0
    mode = MODES[args.mode]
    mode = replace(
        mode,
        seeds=tuple(args.seeds) if args.seeds else mode.seeds,
        groups_used=args.groups_used or mode.groups_used,
        max_minutes=args.max_minutes or mode.max_minutes,
    )
    for spec in _specs(args):
        results = Path(args.results) / spec.name / args.mode
        if spec.pooled and not args.groups_used:  # pooled figures need every group
            mode = replace(mode, groups_used=None)
        if not args.table:
            if not spec.labels_csv.is_file():
                print(f"skipped: {spec.labels_csv} not found (development data)")
                return 0
            recipes = args.recipes or list(spec.default_recipes)
            run_protocol(spec, recipes, mode, results, in_process=args.in_process)
        title = f"{spec.name}, {args.mode} mode, split by {spec.split}"
        report = build_table(results, title)
        for g, patients in report["groups"].items():
            print(f"held-out group {g}: {', '.join(patients)}")
        print(markdown_table(report["recipes"], title))
        print(f"saved: {results / 'summary.json'}, {results / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
