"""Screening one uploaded object: the function's logic, with no event in sight.

``screen_object`` takes what a storage event names (bucket, object, generation,
event id) and the settings, and either writes ``<name>.gradcam.png`` plus
``<name>.prediction.json`` beside the image, writes ``<name>.error.json`` for a
file that can never be scored, or skips with a reason. It returns an
:class:`Outcome`; the handlers in ``main`` only translate events and requests.

Delivery is at least once, so every decision is idempotent: outputs record the
source object's generation (in the JSON, and as ``source-generation`` metadata on
GCS) and are written with generation preconditions; a repeated event for a
generation already done is a duplicate, an event older than the object's current
generation is stale. Transient storage failures (``StorageUnavailable``) propagate
so the platform retries; bad files never raise.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from functions.logs import StageClock, log_context
from functions.settings import FunctionSettings
from histo_common import DISCLAIMER, bucket_events, storage
from histo_common.bucket_events import is_own_output
from histo_common.errors import one_line
from histo_common.images import ImageError, ImageInfo, check_and_prepare, has_image_suffix
from histo_common.layout import error_sibling, gradcam_sibling, prediction_sibling
from histo_common.overlay import encode_overlay_png, load_rgb, overlay_picture
from histo_common.results import ErrorRow, ResultRow, prediction_document
from model_export import contract
from model_export.loader import LoadedModel, ModelLoadError
from model_export.scoring import score_batch

logger = logging.getLogger(__name__)

GENERATION_METADATA_KEY = "source-generation"
FINALIZED_EVENT_TYPE = "google.cloud.storage.object.v1.finalized"

_RACE_LOST = "another delivery of this event wrote the outputs first"

ModelProvider = Callable[[], LoadedModel]


class Status(StrEnum):
    """What happened to one object."""

    SCORED = "scored"  # prediction and Grad-CAM written
    ERROR = "error"  # a bad file: error.json written
    SKIPPED = "skipped"  # not ours to score (own output, not an image, gone)
    DUPLICATE = "duplicate"  # this generation was already done
    STALE = "stale"  # the object has a newer generation than the event


class UndecodableImage(ImageError):
    """Bytes whose header looked fine but that the model's decoder refused."""


@dataclass(frozen=True)
class Outcome:
    """The result of screening one object."""

    status: Status
    uri: str
    reason: str = ""
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoredImage:
    """One image scored by the model, with its overlay drawn."""

    row: ResultRow
    overlay_png: bytes
    info: ImageInfo
    model_uri: str


@dataclass(frozen=True)
class _PriorOutput:
    """An output already beside the image, from this or an earlier generation."""

    uri: str
    object_generation: int | None
    source_generation: int | None


@dataclass(frozen=True)
class _Priors:
    """The outputs found beside an object before it is screened."""

    prediction: _PriorOutput | None
    error: _PriorOutput | None

    @property
    def recorded_generation(self) -> int:
        """The source generation the existing outputs were made from (0: none)."""
        found = [p.source_generation or 0 for p in (self.prediction, self.error) if p]
        return max(found, default=0)


# --------------------------------------------------------------------- names


def object_uri(bucket: str, name: str, settings: FunctionSettings) -> str:
    """Map an event's bucket and object name to a storage URI.

    In the cloud (and with the GCS emulator) this is ``gs://{bucket}/{name}``. For
    the embedded default, ``settings.local_bucket_root`` holds one folder per
    bucket, so bucket ``uploads`` is ``<root>/uploads`` and the same code reads
    and writes local files.

    Raises:
        storage.InvalidObjectName: when the bucket or name could escape its place.
    """
    return bucket_events.object_uri(bucket, name, settings.local_bucket_root)


# Output names beside each upload: one definition, in the run layout.
gradcam_uri = gradcam_sibling
prediction_uri = prediction_sibling
error_uri = error_sibling


def skip_reason(name: str) -> str | None:
    """Why an object is not ours to score by its name alone, or None when it is."""
    if is_own_output(name):
        return "an output of this function"
    if not has_image_suffix(name):
        return "not an image by its name"
    return None


# ------------------------------------------------------------------- scoring


def score_image(
    data: bytes,
    uri: str,
    model: LoadedModel,
    settings: FunctionSettings,
    clock: StageClock | None = None,
) -> ScoredImage:
    """Check, score and explain one encoded image; draw its overlay.

    Args:
        data: the encoded file as uploaded.
        uri: what to call the image in the row (its object URI, or the upload's name).
        model: the loaded model.
        settings: size limits.
        clock: where to add the time of each stage (check, explain, draw, encode).

    Returns:
        The result row, the overlay PNG and the image's header facts.

    Raises:
        ImageError: with a one-line reason when the bytes are not a usable image,
            including when the model itself cannot decode them (``UndecodableImage``).
        Exception: when the model itself fails (out of memory ...): not the image's
            fault, so never an ``.error.json`` (``model_export.scoring``'s policy).
    """
    clock = clock or StageClock()
    with clock.stage("check"):
        prepared, info = check_and_prepare(
            data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes
        )
    with clock.stage("explain"):
        [outcome] = score_batch(
            model, [prepared], model.identity, signature=contract.EXPLAIN_SIGNATURE
        )
    if outcome.prediction is None or outcome.heatmap is None:
        raise UndecodableImage(f"the model could not decode this {info.format}: {outcome.error}")
    prediction = outcome.prediction
    row = ResultRow.build(
        uri,
        prediction,
        model_name=model.name,
        model_version=model.version,
        width=info.width,
        height=info.height,
    )
    with clock.stage("draw"):
        try:
            image = load_rgb(prepared)
        except Exception as exc:  # Pillow raises many types; the model decoded it, so rare
            raise ImageError(
                f"could not decode the {info.format} for drawing: {one_line(exc)}"
            ) from exc
        picture = overlay_picture(
            image, prediction, outcome.heatmap, positive_class=model.metadata.positive_class
        )
    with clock.stage("encode"):
        overlay = encode_overlay_png(picture)
    return ScoredImage(row=row, overlay_png=overlay, info=info, model_uri=model.uri)


def upload_document(scored: ScoredImage, *, include_overlay: bool = False) -> dict[str, Any]:
    """The prediction JSON for an HTTP upload, optionally with the overlay as base64 PNG."""
    extra: dict[str, Any] = {"image_format": scored.info.format, "model_uri": scored.model_uri}
    if include_overlay:
        extra["gradcam_png_base64"] = base64.b64encode(scored.overlay_png).decode("ascii")
    return prediction_document(scored.row, **extra)


def event_prediction_document(
    scored: ScoredImage, *, event_id: str, generation: int, overlay_uri: str
) -> dict[str, Any]:
    """The ``<name>.prediction.json`` written beside an uploaded image."""
    return prediction_document(
        scored.row,
        event_id=event_id,
        source_generation=generation,
        gradcam_uri=overlay_uri,
        image_format=scored.info.format,
        model_uri=scored.model_uri,
    )


def event_error_document(
    uri: str, reason: str, stage: str, *, event_id: str, generation: int | None
) -> dict[str, Any]:
    """The ``<name>.error.json`` written beside a file that can never be scored."""
    doc = ErrorRow.build(uri, reason, stage).to_dict()
    doc.update(event_id=event_id, source_generation=generation, disclaimer=DISCLAIMER)
    return doc


# ------------------------------------------------------------- the whole step


def screen_object(
    bucket: str,
    name: str,
    generation: int | None,
    event_id: str,
    settings: FunctionSettings,
    load_model: ModelProvider,
) -> Outcome:
    """Screen one finalized object and write its outputs beside it, idempotently.

    Args:
        bucket: the event's bucket name.
        name: the object name inside the bucket.
        generation: the object generation the event is about (None: the current one).
        event_id: the CloudEvent id, recorded in the outputs and the logs.
        settings: the function's settings.
        load_model: returns the (cached) model; called only when there is work.

    Returns:
        What happened, with the outputs written.

    Raises:
        storage.StorageUnavailable: storage could not be reached; retry the event.
        model_export.loader.ModelLoadError: the configured model cannot be loaded.
    """
    started = time.perf_counter()
    try:
        uri = object_uri(bucket, name, settings)
    except storage.InvalidObjectName as exc:
        uri = f"{bucket}/{name}"
        with log_context(uri=uri, event_id=event_id):
            return _log(Outcome(Status.SKIPPED, uri, f"invalid object name: {exc}"))
    clock = StageClock()
    with log_context(uri=uri, event_id=event_id, generation=generation):
        try:
            outcome = _screen(uri, name, generation, event_id, settings, load_model, clock)
        except (storage.StorageUnavailable, ModelLoadError) as exc:
            # Logged here, where the line still carries the URI; the caller re-delivers.
            logger.error("not done, the event will be retried: %s", exc, extra={"status": "retry"})
            raise
        return _log(
            outcome,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
            stages_ms=clock.as_dict(),
        )


def _screen(
    uri: str,
    name: str,
    generation: int | None,
    event_id: str,
    settings: FunctionSettings,
    load_model: ModelProvider,
    clock: StageClock,
) -> Outcome:
    reason = skip_reason(name)
    if reason:
        return Outcome(Status.SKIPPED, uri, reason)
    with clock.stage("storage"):
        try:
            current = storage.stat(uri)
        except storage.ObjectNotFound:
            return Outcome(Status.SKIPPED, uri, "the object no longer exists")
    if generation is None:
        generation = current.generation
    elif current.generation is not None and current.generation > generation:
        return Outcome(
            Status.STALE, uri, f"the object is now generation {current.generation}, newer"
        )
    elif current.generation is not None and current.generation < generation:
        # Storage is strongly consistent, so this should not last: let the platform retry.
        raise storage.StorageUnavailable(
            f"{uri} is at generation {current.generation}, older than the event's {generation}"
        )
    gen = int(generation or 0)

    with clock.stage("storage"):
        priors = _Priors(_prior(prediction_uri(uri)), _prior(error_uri(uri)))
    recorded = priors.recorded_generation
    if recorded == gen:
        return Outcome(Status.DUPLICATE, uri, f"generation {gen} was already screened")
    if recorded > gen:
        return Outcome(Status.STALE, uri, f"outputs exist for newer generation {recorded}")

    if current.size > settings.max_image_bytes:
        return _write_error(
            uri,
            f"file is {current.size:,} bytes, over the limit of {settings.max_image_bytes:,}",
            "check",
            event_id,
            gen,
            priors,
        )
    with clock.stage("read"):
        try:
            data = storage.read_bytes(uri)
        except storage.ObjectNotFound:
            return Outcome(Status.SKIPPED, uri, "the object no longer exists")
    with clock.stage("model"):
        model = load_model()
    try:
        scored = score_image(data, uri, model, settings, clock)
    except ImageError as exc:
        stage = "score" if isinstance(exc, UndecodableImage) else "check"
        return _write_error(uri, str(exc), stage, event_id, gen, priors)

    overlay_at = gradcam_uri(uri)
    with clock.stage("json"):
        body = _json_bytes(
            event_prediction_document(
                scored, event_id=event_id, generation=gen, overlay_uri=overlay_at
            )
        )
    with clock.stage("storage"):
        try:
            # The overlay first, the prediction last: prediction.json marks the work done.
            _write_unseen(
                overlay_at,
                scored.overlay_png,
                "image/png",
                gen,
                event_id,
                likely_absent=priors.prediction is None,
            )
            _write(
                prediction_uri(uri),
                body,
                "application/json",
                gen,
                event_id,
                seen=priors.prediction.object_generation if priors.prediction else None,
            )
        except storage.PreconditionFailed:
            return Outcome(Status.DUPLICATE, uri, _RACE_LOST)
        if priors.error is not None:  # from an earlier, bad generation
            storage.delete(error_uri(uri), missing_ok=True)
    return Outcome(
        Status.SCORED,
        uri,
        f"{scored.row.label} p={scored.row.probability:.3f}",
        (overlay_at, prediction_uri(uri)),
    )


def _write_error(
    uri: str, reason: str, stage: str, event_id: str, generation: int, priors: _Priors
) -> Outcome:
    doc = event_error_document(uri, reason, stage, event_id=event_id, generation=generation)
    try:
        _write(
            error_uri(uri),
            _json_bytes(doc),
            "application/json",
            generation,
            event_id,
            seen=priors.error.object_generation if priors.error else None,
        )
    except storage.PreconditionFailed:
        return Outcome(Status.DUPLICATE, uri, _RACE_LOST)
    # Outputs of an earlier, good generation would now describe a different file.
    storage.delete(prediction_uri(uri), missing_ok=True)
    storage.delete(gradcam_uri(uri), missing_ok=True)
    return Outcome(Status.ERROR, uri, reason, (error_uri(uri),))


def _prior(uri: str) -> _PriorOutput | None:
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
    return _PriorOutput(uri, info.generation, source_generation)


def _write(
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


def _write_unseen(
    uri: str,
    data: bytes,
    content_type: str,
    generation: int,
    event_id: str,
    *,
    likely_absent: bool,
) -> None:
    """Write an output whose current version was not looked up yet.

    For a first upload (no prediction beside it) the overlay is almost never there,
    so it is written create-only straight away, saving a look-up per event; only
    if that fails (an interrupted earlier delivery left one) is the version looked
    up and written over, as it is at once when a prediction exists.
    """
    if likely_absent:
        try:
            _write(uri, data, content_type, generation, event_id, seen=None)
            return
        except storage.PreconditionFailed:
            pass
    try:
        seen = storage.stat(uri).generation
    except storage.ObjectNotFound:
        seen = None
    _write(uri, data, content_type, generation, event_id, seen=seen)


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _log(outcome: Outcome, **fields: Any) -> Outcome:
    level = logging.WARNING if outcome.status is Status.ERROR else logging.INFO
    logger.log(
        level,
        "%s: %s",
        outcome.status.value,
        outcome.reason,
        extra={"status": outcome.status.value, "outputs": list(outcome.outputs), **fields},
    )
    return outcome
