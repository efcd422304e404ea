"""TensorFlow's start-up noise: the line filter, its safety, and a real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from histo_common.tensorflow_env import filter_stream, is_startup_noise

REPO_ROOT = Path(__file__).resolve().parents[2]

# What TensorFlow 2.21 wrote while loading, before it read TF_CPP_MIN_LOG_LEVEL.
NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = (
    b"I0000 00:00:1796323495.394699    9961 port.cc:153] oneDNN custom operations are on. "
    b"You may see slightly different numerical results.\n"
)
CUDA = (
    b"I0000 00:00:1796323495.395021    9961 cudart_stub.cc:31] Could not find cuda drivers "
    b"on your machine, GPU will not be used.\n"
)
ERROR = b"E0000 00:00:1796323616.207815   12229 some_op.cc:52] a real error\n"
FATAL = b"F0000 00:00:1796323616.207815   12229 cpu_feature_guard.cc:1] cannot run here\n"
NOISE_MARKERS = (
    "absl::InitializeLog",
    "oneDNN custom operations",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "cpu_feature_guard",
)


def test_noise_is_what_tensorflow_would_drop_at_the_level() -> None:
    for line in (NOTICE, ONEDNN, CUDA):
        assert is_startup_noise(line, 1) and is_startup_noise(line, 3)
        assert not is_startup_noise(line, 0)
    assert not is_startup_noise(ERROR, 2) and is_startup_noise(ERROR, 3)
    assert not is_startup_noise(FATAL, 3) and not is_startup_noise(FATAL, 9)
    for other in (b"Traceback (most recent call last):\n", b"WARNING: disk full\n", b"\n"):
        assert not is_startup_noise(other, 3)


def test_filter_stream_keeps_everything_else_in_order(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(NOTICE + b"first\n" + ONEDNN + ERROR + CUDA + FATAL + b"last, no newline")
    sink = tmp_path / "out"
    with source.open("rb") as src, sink.open("wb") as out:
        filter_stream(src, out, 2)
    assert sink.read_bytes() == b"first\n" + ERROR + FATAL + b"last, no newline"


def test_a_crash_inside_the_filter_still_shows_its_last_words() -> None:
    # The filter is a separate process: what a dying process wrote reaches the terminal.
    written = NOTICE + ONEDNN + b"plain text\n" + FATAL
    script = textwrap.dedent(
        f"""
        import os
        from histo_common.tensorflow_env import quiet_stderr
        with quiet_stderr(3):
            os.write(2, {written!r})
            os.abort()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=env, timeout=60, check=False
    )
    assert done.returncode != 0
    assert done.stderr == b"plain text\n" + FATAL


def _tensorflow_stderr(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the module's default is what is tested
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.mark.slow
def test_entry_point_prints_no_tensorflow_noise(tiny_model) -> None:
    bare = _tensorflow_stderr(["-c", "import tensorflow as tf; tf.constant(1.0) + 1"])
    if not any(marker in bare.stderr for marker in NOISE_MARKERS):
        pytest.skip("this TensorFlow writes no start-up noise to filter")
    done = _tensorflow_stderr(["-m", "model_export", "inspect", "--model", tiny_model.root_uri])
    assert done.returncode == 0, done.stderr
    assert '"threshold"' in done.stdout
    noise = [m for m in NOISE_MARKERS if m in done.stderr]
    assert not noise, done.stderr
