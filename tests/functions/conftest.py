"""Fixtures for the function's tests: apps built by functions-framework, real CloudEvents."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MAIN_SOURCE = REPO_ROOT / "functions" / "main.py"
FINALIZED = "google.cloud.storage.object.v1.finalized"


def _finalized_event(
    bucket: str,
    name: str,
    generation: int | None,
    *,
    event_id: str | None = None,
    event_type: str = FINALIZED,
):
    """A CloudEvent as Cloud Storage sends it for a finalized object."""
    from cloudevents.http import CloudEvent

    attributes = {
        "type": event_type,
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "subject": f"objects/{name}",
        "id": event_id or uuid.uuid4().hex,
    }
    data = {"bucket": bucket, "name": name, "contentType": "image/png", "metageneration": "1"}
    if generation is not None:
        data["generation"] = str(generation)
    return CloudEvent(attributes, data)


def _send(client, event, mode: str = "binary"):
    """POST a CloudEvent to a test client in binary or structured mode."""
    from cloudevents.conversion import to_binary, to_structured

    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    return client.post("/", headers=headers, data=body)


@pytest.fixture
def finalized_event() -> Callable[..., object]:
    """``finalized_event(bucket, name, generation, *, event_id=None, event_type=...)``."""
    return _finalized_event


@pytest.fixture
def send_event() -> Callable[..., object]:
    """``send_event(client, event, mode="binary" | "structured")`` -> the response."""
    return _send


@pytest.fixture
def malignant_png(sample_dir: Path) -> bytes:
    """One synthetic malignant patch."""
    return sorted((sample_dir / "malignant").glob("*.png"))[0].read_bytes()


@pytest.fixture
def benign_png(sample_dir: Path) -> bytes:
    """One synthetic benign patch."""
    return sorted((sample_dir / "benign").glob("*.png"))[0].read_bytes()


@pytest.fixture
def local_buckets(tmp_path: Path) -> Path:
    """A folder of local buckets with an empty ``uploads`` bucket in it."""
    root = tmp_path / "buckets"
    (root / "uploads").mkdir(parents=True)
    return root


@pytest.fixture
def make_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    """Build a functions-framework test client for ``functions/main.py`` with a given env.

    ``make_client(model_uri, target="on_upload", local_root=None, **env)``; models
    stay cached across tests (keyed by URI), settings are re-read per app.
    """
    import functions_framework

    from functions import runtime
    from functions.logs import remove_logging

    def make(model_uri: str, target: str = "on_upload", local_root: Path | None = None, **env):
        monkeypatch.setenv("MODEL_URI", model_uri)
        if local_root is None:
            monkeypatch.delenv("LOCAL_BUCKET_ROOT", raising=False)
        else:
            monkeypatch.setenv("LOCAL_BUCKET_ROOT", str(local_root))
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        signature = "cloudevent" if target == "on_upload" else "http"
        app = functions_framework.create_app(
            target=target, source=str(MAIN_SOURCE), signature_type=signature
        )
        return app.test_client()

    root = logging.getLogger()
    level = root.level
    path = list(sys.path)
    yield make
    # Leave the session as it was: the app's JSON log handler, the source folder that
    # functions-framework put on sys.path and the module it registered as ``main``.
    runtime.reset(keep_models=True)
    remove_logging()
    root.setLevel(level)
    sys.path[:] = path
    sys.modules.pop("main", None)


@pytest.fixture
def function_server(gcs_emulator, tiny_model_gcs, tmp_path) -> Iterator[str]:
    """``on_upload`` under a functions-framework subprocess, on the session's emulator."""
    import subprocess

    from support import answers, free_port, function_env, wait_for

    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--target=on_upload",
            "--signature-type=cloudevent",
            f"--source={MAIN_SOURCE}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        env=function_env(
            MODEL_URI=tiny_model_gcs, STORAGE_EMULATOR_HOST=gcs_emulator.host, WORKERS="1"
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        assert wait_for(lambda: answers(url) or server.poll() is not None, timeout=60)
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
