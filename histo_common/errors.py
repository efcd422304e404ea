"""One-line reasons from exceptions, for error rows, error documents and pages.

Every unit that turns an exception into a reason a person reads (the Beam error
rows, the function's ``.error.json``, the app's messages, the loader's
``ModelLoadError``) calls :func:`one_line`, so a reason reads the same wherever
it was written.
"""

from __future__ import annotations

import re

MAX_REASON = 300

# TensorFlow wraps the useful line in graph and stack noise.
_NOISE = re.compile(
    r"^(Graph execution error:?|Detected at node .*|<stack traces unavailable>|\[\[.*|"
    r"Traceback .*|File .*)$"
)


def one_line(exc: BaseException | str, limit: int = MAX_REASON) -> str:
    """The informative line of an error message, shortened, for a one-line reason.

    TensorFlow's messages start with "Graph execution error:" and node names; the
    line that says what went wrong ("Invalid PNG. ...") is the one kept. For an
    exception the type name leads unless the line already names it.

    Args:
        exc: an exception, or a message.
        limit: the longest reason returned (longer ones end with ``...``).

    Returns:
        One line of at most ``limit`` characters.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not _NOISE.match(line)]
    first = (useful or lines or [type(exc).__name__])[0]
    first = re.sub(r"\s*\[\[.*$", "", first) or first
    if isinstance(exc, BaseException) and type(exc).__name__ not in first:
        first = f"{type(exc).__name__}: {first}"
    return first if len(first) <= limit else first[: limit - 3] + "..."
