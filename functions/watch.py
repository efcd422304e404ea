"""The embedded default for Eventarc: watch a bucket and send CloudEvents to the function.

``python -m functions.watch --bucket buckets/uploads --model buckets/models/histo-cnn``
starts the real ``on_upload`` under functions-framework on 127.0.0.1, then polls
the bucket (a local folder, or a ``gs://`` bucket in the storage emulator) and,
for each new or changed image or slide (what the function would be sent:
``histo_common.bucket_events.wants_event``), POSTs a binary-mode
``google.cloud.storage.object.v1.finalized`` CloudEvent shaped like the ones
Cloud Storage sends. Outputs appear beside the image within a few seconds.

A local folder ``<root>/<bucket>`` is passed to the function as
``LOCAL_BUCKET_ROOT=<root>`` plus the bucket name ``<bucket>`` in each event (see
``functions.screening.object_uri``); a ``gs://`` bucket goes to the emulator named
by ``STORAGE_EMULATOR_HOST`` unchanged. Like Eventarc, a delivery that fails
(5xx, or no answer) is sent again on a later poll.
"""

from __future__ import annotations

import histo_common.tensorflow_env  # noqa: F401  (first: sets up TensorFlow before its import)

# isort: split
import argparse
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from functions.screening import (
    FINALIZED_EVENT_TYPE,
    error_uri,
    gradcam_uri,
    prediction_uri,
)
from histo_common import storage
from histo_common.bucket_events import (
    BucketScanner,
    WatchedBucket,
    object_resource,
    watched_bucket,
)
from histo_common.layout import heatmap_sibling

if TYPE_CHECKING:
    from cloudevents.http import CloudEvent

logger = logging.getLogger(__name__)

MAIN_SOURCE = Path(__file__).resolve().with_name("main.py")
REPO_ROOT = MAIN_SOURCE.parents[1]
DEFAULT_INTERVAL_S = 0.5
READY_TIMEOUT_S = 120.0
DELIVERY_TIMEOUT_S = 300.0  # the first event loads TensorFlow and the model


@dataclass(frozen=True)
class WatchConfig:
    """Command-line options, validated."""

    bucket: WatchedBucket
    model_uri: str
    port: int
    interval_s: float = DEFAULT_INTERVAL_S
    once: bool = False
    timeout_s: float | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError(f"--interval must be > 0, got {self.interval_s}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"--timeout must be > 0, got {self.timeout_s}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be 0..65535, got {self.port}")


def finalized_event(bucket: str, name: str, info: storage.ObjectInfo) -> CloudEvent:
    """A CloudEvent shaped like Cloud Storage's ``object.v1.finalized`` for one object.

    The id is derived from the object generation, so redelivering the same
    generation reuses it, as the platform does on retries.
    """
    from cloudevents.http import CloudEvent

    generation = str(info.generation or 0)
    event_id = "local-" + hashlib.sha256(f"{bucket}/{name}#{generation}".encode()).hexdigest()[:20]
    data = object_resource(bucket, name, info)
    attributes = {
        "type": FINALIZED_EVENT_TYPE,
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "subject": f"objects/{name}",
        "id": event_id,
        "time": data["updated"],
    }
    return CloudEvent({k: v for k, v in attributes.items() if v is not None}, data)


def function_environment(config: WatchConfig, env: dict[str, str]) -> dict[str, str]:
    """The environment the function server runs with: the caller's plus its settings."""
    out = dict(env)
    out["MODEL_URI"] = config.model_uri
    out.setdefault("LOG_LEVEL", config.log_level)
    out["WORKERS"] = "1"
    if config.bucket.local_root is not None:
        out["LOCAL_BUCKET_ROOT"] = config.bucket.local_root
    else:
        out.pop("LOCAL_BUCKET_ROOT", None)
    paths = [str(REPO_ROOT), *filter(None, out.get("PYTHONPATH", "").split(os.pathsep))]
    out["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return out


def start_function_server(config: WatchConfig, port: int) -> subprocess.Popen[bytes]:
    """Start ``on_upload`` under functions-framework on 127.0.0.1:``port``."""
    command = [
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        "on_upload",
        "--signature-type",
        "cloudevent",
        "--source",
        str(MAIN_SOURCE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    logger.info("starting the function: %s", " ".join(command))
    # The function's JSON log lines go to stderr, so stdout carries only the results.
    return subprocess.Popen(
        command, env=function_environment(config, dict(os.environ)), stdout=sys.stderr
    )


def wait_until_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until the server answers HTTP at all.

    Raises:
        RuntimeError: if the server exits or does not answer in time.
    """
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"the function server exited with code {server.returncode} before it was "
                "ready; its log is above"
            )
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"the function server at {url} did not answer within {timeout_s:.0f} s")


def deliver(url: str, event: CloudEvent) -> bool:
    """POST one CloudEvent in binary mode; True when the function accepted it (2xx)."""
    import requests
    from cloudevents.conversion import to_binary

    headers, body = to_binary(event)
    try:
        response = requests.post(url, headers=headers, data=body, timeout=DELIVERY_TIMEOUT_S)
    except requests.RequestException as exc:
        logger.warning("delivery of %s failed, will retry: %s", event["subject"], exc)
        return False
    if response.ok:
        return True
    logger.warning(
        "the function answered %d for %s, will retry", response.status_code, event["subject"]
    )
    return False


def result_paths(uri: str) -> list[str]:
    """The outputs that exist beside ``uri`` now."""
    candidates = (heatmap_sibling(uri), gradcam_uri(uri), prediction_uri(uri), error_uri(uri))
    return [out for out in candidates if storage.exists(out)]


class Watcher:
    """Polls a bucket and delivers one event per new object generation to ``url``."""

    def __init__(self, bucket: WatchedBucket, url: str, *, settle: bool) -> None:
        self.url = url
        self._scanner = BucketScanner(bucket, self._deliver, settle=settle)

    def _deliver(self, name: str, info: storage.ObjectInfo) -> bool:
        return deliver(self.url, finalized_event(self._scanner.bucket.name, name, info))

    @property
    def failures(self) -> int:
        """How many deliveries failed (each is retried on a later poll)."""
        return self._scanner.failures

    def poll(self) -> list[str]:
        """List the bucket once and deliver events for new generations; return their URIs."""
        return self._scanner.poll()


def _report(uris: Sequence[str]) -> None:
    for uri in uris:
        outputs = result_paths(uri)
        sys.stdout.write(f"{uri} -> {', '.join(outputs) if outputs else '(skipped)'}\n")
    sys.stdout.flush()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(config: WatchConfig) -> int:
    """Start the function, watch the bucket, stop the function; return an exit code."""
    port = config.port or free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_function_server(config, port)
    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        wait_until_ready(url, server, READY_TIMEOUT_S)
        watcher = Watcher(config.bucket, url, settle=not config.once)
        if config.once:
            _report(watcher.poll())
            return 0 if watcher.failures == 0 else 1
        sys.stdout.write(
            f"watching {config.bucket.list_uri} (function on {url}); "
            "drop images there, Ctrl-C to stop\n"
        )
        sys.stdout.flush()
        deadline = time.monotonic() + config.timeout_s if config.timeout_s else None
        while not stopping and (deadline is None or time.monotonic() < deadline):
            if server.poll() is not None:
                raise RuntimeError(f"the function server exited with code {server.returncode}")
            try:
                _report(watcher.poll())
            except storage.StorageUnavailable as exc:
                logger.warning("cannot list %s, will retry: %s", config.bucket.list_uri, exc)
            time.sleep(config.interval_s)
        return 0
    except RuntimeError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def parse_args(argv: Sequence[str] | None = None) -> WatchConfig:
    """Parse the command line into a :class:`WatchConfig`."""
    parser = argparse.ArgumentParser(
        prog="histo-watch",
        description="Run the upload function locally and feed it storage events for a "
        "watched folder or emulator bucket (research use only).",
    )
    parser.add_argument("--bucket", required=True, help="local folder or gs://bucket[/prefix]")
    parser.add_argument("--model", required=True, help="model root or version URI (MODEL_URI)")
    parser.add_argument("--port", type=int, default=0, help="function port (default: a free one)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="poll seconds")
    parser.add_argument("--once", action="store_true", help="process what is there, then exit")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--log-level", default="INFO", help="log level of the watcher and function")
    args = parser.parse_args(argv)
    try:
        return WatchConfig(
            bucket=watched_bucket(args.bucket),
            model_uri=args.model,
            port=args.port,
            interval_s=args.interval,
            once=args.once,
            timeout_s=args.timeout,
            log_level=args.log_level.upper(),
        )
    except (ValueError, storage.StorageError) as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``histo-watch``, ``python -m functions.watch``)."""
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s watch %(levelname)s %(message)s"
    )
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
