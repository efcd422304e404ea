"""Settings from the environment, the bucket mapping, and the deployable zip."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from functions import screening
from functions.package import build_zip
from functions.settings import ConfigError, FunctionSettings
from histo_common import bucket_events, storage


def test_settings_parse_and_default():
    settings = FunctionSettings.from_env(
        {
            "MODEL_URI": "gs://p-models/histo-cnn",
            "MAX_IMAGE_PIXELS": "1_000_000",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.model_uri == "gs://p-models/histo-cnn"
    assert settings.max_image_pixels == 1_000_000
    assert settings.log_level == "DEBUG"
    assert settings.local_bucket_root is None


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "MODEL_URI"),
        ({"MODEL_URI": "m", "MAX_IMAGE_PIXELS": "lots"}, "MAX_IMAGE_PIXELS"),
        ({"MODEL_URI": "m", "MAX_IMAGE_PIXELS": "0"}, "MAX_IMAGE_PIXELS"),
        ({"MODEL_URI": "m", "MAX_IMAGE_BYTES": "-5"}, "MAX_IMAGE_BYTES"),
        ({"MODEL_URI": "m", "LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"MODEL_URI": "m", "LOCAL_BUCKET_ROOT": "relative/path"}, "LOCAL_BUCKET_ROOT"),
    ],
)
def test_bad_settings_name_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        FunctionSettings.from_env(env)


def test_missing_model_uri_fails_at_start(make_client, monkeypatch):
    monkeypatch.delenv("MODEL_URI", raising=False)
    with pytest.raises(ConfigError, match="MODEL_URI is not set"):
        make_client("")


def test_object_uri_maps_buckets_to_gcs_or_local_folders(tmp_path):
    cloud = FunctionSettings(model_uri="m")
    local = FunctionSettings(model_uri="m", local_bucket_root=str(tmp_path))
    assert screening.object_uri("p-uploads", "a/b.png", cloud) == "gs://p-uploads/a/b.png"
    assert screening.object_uri("uploads", "a/b.png", local) == f"{tmp_path}/uploads/a/b.png"
    for bucket, name in (("uploads", "../x.png"), ("..", "x.png"), ("a/b", "x.png"), ("u", "d/")):
        with pytest.raises(storage.InvalidObjectName):
            screening.object_uri(bucket, name, local)
    with pytest.raises(storage.InvalidObjectName):
        screening.object_uri("Bad_Bucket!", "x.png", cloud)


def test_skip_rules():
    assert bucket_events.skip_reason("a.png") is None
    assert bucket_events.skip_reason("dir/a.TIFF") is None
    assert "output" in bucket_events.skip_reason("a.png.gradcam.png")
    assert "output" in bucket_events.skip_reason("a.png.error.json")
    assert "not an image" in bucket_events.skip_reason("a.txt")
    assert bucket_events.skip_reason("case/slide.SVS") is None
    assert "DICOM series" in bucket_events.skip_reason("case/1.dcm")


def test_source_zip_serves_the_entry_points_from_its_root(tmp_path):
    archive = tmp_path / "function-source.zip"
    names = build_zip(archive)
    assert {
        "main.py",
        "requirements.txt",
        "functions/main.py",
        "histo_common/storage.py",
        "model_export/loader.py",
    } <= set(names)
    assert not any(n.startswith(("training/", "tests/")) for n in names)
    assert build_zip(tmp_path / "again.zip") == names
    assert (tmp_path / "again.zip").read_bytes() == archive.read_bytes()  # reproducible

    unpacked = tmp_path / "src"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(unpacked)
    # Load the zip's root main.py as Cloud Functions does; the code must come from the zip.
    script = (
        "import functions_framework, sys; "
        "functions_framework.create_app(target='on_upload', source='main.py'); "
        "print(sys.modules['functions.main'].__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=unpacked,
        env={"MODEL_URI": "gs://x-models/histo-cnn", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(unpacked / "functions" / "main.py")


# Imported by the deployed packages but never on the function's paths.
NOT_DEPLOYED = {
    "tensorflow_serving": "model_export.serving_client: Beam's --model-endpoint only",
}


def test_the_deployed_requirements_provide_every_import():
    """Each third-party import in the zipped packages comes with functions/requirements.txt.

    Directly pinned, or required by a pinned distribution: a tiled upload imports
    scipy (the tissue mask), which the deployed function would otherwise lack.
    """
    import ast
    from importlib import metadata

    from packaging.requirements import Requirement

    from functions.package import PACKAGES, REPO_ROOT

    imported: set[str] = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {*PACKAGES, "__future__"}

    lines = (REPO_ROOT / "functions" / "requirements.txt").read_text().splitlines()
    pending = [Requirement(line).name for line in lines if line.strip() and line[0] != "#"]
    provided: set[str] = set()
    while pending:
        dist = pending.pop().lower().replace("_", "-")
        if dist in provided:
            continue
        provided.add(dist)
        for text in metadata.requires(dist) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    by_module = metadata.packages_distributions()
    missing = {
        module: by_module.get(module)
        for module in sorted(third_party - set(NOT_DEPLOYED))
        if not {d.lower().replace("_", "-") for d in by_module.get(module, [])} & provided
    }
    assert not missing, f"add to functions/requirements.txt: {missing}"
