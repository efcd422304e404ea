"""Command line for the training job: ``python -m training`` or ``histo-train``.

Flags and an optional JSON/YAML ``--config`` file are parsed here into a
validated :class:`training.config.TrainConfig`; flags given on the command line
override the file.
"""

from __future__ import annotations

import histo_common.tensorflow_env  # noqa: F401  (first: sets up TensorFlow before its import)

# isort: split
import argparse
import logging
import sys
from dataclasses import fields

from histo_common import storage
from training.config import (
    STAIN_NORMALISATIONS,
    WEIGHT_AVERAGING,
    Augmentation,
    ConfigError,
    TrainConfig,
    from_mapping,
    load_config_file,
)
from training.models import CUSTOM_CNN, MOBILENET_V2

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
_AUG_DEFAULTS = {f.name: f.default for f in fields(Augmentation)}


def build_parser() -> argparse.ArgumentParser:
    """The training job's flags (defaults shown come from TrainConfig)."""
    p = argparse.ArgumentParser(
        prog="histo-train",
        description="Train a benign/malignant H&E patch classifier and export it as a "
        "versioned SavedModel to <output>/<model-name>/<version>/. Research use only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--data",
        help="folder (<root>/benign/*, <root>/malignant/*) or labels CSV "
        "(path,label[,patient_id]); local or gs://",
    )
    p.add_argument(
        "--output", help="models root URI; the model goes to <output>/<model-name>/<version>/"
    )
    p.add_argument("--config", help="JSON or YAML file with any of these fields")
    p.add_argument("--model-name", help=f"model folder name (default {_DEFAULTS['model_name']})")
    p.add_argument(
        "--transfer-learning",
        action="store_true",
        help="MobileNetV2 with a frozen base instead of the custom CNN",
    )
    p.add_argument("--architecture", choices=[CUSTOM_CNN, MOBILENET_V2])
    p.add_argument("--weights", help="MobileNetV2 weights: imagenet, a path to no-top .h5, or none")
    p.add_argument(
        "--alpha", type=float, help="MobileNetV2 width; read from the weights file name if absent"
    )
    p.add_argument(
        "--fine-tune-epochs", type=int, help="epochs of fine-tuning the top of MobileNetV2"
    )
    p.add_argument(
        "--fine-tune-layers", type=int, help="how many top layers of MobileNetV2 to unfreeze"
    )
    p.add_argument(
        "--mobilenet-layer",
        help="the MobileNetV2 layer that feeds the head, e.g. block_6_project_BN (default: "
        "its last, out_relu)",
    )
    p.add_argument("--epochs", type=int, help=f"maximum epochs (default {_DEFAULTS['epochs']})")
    p.add_argument("--learning-rate", type=float, help=f"default {_DEFAULTS['learning_rate']}")
    p.add_argument("--batch-size", type=int, help=f"default {_DEFAULTS['batch_size']}")
    p.add_argument(
        "--image-size",
        type=int,
        help="input side in px (default: from the images and the architecture, e.g. 48 for "
        "50 px patches, 224 for MobileNetV2 on fields of view)",
    )
    p.add_argument("--width", type=float, help="custom CNN: multiplier on filters and units")
    p.add_argument("--label-smoothing", type=float, help="binary label smoothing (default 0)")
    p.add_argument("--dropout", type=float, help=f"default {_DEFAULTS['dropout']}")
    p.add_argument("--l2", type=float, help=f"L2 weight decay (default {_DEFAULTS['l2']})")
    p.add_argument("--seed", type=int, help=f"default {_DEFAULTS['seed']}")
    p.add_argument(
        "--folds",
        type=int,
        help="cross-fitted models in the exported ensemble; their out-of-fold predictions "
        "set the threshold (1: one model, one validation split)",
    )
    p.add_argument(
        "--validation-fraction", type=float, help="share of images (whole patients) for validation"
    )
    p.add_argument(
        "--positive-class", help="class whose probability is reported (default malignant)"
    )
    p.add_argument("--threshold-method", choices=["youden", "fixed"])
    p.add_argument("--fixed-threshold", type=float)
    p.add_argument("--early-stopping-patience", type=int)
    p.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    p.add_argument(
        "--weak-auc",
        type=float,
        help=f"warn below this out-of-fold AUC (default {_DEFAULTS['weak_auc']})",
    )
    p.add_argument(
        "--max-threshold-spread",
        type=float,
        help="warn when the per-fold thresholds spread more than this in logit space "
        f"(default {_DEFAULTS['max_threshold_spread']})",
    )
    p.add_argument(
        "--min-oof-auc",
        type=float,
        help="below this out-of-fold AUC the version is written but marked NOT_BLESSED "
        "(the loader's latest skips it)",
    )
    p.add_argument(
        "--final-models",
        type=int,
        choices=[0, 1, 2],
        help="0: export the fold models as the ensemble; 1 or 2: the folds set the threshold, "
        "then this many models train on all images for --final-epochs and are exported",
    )
    p.add_argument(
        "--final-epochs",
        type=int,
        help="epochs of each final model (default: the median best epoch of the folds)",
    )
    p.add_argument(
        "--tta",
        type=_bool,
        metavar="BOOL",
        help="test-time augmentation in the SavedModel: average the 8 rotations and flips",
    )
    p.add_argument(
        "--stain-normalisation",
        choices=list(STAIN_NORMALISATIONS),
        help="stain normalisation inside the model (reinhard: CIELAB statistics of the "
        "training set)",
    )
    p.add_argument(
        "--weight-averaging",
        choices=list(WEIGHT_AVERAGING),
        help="ema: export an exponential moving average of the weights",
    )
    p.add_argument("--ema-momentum", type=float, help="EMA decay per step (default 0.99)")
    p.add_argument(
        "--mpp",
        type=float,
        help="microns per pixel of the training images, if known (recorded in the model's "
        "metadata so slides are tiled at the training scale)",
    )
    p.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable images instead of failing"
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=[0, 1, 2],
        help="Keras progress: 0 quiet, 1 bar, 2 a line per epoch",
    )
    for name, default in _AUG_DEFAULTS.items():
        flag = f"--aug-{name.replace('_', '-')}"
        if isinstance(default, bool):
            p.add_argument(
                flag, type=_bool, metavar="BOOL", help=f"augmentation: {name} (default {default})"
            )
        else:
            p.add_argument(
                flag, type=float, help=f"augmentation strength: {name} (default {default})"
            )
    return p


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse flags (over an optional config file) into a validated TrainConfig."""
    args = vars(build_parser().parse_args(argv))
    values = load_config_file(args.pop("config")) if "config" in args else {}
    aug = dict(values.get("augmentation") or {})
    for name in _AUG_DEFAULTS:
        key = f"aug_{name}"
        if key in args:
            aug[name] = args.pop(key)
    if aug:
        values["augmentation"] = aug
    if args.pop("transfer_learning", False):
        values["architecture"] = MOBILENET_V2
    values.update(args)
    for required in ("data", "output"):
        if not values.get(required):
            raise ConfigError(f"--{required} is required (on the command line or in --config)")
    return from_mapping(values, source="command line / config file")


def main(argv: list[str] | None = None) -> int:
    """Run the training job; exit 0 on success, 2 on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from training.data import DataError

    try:
        config = config_from_args(argv)
        from training.train import TrainingError, train

        result = train(config)
    except (ConfigError, DataError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = result.validation_metrics
    print(f"Model:      {result.model_uri}")
    print(f"Run record: {result.run_uri}")
    print(
        f"Validation: AUC {m.get('roc_auc', float('nan')):.3f}, balanced accuracy "
        f"{m.get('balanced_accuracy', float('nan')):.3f}, threshold {result.threshold:.3f} "
        f"({result.epochs_run} epochs, {result.train_seconds:.0f} s)"
    )
    for warning in result.warnings:
        print(f"Warning:    {warning}")
    if not result.blessed:
        print(f"NOT_BLESSED: {result.model_uri} (the loader's latest skips it)")
    print("Research use only: not a medical device.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
