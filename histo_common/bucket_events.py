"""Objects appearing in a bucket, and how storage events name them: one home for both.

Cloud Storage tells the upload function (Eventarc CloudEvents) and the streaming
Beam job (Pub/Sub notifications) about new objects with the same facts: bucket,
object name, generation and the JSON API object resource. Locally, a folder
stands in for a bucket and a poller stands in for the notifications;
:class:`BucketScanner` is that poller (used by ``functions.watch`` and by the
stream's notifier), :func:`object_resource` the resource both event formats
carry, and :func:`object_uri` maps an event back to a storage URI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histo_common import storage
from histo_common.images import has_image_suffix
from histo_common.layout import is_output
from histo_common.slides import (
    MULTI_FILE_SUFFIXES,
    SERIES_MEMBER_SUFFIXES,
    SINGLE_FILE_SUFFIXES,
)

logger = logging.getLogger(__name__)


def is_own_output(name: str) -> bool:
    """True for names the upload function writes beside images (never screened again)."""
    return is_output(name)


def is_slide_name(name: str) -> bool:
    """True for a whole-slide format that arrives as a single object."""
    return name.lower().endswith(SINGLE_FILE_SUFFIXES)


def is_multi_file_name(name: str) -> bool:
    """True for a slide format that comes as a file plus a folder of files."""
    return name.lower().endswith(MULTI_FILE_SUFFIXES)


def skip_reason(name: str) -> str | None:
    """Why an uploaded object is not one to screen, by its name alone; None when it is.

    Images and whole-slide files are (multi-file slides too, so that whoever gets
    the event can say why it is not scored one object at a time); the members of
    a DICOM series are not, one by one; nor the pipeline's own outputs.
    """
    if is_own_output(name):
        return "an output of the pipeline"
    if name.lower().endswith(SERIES_MEMBER_SUFFIXES):
        return "a member of a DICOM series: score the series folder with the Beam batch job"
    if not (has_image_suffix(name) or is_slide_name(name) or is_multi_file_name(name)):
        return "not an image or a slide by its name"
    return None


def wants_event(name: str) -> bool:
    """Cheap filter on a name: what :func:`skip_reason` takes, hidden files excepted."""
    return not name.rsplit("/", 1)[-1].startswith(".") and skip_reason(name) is None


def object_uri(bucket: str, name: str, local_root: str | None) -> str:
    """Map an event's bucket and object name to a storage URI.

    In the cloud (and with the GCS emulator) this is ``gs://{bucket}/{name}``. For
    the embedded default, ``local_root`` holds one folder per bucket, so bucket
    ``uploads`` is ``<root>/uploads`` and the same code reads local files.

    Raises:
        storage.InvalidObjectName: when the bucket or name could escape its place.
    """
    if not bucket or "/" in bucket or "\\" in bucket or bucket in {".", ".."}:
        raise storage.InvalidObjectName(f"bucket name {bucket!r} is not a single valid name")
    if not name or name.endswith("/"):
        raise storage.InvalidObjectName(f"object name {name!r} does not name a file")
    if local_root:
        return storage.join(local_root, bucket, name)
    uri = f"{storage.GCS_SCHEME}{bucket}/{name}"
    storage.split_gcs(uri)  # validates both parts
    return uri


def object_resource(bucket: str, name: str, info: storage.ObjectInfo) -> dict[str, Any]:
    """The JSON API object resource storage events carry (``kind: storage#object``)."""
    updated = info.updated.isoformat().replace("+00:00", "Z") if info.updated else None
    return {
        "kind": "storage#object",
        "bucket": bucket,
        "name": name,
        "generation": str(info.generation or 0),
        "metageneration": "1",
        "size": str(info.size),
        "contentType": info.content_type or "application/octet-stream",
        "timeCreated": updated,
        "updated": updated,
    }


@dataclass(frozen=True)
class WatchedBucket:
    """Where a poller looks and how events name it.

    Attributes:
        name: the bucket name put in each event.
        list_uri: what to list (a local folder, or ``gs://bucket/prefix/``).
        local_root: the folder that holds the bucket folder, or None for ``gs://``.
        prefix: object names start with this (``gs://`` only).
    """

    name: str
    list_uri: str
    local_root: str | None
    prefix: str = ""

    def object_name(self, info_uri: str) -> str:
        """The object name (relative to the bucket) of a listed URI."""
        if self.local_root is None:
            return storage.split_gcs(info_uri)[1]
        return os.path.relpath(info_uri, self.list_uri).replace(os.sep, "/")


def watched_bucket(bucket_arg: str) -> WatchedBucket:
    """Interpret a bucket argument: a local folder (created if missing) or ``gs://bucket[/prefix]``.

    Raises:
        ValueError: for a ``gs://`` URI without a valid bucket name.
    """
    if storage.is_gcs(bucket_arg):
        name, prefix = storage.split_gcs(bucket_arg)
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        return WatchedBucket(name, f"gs://{name}/{prefix}", None, prefix)
    folder = os.path.abspath(str(storage.local_path(bucket_arg)))
    Path(folder).mkdir(parents=True, exist_ok=True)
    return WatchedBucket(os.path.basename(folder), folder, os.path.dirname(folder))


Announce = Callable[[str, storage.ObjectInfo], bool]


class BucketScanner:
    """Polls a bucket and announces each new object generation once.

    Args:
        bucket: what to list.
        announce: called with ``(object name, info)``; True when the event was
            accepted. A refused announcement is tried again on a later poll.
        settle: wait until one poll sees a file unchanged (a local copy may still
            be in progress) before announcing it.
        wants: which names to announce (default :func:`wants_event`).
    """

    def __init__(
        self,
        bucket: WatchedBucket,
        announce: Announce,
        *,
        settle: bool,
        wants: Callable[[str], bool] = wants_event,
    ) -> None:
        self.bucket = bucket
        self.announce = announce
        self.settle = settle
        self.wants = wants
        self.announced: dict[str, int | None] = {}
        self._last_seen: dict[str, tuple[int | None, int]] = {}
        self.failures = 0
        self.pending = 0  # announcements refused by the last poll, to try again
        self.settling = 0  # files the last poll saw change, to announce once still

    def poll(self) -> list[str]:
        """List the bucket once and announce new generations; return their URIs."""
        done = []
        pending = settling = 0
        for info in storage.list_objects(self.bucket.list_uri):
            name = self.bucket.object_name(info.uri)
            if not self.wants(name) or self.announced.get(name) == info.generation:
                continue
            seen = (info.generation, info.size)
            if self.settle and self._last_seen.get(name) != seen:
                self._last_seen[name] = seen
                settling += 1
                continue
            if self.announce(name, info):
                self.announced[name] = info.generation
                done.append(info.uri)
            else:
                self.failures += 1
                pending += 1
        self.pending, self.settling = pending, settling
        return done
