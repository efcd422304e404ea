"""Google's Pub/Sub emulator on 127.0.0.1: the embedded default for the stream's topic.

``python -m beam_jobs.stream`` without ``--subscription`` starts the emulator
itself (:class:`PubSubEmulator`), creates a topic and a subscription
(:func:`ensure_topic_and_subscription`) and stops it on exit. The emulator is
Google's Java server from the Cloud SDK (package ``google-cloud-cli-pubsub-emulator``
or ``gcloud components install pubsub-emulator``); :func:`find_emulator` finds it
through ``PUBSUB_EMULATOR_BIN`` or gcloud's SDK root. Clients reach it through
``PUBSUB_EMULATOR_HOST``, which google-cloud-pubsub honours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

logger = logging.getLogger(__name__)

EMULATOR_ENV = "PUBSUB_EMULATOR_BIN"
HOST_ENV = "PUBSUB_EMULATOR_HOST"
_SDK_RELATIVE = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")
READY_TIMEOUT_S = 60.0
INSTALL_HINT = (
    "Google's Pub/Sub emulator was not found: install it with "
    "`apt-get install google-cloud-cli-pubsub-emulator` (Google's apt repository) or "
    "`gcloud components install pubsub-emulator`, or set PUBSUB_EMULATOR_BIN to its "
    "cloud-pubsub-emulator script, or pass --subscription to read a real subscription."
)


class EmulatorNotFound(RuntimeError):
    """Google's Pub/Sub emulator is not installed where we look; the message says how."""


class EmulatorFailed(RuntimeError):
    """The emulator was found but did not start."""


def _sdk_roots() -> list[Path]:
    roots = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        # gcloud lives in <sdk root>/bin; /usr/bin/gcloud is a link into the SDK.
        roots.append(Path(os.path.realpath(gcloud)).parent.parent)
    roots.extend(Path(r) for r in _SDK_ROOTS)
    return roots


def find_emulator() -> str:
    """The emulator's start script: ``PUBSUB_EMULATOR_BIN``, else under gcloud's SDK root.

    Raises:
        EmulatorNotFound: with one sentence saying how to install it.
    """
    configured = os.environ.get(EMULATOR_ENV)
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise EmulatorNotFound(
            f"{EMULATOR_ENV}={configured} is not an executable file. {INSTALL_HINT}"
        )
    for root in _sdk_roots():
        candidate = root / _SDK_RELATIVE
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise EmulatorNotFound(INSTALL_HINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PubSubEmulator:
    """One emulator process on ``127.0.0.1:port``; a context manager that stops it.

    Args:
        port: the port to listen on (0: a free one). ``restart()`` keeps it, so
            clients configured with :attr:`host` reconnect to the new process.
        binary: the start script (default: :func:`find_emulator`).
    """

    def __init__(self, port: int = 0, binary: str | None = None) -> None:
        self.binary = binary or find_emulator()
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._data_dir: str | None = None
        self._log: IO[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:port``, the value of ``PUBSUB_EMULATOR_HOST``."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> PubSubEmulator:
        """Start the process and wait until it accepts connections.

        Raises:
            EmulatorFailed: when it exits or does not listen within ``timeout_s``.
        """
        if self.running:
            return self
        self._data_dir = tempfile.mkdtemp(prefix="pubsub-emulator-")
        self._log = tempfile.NamedTemporaryFile(prefix="pubsub-emulator-", suffix=".log")  # noqa: SIM115
        command = [self.binary, "--host=127.0.0.1", f"--port={self.port}"]
        logger.info("Starting the Pub/Sub emulator: %s", " ".join(command))
        # The script execs java, so this pid is the server's: stop() leaves no orphan.
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._data_dir,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorFailed(
                    f"the Pub/Sub emulator ({self.binary}) exited with code "
                    f"{self._process.returncode}: {self._log_tail()}"
                )
            if _listening(self.port):
                logger.info("Pub/Sub emulator listening on %s", self.host)
                return self
            time.sleep(0.1)
        self.stop()
        raise EmulatorFailed(
            f"the Pub/Sub emulator did not listen on {self.host} in {timeout_s:.0f} s"
        )

    def stop(self) -> None:
        """Stop the process (and its process group) and remove its files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            logger.info("Pub/Sub emulator on %s stopped", self.host)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._data_dir:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def restart(self) -> None:
        """Stop and start again on the same port (topics and subscriptions are gone)."""
        self.stop()
        self.start()

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-3:])

    def __enter__(self) -> PubSubEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ensure_topic_and_subscription(project: str, topic: str, subscription: str) -> str:
    """Create the topic and a pull subscription on it when missing.

    Returns the subscription's path (``projects/P/subscriptions/S``).

    Idempotent, so a notifier can call it again after the emulator restarted.
    """
    from google.api_core import exceptions
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

    publisher = PublisherClient()
    subscriber = SubscriberClient()
    topic_path = publisher.topic_path(project, topic)
    subscription_path = subscriber.subscription_path(project, subscription)
    try:
        with contextlib.suppress(exceptions.AlreadyExists):
            publisher.create_topic(name=topic_path)
        with contextlib.suppress(exceptions.AlreadyExists):
            subscriber.create_subscription(
                name=subscription_path, topic=topic_path, ack_deadline_seconds=60
            )
    finally:
        subscriber.close()
        publisher.transport.close()
    return subscription_path
