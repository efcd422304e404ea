"""Command line for the contract: ``python -m model_export`` or ``histo-export``.

- ``export``: export an existing ``.keras`` checkpoint as a new model version;
- ``serving-config``: write TF Serving's ``models.config`` for a models root;
- ``inspect``: load a model (root or version), check it, print its metadata.
"""

from __future__ import annotations

import histo_common.tensorflow_env  # noqa: F401  (first: sets up TensorFlow before its import)

# isort: split
import argparse
import json
import sys

from histo_common import storage
from model_export import contract


def _export(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    import keras

    from model_export.export import export_model

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "checkpoint.keras"
        local.write_bytes(storage.read_bytes(args.checkpoint))
        model = keras.saving.load_model(local, compile=False)
    size = int(model.input_shape[1])
    result = export_model(
        model,
        models_root=args.output,
        model_name=args.model_name,
        class_names=args.class_names.split(","),
        positive_class=args.positive_class,
        threshold=args.threshold,
        threshold_method=f"given on the command line ({args.threshold})",
        image_size=size,
        architecture=args.architecture,
    )
    print(f"Exported {args.checkpoint} as {result.uri}")
    return 0


def _serving_config(args: argparse.Namespace) -> int:
    from model_export.serving_client import serving_config

    names = sorted(
        {
            u[len(args.models.rstrip("/")) + 1 :].split("/")[0]
            for u in storage.list_uris(args.models)
            if u.endswith("/saved_model.pb")
        }
    )
    base = args.base_path or args.models
    text = serving_config({n: f"{base.rstrip('/')}/{n}" for n in names})
    if args.output:
        storage.write_text(args.output, text)
        print(f"Wrote {args.output} for models {', '.join(names) or '(none)'}")
    else:
        sys.stdout.write(text)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from model_export.loader import load_model

    model = load_model(args.model)
    print(json.dumps({"uri": model.uri, **asdict(model.metadata)}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; exit 2 with one line on bad input."""
    parser = argparse.ArgumentParser(prog="histo-export", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="export a .keras checkpoint as a new model version")
    p.add_argument("--checkpoint", required=True, help=".keras file (local or gs://)")
    p.add_argument("--output", required=True, help="models root URI")
    p.add_argument("--model-name", default="histo-cnn")
    p.add_argument("--class-names", default="benign,malignant")
    p.add_argument("--positive-class", default=contract.DEFAULT_POSITIVE_CLASS)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--architecture", default="custom_cnn")
    p.set_defaults(func=_export)
    p = sub.add_parser("serving-config", help="write TF Serving's models.config")
    p.add_argument("--models", required=True, help="models root URI")
    p.add_argument("--base-path", help="models root as TF Serving sees it (e.g. /models)")
    p.add_argument("--output", help="where to write (default: stdout)")
    p.set_defaults(func=_serving_config)
    p = sub.add_parser("inspect", help="load and check a model, print its metadata")
    p.add_argument("--model", required=True, help="model root or version URI")
    p.set_defaults(func=_inspect)
    args = parser.parse_args(argv)
    from model_export.contract import ContractError
    from model_export.loader import ModelLoadError

    try:
        return args.func(args)
    except (storage.StorageError, ModelLoadError, ContractError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
