"""``python -m model_export``: export an existing checkpoint, inspect a model, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model_export.__main__ import main
from model_export.loader import load_model


def test_export_checkpoint_as_new_version(tmp_path: Path, tiny_model, capsys) -> None:
    checkpoint = f"{tiny_model.version_uri}/model.keras"
    out = tmp_path / "models"
    args = ["export", "--checkpoint", checkpoint, "--output", str(out), "--threshold", "0.3"]
    assert main(args) == 0
    assert "histo-cnn/1" in capsys.readouterr().out
    exported = load_model(str(out / "histo-cnn"))
    assert exported.threshold == 0.3
    assert exported.metadata.image_size == tiny_model.image_size
    original = load_model(tiny_model.version_uri)
    images = [p.read_bytes() for p in sorted(Path(tiny_model.sample_dir).rglob("*.png"))[::9]]
    np.testing.assert_allclose(
        exported.run("serving_default", images)["probability"],
        original.run("serving_default", images)["probability"],
        atol=1e-6,
    )
    assert main(["inspect", "--model", str(out / "histo-cnn")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1 and shown["threshold"] == 0.3


def test_inspect_missing_model_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["inspect", "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no model versions found under") and "Traceback" not in err
