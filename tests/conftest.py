"""Shared fixtures for the whole test session.

- google-auth is kept off the network, TensorFlow quiet.
- ``gcs_emulator``: one real GCS JSON-API server (gcp-storage-emulator) on a free
  127.0.0.1 port for the session; ``gcs_bucket`` makes a fresh bucket per test.
- ``sample_dir``: a small synthetic labelled set on disk.
- ``tiny_model``: one tiny model trained once per session and exported in the
  SavedModel contract (see tests/model_fixtures.py).
- ``model_server``: the tiny model behind an in-process stand-in for TF Serving's
  gRPC API (see tests/serving_fixtures.py); its ``host:port``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["NO_GCE_CHECK"] = "true"
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; HISTO_SHARED_DIR points elsewhere (e.g. from a worktree).
SHARED_DIR = Path(os.environ.get("HISTO_SHARED_DIR") or REPO_ROOT.parent / "shared")
IDC_DIR = SHARED_DIR / "data" / "idc"
WEIGHTS_DIR = SHARED_DIR / "weights"


class Emulator:
    """A gcp-storage-emulator server running in this process."""

    def __init__(self) -> None:
        from gcp_storage_emulator.server import create_server

        self.port = free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self._server = create_server("127.0.0.1", self.port, in_memory=True)
        self._server.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._server.stop()
            self.running = False


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Emulator]:
    """The session's storage emulator, with STORAGE_EMULATOR_HOST pointing at it."""
    from histo_common import storage

    emulator = Emulator()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.host
    storage.reset_clients()
    yield emulator
    emulator.stop()
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    storage.reset_clients()


@pytest.fixture
def gcs_bucket(gcs_emulator: Emulator) -> Iterator[str]:
    """A new, empty emulator bucket for one test; returns ``gs://name``."""
    from histo_common import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    client = storage._gcs_client()
    bucket = client.create_bucket(name)
    yield f"gs://{name}"
    for blob in client.list_blobs(name):
        blob.delete()
    bucket.delete()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic labelled set: ``<dir>/benign/*.png``, ``<dir>/malignant/*.png``."""
    from histo_common.samples import generate_samples

    root = tmp_path_factory.mktemp("samples")
    generate_samples(str(root), count=80, seed=123, size=48)
    return root


@pytest.fixture(scope="session")
def idc_dir() -> Path:
    """The real IDC patches beside the project, or a skip saying they are absent."""
    if not (IDC_DIR / "labels.csv").is_file():
        pytest.skip(f"real IDC data not found at {IDC_DIR}; real-data checks skipped")
    return IDC_DIR


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path):
    """The session's tiny trained model, exported locally (a ``model_fixtures.TinyModel``)."""
    from model_fixtures import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models"), sample_dir)


@pytest.fixture(scope="session")
def loaded_tiny_model(tiny_model):
    """The tiny model loaded once with ``model_export.loader.load_model``."""
    from model_export.loader import load_model

    return load_model(tiny_model.root_uri)


@pytest.fixture(scope="session")
def tiny_model_gcs(gcs_emulator: Emulator, tiny_model) -> str:
    """The tiny model copied into an emulator bucket; returns its ``gs://`` model root."""
    from histo_common import storage

    storage._gcs_client().create_bucket("session-models")
    root = "gs://session-models/histo-cnn"
    storage.copy_tree_to(tiny_model.root_uri, root)
    return root


@pytest.fixture
def model_server(loaded_tiny_model) -> Iterator[str]:
    """The tiny model served over gRPC (Predict, GetModelStatus) on 127.0.0.1: ``host:port``."""
    from serving_fixtures import start_model_server

    server = start_model_server(loaded_tiny_model)
    yield server.endpoint
    server.stop()
