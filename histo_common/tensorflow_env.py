"""TensorFlow's process settings, in one place, applied before TensorFlow is imported.

Every entry point imports this module first (``import histo_common.tensorflow_env``):
the training, export, scoring and evaluation command lines, the Cloud Function module
(so also the functions-framework process the watcher starts), the watcher, the Streamlit
app and the benchmarks. Importing it never imports TensorFlow; it

1. sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the caller set it (``0`` shows everything);
2. arranges that the first ``import tensorflow`` in the process runs with file
   descriptor 2 routed through a line filter (a child ``python -I -S`` running this
   file), which drops only TensorFlow's C++ log lines below that level and absl's
   "before InitializeLog" notice. Every other byte passes through as it comes, fatal
   (``F``) lines always; the filter is a separate process, so if TensorFlow aborts
   during the import its last words still reach the terminal. With level 0, or when
   the child cannot start, the import runs unfiltered.

Why a filter: found by experiment with TensorFlow 2.21 on a machine without a GPU.
Each line below is written twice per process by ``import tensorflow`` (by
``libtensorflow_framework`` and again by ``_pywrap_profiler_plugin.so``, which carries
its own copy of TensorFlow's logging), and a process that starts another (the watcher
starting functions-framework) repeats them:

====================================================  ======================================
line                                                  what silences it
====================================================  ======================================
``WARNING: All log messages before absl::Initialize``  nothing: written while the shared
``oneDNN custom operations are on`` (``I``)           libraries load, before TensorFlow
``Could not find cuda drivers`` (``I``)               reads TF_CPP_MIN_LOG_LEVEL (levels
                                                      0 to 3, GLOG_minloglevel,
                                                      ABSL_MIN_LOG_LEVEL, GRPC_VERBOSITY,
                                                      CUDA_VISIBLE_DEVICES change nothing);
                                                      TF_ENABLE_ONEDNN_OPTS=0 drops the
                                                      oneDNN line only by turning oneDNN
                                                      off, a speed change, so it is not set
``cpu_feature_guard.cc`` (``I``, two lines)           TF_CPP_MIN_LOG_LEVEL >= 1
``failed call to cuInit`` (``E``, first device use)   TF_CPP_MIN_LOG_LEVEL = 3 only
====================================================  ======================================
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, BinaryIO

logger = logging.getLogger(__name__)

#: Defaults set where the caller has not set the variable.
DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "3"}

_PREINIT_NOTICE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
)
# absl's prefix: severity, MMDD, time (seconds since 1970 before it is set up), thread id,
# file:line] (e.g. "I0000 00:00:1796323940.11  42 port.cc:153] ").
_ABSL_LINE = re.compile(rb"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_SEVERITY_LEVEL = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}


def min_log_level(environ: Mapping[str, str] = os.environ) -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (0, the default, for unset or bad)."""
    try:
        return int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def is_startup_noise(line: bytes, level: int) -> bool:
    """Whether TensorFlow would have dropped ``line`` at ``level`` had it been initialised.

    True for absl's "before InitializeLog" notice and for absl-formatted log lines whose
    severity (I=0, W=1, E=2) is below ``level``; fatal lines and anything else, never.
    """
    if level <= 0:
        return False
    if line.rstrip(b"\r\n") == _PREINIT_NOTICE:
        return True
    match = _ABSL_LINE.match(line)
    return match is not None and _SEVERITY_LEVEL[match.group(1)] < min(level, 3)


def filter_stream(source: BinaryIO, sink: BinaryIO, level: int) -> None:
    """Copy ``source`` to ``sink`` line by line, as lines come, without the start-up noise."""
    for line in iter(source.readline, b""):
        if not is_startup_noise(line, level):
            sink.write(line)
            sink.flush()


@contextlib.contextmanager
def quiet_stderr(level: int) -> Iterator[None]:
    """Route file descriptor 2 through the line filter (a child process) for a block."""
    child = None
    pipe: IO[bytes] | None = None  # the child's stdin, which fd 2 points at meanwhile
    saved = -1
    if level > 0 and sys.executable and os.path.isfile(__file__):
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(level)],
                stdin=subprocess.PIPE,
                stdout=saved,
                stderr=saved,
            )
            pipe = child.stdin
            if pipe is None:  # never with stdin=PIPE
                raise OSError("the filter process has no input pipe")
            os.dup2(pipe.fileno(), 2)
        except OSError as exc:
            logger.debug("TensorFlow's start-up lines left unfiltered: %s", exc)
            if child is not None:
                child.kill()
                child.wait()
            child = None
    try:
        yield
    finally:
        if child is not None and pipe is not None:
            sys.stderr.flush()
            os.dup2(saved, 2)
            pipe.close()
            # It ends at end of input; a process started meanwhile may hold the pipe.
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        if saved >= 0:
            os.close(saved)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Runs the first ``import tensorflow`` under :func:`quiet_stderr`, then steps aside."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        exec_module = getattr(loader, "exec_module", None)
        if loader is None or exec_module is None:
            return spec

        def quiet_exec_module(module: object) -> None:
            with quiet_stderr(min_log_level()):
                exec_module(module)

        # This loader instance serves the tensorflow package alone.
        loader.exec_module = quiet_exec_module  # type: ignore[method-assign]  # this instance only
        return spec


def configure() -> None:
    """Apply :data:`DEFAULTS` and filter the first ``import tensorflow`` (idempotent)."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    if "tensorflow" in sys.modules:
        logger.debug("TensorFlow was imported before histo_common.tensorflow_env")
        return
    if not any(isinstance(f, _QuietImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())


if __name__ == "__main__":
    # The filter's own process: ``python -I -S tensorflow_env.py LEVEL``.
    filter_stream(sys.stdin.buffer, sys.stdout.buffer, int(sys.argv[1]))
else:
    configure()
