"""One I/O layer for every data and model path in the pipeline.

Every path is a URI: ``gs://bucket/key`` goes through google-cloud-storage, a local
path or ``file://`` URI goes to the filesystem, and both answer the same calls
(``list_uris``, ``read_bytes``, ``write_bytes``, ``exists``, ``delete``, ``stat``).
Training, export, the Cloud Function and the app use this module; Beam jobs use
Beam's ``FileSystems`` instead, which speaks the same URIs.

With ``STORAGE_EMULATOR_HOST`` set, the GCS backend talks to that emulator with an
anonymous client, so the same code runs on a laptop and in the cloud.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Client

GCS_SCHEME = "gs://"
# How long one GCS call keeps retrying transient failures before giving up with
# StorageUnavailable (the library's default is 120 s, too long for a function).
RETRY_DEADLINE_S = float(os.environ.get("HISTO_STORAGE_RETRY_SECONDS", "30"))
FILE_SCHEME = "file://"
_WILDCARDS = "*?["


class StorageError(Exception):
    """Base class for every error this layer raises."""


class InvalidObjectName(StorageError, ValueError):
    """A URI or object name that is malformed or escapes its bucket or folder."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """The object or file does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object already exists or changed generation."""


class StorageUnavailable(StorageError):
    """The storage service could not be reached; retrying later may succeed."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the backend knows about one object or file."""

    uri: str
    size: int
    updated: datetime | None
    generation: int | None = None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- URIs


def is_gcs(uri: str) -> bool:
    """Return True when ``uri`` names a Cloud Storage object (``gs://``)."""
    return uri.startswith(GCS_SCHEME)


def validate_name(name: str, *, what: str = "object name") -> str:
    """Refuse names that could escape their bucket or folder.

    Args:
        name: a relative object name or path inside a bucket or folder.
        what: how to call the thing in the error message.

    Returns:
        ``name`` unchanged when it is safe.

    Raises:
        InvalidObjectName: for NUL bytes, line breaks, ``..`` segments, or an
            absolute name where a relative one is expected.
    """
    if "\x00" in name:
        raise InvalidObjectName(f"{what} {name!r} contains a NUL byte")
    if "\n" in name or "\r" in name:
        raise InvalidObjectName(f"{what} {name!r} contains a line break")
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        raise InvalidObjectName(f"{what} {name!r} is absolute; give a name relative to its parent")
    if ".." in re.split(r"[\\/]", name):
        raise InvalidObjectName(f"{what} {name!r} contains '..' and would escape its folder")
    return name


def split_gcs(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/key`` into ``(bucket, key)``, validating both."""
    if not is_gcs(uri):
        raise InvalidObjectName(f"{uri!r} is not a gs:// URI")
    rest = uri[len(GCS_SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", bucket):
        raise InvalidObjectName(f"{uri!r} does not start with a valid bucket name")
    if key:
        validate_name(key, what=f"object name in {uri!r}")
    return bucket, key


def local_path(uri: str) -> Path:
    """Turn a local path or ``file://`` URI into a ``Path``, validating it."""
    if is_gcs(uri):
        raise InvalidObjectName(f"{uri!r} is a gs:// URI, not a local path")
    # file:// URIs carry the path as is (no percent-decoding), as Beam's FileSystems does.
    path = uri[len(FILE_SCHEME) :] if uri.startswith(FILE_SCHEME) else uri
    if not path:
        raise InvalidObjectName("empty path")
    if "\x00" in path:
        raise InvalidObjectName(f"path {path!r} contains a NUL byte")
    # A local path is the user's own choice of folder, so ``..`` is allowed here;
    # names joined onto it (``join``) and GCS object names may not contain it.
    return Path(path)


def join(base: str, *names: str) -> str:
    """Join relative names onto a base URI (``gs://``, ``file://`` or a path).

    Each name is validated, so a name such as ``../x`` or ``/etc/passwd`` cannot
    escape ``base``.
    """
    out = base
    for name in names:
        validate_name(name)
        if not name:
            continue
        out = out.rstrip("/") + "/" + name.lstrip("/") if out else name
    return out


def parent(uri: str) -> str:
    """Return the URI of the folder that holds ``uri``."""
    head = uri.rstrip("/")
    return head.rsplit("/", 1)[0] if "/" in head else "."


def basename(uri: str) -> str:
    """Return the last name in ``uri``."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob where ``*`` and ``?`` stay inside one folder and ``**`` crosses them."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def has_wildcard(uri: str) -> bool:
    """Return True when ``uri`` contains glob characters."""
    return any(c in uri for c in _WILDCARDS)


# ------------------------------------------------------------------ GCS backend


@functools.cache
def _gcs_client() -> Client:
    """Create the storage client once per process (lazily: importing is cheap)."""
    from google.cloud.storage import Client

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return Client(project="local-emulator", credentials=AnonymousCredentials())
    return Client()


def reset_clients() -> None:
    """Forget cached clients, e.g. after changing ``STORAGE_EMULATOR_HOST`` in tests."""
    _gcs_client.cache_clear()


def _translate_gcs_error(uri: str, exc: Exception) -> StorageError:
    """Map google-cloud errors to this module's error types."""
    from google.api_core import exceptions as gexc
    from requests import exceptions as rexc

    if isinstance(exc, gexc.NotFound):
        return ObjectNotFound(f"{uri} does not exist")
    if isinstance(exc, gexc.PreconditionFailed):
        return PreconditionFailed(f"{uri} changed or already exists (precondition failed)")
    if isinstance(exc, gexc.Forbidden | gexc.Unauthorized):
        return StorageError(f"access to {uri} was refused: {exc.message}")
    if isinstance(exc, rexc.ConnectionError | rexc.Timeout | gexc.ServerError):
        return StorageUnavailable(f"storage unavailable while accessing {uri}: {exc}")
    if isinstance(exc, gexc.GoogleAPICallError):
        return StorageError(f"storage error on {uri}: {exc}")
    return StorageUnavailable(f"storage unavailable while accessing {uri}: {exc}")


_T = TypeVar("_T")


def _gcs_call(uri: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call a google-cloud-storage method with a bounded retry, mapping its errors."""
    from google.api_core import exceptions as gexc
    from google.cloud.storage.retry import DEFAULT_RETRY
    from requests import exceptions as rexc

    kwargs.setdefault("retry", DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_S))
    try:
        return fn(*args, **kwargs)
    except gexc.RetryError as exc:
        raise StorageUnavailable(f"storage unavailable while accessing {uri}: {exc}") from exc
    except (gexc.GoogleAPICallError, rexc.RequestException) as exc:
        raise _translate_gcs_error(uri, exc) from exc


def _blob_info(bucket: str, blob: Blob) -> ObjectInfo:
    """The listing entry for one blob of ``bucket``."""
    return ObjectInfo(
        uri=f"{GCS_SCHEME}{bucket}/{blob.name}",
        size=int(blob.size or 0),
        updated=blob.updated,
        generation=int(blob.generation) if blob.generation is not None else None,
        content_type=blob.content_type,
        metadata=dict(blob.metadata or {}),
    )


# --------------------------------------------------------------------- the API


def list_uris(pattern: str) -> list[str]:
    """List objects matching a prefix or glob, sorted.

    ``gs://b/slides/`` or ``/data/slides`` list everything below that folder;
    ``gs://b/slides/*.png`` or ``/data/**/*.png`` list what matches the glob
    (``*`` stays in one folder, ``**`` crosses folders). Missing folders list
    nothing.
    """
    return [info.uri for info in list_objects(pattern)]


def list_objects(pattern: str) -> list[ObjectInfo]:
    """Like :func:`list_uris`, with each object's size, time and metadata."""
    if is_gcs(pattern):
        return sorted(_gcs_list(pattern), key=lambda i: i.uri)
    return sorted(_local_list(pattern), key=lambda i: i.uri)


def _gcs_list(pattern: str) -> Iterator[ObjectInfo]:
    bucket_name, key = split_gcs(pattern)
    if has_wildcard(key):
        cut = min(key.find(c) for c in _WILDCARDS if c in key)
        prefix = key[:cut]
        regex = _glob_regex(key)
    else:
        prefix = key.rstrip("/") + "/" if key else ""
        regex = None
        exact = key
    client = _gcs_client()
    blobs = _gcs_call(
        pattern, lambda **kw: list(client.list_blobs(bucket_name, prefix=prefix, **kw))
    )
    if regex is None and exact and not exact.endswith("/"):
        # A plain key names one object or a folder; both should list.
        single = _gcs_call(
            pattern, lambda **kw: list(client.list_blobs(bucket_name, prefix=exact, **kw))
        )
        blobs += [b for b in single if b.name == exact]
    for blob in blobs:
        if blob.name.endswith("/"):
            continue  # folder placeholders made by some tools
        if regex is None or regex.match(blob.name):
            yield _blob_info(bucket_name, blob)


def _local_list(pattern: str) -> Iterator[ObjectInfo]:
    as_uri = pattern.startswith(FILE_SCHEME)
    path = str(local_path(pattern))
    if has_wildcard(path):
        cut = min(path.find(c) for c in _WILDCARDS if c in path)
        root = Path(path[:cut].rsplit("/", 1)[0] or "/") if "/" in path[:cut] else Path(".")
        regex = _glob_regex(path)
    else:
        root = Path(path)
        regex = None
        if root.is_file():
            yield _local_info(root, as_uri)
            return
    if not root.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            if filename.startswith(".tmp-"):
                continue  # an atomic write in progress
            full = os.path.join(dirpath, filename)
            candidate = full if root != Path(".") else os.path.relpath(full)
            if regex is None or regex.match(candidate):
                yield _local_info(Path(candidate), as_uri)


def _local_info(path: Path, as_uri: bool) -> ObjectInfo:
    st = path.stat()
    uri = FILE_SCHEME + os.path.abspath(path) if as_uri else str(path)
    return ObjectInfo(
        uri=uri,
        size=st.st_size,
        updated=datetime.fromtimestamp(st.st_mtime, tz=UTC),
        generation=st.st_mtime_ns,
    )


def read_bytes(uri: str) -> bytes:
    """Read a whole object. Raises ObjectNotFound naming ``uri`` when it is missing."""
    if is_gcs(uri):
        bucket, key = split_gcs(uri)
        if not key:
            raise InvalidObjectName(f"{uri!r} names a bucket, not an object")
        blob = _gcs_client().bucket(bucket).blob(key)
        return _gcs_call(uri, blob.download_as_bytes)
    path = local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"{uri} does not exist") from exc
    except IsADirectoryError as exc:
        raise StorageError(f"{uri} is a folder, not a file") from exc


def read_text(uri: str, encoding: str = "utf-8") -> str:
    """Read a whole object as text."""
    return read_bytes(uri).decode(encoding)


def write_bytes(
    uri: str,
    data: bytes,
    *,
    content_type: str | None = None,
    metadata: dict[str, str] | None = None,
    if_generation_match: int | None = None,
) -> None:
    """Write a whole object, creating parent folders locally.

    Local writes are atomic: the bytes go to a temporary name in the same folder
    that is then renamed, so a reader never sees half a file.

    Args:
        uri: where to write.
        data: the bytes.
        content_type: MIME type for GCS (ignored locally).
        metadata: custom metadata for GCS (ignored locally).
        if_generation_match: ``0`` writes only if the object does not exist yet
            (on both backends); another number is a GCS generation precondition.

    Raises:
        PreconditionFailed: when ``if_generation_match`` is not met.
    """
    if is_gcs(uri):
        bucket, key = split_gcs(uri)
        if not key:
            raise InvalidObjectName(f"{uri!r} names a bucket, not an object")
        blob = _gcs_client().bucket(bucket).blob(key)
        if metadata:
            blob.metadata = metadata
        kwargs: dict[str, str | int | None] = {"content_type": content_type}
        if if_generation_match is not None:
            # GCS enforces the precondition atomically; the look-up first gives the
            # same answer on emulators that ignore it.
            if if_generation_match == 0 and _gcs_call(uri, blob.exists):
                raise PreconditionFailed(f"{uri} already exists")
            kwargs["if_generation_match"] = if_generation_match
        _gcs_call(uri, blob.upload_from_string, data, **kwargs)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if if_generation_match == 0:
            try:
                os.link(tmp, path)  # fails if the target exists: create-only, atomically
            except FileExistsError as exc:
                raise PreconditionFailed(f"{uri} already exists") from exc
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(
    uri: str,
    text: str,
    *,
    content_type: str | None = None,
    metadata: dict[str, str] | None = None,
    if_generation_match: int | None = None,
) -> None:
    """Write text as UTF-8 (see :func:`write_bytes`)."""
    write_bytes(
        uri,
        text.encode("utf-8"),
        content_type=content_type,
        metadata=metadata,
        if_generation_match=if_generation_match,
    )


def exists(uri: str) -> bool:
    """Return True when the object or file exists."""
    if is_gcs(uri):
        bucket, key = split_gcs(uri)
        if not key:
            return _gcs_call(uri, _gcs_client().bucket(bucket).exists)
        return _gcs_call(uri, _gcs_client().bucket(bucket).blob(key).exists)
    return local_path(uri).exists()


def stat(uri: str) -> ObjectInfo:
    """Return size, update time, generation and metadata of one object."""
    if is_gcs(uri):
        bucket, key = split_gcs(uri)
        blob = _gcs_call(uri, _gcs_client().bucket(bucket).get_blob, key)
        if blob is None:
            raise ObjectNotFound(f"{uri} does not exist")
        return _blob_info(bucket, blob)
    path = local_path(uri)
    if not path.is_file():
        raise ObjectNotFound(f"{uri} does not exist")
    return _local_info(path, uri.startswith(FILE_SCHEME))


def delete(uri: str, *, missing_ok: bool = False) -> None:
    """Delete one object or file."""
    if is_gcs(uri):
        bucket, key = split_gcs(uri)
        try:
            _gcs_call(uri, _gcs_client().bucket(bucket).blob(key).delete)
        except ObjectNotFound:
            if not missing_ok:
                raise
        return
    path = local_path(uri)
    try:
        path.unlink()
    except FileNotFoundError as exc:
        if not missing_ok:
            raise ObjectNotFound(f"{uri} does not exist") from exc


def copy_tree_to(local_dir: str | Path, dest: str) -> list[str]:
    """Upload every file under ``local_dir`` to ``dest`` (a folder URI), keeping names.

    Used to publish a SavedModel written locally by TensorFlow to ``gs://``.
    """
    root = Path(local_dir)
    written = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        target = join(dest, path.relative_to(root).as_posix())
        write_bytes(target, path.read_bytes())
        written.append(target)
    return written


def copy_tree_from(src: str, local_dir: str | Path) -> list[Path]:
    """Download every object under ``src`` (a folder URI) into ``local_dir``."""
    root = Path(local_dir)
    prefix = src.rstrip("/") + "/"
    written = []
    for uri in list_uris(src):
        rel = uri[len(prefix) :] if uri.startswith(prefix) else basename(uri)
        validate_name(rel)
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(uri))
        written.append(target)
    return written
