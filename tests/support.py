"""Small helpers the tests share (importable as ``support``; bench/ imports it too)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def function_env(**extra: str) -> dict[str, str]:
    """The environment for a function or watcher subprocess: this one, importing this checkout."""
    import os
    from pathlib import Path

    env = dict(os.environ)
    env.pop("LOCAL_BUCKET_ROOT", None)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(extra)
    return env


def answers(url: str) -> bool:
    """True when something answers HTTP at ``url``."""
    import requests

    try:
        requests.get(url, timeout=2)
        return True
    except requests.RequestException:
        return False


def run_local_stream(
    watch: Path,
    model: str | Path,
    output: Path,
    scenario: Callable[[Any], None],
    *,
    idle_s: float,
    flags: Sequence[str] = (),
) -> list[BaseException]:
    """Run ``beam_jobs.stream`` on a watched folder in this thread, ``scenario`` in another.

    ``scenario`` gets the stream's ``LocalSetup`` once it is ready; the stream stops
    after ``idle_s`` seconds without input. Windows are 2 s; ``flags`` adds more.

    Returns:
        What ``scenario`` raised (empty when it finished).
    """
    from beam_jobs import stream

    failures: list[BaseException] = []

    def guarded(setup: Any) -> None:
        try:
            scenario(setup)
        except BaseException as exc:  # reported by the caller
            failures.append(exc)

    argv = [
        *("--watch", str(watch), "--model", str(model), "--output", str(output)),
        *("--max-idle-seconds", str(idle_s), "--window-seconds", "2"),
        *flags,
    ]

    def start(setup: Any) -> None:
        # A daemon: a scenario still waiting when the stream ends never holds the process.
        threading.Thread(target=guarded, args=(setup,), daemon=True).start()

    stream.run(argv, on_ready=start)
    return failures


CHROMIUM = "/usr/bin/chromium"
# Headless Chromium on a machine with no network but loopback: no background
# connections, no sandbox (tests run as root), no GPU.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)


def launch_chromium(playwright):
    """Debian's Chromium through Playwright, or a pytest skip saying it is absent."""
    import os

    import pytest

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (make setup installs Debian's chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
