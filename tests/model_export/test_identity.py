"""Which model a URI or a served name means: light resolution, TF Serving's status API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_export import contract
from model_export.identity import (
    ModelIdentity,
    ModelLoadError,
    resolve,
    resolve_model,
    served_identity,
)


def test_resolving_a_model_imports_no_tensorflow(tiny_model) -> None:
    code = (
        "import sys\n"
        "from model_export.identity import resolve_model\n"
        "import model_export.loader, model_export.scoring\n"
        f"resolved = resolve_model({tiny_model.root_uri!r})\n"
        "assert resolved.identity.version == 1, resolved\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_resolve_pins_the_latest_or_the_named_version(tmp_path: Path, tiny_model) -> None:
    root = tmp_path / "histo-cnn"
    shutil.copytree(tiny_model.version_uri, root / "1")
    shutil.copytree(tiny_model.version_uri, root / "2")
    meta = json.loads((root / "2" / "metadata.json").read_text())
    (root / "2" / "metadata.json").write_text(json.dumps({**meta, "version": 2}))
    (root / "3").mkdir()  # an export still running: no metadata yet

    latest = resolve(str(root))
    assert latest.identity == ModelIdentity("histo-cnn", 2, str(root / "2"))
    assert latest.positive_class == meta["positive_class"] == "malignant"
    assert resolve_model(f"{root}/1").identity.version == 1

    (root / "1" / "metadata.json").write_text(json.dumps({**meta, "version": 7}))
    with pytest.raises(ModelLoadError, match="says version 7, but the folder is version 1"):
        resolve_model(f"{root}/1")
    with pytest.raises(ModelLoadError, match="no model versions found under"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="give a model URI"):
        resolve(None, None)


def test_served_identity_asks_tf_serving_for_the_version(model_server, loaded_tiny_model) -> None:
    served = resolve(None, model_server)  # the contract's default name
    assert served.identity == ModelIdentity(
        contract.DEFAULT_MODEL_NAME, loaded_tiny_model.version, model_server
    )
    assert served.metadata is None and served.positive_class == contract.DEFAULT_POSITIVE_CLASS
    with pytest.raises(ModelLoadError, match=r"model 'tf-serving'.*--serving-model-name"):
        served_identity(model_server, "tf-serving")
