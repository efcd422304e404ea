"""Paths for the Beam jobs, through Beam's ``FileSystems`` (``gs://`` and local alike).

Matching the inputs, reading one file, writing one object, reading back the
sharded outputs (file names come from :mod:`histo_common.layout`). The jobs call
these at pipeline construction time (matching), inside stages (reading and
writing) and after the run (the completeness check).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from histo_common.layout import RunLayout, join

__all__ = ["join"]  # re-exported: the one URI join, from the run layout

logger = logging.getLogger(__name__)

FILE_SCHEME = "file://"


@dataclass(frozen=True)
class MatchedFile:
    """One input file found by a pattern: its URI and size in bytes."""

    uri: str
    size: int


class InputError(ValueError):
    """A user-supplied path or pattern that cannot be used; the message says which."""


def _beam_path(uri: str) -> str:
    # Beam's local filesystem takes plain paths; accept file:// as storage does.
    return uri[len(FILE_SCHEME) :] if uri.startswith(FILE_SCHEME) else uri


def _absolute(path: str) -> str:
    # Rows name local files by absolute path, so they mean the same from any folder.
    return path if FileSystems.get_scheme(path) else os.path.abspath(path)


def match_inputs(patterns: Iterable[str]) -> list[MatchedFile]:
    """Match every input pattern with ``FileSystems.match``; deduplicate by URI.

    ``*`` matches within one folder and ``**`` across folders; a plain path or
    URI names one file.

    Args:
        patterns: glob patterns or URIs (``gs://`` or local).

    Returns:
        The matched files, sorted by URI; local paths made absolute.

    Raises:
        InputError: when a pattern cannot be listed.
    """
    found: dict[str, MatchedFile] = {}
    for pattern in patterns:
        try:
            (result,) = FileSystems.match([_beam_path(pattern)])
        except BeamIOError as exc:
            causes = "; ".join(f"{type(e).__name__}: {e}" for e in exc.exception_details.values())
            raise InputError(f"cannot list input {pattern!r}: {causes or exc}") from exc
        count = 0
        for meta in result.metadata_list:
            uri = _absolute(meta.path)
            found.setdefault(uri, MatchedFile(uri=uri, size=int(meta.size_in_bytes)))
            count += 1
        logger.info("Input %s matched %d file(s)", pattern, count)
    return [found[uri] for uri in sorted(found)]


def manifest_line(matched: MatchedFile) -> str:
    """One line of the manifest: the file's URI and size as JSON."""
    return json.dumps({"uri": matched.uri, "size": matched.size})


def parse_manifest_line(line: str) -> MatchedFile:
    """Read back one manifest line."""
    data = json.loads(line)
    return MatchedFile(uri=data["uri"], size=int(data["size"]))


def write_manifest(output: str, matched: Iterable[MatchedFile]) -> str:
    """Write ``<output>/manifest.jsonl``, the files the job will read; return its URI.

    The pipeline reads its inputs from this file rather than from a list
    embedded in the job graph, which Dataflow caps at about 10 MB.
    """
    uri = RunLayout(output).manifest
    write_text(uri, "".join(manifest_line(m) + "\n" for m in matched), "application/x-ndjson")
    return uri


def read_file(uri: str) -> bytes:
    """Read a whole file as bytes, without Beam's decompression by suffix."""
    with FileSystems.open(_beam_path(uri), compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return fh.read()


def write_file(uri: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    """Write a whole object (replacing it), creating local parent folders."""
    path = _beam_path(uri)
    if FileSystems.get_scheme(path) is None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with FileSystems.create(
        path, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED
    ) as fh:
        fh.write(data)


def write_text(uri: str, text: str, mime_type: str = "text/plain") -> None:
    """Write UTF-8 text (see :func:`write_file`)."""
    write_file(uri, text.encode("utf-8"), mime_type=mime_type)


def exists(uri: str) -> bool:
    """Return True when the file or object exists."""
    return FileSystems.exists(_beam_path(uri))


def list_files(pattern: str) -> list[str]:
    """URIs matching ``pattern``, sorted; nothing when the folder does not exist."""
    try:
        (result,) = FileSystems.match([_beam_path(pattern)])
    except BeamIOError:
        return []
    return sorted(m.path for m in result.metadata_list)


def read_lines(pattern: str) -> Iterator[str]:
    """Yield the non-empty lines of every file matching ``pattern``, file by file."""
    for uri in list_files(pattern):
        for line in read_file(uri).decode("utf-8").splitlines():
            if line.strip():
                yield line


def read_json_lines(pattern: str) -> Iterator[dict]:
    """Yield one dict per JSON line in the files matching ``pattern``."""
    for line in read_lines(pattern):
        yield json.loads(line)


def delete_matching(pattern: str) -> int:
    """Delete the files matching ``pattern``; return how many."""
    uris = list_files(pattern)
    if uris:
        FileSystems.delete(uris)
    return len(uris)


def common_base(uris: Iterable[str]) -> str:
    """The deepest folder that holds every URI (``""`` when they share none)."""
    split = [u.split("/")[:-1] for u in uris]
    if not split:
        return ""
    first = split[0]
    depth = len(first)
    for parts in split[1:]:
        depth = min(depth, len(parts))
        for i in range(depth):
            if parts[i] != first[i]:
                depth = i
                break
    return "/".join(first[:depth])
