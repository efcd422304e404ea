"""Pure steps of the scoring job: check one file, score a batch, build the rows.

No Beam here: the transforms in :mod:`beam_jobs.transforms` and the model handler
in :mod:`beam_jobs.model_handler` call these, and the tests call them directly.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, check_and_prepare
from histo_common.overlay import load_rgb, overlay_caption, render_overlay
from histo_common.results import RESULT_COLUMNS, ErrorRow, Prediction, ResultRow

logger = logging.getLogger(__name__)

_MAX_REASON = 300


class CheckedImage(NamedTuple):
    """An input that passed the header checks: ``(uri, model-ready bytes, ...)``.

    It starts with ``(uri, bytes)``, the pair the model handler scores; the
    header facts ride along so the result row can carry the image size.
    """

    uri: str
    data: bytes
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class ModelIdentity:
    """Which model scored a row: name, integer version and the version's URI."""

    name: str
    version: int
    uri: str


@dataclass(frozen=True)
class ScoreOutcome:
    """What the model said about one checked image: a prediction or a reason."""

    prediction: Prediction | None
    model: ModelIdentity
    heatmap: np.ndarray | None = None
    error: str | None = None


_NOISE = re.compile(
    r"^(Graph execution error:?|Detected at node .*|<stack traces unavailable>|\[\[.*|"
    r"Traceback .*|File .*)$"
)


def one_line(exc: BaseException | str, limit: int = _MAX_REASON) -> str:
    """The informative line of an error message, shortened, for a one-line reason.

    TensorFlow's messages start with "Graph execution error:" and node names; the
    line that says what went wrong ("Invalid PNG. ...") is the one kept.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not _NOISE.match(line)]
    first = (useful or lines or [type(exc).__name__])[0]
    first = re.sub(r"\s*\[\[.*$", "", first) or first
    if isinstance(exc, BaseException) and type(exc).__name__ not in first:
        first = f"{type(exc).__name__}: {first}"
    return first if len(first) <= limit else first[: limit - 3] + "..."


def check_image(
    uri: str,
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> CheckedImage | ErrorRow:
    """Check an input's bytes and make them model-ready, or say why it is unusable.

    Args:
        uri: where the bytes came from (named in the reason).
        data: the file's bytes.
        max_pixels: the pixel limit (decompression bombs are refused from the header).
        max_bytes: the file size limit.

    Returns:
        A :class:`CheckedImage` (TIFF/WebP transcoded to PNG) or an ``ErrorRow``
        with stage ``"check"``.
    """
    try:
        ready, info = check_and_prepare(data, max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageError as exc:
        return ErrorRow.build(uri, str(exc), "check")
    except Exception as exc:  # a Pillow failure while transcoding must not stop the job
        return ErrorRow.build(uri, f"cannot prepare image: {one_line(exc)}", "check")
    return CheckedImage(uri, ready, info.width, info.height, info.format)


def too_large(uri: str, size: int, max_bytes: int) -> ErrorRow | None:
    """An error row when a matched file is over the size limit (checked before reading)."""
    if size > max_bytes:
        return ErrorRow.build(
            uri, f"file is {size:,} bytes, over the limit of {max_bytes:,}", "read"
        )
    return None


def outcomes_from_outputs(
    outputs: dict[str, np.ndarray], count: int, model: ModelIdentity
) -> list[ScoreOutcome]:
    """Turn a signature's batched outputs into one outcome per image."""
    heatmaps = outputs.get("heatmap")
    outcomes = []
    for i in range(count):
        label = outputs["label"][i]
        prediction = Prediction(
            probability=float(outputs["probability"][i]),
            label=label.decode("utf-8") if isinstance(label, bytes) else str(label),
            threshold=round(float(outputs["threshold"][i]), 6),
        )
        heatmap = None if heatmaps is None else np.asarray(heatmaps[i])
        outcomes.append(ScoreOutcome(prediction=prediction, model=model, heatmap=heatmap))
    return outcomes


def score_batch(
    images: Sequence[bytes],
    call: Callable[[list[bytes]], dict[str, np.ndarray]],
    model: ModelIdentity,
    is_input_error: Callable[[BaseException], bool],
) -> list[ScoreOutcome]:
    """Score a batch of encoded images; isolate images the model refuses.

    A batch containing one undecodable image makes the whole signature call
    fail, so on an input error the batch is split in halves until the bad
    images are alone; each gets an outcome with its reason and the rest are
    scored. Errors that are not about the inputs (the model or the service
    failing) propagate, so the runner retries the bundle.

    Args:
        images: encoded image bytes.
        call: runs the signature on a list of bytes and returns numpy outputs.
        model: the identity stamped on each outcome.
        is_input_error: tells input errors from infrastructure errors.

    Returns:
        One outcome per image, in order.
    """
    if not images:
        return []
    try:
        return outcomes_from_outputs(call(list(images)), len(images), model)
    except Exception as exc:
        if not is_input_error(exc):
            raise
        if len(images) == 1:
            return [ScoreOutcome(prediction=None, model=model, error=one_line(exc))]
    mid = len(images) // 2
    return score_batch(images[:mid], call, model, is_input_error) + score_batch(
        images[mid:], call, model, is_input_error
    )


def result_row(image: CheckedImage, outcome: ScoreOutcome) -> ResultRow | ErrorRow:
    """The result row for a scored image, or an error row (stage ``"score"``)."""
    if outcome.prediction is None:
        return ErrorRow.build(image.uri, f"model could not score it: {outcome.error}", "score")
    return ResultRow.build(
        image.uri,
        outcome.prediction,
        model_name=outcome.model.name,
        model_version=outcome.model.version,
        width=image.width,
        height=image.height,
    )


def csv_header() -> str:
    """The header line of the results CSV."""
    return ",".join(RESULT_COLUMNS)


def csv_line(row: ResultRow) -> str:
    """One results CSV line (quoted as needed), in ``RESULT_COLUMNS`` order."""
    out = io.StringIO()
    values = row.to_dict()
    csv.writer(out, lineterminator="").writerow([values[c] for c in RESULT_COLUMNS])
    return out.getvalue()


def parquet_schema() -> Any:
    """The pyarrow schema of the results Parquet files (columns of ``ResultRow``)."""
    import pyarrow as pa

    types = {
        "probability": pa.float64(),
        "threshold": pa.float64(),
        "model_version": pa.int64(),
        "image_width": pa.int64(),
        "image_height": pa.int64(),
    }
    return pa.schema([(c, types.get(c, pa.string())) for c in RESULT_COLUMNS])


def overlay_png(image_bytes: bytes, prediction: Prediction, heatmap: np.ndarray) -> bytes:
    """Render the Grad-CAM overlay PNG for one scored image."""
    caption = overlay_caption(prediction.label, prediction.probability, prediction.threshold)
    return render_overlay(load_rgb(image_bytes), heatmap, caption=caption)
