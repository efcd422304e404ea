"""Cloud Storage Pub/Sub notifications: the message format, parsing it, and a local notifier.

A bucket with a notification configuration publishes one message per object
change: attributes ``eventType`` (``OBJECT_FINALIZE`` for a new object or a new
generation), ``bucketId``, ``objectId``, ``objectGeneration``, ``eventTime``,
``payloadFormat`` (``JSON_API_V1``: the data is the JSON API object resource)
and ``notificationConfig``. The streaming job reads these
(:func:`parse_notification`); locally, :class:`Notifier` publishes the same
messages for files appearing in a folder or an emulator bucket, using the
shared bucket scanner (:mod:`histo_common.bucket_events`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from histo_common import storage
from histo_common.bucket_events import BucketScanner, WatchedBucket, object_resource

logger = logging.getLogger(__name__)

OBJECT_FINALIZE = "OBJECT_FINALIZE"
JSON_API_V1 = "JSON_API_V1"
LOCAL_NOTIFICATION_CONFIG = "projects/_/buckets/{bucket}/notificationConfigs/histoscreen-local"


class NotificationError(ValueError):
    """A Pub/Sub message that is not a storage notification; the message says why."""


@dataclass(frozen=True)
class Notification:
    """What one storage notification says about one object."""

    bucket: str
    name: str
    generation: int
    event_type: str
    size: int | None = None

    @property
    def key(self) -> str:
        """``bucket/name#generation``: the same object generation announced twice is one key."""
        return f"{self.bucket}/{self.name}#{self.generation}"


def parse_notification(data: bytes, attributes: Mapping[str, str]) -> Notification:
    """Read a storage notification from a message's attributes (and its JSON payload).

    The attributes alone suffice (payload format ``NONE`` works too); the JSON
    API payload adds the object size, used to refuse large files unread.

    Raises:
        NotificationError: when the attributes do not name an object generation.
    """
    bucket = attributes.get("bucketId", "")
    name = attributes.get("objectId", "")
    event_type = attributes.get("eventType", "")
    if not bucket or not name or not event_type:
        raise NotificationError(
            "not a Cloud Storage notification: the attributes lack bucketId, objectId or "
            f"eventType (got {sorted(attributes)})"
        )
    try:
        generation = int(attributes.get("objectGeneration", "0") or 0)
    except ValueError as exc:
        raise NotificationError(
            f"objectGeneration {attributes.get('objectGeneration')!r} of {bucket}/{name} "
            "is not an integer"
        ) from exc
    size = None
    if attributes.get("payloadFormat") == JSON_API_V1 and data:
        try:
            size = int(json.loads(data.decode("utf-8")).get("size"))
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
            size = None  # the attributes said enough; the size is only an early check
    return Notification(bucket, name, generation, event_type, size)


def notification_message(
    bucket: str, name: str, info: storage.ObjectInfo, event_type: str = OBJECT_FINALIZE
) -> tuple[bytes, dict[str, str]]:
    """The ``(data, attributes)`` Cloud Storage publishes for one object (JSON API payload)."""
    resource = object_resource(bucket, name, info)
    attributes = {
        "notificationConfig": LOCAL_NOTIFICATION_CONFIG.format(bucket=bucket),
        "eventType": event_type,
        "payloadFormat": JSON_API_V1,
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": resource["generation"],
    }
    if resource["updated"]:
        attributes["eventTime"] = resource["updated"]
    return json.dumps(resource).encode("utf-8"), attributes


class Publisher:
    """Publishes messages to one topic, waiting for each to be accepted.

    Args:
        topic_path: ``projects/P/topics/T``.
        ensure: called before a publish that follows a failure (re-creating the
            topic after an emulator restart, for instance).
    """

    def __init__(
        self,
        topic_path: str,
        ensure: Any = None,
        timeout_s: float = 5.0,
        backoff_s: float = 1.0,
    ) -> None:
        from google.cloud.pubsub_v1 import PublisherClient

        self.topic_path = topic_path
        self.ensure = ensure
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._client = PublisherClient()
        self._failed = False
        self._retry_at = 0.0
        self.published = 0  # counted messages accepted (heartbeats are not counted)

    @property
    def failing(self) -> bool:
        """True from a failed publish until the next one succeeds."""
        return self._failed

    def publish(
        self,
        data: bytes,
        attributes: Mapping[str, str],
        timeout_s: float | None = None,
        counted: bool = True,
    ) -> bool:
        """Publish one message; False (logged) when the service refused or is away.

        After a failure, calls within ``backoff_s`` return False at once, so a
        service that is away does not hold the caller for a timeout per message.
        A ``counted`` message accepted adds one to :attr:`published` (what a local
        stream waits to receive before it ends); heartbeats are not counted.
        """
        if self._failed and time.monotonic() < self._retry_at:
            return False
        try:
            if self._failed and self.ensure is not None:
                self.ensure()
            future = self._client.publish(self.topic_path, data, **attributes)
            future.result(timeout_s or self.timeout_s)
        except Exception as exc:  # any failure: the notifier retries on its next poll
            logger.warning(
                "Could not publish to %s, will retry: %s", self.topic_path, exc or type(exc)
            )
            self._failed = True
            self._retry_at = time.monotonic() + self.backoff_s
            return False
        self._failed = False
        if counted:
            self.published += 1
        return True

    def close(self) -> None:
        """Release the client's connections."""
        self._client.stop()


class Notifier:
    """Announces files appearing in a bucket as storage notifications on a topic.

    The local stand-in for a bucket's notification configuration: it polls the
    bucket with the shared :class:`~histo_common.bucket_events.BucketScanner`
    (one notification per new object generation; a failed publish is retried on
    the next poll) and runs in a thread beside the pipeline. ``heartbeat``, a
    message published on every quiet poll, is for the local runner (see
    ``beam_jobs.stream.is_tick``).
    """

    def __init__(
        self,
        bucket: WatchedBucket,
        publisher: Publisher,
        interval_s: float = 0.5,
        heartbeat: tuple[bytes, dict[str, str]] | None = None,
    ) -> None:
        self.publisher = publisher
        self.interval_s = interval_s
        self.heartbeat = heartbeat
        self.published = 0
        self.scanner = BucketScanner(bucket, self._announce, settle=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _announce(self, name: str, info: storage.ObjectInfo) -> bool:
        data, attributes = notification_message(self.scanner.bucket.name, name, info)
        if self.publisher.publish(data, attributes):
            self.published += 1
            logger.info("Announced %s (generation %s)", info.uri, attributes["objectGeneration"])
            return True
        return False

    def busy(self) -> bool:
        """True while files wait to be announced or the topic cannot be reached."""
        scanner = self.scanner
        return scanner.pending + scanner.settling > 0 or self.publisher.failing

    def poll(self) -> list[str]:
        """Scan once; return the URIs announced."""
        return self.scanner.poll()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.poll() and self.heartbeat is not None:
                    self.publisher.publish(*self.heartbeat, timeout_s=1.0, counted=False)
            except storage.StorageError as exc:
                logger.warning("Cannot list %s, will retry: %s", self.scanner.bucket.list_uri, exc)
            self._stop.wait(self.interval_s)

    def start(self) -> Notifier:
        """Poll in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="notifier", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and close the publisher."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.publisher.close()
