"""The training job: data -> split -> fit -> threshold -> export.

:func:`train` is the one public entry point (the CLI in ``training.__main__`` and
the container call it). A run writes:

- the model version, via ``model_export``: ``<output>/<model-name>/<version>/``;
- the run's record: ``<output>/runs/<model-name>/<version>/`` with ``split.csv``,
  ``history.csv``, ``metrics.json``, ``config.json``, TensorBoard ``logs/`` and the
  best ``checkpoint.keras``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histo_common import storage
from histo_common.images import median_size
from training.config import TrainConfig
from training.data import (
    Dataset,
    Example,
    Split,
    class_weights,
    fold_splits,
    load_examples,
    make_dataset,
    resolve_input,
    split_examples,
    stain_reference,
)
from training.quality import (
    fold_thresholds,
    mark_not_blessed,
    not_blessed_reasons,
    threshold_cost,
    weak_model_warnings,
)

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

logger = logging.getLogger(__name__)


# Plain training images used to recompute batch-norm statistics after each epoch.
BN_CALIBRATION_IMAGES = 1024


class TrainingError(RuntimeError):
    """A training run that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    model_uri: str
    version: int
    run_uri: str
    threshold: float
    validation_metrics: dict[str, Any]  # metric values, and where they were measured
    epochs_run: int
    train_seconds: float
    warnings: tuple[str, ...] = ()  # reasons to doubt the model (also in metadata.json)
    blessed: bool = True  # False: the version is marked NOT_BLESSED (--min-oof-auc)
    # Training images through the network per second of training (epochs x images / s).
    train_images_per_s: float = 0.0
    exported: dict[str, Any] | None = None  # what was exported (see ExportPlan.describe)


StainReference = tuple[list[float], list[float]]  # CIELAB means and stds (Reinhard)


def build_model(
    config: TrainConfig, n_classes: int, stain: StainReference | None = None
) -> keras.Model:
    """Build the configured architecture (private to the run, public for tests).

    ``stain`` (with ``stain_normalisation: reinhard``) puts the Reinhard normaliser
    with these reference statistics at the start of the backbone.
    """
    from model_export.preprocessing import ReinhardNormalisation
    from training import models

    normaliser = None
    if config.stain_normalisation == "reinhard":
        if stain is None:
            raise TrainingError("reinhard stain normalisation needs the training set's statistics")
        normaliser = ReinhardNormalisation(*stain, name="stain_normalisation")
    n_outputs = 1 if n_classes == 2 else n_classes
    if config.architecture == models.MOBILENET_V2:
        weights = config.weights_source
        if weights is not None and weights != "imagenet" and not os.path.isfile(weights):
            raise TrainingError(
                f"weights file {weights} does not exist: pass --weights PATH to Keras's "
                "MobileNetV2 no-top .h5 file, 'imagenet' to download them, or 'none'"
            )
        try:
            return models.build_mobilenet_v2(
                config.input_size,
                n_outputs,
                weights=weights,
                alpha=config.resolved_alpha,
                dropout=config.dropout,
                l2=config.l2,
                normaliser=normaliser,
                feature_layer=config.mobilenet_layer,
            )
        except Exception as exc:
            if weights == "imagenet":
                raise TrainingError(
                    "could not download the ImageNet weights for MobileNetV2 "
                    f"({type(exc).__name__}: {exc}). Without network access, pass "
                    "--weights PATH to Keras's no-top .h5 file (with --alpha to match it), "
                    "or --weights none"
                ) from exc
            raise TrainingError(
                f"could not build MobileNetV2 with weights {weights}: {exc}"
            ) from exc
    return models.build_custom_cnn(
        config.input_size,
        n_outputs,
        filters=tuple(max(4, round(f * config.width)) for f in (32, 64, 128)),
        dense_units=(max(8, round(128 * config.width)),),
        dropout=config.dropout,
        l2=config.l2,
        normaliser=normaliser,
    )


def choose_threshold(
    y_true: np.ndarray,
    scores: np.ndarray,
    method: str,
    fixed: float,
    source: str = "validation predictions",
) -> tuple[float, str]:
    """Pick the decision threshold on held-out predictions; returns it and how it was chosen.

    ``youden`` maximises Youden's J (sensitivity + specificity - 1) over ``scores`` (the
    probability of the positive class). Every threshold in a gap between two adjacent
    scores classifies alike, so the optimum is a set of intervals, often one wide gap on
    separable scores. The threshold is the middle of the optimal range in logit space
    (see :func:`middle_of_optimal_range`), never its edge. With one class only, or no
    threshold better than chance (J <= 0, e.g. constant scores), ``fixed`` is used and
    the returned sentence says why. ``fixed`` uses ``fixed`` as given.

    Args:
        y_true: 0/1 labels.
        scores: probabilities of class 1, same length.
        method: ``"youden"`` or ``"fixed"``.
        fixed: the fixed threshold (and the fallback).
        source: what the predictions are, for the sentence.
    """
    from sklearn.metrics import roc_curve

    if method == "fixed":
        if fixed == 0.5:
            return 0.5, (
                "fixed at 0.5: training weights the classes equally, so 0.5 is the "
                "balanced-accuracy threshold of a calibrated model"
            )
        return float(fixed), f"fixed at {fixed}"
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise TrainingError(
            f"the {source} contain NaN or infinite probabilities: training diverged; "
            "lower --learning-rate and train again"
        )
    if len(np.unique(y_true)) < 2:
        return float(fixed), (
            f"fixed at {fixed}: the {source} hold one class only, so Youden's J is undefined"
        )
    fpr, tpr, cut = roc_curve(y_true, scores, drop_intermediate=False)
    j = tpr - fpr
    if j.max() <= 1e-12:
        return float(fixed), (
            f"fixed at {fixed}: no threshold on the {source} beats chance (Youden's J <= 0)"
        )
    # Point i predicts positive when score >= cut[i], as does every threshold in
    # (cut[i + 1], cut[i]]; cut[0] is +inf (nothing positive), the last point all positive.
    lower = np.append(cut[1:], 0.0)
    upper = np.minimum(cut, 1.0)
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0.0, atol=1e-9))
    intervals = [(float(lower[i]), float(upper[i])) for i in best]
    threshold = middle_of_optimal_range(intervals)
    low, high = min(lo for lo, _ in intervals), max(hi for _, hi in intervals)
    ties = f"{len(intervals)} tied optimal ranges " if len(intervals) > 1 else "optimal "
    return threshold, (
        f"Youden's J (max sensitivity + specificity, J = {j.max():.3f}) on {source}: "
        f"{ties}from {low:.3g} to {high:.3g}, threshold at the middle in logit space"
    )


def middle_of_optimal_range(intervals: Sequence[tuple[float, float]]) -> float:
    """The middle, in logit space, of equally optimal threshold intervals ``(low, high]``.

    One interval gives its logit midpoint, so on separable scores the threshold sits in
    the gap between the classes, not on a score at its edge. Several tied intervals give
    the logit midpoint of their whole span when that point is itself optimal; otherwise
    (the optima are apart) the midpoint of the optimal interval nearest to it, so the
    threshold always keeps the optimal value. Probabilities are clipped to
    ``[1e-6, 1 - 1e-6]`` before the logit; where clipping leaves no room inside an
    interval, its plain midpoint is used.
    """
    if not intervals:
        raise ValueError("no optimal interval to take the middle of")
    span = (min(lo for lo, _ in intervals), max(hi for _, hi in intervals))
    middle = _logit_midpoint(*span)
    for lo, hi in intervals:
        if lo < middle <= hi:
            return middle
    centre = _logit(middle)

    def distance(interval: tuple[float, float]) -> float:
        lo, hi = _logit(interval[0]), _logit(interval[1])
        return max(lo - centre, centre - hi, 0.0)

    return _logit_midpoint(*min(intervals, key=distance))


_LOGIT_EPS = 1e-6


def _logit(p: float) -> float:
    q = float(np.clip(p, _LOGIT_EPS, 1 - _LOGIT_EPS))
    return float(np.log(q / (1 - q)))


def _logit_midpoint(low: float, high: float) -> float:
    """Midpoint of ``(low, high]`` in logit space, inside the interval."""
    mid = float(1 / (1 + np.exp(-(_logit(low) + _logit(high)) / 2)))
    return mid if low < mid <= high else (low + high) / 2


def binary_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The evaluation's metrics at ``threshold``, with the threshold and the number of images.

    Same functions and names as the evaluation: ``roc_auc``, ``sensitivity``, ...
    """
    from evaluation.metrics import all_metrics

    values: dict[str, float] = all_metrics(
        np.asarray(y_true, dtype=np.int64), np.asarray(scores, dtype=np.float64), threshold
    )
    values["threshold"] = threshold
    values["n"] = len(y_true)
    return values


class _TimeBudget:
    """Stops training once a wall-clock budget is spent (keeps the best weights)."""

    def __new__(cls, minutes: float) -> keras.callbacks.Callback:
        import keras

        class TimeBudget(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.deadline = time.monotonic() + minutes * 60.0
                self.epoch_seconds = 0.0
                self.started = 0.0

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.started = time.monotonic()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                self.epoch_seconds = max(self.epoch_seconds, time.monotonic() - self.started)
                if time.monotonic() + self.epoch_seconds > self.deadline:
                    logger.info(
                        "Time budget of %.2f min reached after epoch %d", minutes, epoch + 1
                    )
                    self.model.stop_training = True

        return TimeBudget()


def recalibrate_batch_norm(model: keras.Model, batches: Iterable[Sequence[Any]]) -> int:
    """Set every batch norm's moving statistics to their average over ``batches``.

    During training the moving averages lag behind weights that change every step
    and are measured on augmented images; the model then serves un-augmented ones.
    A pass over plain training images with equal weight per batch ("precise batch
    norm", Wu & Johnson 2021) gives statistics of the weights as they are now, on the
    images as the model will see them. Weights other than the statistics are unchanged.

    Returns:
        The number of batches used.
    """
    import keras

    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        for used, (images, *_rest) in enumerate(batches, start=1):
            for layer in layers:
                layer.momentum = (used - 1) / used  # a running mean over batches
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return used


class _HeldOutMetrics:
    """Precise batch norm, then exact validation metrics, each epoch.

    Before scoring, batch-norm statistics are recomputed on plain training images
    (:func:`recalibrate_batch_norm`), so what is measured, checkpointed and restored
    is the model as it will serve. Keras's own AUC metric bins predictions into
    200 buckets, so a model whose outputs crowd near 0 or 1 scores 0.5; this puts
    scikit-learn's ``val_auc``, ``val_loss`` and ``val_accuracy`` into the logs
    instead, before the callbacks that read them.
    """

    def __new__(cls, held_out: _HeldOut) -> keras.callbacks.Callback:
        import keras
        from sklearn.metrics import log_loss, roc_auc_score

        dataset, labels, n_classes = held_out.dataset, held_out.labels, held_out.n_classes

        class HeldOutMetrics(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                if logs is None:
                    return
                recalibrate_batch_norm(self.model, held_out.calibration)
                out = self.model.predict(dataset, verbose=0)
                if n_classes == 2:
                    p = np.clip(out[:, 0], 1e-7, 1 - 1e-7)
                    both = len(np.unique(labels)) == 2
                    logs["val_auc"] = float(roc_auc_score(labels, p)) if both else 0.5
                    logs["val_loss"] = float(log_loss(labels, p, labels=[0, 1]))
                    logs["val_accuracy"] = float(((p >= 0.5) == labels).mean())
                else:
                    logs["val_loss"] = float(log_loss(labels, out, labels=range(n_classes)))
                    logs["val_accuracy"] = float((out.argmax(-1) == labels).mean())

        return HeldOutMetrics()


def _callbacks(
    config: TrainConfig,
    run_dir: Path,
    budget_minutes: float | None,
    held_out: _HeldOut,
) -> list[keras.callbacks.Callback]:
    """Held-out metrics, checkpoint, early stopping, LR schedule, logs and time budget."""
    import keras

    monitor, mode = ("val_auc", "max") if held_out.n_classes == 2 else ("val_accuracy", "max")
    # With EMA the averaged weights are swapped in at each epoch's end, before the
    # callbacks below: batch norm is recalibrated for them, and they are what is
    # validated, checkpointed, and restored as the best epoch's (the raw weights go
    # back in for the next epoch's steps).
    averaging = (
        [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]
        if config.weight_averaging == "ema"
        else []
    )
    callbacks = [
        *averaging,
        _HeldOutMetrics(held_out),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "checkpoint.keras"), monitor=monitor, mode=mode, save_best_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            mode=mode,
            patience=config.early_stopping_patience,
            restore_best_weights=True,
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=3, min_lr=config.learning_rate / 50
        ),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), histogram_freq=0),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    if budget_minutes is not None:
        callbacks.append(_TimeBudget(budget_minutes))
    return callbacks


@dataclass(frozen=True)
class _HeldOut:
    """Validation images for the per-epoch metrics, and training images for batch norm."""

    dataset: Any
    labels: np.ndarray
    n_classes: int
    calibration: Any  # un-augmented training batches for recalibrate_batch_norm


def _compile(
    model: keras.Model, config: TrainConfig, n_classes: int, learning_rate: float | None = None
) -> None:
    """Adam with cross-entropy (binary or sparse categorical) and accuracy/AUC metrics.

    With ``weight_averaging: ema`` the optimizer keeps an exponential moving average
    of the weights (``ema_momentum`` per step), which replaces the weights at the end
    of ``fit``.
    """
    import keras

    learning_rate = config.learning_rate if learning_rate is None else learning_rate
    label_smoothing = config.label_smoothing
    ema = config.weight_averaging == "ema"
    if n_classes == 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        metrics = [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    optimizer = keras.optimizers.Adam(
        learning_rate, use_ema=ema, ema_momentum=config.ema_momentum if ema else 0.99
    )
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def _predict_scores(
    model: keras.Model,
    examples: list[Example],
    indices: list[int],
    image_size: int,
    batch_size: int,
) -> np.ndarray:
    """The model's probabilities on ``indices`` (the positive class's when binary)."""
    ds = make_dataset(
        examples, indices, image_size=image_size, batch_size=batch_size, training=False
    )
    out = model.predict(ds, verbose=0)
    return out[:, 0] if out.shape[-1] == 1 else out


def _split_csv(dataset: Dataset, splits: list[Split]) -> str:
    """Which fold held out each image (its validation fold), with label and patient."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["uri", "label", "patient_id", "validation_fold"])
    fold_of = {i: k for k, split in enumerate(splits) for i in split.validation}
    for i, e in enumerate(dataset.examples):
        fold = fold_of.get(i, "")
        writer.writerow([e.uri, dataset.class_names[e.label], e.patient_id or "", fold])
    return out.getvalue()


def plan_splits(dataset: Dataset, config: TrainConfig) -> list[Split]:
    """One validation split (``folds == 1``) or K cross-fitting folds."""
    if config.folds == 1:
        return [split_examples(dataset, config.validation_fraction, config.seed)]
    return fold_splits(dataset, config.folds, config.seed)


@dataclass(frozen=True)
class _Member:
    """One trained model of a run and what its training said."""

    model: Any  # keras.Model
    scores: np.ndarray  # its validation predictions (empty for a final model)
    epochs_run: int
    best_epoch: int  # 1-based epoch whose weights were kept (the monitored best)
    learning_rates: tuple[float, ...]  # learning rate in effect in each epoch
    images_seen: int  # training images through the network (epochs x images)


@dataclass(frozen=True)
class _TrainInputs:
    """A model's augmented training batches, class weights and batch-norm calibration batches."""

    train: Any  # tf.data.Dataset
    weights: dict[int, float]
    calibration: Any  # un-augmented training batches for recalibrate_batch_norm


def _train_inputs(config: TrainConfig, dataset: Dataset, indices: list[int]) -> _TrainInputs:
    examples = dataset.examples
    labels = np.array([examples[i].label for i in indices])
    size, batch = config.input_size, config.batch_size
    train_ds = make_dataset(
        examples,
        indices,
        image_size=size,
        batch_size=batch,
        training=True,
        augmentation=config.augmentation,
        seed=config.seed,
    )
    rng = np.random.default_rng(config.seed)
    calibration_idx = sorted(
        rng.choice(indices, min(len(indices), BN_CALIBRATION_IMAGES), replace=False)
    )
    calibration = make_dataset(
        examples, calibration_idx, image_size=size, batch_size=batch, training=False
    )
    return _TrainInputs(train_ds, class_weights(labels, len(dataset.class_names)), calibration)


def _fit_member(
    config: TrainConfig,
    dataset: Dataset,
    split: Split,
    run_dir: Path,
    budget_minutes: float | None,
    verbose: int,
    stain: StainReference | None = None,
    index: int = 0,
) -> _Member:
    """Train one model on ``split.train``, early-stopped on ``split.validation``.

    Its initial weights follow ``seed + index`` alone (fold ``index``), so a model can
    be rebuilt as it started.
    """
    import keras

    n_classes = len(dataset.class_names)
    examples = dataset.examples
    run_dir.mkdir(parents=True, exist_ok=True)
    size, batch = config.input_size, config.batch_size
    inputs = _train_inputs(config, dataset, split.train)
    val_ds = make_dataset(
        examples, split.validation, image_size=size, batch_size=batch, training=False
    )
    labels = np.array([examples[i].label for i in split.validation])
    held_out = _HeldOut(val_ds, labels, n_classes, inputs.calibration)
    keras.utils.set_random_seed(config.seed + index)
    model = build_model(config, n_classes, stain)
    _compile(model, config, n_classes)
    fit_start = time.monotonic()
    history = model.fit(
        inputs.train,
        epochs=config.epochs,
        shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn
        class_weight=inputs.weights,
        callbacks=_callbacks(config, run_dir, budget_minutes, held_out),
        verbose=verbose,
    )
    epochs_run = len(history.history.get("loss", []))
    monitored = history.history.get("val_auc" if n_classes == 2 else "val_accuracy", [])
    best_epoch = int(np.argmax(monitored)) + 1 if monitored else epochs_run
    rates = history.history.get("learning_rate") or [config.learning_rate] * epochs_run
    if config.transfer_learning and config.fine_tune_epochs > 0:
        left = None
        if budget_minutes is not None:
            left = max(0.5, budget_minutes - (time.monotonic() - fit_start) / 60)
        epochs_run += _fine_tune(
            model,
            config,
            n_classes,
            inputs.train,
            held_out,
            inputs.weights,
            run_dir,
            epochs_run,
            left,
            verbose,
        )
    scores = _predict_scores(model, examples, split.validation, size, batch)
    return _Member(
        model,
        scores,
        epochs_run,
        best_epoch,
        tuple(float(r) for r in rates),
        epochs_run * len(split.train),
    )


# ------------------------------------------------------------ final models


@dataclass(frozen=True)
class ExportPlan:
    """Which models a run exports, and for how long the final ones train."""

    final_models: int  # 0: the fold models are exported
    final_epochs: int  # epochs of each final model (0 without final models)
    epochs_from: str  # how final_epochs was chosen, in words
    learning_rates: tuple[float, ...]  # per-epoch schedule the final models follow

    def describe(self, folds: int, fold_best_epochs: list[int], images: int) -> dict[str, Any]:
        """What ``metadata.json`` (``training_data.exported``) and ``metrics.json`` record."""
        if not self.final_models:
            return {
                "kind": "fold models" if folds > 1 else "one model",
                "models": folds,
                "note": "the models whose held-out predictions set the threshold",
            }
        return {
            "kind": "final models",
            "models": self.final_models,
            "trained_on_images": images,
            "epochs": self.final_epochs,
            "epochs_from": self.epochs_from,
            "fold_best_epochs": fold_best_epochs,
            "learning_rates": [round(r, 8) for r in self.learning_rates],
            "note": f"threshold, held-out metrics and warnings come from {folds} fold "
            "model(s) that were not exported",
        }


def plan_budget(
    max_minutes: float | None, folds: int, final_models: int, validation_fraction: float
) -> tuple[float | None, float | None]:
    """Split the time budget: ``(minutes per fold model, minutes for the final models)``.

    Every model gets time for about the same number of epochs: an epoch's cost grows
    with the images it sees, and a final model sees all of them, ``K / (K - 1)``
    times a fold model's (``1 / (1 - validation_fraction)`` with one fold). So of
    ``M`` minutes the K fold models share ``M * K / (K + F * c)`` and the F final
    models the rest; time the folds leave unused (early stopping) goes to the final
    models too (:func:`train` gives them whatever remains).
    """
    if max_minutes is None:
        return None, None
    if not final_models:
        return max_minutes / folds, None
    ratio = folds / (folds - 1) if folds > 1 else 1 / (1 - validation_fraction)
    fold_share = max_minutes * folds / (folds + final_models * ratio)
    return fold_share / folds, max_minutes - fold_share


def plan_export(config: TrainConfig, members: list[_Member]) -> ExportPlan:
    """How long the final models train: ``final_epochs``, else the folds' median best epoch.

    The final models follow the learning-rate schedule of the fold whose best epoch
    is that median (its plateau reductions, up to that epoch), so they retrace the
    training the validation curves chose, on every patient.
    """
    if not config.final_models:
        return ExportPlan(0, 0, "", ())
    best = [m.best_epoch for m in members]
    if config.final_epochs is not None:
        epochs, how = config.final_epochs, "final_epochs in the configuration"
    else:
        epochs = max(1, int(np.ceil(np.median(best))))
        how = f"median best epoch of the {len(best)} fold model(s) ({best})"
    guide = min(members, key=lambda m: (abs(m.best_epoch - epochs), m.best_epoch))
    rates = list(guide.learning_rates[:epochs]) or [config.learning_rate]
    rates += [rates[-1]] * (epochs - len(rates))
    return ExportPlan(config.final_models, epochs, how, tuple(rates))


def _fit_final(
    config: TrainConfig,
    dataset: Dataset,
    plan: ExportPlan,
    index: int,
    run_dir: Path,
    budget_minutes: float | None,
    verbose: int,
    stain: StainReference | None = None,
) -> _Member:
    """Train final model ``index`` on every image for ``plan.final_epochs`` epochs.

    No validation: the epochs and learning rates come from the fold models. Batch
    norm is recalibrated on plain training images at the end (as the fold models
    are each epoch); with EMA the averaged weights are what ``fit`` leaves.
    """
    import keras

    n_classes = len(dataset.class_names)
    everything = list(range(len(dataset.examples)))
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = config.seed + 1000 * (index + 1)  # final models differ from the folds and each other
    inputs = _train_inputs(replace(config, seed=seed), dataset, everything)
    keras.utils.set_random_seed(seed)
    model = build_model(config, n_classes, stain)
    _compile(model, config, n_classes, learning_rate=plan.learning_rates[0])
    rates = plan.learning_rates
    callbacks: list[Any] = [
        keras.callbacks.LearningRateScheduler(lambda epoch: rates[min(epoch, len(rates) - 1)]),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), histogram_freq=0),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    if budget_minutes is not None:
        callbacks.append(_TimeBudget(budget_minutes))
    history = model.fit(
        inputs.train,
        epochs=plan.final_epochs,
        shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn
        class_weight=inputs.weights,
        callbacks=callbacks,
        verbose=verbose,
    )
    recalibrate_batch_norm(model, inputs.calibration)
    epochs_run = len(history.history.get("loss", []))
    if epochs_run < plan.final_epochs:
        logger.warning(
            "Final model %d stopped by the time budget after %d of %d epochs",
            index + 1,
            epochs_run,
            plan.final_epochs,
        )
    return _Member(
        model,
        np.empty(0),
        epochs_run,
        epochs_run,
        tuple(rates[:epochs_run]),
        epochs_run * len(everything),
    )


def _merge_histories(run_dir: Path, folds: int, finals: int = 0) -> None:
    """One ``history.csv`` for the run: each model's Keras CSV log with a ``fold`` column.

    Fold models are ``0``, ``1``, ...; final models ``final0``, ``final1``.
    """
    rows: list[dict[str, str]] = []
    logs = [
        (str(k), run_dir / f"fold{k}" / "history.csv" if folds > 1 else run_dir / "history.csv")
        for k in range(folds)
    ]
    logs += [(f"final{j}", run_dir / f"final{j}" / "history.csv") for j in range(finals)]
    for name, path in logs:
        if path.is_file():
            for row in csv.DictReader(path.open()):
                rows.append({"fold": name, **row})
    if not rows:
        return
    columns = list(dict.fromkeys(c for row in rows for c in row))
    with (run_dir / "history.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def train(config: TrainConfig) -> TrainResult:
    """Run a whole training job and export the model.

    With ``folds > 1`` (the default) the job cross-fits: K models, each trained on
    the patients outside one fold and early-stopped on that fold, make the exported
    ensemble; their predictions on the patients they never saw (out-of-fold) give
    the threshold and the reported validation metrics. With ``final_models`` 1 or 2
    the fold models only do that: then that many models train on every image for
    the epochs the folds' validation curves chose (:func:`plan_export`) and are
    exported instead; the time budget is split by :func:`plan_budget`.

    Raises:
        DataError: bad training data (named).
        TrainingError: a run that cannot go on (weights, too little data).
    """
    import keras

    from model_export import contract
    from model_export.ensemble import ensemble_classifier
    from model_export.export import export_model, next_version

    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    logger.info("Reading training data from %s", config.data)
    dataset = load_examples(config.data, skip_bad_images=config.skip_bad_images)
    config, input_warnings = resolve_input(config, dataset)
    n_classes = len(dataset.class_names)
    if config.positive_class not in dataset.class_names:
        raise TrainingError(
            f"positive class {config.positive_class!r} is not among the classes found in "
            f"{config.data}: {dataset.class_names}"
        )
    splits = plan_splits(dataset, config)
    for k, split in enumerate(splits):
        if len(split.train) < 2 or len(split.validation) < 2:
            raise TrainingError(f"too few images in {config.data} to train and validate")
        logger.info(
            "Split %d/%d by %s: %d train, %d validation images%s",
            k + 1,
            len(splits),
            split.method,
            len(split.train),
            len(split.validation),
            f" (validation patients {', '.join(split.validation_patients)})"
            if split.validation_patients
            else "",
        )
    logger.info("Data: %s", json.dumps(dataset.summary()))

    model_root = f"{config.output.rstrip('/')}/{config.model_name}"
    version = next_version(model_root)
    run_uri = f"{config.output.rstrip('/')}/runs/{config.model_name}/{version}"
    verbose = config.verbose if config.verbose is not None else (1 if os.isatty(1) else 2)
    per_member, _final_budget = plan_budget(
        config.max_minutes, len(splits), config.final_models, config.validation_fraction
    )
    stain = None
    if config.stain_normalisation == "reinhard":
        stain = stain_reference(
            dataset.examples, list(range(len(dataset.examples))), config.input_size
        )
        logger.info("Reinhard reference (CIELAB mean, std) of the training set: %s", stain)
    members: list[_Member] = []
    held_out_idx = np.concatenate([np.array(s.validation, dtype=int) for s in splits])
    with tempfile.TemporaryDirectory(prefix="histo-run-") as tmp:
        run_dir = Path(tmp)
        fit_start = time.monotonic()
        for k, split in enumerate(splits):
            member_dir = run_dir / f"fold{k}" if len(splits) > 1 else run_dir
            logger.info("Training model %d of %d", k + 1, len(splits))
            member = _fit_member(
                config, dataset, split, member_dir, per_member, verbose, stain, index=k
            )
            if k == 0:
                member.model.summary(print_fn=logger.info)
            members.append(member)
        plan = plan_export(config, members)
        finals: list[_Member] = []
        for j in range(plan.final_models):
            left = None
            if config.max_minutes is not None:
                spent = (time.monotonic() - fit_start) / 60
                left = max(0.1, (config.max_minutes - spent) / (plan.final_models - j))
            logger.info(
                "Training final model %d of %d on all %d images for %d epochs (%s)",
                j + 1,
                plan.final_models,
                len(dataset.examples),
                plan.final_epochs,
                plan.epochs_from,
            )
            finals.append(
                _fit_final(config, dataset, plan, j, run_dir / f"final{j}", left, verbose, stain)
            )
        train_seconds = time.monotonic() - fit_start
        trained = members + finals
        epochs_run = sum(m.epochs_run for m in trained)
        images_per_s = sum(m.images_seen for m in trained) / max(train_seconds, 1e-9)
        exported = finals or members
        kind = "final" if finals else "cross-fitted"
        model = ensemble_classifier(
            [m.model for m in exported], name=f"{config.architecture}_x{len(exported)}"
        )
        exported_doc = plan.describe(
            len(splits), [m.best_epoch for m in members], len(dataset.examples)
        )
        if finals:
            exported_doc["epochs_run"] = [m.epochs_run for m in finals]

        y_held = np.array([dataset.examples[i].label for i in held_out_idx])
        scores = np.concatenate([m.scores for m in members])
        where = "out-of-fold (patient-grouped) predictions" if len(splits) > 1 else "validation"
        if n_classes == 2:
            threshold, how = choose_threshold(
                y_held, scores, config.threshold_method, config.fixed_threshold, source=where
            )
            values = binary_metrics(y_held, scores, threshold)
        else:
            threshold, how = config.fixed_threshold, f"fixed at {config.fixed_threshold}"
            values = {"accuracy": float((scores.argmax(-1) == y_held).mean())}
        # The values, where they were measured, and (added by _assess) fold thresholds.
        val_metrics: dict[str, Any] = {**values, "validation": where, "split": splits[0].method}
        logger.info("Held-out metrics (%s): %s", where, json.dumps(val_metrics))
        warnings = input_warnings + _assess(
            config, splits, y_held, scores, val_metrics, where, threshold
        )
        reasons = not_blessed_reasons(val_metrics.get("roc_auc", float("nan")), config.min_oof_auc)

        _merge_histories(run_dir, len(splits), len(finals))
        (run_dir / "split.csv").write_text(_split_csv(dataset, splits))
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        (run_dir / "metrics.json").write_text(
            json.dumps(
                {
                    "validation": val_metrics,
                    "threshold": threshold,
                    "threshold_method": how,
                    "models": len(trained),
                    "exported": exported_doc,
                    "epochs_run": epochs_run,
                    "train_seconds": round(train_seconds, 1),
                    "train_images_per_s": round(images_per_s, 1),
                    "data": dataset.summary(),
                    "warnings": warnings,
                    "not_blessed": reasons,
                },
                indent=2,
            )
        )
        storage.copy_tree_to(run_dir, run_uri)

    if reasons:  # written before the export completes, so "latest" never picks it
        mark_not_blessed(
            contract.version_uri(config.output, config.model_name, version),
            model_name=config.model_name,
            version=version,
            auc=val_metrics.get("roc_auc", float("nan")),
            min_auc=float(config.min_oof_auc or 0.0),
            run_uri=run_uri,
        )
        logger.warning("Version %d is marked NOT_BLESSED: %s", version, "; ".join(reasons))
    result = export_model(
        model,
        models_root=config.output,
        model_name=config.model_name,
        class_names=dataset.class_names,
        positive_class=config.positive_class,
        threshold=threshold,
        threshold_method=how,
        image_size=config.input_size,
        architecture=config.architecture + _exported_words(kind, plan, len(exported), len(splits)),
        training_data={
            **dataset.summary(),
            "source": config.data,
            "split": splits[0].method,
            "folds": len(splits),
            "validation_patients": sorted({p for s in splits for p in s.validation_patients}),
            "exported": exported_doc,
        },
        validation_metrics=val_metrics,
        training_config=config.to_dict(),
        run_uri=run_uri,
        version=version,
        warnings=warnings,
        native_size=median_size(e.data for e in dataset.examples),
        mpp=config.mpp,
        tta=config.tta,
    )
    logger.info(
        "Done in %.0f s: %s (threshold %.3f), run record in %s",
        time.monotonic() - started,
        result.uri,
        threshold,
        run_uri,
    )
    return TrainResult(
        model_uri=result.uri,
        version=result.version,
        run_uri=run_uri,
        threshold=threshold,
        validation_metrics=val_metrics,
        epochs_run=epochs_run,
        train_seconds=train_seconds,
        warnings=tuple(warnings),
        blessed=not reasons,
        train_images_per_s=images_per_s,
        exported=exported_doc,
    )


def _exported_words(kind: str, plan: ExportPlan, models: int, folds: int) -> str:
    """The architecture's suffix in the metadata: what the exported models are."""
    if kind == "final":
        what = "model" if models == 1 else f"ensemble of {models} models"
        return (
            f" ({what} trained on all images for {plan.final_epochs} epochs; threshold "
            f"from {folds} cross-fitted model{'s' if folds > 1 else ''})"
        )
    return f" (ensemble of {models} cross-fitted models)" if models > 1 else ""


def _assess(
    config: TrainConfig,
    splits: list[Split],
    labels: np.ndarray,
    scores: np.ndarray,
    metrics: dict[str, Any],
    where: str,
    threshold: float,
) -> list[str]:
    """The weak-model warnings of a run (``training.quality``), each logged once."""
    if scores.ndim != 1:  # more than two classes: no AUC or threshold to judge
        return []
    folds = np.concatenate([np.full(len(s.validation), k) for k, s in enumerate(splits)])
    thresholds = fold_thresholds(
        labels, scores, folds, config.threshold_method, config.fixed_threshold
    )
    if len(thresholds) > 1:
        metrics["fold_thresholds"] = [round(t, 4) for t in thresholds]
    warnings = weak_model_warnings(
        metrics.get("roc_auc", float("nan")),
        thresholds,
        weak_auc=config.weak_auc,
        max_spread=config.max_threshold_spread,
        where=where,
        cost=threshold_cost(labels, scores, folds, threshold, thresholds) if thresholds else None,
    )
    for warning in warnings:
        logger.warning("Model: %s", warning)
    return warnings


def _fine_tune(
    model: keras.Model,
    config: TrainConfig,
    n_classes: int,
    train_ds: tf.data.Dataset,
    held_out: _HeldOut,
    weights: dict[int, float],
    run_dir: Path,
    initial_epoch: int,
    budget: float | None,
    verbose: int,
) -> int:
    """Unfreeze the top of MobileNetV2 (batch norm stays frozen) and train on at a lower rate."""
    import keras

    from training.models import mobilenet_base

    base = mobilenet_base(model)
    base.trainable = True
    for layer in base.layers[: max(0, len(base.layers) - config.fine_tune_layers)]:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    _compile(model, config, n_classes, learning_rate=config.learning_rate / 10)
    history = model.fit(
        train_ds,
        epochs=initial_epoch + config.fine_tune_epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn
        class_weight=weights,
        callbacks=_callbacks(config, run_dir, budget, held_out),
        verbose=verbose,
    )
    return len(history.history.get("loss", []))
