"""The function as it really runs: a functions-framework server, the watcher, a storage outage."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support import answers, free_port, function_env

from functions import runtime, screening
from histo_common import storage

REPO_ROOT = Path(__file__).resolve().parents[2]


def _post(url: str, event) -> requests.Response:
    from cloudevents.conversion import to_binary

    headers, body = to_binary(event)
    return requests.post(url, headers=headers, data=body, timeout=180)


def test_server_end_to_end_with_emulator(
    function_server, gcs_bucket, finalized_event, malignant_png
):
    bucket = gcs_bucket[len("gs://") :]
    uri = f"{gcs_bucket}/incoming/p.png"
    storage.write_bytes(uri, malignant_png, content_type="image/png")
    generation = storage.stat(uri).generation
    event = finalized_event(bucket, "incoming/p.png", generation, event_id="srv-1")

    assert _post(function_server, event).status_code == 200

    listing = set(storage.list_uris(f"{gcs_bucket}/incoming/"))
    assert listing == {uri, uri + ".gradcam.png", uri + ".prediction.json"}
    doc = json.loads(storage.read_text(uri + ".prediction.json"))
    assert (doc["event_id"], doc["source_generation"]) == ("srv-1", generation)
    written = storage.stat(uri + ".prediction.json").generation

    # Its own output's finalized event, and a redelivery: 2xx, nothing new written.
    own = storage.stat(uri + ".prediction.json").generation
    assert _post(function_server, finalized_event(bucket, "incoming/p.png.prediction.json", own)).ok
    assert _post(function_server, event).status_code == 200
    assert set(storage.list_uris(f"{gcs_bucket}/incoming/")) == listing
    assert storage.stat(uri + ".prediction.json").generation == written


@pytest.fixture
def doomed_emulator(monkeypatch) -> Iterator[object]:
    """A second emulator of this test's own, which the test stops to cut storage off."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    storage.reset_clients()
    monkeypatch.setattr(storage, "RETRY_DEADLINE_S", 1.0)
    state = {"running": True}

    def stop() -> None:
        if state["running"]:
            server.stop()
            state["running"] = False

    try:
        yield stop
    finally:
        stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        storage.reset_clients()


def test_storage_outage_is_a_retryable_error_not_an_error_file(
    doomed_emulator, make_client, finalized_event, send_event, tiny_model, benign_png, caplog
):
    storage._gcs_client().create_bucket("outage")
    storage.write_bytes("gs://outage/o.png", benign_png)
    generation = storage.stat("gs://outage/o.png").generation
    client = make_client(tiny_model.root_uri)
    runtime.model()  # loaded before the outage: only storage fails
    caplog.set_level("INFO", logger="functions")

    doomed_emulator()
    response = send_event(client, finalized_event("outage", "o.png", generation))

    assert response.status_code == 500  # the platform will deliver the event again
    with pytest.raises(storage.StorageUnavailable):
        screening.screen_object(
            "outage", "o.png", generation, "direct", runtime.settings(), runtime.model
        )
    ours = [r for r in caplog.records if r.name == "functions.screening"]
    statuses = [getattr(r, "status", None) for r in ours]
    assert "error" not in statuses
    assert statuses.count("retry") == 2
    retry = next(r for r in caplog.records if getattr(r, "status", None) == "retry")
    assert "storage unavailable" in retry.getMessage()


def test_watcher_picks_up_a_dropped_file(tmp_path, tiny_model, benign_png):
    uploads = tmp_path / "buckets" / "uploads"
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions.watch",
            "--bucket",
            str(uploads),
            "--model",
            tiny_model.root_uri,
            "--interval",
            "0.2",
            "--timeout",
            "170",
        ],
        cwd=REPO_ROOT,
        env=function_env(),
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "watch.log").open("w"),
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in watcher.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=90)
        assert first.startswith(f"watching {uploads}"), first
        url = first.split("function on ")[1].split(")")[0]

        (uploads / "dropped.png").write_bytes(benign_png)

        reported = lines.get(timeout=120)
        assert reported.startswith(f"{uploads}/dropped.png -> ")
        assert "dropped.png.gradcam.png" in reported and "dropped.png.prediction.json" in reported
        doc = json.loads((uploads / "dropped.png.prediction.json").read_text())
        assert doc["source_generation"] == (uploads / "dropped.png").stat().st_mtime_ns
    finally:
        watcher.send_signal(signal.SIGTERM)
        code = watcher.wait(timeout=30)
    assert code == 0, (tmp_path / "watch.log").read_text()
    assert not answers(url)  # the watcher stopped its function server
