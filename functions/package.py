"""Build the deployable source zip for both functions (``on_upload``, ``predict_http``).

Cloud Functions builds from a zip whose root holds ``main.py`` (the entry points)
and ``requirements.txt``. The handlers live in ``functions/main.py`` and import the
shared ``histo_common`` and ``model_export`` packages, so the zip holds those three
packages plus a root ``main.py`` that re-exports the entry points. Terraform
uploads the zip named by its ``function_source_zip`` variable.

Usage: ``python -m functions.package [--output build/function-source.zip]``.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("functions", "histo_common", "model_export")
DEFAULT_OUTPUT = REPO_ROOT / "build" / "function-source.zip"
ROOT_MAIN = '''"""Entry points for Cloud Functions; the code is in functions/main.py."""

from functions.main import on_upload, predict_http

__all__ = ["on_upload", "predict_http"]
'''
# A fixed timestamp makes the zip a pure function of the sources, so an unchanged
# tree gives the same file (and Terraform's content hash does not redeploy).
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def source_files(root: Path = REPO_ROOT) -> list[tuple[str, Path]]:
    """``(name in zip, path)`` for every Python file of the deployed packages."""
    files = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files.append((path.relative_to(root).as_posix(), path))
    return files


def build_zip(output: Path, root: Path = REPO_ROOT) -> list[str]:
    """Write the source zip to ``output``; return the names it holds."""
    output.parent.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[str, bytes]] = [
        ("main.py", ROOT_MAIN.encode()),
        ("requirements.txt", (root / "functions" / "requirements.txt").read_bytes()),
    ]
    entries += [(name, path.read_bytes()) for name, path in source_files(root)]
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return [name for name, _ in entries]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Build the Cloud Functions source zip.")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="zip path to write")
    args = parser.parse_args(argv)
    names = build_zip(args.output)
    sys.stdout.write(f"wrote {args.output} ({len(names)} files)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
