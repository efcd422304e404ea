"""Pure steps of the scoring job: check one file, build the rows.

No Beam here: the transforms in :mod:`beam_jobs.transforms` and the model handler
in :mod:`beam_jobs.model_handler` call these, and the tests call them directly.
Scoring itself (batches, refused images) is :func:`model_export.scoring.score_batch`,
the one every unit uses.
"""

from __future__ import annotations

import csv
import io
import logging
from typing import Any, NamedTuple

from histo_common.errors import one_line
from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, check_and_prepare
from histo_common.results import RESULT_COLUMNS, ErrorRow, ResultRow
from model_export.scoring import ScoreOutcome

logger = logging.getLogger(__name__)


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
