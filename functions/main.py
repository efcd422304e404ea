"""Cloud Functions entry points: ``on_upload`` (storage CloudEvent) and ``predict_http`` (HTTP).

The handlers are thin: they check the event or request, pick out what it names and
call plain functions in ``functions.screening``. Settings are read from the
environment and validated when this module loads, so a misconfigured deployment
fails at start with one clear sentence; the model loads on the first event.

``predict_http`` routes:

- ``GET /``: an upload page that shows the image, the prediction and the overlay.
- ``POST /predict`` (or ``POST /``): the image as multipart field ``file`` or as the
  raw body. Returns the prediction JSON; with ``?gradcam=1`` (or
  ``Accept: image/png``) the Grad-CAM overlay PNG instead; with
  ``?gradcam=base64`` the JSON with the PNG in ``gradcam_png_base64``.
  A bad upload is a 400 with ``{"error": ...}``. An upload larger than the tiling
  rule scores whole is tiled as on ``on_upload``: the JSON has the slide fields,
  the overlay is the most suspicious tile's, and ``?gradcam=base64`` adds the
  heatmap as ``heatmap_png_base64``.
"""

from __future__ import annotations

import histo_common.tensorflow_env  # noqa: F401  (first: sets up TensorFlow before its import)

# isort: split
import json
import logging
from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from functions import runtime, screening
from functions.logs import log_context
from functions.page import upload_page
from functions.slide_screening import SlideRefused
from histo_common import DISCLAIMER
from histo_common.images import ImageError
from model_export.loader import ModelLoadError

logger = logging.getLogger(__name__)

SETTINGS = runtime.start()
# multipart framing around the file; the image itself is checked against the limit
_MULTIPART_SLACK = 64 * 1024


@functions_framework.cloud_event
def on_upload(cloud_event: CloudEvent) -> None:
    """Screen the object named by a ``google.cloud.storage.object.v1.finalized`` event.

    Returns normally (2xx) for work done, skips and bad files; raises on transient
    failures so the platform delivers the event again.
    """
    event_id = str(cloud_event["id"])
    data = cloud_event.data if isinstance(cloud_event.data, dict) else {}
    with log_context(event_id=event_id):
        if cloud_event["type"] != screening.FINALIZED_EVENT_TYPE:
            logger.info("skipped: event type %s is not handled", cloud_event["type"])
            return
        bucket, name = data.get("bucket"), data.get("name")
        if not isinstance(bucket, str) or not isinstance(name, str):
            logger.error("skipped: event data has no bucket and object name: %r", data)
            return
        screening.screen_object(
            bucket,
            name,
            _generation(data.get("generation")),
            event_id,
            runtime.settings(),
            runtime.model,
        )


@functions_framework.http
def predict_http(request: flask.Request) -> flask.Response:
    """Serve the upload page (``GET /``) and score posted images (``POST /predict``)."""
    path = request.path.rstrip("/")
    if path in ("", "/predict") and request.method == "POST":
        return _predict(request)
    if path == "" and request.method in ("GET", "HEAD"):
        return flask.Response(upload_page(), mimetype="text/html")
    if path in ("", "/predict"):
        return _json({"error": f"{request.method} is not allowed on {request.path}"}, 405)
    return _json({"error": f"no such page {request.path}: use GET / or POST /predict"}, 404)


def _predict(request: flask.Request) -> flask.Response:
    settings = runtime.settings()
    if (request.content_length or 0) > settings.max_image_bytes + _MULTIPART_SLACK:
        return _json(
            {
                "error": f"upload is {request.content_length:,} bytes, over the limit of "
                f"{settings.max_image_bytes:,}"
            },
            400,
        )
    mode = request.args.get("gradcam", "")
    if mode not in ("", "0", "1", "png", "base64"):
        return _json({"error": f"gradcam={mode!r} is not one of 0, 1, png, base64"}, 400)
    if (
        mode in ("", "0")
        and request.accept_mimetypes.best_match(["application/json", "image/png"]) == "image/png"
    ):
        mode = "png"
    upload = request.files.get("file")
    if upload is not None:
        data, filename = upload.read(), upload.filename or "upload"
    elif request.files:
        return _json({"error": "send the image as the multipart field 'file' or as the body"}, 400)
    else:
        data, filename = request.get_data(), request.args.get("name", "upload")
    with log_context(uri=f"upload:{filename}"):
        try:
            model = runtime.model()
        except ModelLoadError as exc:
            logger.error("model unavailable: %s", exc)
            return _json({"error": f"the model is unavailable: {exc}"}, 503)
        try:
            scored = screening.score_upload(data, f"upload:{filename}", model, settings)
        except ImageError as exc:
            logger.info("rejected upload: %s", exc)
            return _json({"error": f"{filename}: {exc}", "disclaimer": DISCLAIMER}, 400)
        except SlideRefused as exc:
            logger.info("refused upload: %s", exc.reason)
            return _json({"error": exc.reason, "disclaimer": DISCLAIMER}, 400)
        logger.info("scored upload: %s p=%.3f", scored.row.label, scored.row.probability)
    if mode in ("1", "png"):
        if scored.overlay_png is None:  # a slide without tissue tiles has no Grad-CAM
            return _json({"error": f"{filename}: no tissue tiles, so no Grad-CAM overlay"}, 404)
        return flask.Response(
            scored.overlay_png,
            mimetype="image/png",
            headers={
                "X-Prediction-Label": scored.row.label,
                "X-Prediction-Probability": f"{scored.row.probability:.6f}",
            },
        )
    doc = screening.upload_document(scored, include_overlay=mode == "base64", model_uri=model.uri)
    return _json(doc, 200)


def _json(doc: dict[str, Any], status: int) -> flask.Response:
    return flask.Response(json.dumps(doc), status=status, mimetype="application/json")


def _generation(value: object) -> int | None:
    """GCS sends the generation as a decimal string; anything else means unknown."""
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None
