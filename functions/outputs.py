"""The outputs the function writes beside an upload, written idempotently.

Delivery is at least once, so every output records the source object's generation
(``source-generation`` metadata on GCS, ``source_generation`` in the JSON) and is
written with a generation precondition: create-only when it was absent, else
only over the version that was seen. A write that loses a race raises
``storage.PreconditionFailed``; the caller reports the event as a duplicate.
The look-ups are kept few, since on Cloud Storage each one is a round trip.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from histo_common import storage

logger = logging.getLogger(__name__)

GENERATION_METADATA_KEY = "source-generation"


@dataclass(frozen=True)
class PriorOutput:
    """An output already beside the image, from this or an earlier generation."""

    uri: str
    object_generation: int | None
    source_generation: int | None


@dataclass(frozen=True)
class Priors:
    """The outputs found beside an object before it is screened."""

    prediction: PriorOutput | None
    error: PriorOutput | None

    @property
    def recorded_generation(self) -> int:
        """The source generation the existing outputs were made from (0: none)."""
        found = [p.source_generation or 0 for p in (self.prediction, self.error) if p]
        return max(found, default=0)

    @property
    def prediction_seen(self) -> int | None:
        """The object generation of the prediction seen (None: there was none)."""
        return self.prediction.object_generation if self.prediction else None

    @property
    def error_seen(self) -> int | None:
        """The object generation of the error document seen (None: there was none)."""
        return self.error.object_generation if self.error else None


def read_prior(uri: str) -> PriorOutput | None:
    """What an existing output says about the generation it was made from."""
    try:
        info = storage.stat(uri)
    except storage.ObjectNotFound:
        return None
    source = info.metadata.get(GENERATION_METADATA_KEY)
    if source is None:  # local files carry no metadata: read the document
        try:
            source = json.loads(storage.read_text(uri)).get("source_generation")
        except storage.ObjectNotFound:
            return None
        except (ValueError, AttributeError):
            source = None  # unreadable: treat as older, so it gets rewritten
    try:
        source_generation = int(source) if source is not None else None
    except (TypeError, ValueError):
        source_generation = None
    return PriorOutput(uri, info.generation, source_generation)


def write_output(
    uri: str, data: bytes, content_type: str, generation: int, event_id: str, *, seen: int | None
) -> None:
    """Write an output over the version seen: create-only when ``seen`` is None (absent).

    Raises:
        storage.PreconditionFailed: the output changed since it was seen (another
            delivery of the event got there first).
    """
    storage.write_bytes(
        uri,
        data,
        content_type=content_type,
        metadata={GENERATION_METADATA_KEY: str(generation), "event-id": event_id},
        if_generation_match=seen if seen else 0,
    )


def write_unseen(
    uri: str,
    data: bytes,
    content_type: str,
    generation: int,
    event_id: str,
    *,
    likely_absent: bool,
) -> None:
    """Write an output whose current version was not looked up yet.

    For a first upload (no prediction beside it) an overlay or heatmap is almost
    never there, so it is written create-only straight away, saving a look-up per
    event; only if that fails (an interrupted earlier delivery left one) is the
    version looked up and written over, as it is at once when a prediction exists.
    """
    if likely_absent:
        try:
            write_output(uri, data, content_type, generation, event_id, seen=None)
            return
        except storage.PreconditionFailed:
            pass
    try:
        seen = storage.stat(uri).generation
    except storage.ObjectNotFound:
        seen = None
    write_output(uri, data, content_type, generation, event_id, seen=seen)


def json_bytes(doc: dict[str, Any]) -> bytes:
    """A JSON document as written beside an upload (indented, one trailing newline)."""
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")
