"""Paths for the Beam jobs, through Beam's ``FileSystems`` (``gs://`` and local alike).

Checking the input patterns at launch (one file each, whatever the count),
naming what the pipeline matched, reading one file, writing one object,
reading back small outputs (file names come from :mod:`histo_common.layout`).
The launcher calls the checks; the stages call the rest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

from histo_common.layout import join

__all__ = ["join"]  # re-exported: the one URI join, from the run layout

logger = logging.getLogger(__name__)

FILE_SCHEME = "file://"


@dataclass(frozen=True)
class MatchedFile:
    """One input found by a pattern: its URI and size in bytes.

    ``series``: the input is a DICOM WSI series, a folder of objects (its URI is
    the folder; its size, theirs together).
    """

    uri: str
    size: int
    series: bool = False


class InputError(ValueError):
    """A user-supplied path or pattern that cannot be used; the message says which."""


def _beam_path(uri: str) -> str:
    # Beam's local filesystem takes plain paths; accept file:// as storage does.
    return uri[len(FILE_SCHEME) :] if uri.startswith(FILE_SCHEME) else uri


def _absolute(path: str) -> str:
    # Rows name local files by absolute path, so they mean the same from any folder.
    return path if FileSystems.get_scheme(path) else os.path.abspath(path)


def matched_file(metadata: FileMetadata) -> MatchedFile:
    """A file Beam's matching found, named by absolute path when local."""
    return MatchedFile(uri=_absolute(metadata.path), size=int(metadata.size_in_bytes))


def _beam_pattern(pattern: str) -> str:
    # Local patterns are made absolute, so matched files and the base folder agree.
    path = _beam_path(pattern)
    return path if FileSystems.get_scheme(path) else os.path.abspath(path)


def check_inputs(patterns: Iterable[str]) -> list[str]:
    """Check, at launch, that the input patterns can be listed and match something.

    Each pattern is matched with a limit of one file, so the cost does not grow
    with the number of inputs (a listing stops at the first match); the pipeline
    matches them in full (:class:`beam_jobs.transforms.MatchInputs`).

    Args:
        patterns: glob patterns or URIs (``gs://`` or local); ``*`` matches within
            one folder, ``**`` across folders, a plain path names one file.

    Returns:
        The patterns as the pipeline matches them (local ones made absolute).

    Raises:
        InputError: when a pattern cannot be listed, or when no pattern matches a file.
    """
    checked, matching = [], 0
    for pattern in patterns:
        beam_pattern = _beam_pattern(pattern)
        try:
            found = _first_match(beam_pattern)
        except BeamIOError as exc:
            causes = "; ".join(f"{type(e).__name__}: {e}" for e in exc.exception_details.values())
            raise InputError(f"cannot list input {pattern!r}: {causes or exc}") from exc
        if found is not None:
            matching += 1
        else:
            logger.warning("Input %s matches no file", pattern)
        checked.append(beam_pattern)
    if not matching:
        raise InputError(f"no files match --input {' '.join(patterns)}")
    return checked


def input_base(patterns: Iterable[str]) -> str:
    """The folder every file the patterns can match sits under (``""`` when none is shared).

    The deepest folder before the first glob character of every pattern, so it is
    known at launch without listing: ``gs://b/slides/**.png`` -> ``gs://b/slides``.
    """
    return common_base(_glob_prefix(_beam_pattern(p)) for p in patterns)


def _glob_prefix(pattern: str) -> str:
    # What Beam lists for a pattern: everything before its first glob character.
    cut = min((i for i in (pattern.find(c) for c in "*?[") if i >= 0), default=len(pattern))
    return pattern[:cut]


def manifest_line(matched: MatchedFile) -> str:
    """One line of the manifest: the file's URI and size as JSON."""
    return json.dumps({"uri": matched.uri, "size": matched.size})


def _open(uri: str) -> BinaryIO:
    # Beam's file handle, without its decompression by suffix.
    return FileSystems.open(_beam_path(uri), compression_type=CompressionTypes.UNCOMPRESSED)


def read_file(uri: str) -> bytes:
    """Read a whole file as bytes, without Beam's decompression by suffix."""
    with _open(uri) as fh:
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


def _first_match(beam_pattern: str) -> str | None:
    # One match, without listing the rest; raises BeamIOError when it cannot list.
    (result,) = FileSystems.match([beam_pattern], limits=[1])
    return result.metadata_list[0].path if result.metadata_list else None


def first_file(pattern: str) -> str | None:
    """One URI matching ``pattern`` (without listing the rest), or None."""
    try:
        return _first_match(_beam_path(pattern))
    except BeamIOError:
        return None


def read_lines(pattern: str) -> Iterator[str]:
    """Yield the non-empty lines of every file matching ``pattern``, streamed file by file."""
    for uri in list_files(pattern):
        with _open(uri) as fh:
            for raw in fh:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.strip():
                    yield line


def read_json_lines(pattern: str) -> Iterator[dict]:
    """Yield one dict per JSON line in the files matching ``pattern``."""
    for line in read_lines(pattern):
        yield json.loads(line)


def delete_matching(pattern: str) -> int:
    """Delete the files matching ``pattern``; return how many."""
    uris = list_files(pattern)
    delete_files(uris)
    return len(uris)


def delete_files(uris: list[str]) -> None:
    """Delete ``uris``; one already gone (deleted by a retried bundle, say) is not an error.

    Raises:
        BeamIOError: for a file that exists and could not be deleted.
    """
    if not uris:
        return
    try:
        FileSystems.delete(uris)
    except BeamIOError as exc:
        failed = {u: e for u, e in exc.exception_details.items() if FileSystems.exists(u)}
        if failed:
            raise BeamIOError(f"could not delete {len(failed)} files", failed) from exc


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
