"""Structured logging: one JSON object per line, as Cloud Logging reads it.

Cloud Run (where 2nd-gen functions run) turns each JSON line on stdout into a log
entry: ``severity`` and ``message`` become the entry's severity and text, the other
fields land in ``jsonPayload``. :func:`log_context` attaches the object URI and the
event id to every line logged while one event is handled, including lines from the
loader and the storage layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from typing import IO, Any

_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "histoscreen_log_context", default=None
)
_HANDLER_NAME = "histoscreen-json"
_SKIP = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (e.g. ``uri``, ``event_id``) to every log line inside the block."""
    known = _CONTEXT.get() or {}
    token = _CONTEXT.set({**known, **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line with ``severity``, ``message`` and context fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as one JSON line."""
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
        }
        entry.update(_CONTEXT.get() or {})
        # Fields passed with ``extra=`` on one call.
        entry.update({k: v for k, v in vars(record).items() if k not in _SKIP})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StdoutHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` is now (tests swap it)."""

    def __init__(self, stream: IO[str] | None) -> None:
        logging.Handler.__init__(self)  # not StreamHandler's: it would pin sys.stderr
        self._fixed = stream

    @property
    def stream(self) -> IO[str]:
        return self._fixed if self._fixed is not None else sys.stdout

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        self._fixed = value


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Install the JSON handler on the root logger (once; calling again replaces it).

    Args:
        level: root logging level name.
        stream: where to write; default is the current ``sys.stdout``.

    Returns:
        The installed handler.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = _StdoutHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def remove_logging() -> None:
    """Take the JSON handler off the root logger again (tests, embedding)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
