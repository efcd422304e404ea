"""Every ``# type: ignore`` in the packages mypy checks names its code and says why.

mypy itself refuses a bare ignore (``ignore-without-code``) and an unneeded one
(``warn_unused_ignores``); this test asks for the reason written beside it, e.g.
``# type: ignore[attr-defined]  # keras has no stubs``.
"""

from __future__ import annotations

import io
import re
import tokenize
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")
_REASON = re.compile(r"^\s*#\s*\S")


def checked_packages() -> list[str]:
    """The folders ``make lint`` type-checks: ``[tool.mypy] files`` in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(config["tool"]["mypy"]["files"])


def ignores_without_reason(source: str) -> list[int]:
    """Line numbers of ``type: ignore`` comments lacking a ``[code]`` or a ``# reason`` after it.

    Only real comments count (tokenized), not text inside strings.
    """
    bad = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        match = _IGNORE.search(token.string)
        if match and not (match["codes"] and _REASON.match(match["rest"])):
            bad.append(token.start[0])
    return bad


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ("x = f()  # type: ignore\n", True),
        ("x = f()  # type: ignore[attr-defined]\n", True),
        ("x = f()  # type: ignore[attr-defined]  #\n", True),
        ("x = f()  # type:ignore  # no code given\n", True),
        ("x = f()  # type: ignore[attr-defined]  # keras has no stubs\n", False),
        ("x = f()  # type: ignore[arg-type, misc]  # Beam's TypeVars\n", False),
        ('x = "# type: ignore"\n', False),
        ("x = f()  # an ordinary comment\n", False),
    ],
)
def test_the_check_tells_reasoned_ignores_from_bare_ones(line: str, bad: bool) -> None:
    assert ignores_without_reason(line) == ([1] if bad else [])


def test_every_type_ignore_in_the_packages_has_a_code_and_a_reason() -> None:
    packages = checked_packages()
    assert "histo_common" in packages and "beam_jobs" in packages
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for package in packages
        for path in sorted((ROOT / package).rglob("*.py"))
        for line in ignores_without_reason(path.read_text())
    ]
    assert not offenders, (
        "write the error code and a reason beside each `# type: ignore`, e.g. "
        "`# type: ignore[attr-defined]  # keras has no stubs` (or fix the type): "
        + ", ".join(offenders)
    )
