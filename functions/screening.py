"""Screening one uploaded object: the function's logic, with no event in sight.

``screen_object`` takes what a storage event names (bucket, object, generation,
event id) and the settings, and either writes ``<name>.gradcam.png`` plus
``<name>.prediction.json`` beside the image, writes ``<name>.error.json`` for a
file that can never be scored, or skips with a reason. It returns an
:class:`Outcome`; the handlers in ``main`` only translate events and requests.

An upload larger than the tiling rule scores whole (a field of view, a pyramidal
TIFF, an ``.svs``/``.ndpi``/``.scn`` slide) is tiled (``functions.slide_screening``):
``<name>.heatmap.png``, the Grad-CAM of its most suspicious tile as
``<name>.gradcam.png`` and ``<name>.prediction.json`` with the slide fields; one
with more tiles than fit in the timeout gets an ``.error.json`` with the Beam
command that scores it. Each outcome's log line has ``stages_ms``: where the
event's time went.

Delivery is at least once, so every decision is idempotent: outputs record the
source object's generation (in the JSON, and as ``source-generation`` metadata on
GCS) and are written with generation preconditions; a repeated event for a
generation already done is a duplicate, an event older than the object's current
generation is stale. Transient storage failures (``StorageUnavailable``) propagate
so the platform retries; bad files never raise.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from functions.logs import StageClock, log_context
from functions.outputs import Priors, json_bytes, read_prior, write_output, write_unseen
from functions.settings import FunctionSettings
from functions.slide_screening import (
    ScoredSlide,
    SlideRefused,
    is_tiff_name,
    multi_file_reason,
    needs_tiling,
    score_slide,
    score_slide_bytes,
    too_large_reason,
)
from histo_common import DISCLAIMER, bucket_events, storage
from histo_common.bucket_events import (
    is_multi_file_name,
    is_slide_name,
    skip_reason,
)
from histo_common.errors import one_line
from histo_common.images import ImageError, ImageInfo, check_and_prepare
from histo_common.layout import error_sibling, gradcam_sibling, heatmap_sibling, prediction_sibling
from histo_common.overlay import encode_overlay_png, load_rgb, overlay_picture
from histo_common.results import ErrorRow, ResultRow, prediction_document
from model_export import contract
from model_export.loader import LoadedModel, ModelLoadError
from model_export.scoring import score_batch

logger = logging.getLogger(__name__)

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


def score_upload(
    data: bytes, name: str, model: LoadedModel, settings: FunctionSettings
) -> ScoredImage | ScoredSlide:
    """Score an HTTP upload by the one tiling rule: whole (a patch) or tile by tile.

    Raises:
        ImageError: a patch that is not a usable image (see :func:`score_image`).
        SlideRefused: a tiled upload that cannot be scored here, with the reason.
    """
    if is_slide_name(name) or needs_tiling(data, name, model):
        return score_slide_bytes(data, name, model, settings, StageClock())
    return score_image(data, name, model, settings)


def upload_document(
    scored: ScoredImage | ScoredSlide, *, include_overlay: bool = False, model_uri: str = ""
) -> dict[str, Any]:
    """The prediction JSON for an HTTP upload, optionally with the pictures as base64 PNG."""
    if isinstance(scored, ScoredSlide):
        extra: dict[str, Any] = {**scored.document, "model_uri": model_uri}
        pictures = {"gradcam": scored.overlay_png, "heatmap": scored.heatmap_png}
    else:
        extra = {"image_format": scored.info.format, "model_uri": scored.model_uri}
        pictures = {"gradcam": scored.overlay_png}
    if include_overlay:
        for kind, png in pictures.items():
            if png is not None:
                extra[f"{kind}_png_base64"] = base64.b64encode(png).decode("ascii")
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
        priors = Priors(read_prior(prediction_uri(uri)), read_prior(error_uri(uri)))
    recorded = priors.recorded_generation
    if recorded == gen:
        return Outcome(Status.DUPLICATE, uri, f"generation {gen} was already screened")
    if recorded > gen:
        return Outcome(Status.STALE, uri, f"outputs exist for newer generation {recorded}")

    job = _Job(uri, gen, event_id, priors)
    if is_multi_file_name(name):
        return _write_error(job, multi_file_reason(uri, settings), "check")
    if is_slide_name(name) or (is_tiff_name(name) and current.size > settings.max_image_bytes):
        return _screen_slide(job, current.size, settings, load_model, clock)
    if current.size > settings.max_image_bytes:
        return _write_error(
            job,
            f"file is {current.size:,} bytes, over the limit of {settings.max_image_bytes:,}",
            "check",
        )
    with clock.stage("read"):
        try:
            data = storage.read_bytes(uri)
        except storage.ObjectNotFound:
            return Outcome(Status.SKIPPED, uri, "the object no longer exists")
    with clock.stage("model"):
        model = load_model()
    if needs_tiling(data, uri, model):
        return _screen_slide(job, current.size, settings, load_model, clock)
    try:
        scored = score_image(data, uri, model, settings, clock)
    except ImageError as exc:
        stage = "score" if isinstance(exc, UndecodableImage) else "check"
        return _write_error(job, str(exc), stage)

    overlay_at = gradcam_uri(uri)
    with clock.stage("json"):
        body = json_bytes(
            event_prediction_document(
                scored, event_id=event_id, generation=gen, overlay_uri=overlay_at
            )
        )
    with clock.stage("storage"):
        return _write_outputs(
            job,
            f"{scored.row.label} p={scored.row.probability:.3f}",
            [(overlay_at, scored.overlay_png, "image/png")],
            body,
        )


@dataclass(frozen=True)
class _Job:
    """One generation of one object being screened, and what was beside it."""

    uri: str
    generation: int
    event_id: str
    priors: Priors


def _screen_slide(
    job: _Job,
    size: int,
    settings: FunctionSettings,
    load_model: ModelProvider,
    clock: StageClock,
) -> Outcome:
    """A slide or a large field of view: tiled, with a heatmap and the top tile's Grad-CAM."""
    if size > settings.max_slide_bytes:
        return _write_error(job, too_large_reason(job.uri, size, settings), "check")
    with clock.stage("model"):
        model = load_model()
    try:
        scored = score_slide(job.uri, model, settings, clock)
    except SlideRefused as exc:
        return _write_error(job, exc.reason, exc.stage)
    pictures = []
    extra: dict[str, Any] = {}
    if scored.heatmap_png is not None:
        pictures.append((heatmap_sibling(job.uri), scored.heatmap_png, "image/png"))
        extra["heatmap_uri"] = heatmap_sibling(job.uri)
    if scored.overlay_png is not None:
        pictures.append((gradcam_uri(job.uri), scored.overlay_png, "image/png"))
        extra["gradcam_uri"] = gradcam_uri(job.uri)
    doc = prediction_document(
        scored.row,
        event_id=job.event_id,
        source_generation=job.generation,
        **extra,
        **scored.document,
        model_uri=model.uri,
    )
    row = scored.row
    summary = (
        f"{row.label} p={row.probability:.3f} over {row.tiles_scored} tiles"
        if row.is_tiled
        else f"{row.label} p={row.probability:.3f}"
    )
    with clock.stage("storage"):
        outcome = _write_outputs(job, summary, pictures, json_bytes(doc))
        if outcome.status is Status.SCORED and scored.overlay_png is None:
            storage.delete(gradcam_uri(job.uri), missing_ok=True)  # an earlier generation's
    return outcome


def _write_outputs(
    job: _Job, summary: str, pictures: list[tuple[str, bytes, str]], prediction: bytes
) -> Outcome:
    """Write the pictures, then ``prediction.json`` (it marks the work done); clear old errors."""
    written = []
    try:
        for uri, data, content_type in pictures:
            write_unseen(
                uri,
                data,
                content_type,
                job.generation,
                job.event_id,
                likely_absent=job.priors.prediction is None,
            )
            written.append(uri)
        _write_json(job, prediction_uri(job.uri), prediction, seen=job.priors.prediction_seen)
    except storage.PreconditionFailed:
        return Outcome(Status.DUPLICATE, job.uri, _RACE_LOST)
    if job.priors.error is not None:  # from an earlier, bad generation
        storage.delete(error_uri(job.uri), missing_ok=True)
    return Outcome(Status.SCORED, job.uri, summary, (*written, prediction_uri(job.uri)))


def _write_json(job: _Job, uri: str, body: bytes, *, seen: int | None) -> None:
    write_output(uri, body, "application/json", job.generation, job.event_id, seen=seen)


def _write_error(job: _Job, reason: str, stage: str) -> Outcome:
    doc = event_error_document(
        job.uri, reason, stage, event_id=job.event_id, generation=job.generation
    )
    try:
        _write_json(job, error_uri(job.uri), json_bytes(doc), seen=job.priors.error_seen)
    except storage.PreconditionFailed:
        return Outcome(Status.DUPLICATE, job.uri, _RACE_LOST)
    # Outputs of an earlier, good generation would now describe a different file.
    for output in (prediction_uri(job.uri), gradcam_uri(job.uri), heatmap_sibling(job.uri)):
        storage.delete(output, missing_ok=True)
    return Outcome(Status.ERROR, job.uri, reason, (error_uri(job.uri),))


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
