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
from histo_common.results import ALL_RESULT_COLUMNS, TILE_COLUMNS, ErrorRow, ResultRow
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
    """The header line of the results CSV: every column, slide fields last."""
    return ",".join(ALL_RESULT_COLUMNS)


def csv_line(row: ResultRow) -> str:
    """One results CSV line (quoted as needed), in ``ALL_RESULT_COLUMNS`` order.

    A whole input's slide fields are empty cells.
    """
    out = io.StringIO()
    values = row.to_columns()
    csv.writer(out, lineterminator="").writerow(
        ["" if values[c] is None else values[c] for c in ALL_RESULT_COLUMNS]
    )
    return out.getvalue()


_PARQUET_TYPES = {
    "probability": "float64",
    "threshold": "float64",
    "model_version": "int64",
    "image_width": "int64",
    "image_height": "int64",
    "tiles_scored": "int64",
    "tissue_tiles": "int64",
    "grid_tiles": "int64",
    "positive_fraction": "float64",
    "max_probability": "float64",
    "top_k_mean": "float64",
    "top_k": "int64",
    "scale_assumed": "bool_",
    "x": "int64",
    "y": "int64",
    "width": "int64",
    "height": "int64",
    "level": "int64",
}


def _schema(columns: tuple[str, ...]) -> Any:
    import pyarrow as pa

    return pa.schema([(c, getattr(pa, _PARQUET_TYPES.get(c, "string"))()) for c in columns])


def parquet_schema() -> Any:
    """The pyarrow schema of the results Parquet files (slide fields nullable, null for patches)."""
    return _schema(ALL_RESULT_COLUMNS)


def tile_parquet_schema() -> Any:
    """The pyarrow schema of the tile rows' Parquet files (columns of ``TileRow``)."""
    return _schema(TILE_COLUMNS)
