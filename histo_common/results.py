"""The result and error rows every scorer writes and every reader reads.

Bulk scoring (Beam), the Cloud Function and the app describe one scored image
with a :class:`ResultRow` and one image that could not be scored with an
:class:`ErrorRow`. Keeping the schema here means the files they write have the
same columns wherever they come from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from histo_common import DISCLAIMER

if TYPE_CHECKING:
    from histo_common.tiling import SlideSummary


def utc_now() -> str:
    """Current time as an ISO 8601 string in UTC, to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Prediction:
    """What the model said about one image."""

    probability: float  # probability of the positive (malignant) class
    label: str
    threshold: float


@dataclass(frozen=True)
class ResultRow:
    """One scored image, or one tiled input (a slide or a large field of view).

    A tiled input's row carries the slide fields as well (see
    :class:`histo_common.tiling.SlideSummary` for the slide rule): ``probability``
    is then the top-k mean tile probability and ``label`` the slide rule's. Whole
    inputs leave them None, and :meth:`to_dict` leaves None slide fields out, so a
    patch's row is exactly what it was before slides existed.
    """

    uri: str
    probability: float
    label: str
    threshold: float
    model_name: str
    model_version: int
    image_width: int
    image_height: int
    scored_at: str
    # Slide fields (tiled inputs only).
    tiles_scored: int | None = None  # tiles the model scored
    tissue_tiles: int | None = None  # tiles the tissue mask kept (the ones to score)
    grid_tiles: int | None = None  # tiles of the full grid, glass included
    positive_fraction: float | None = None  # share of scored tiles at or over the threshold
    max_probability: float | None = None
    top_k_mean: float | None = None
    top_k: int | None = None
    scale: str | None = None  # the scale tiles were read at, in words
    scale_assumed: bool | None = None  # True when model or slide had no mpp

    @classmethod
    def build(
        cls,
        uri: str,
        prediction: Prediction,
        *,
        model_name: str,
        model_version: int,
        width: int,
        height: int,
        scored_at: str | None = None,
    ) -> ResultRow:
        """Assemble a whole input's row from a prediction and the model's identity."""
        return cls(
            uri=uri,
            probability=round(float(prediction.probability), 6),
            label=prediction.label,
            threshold=float(prediction.threshold),
            model_name=model_name,
            model_version=int(model_version),
            image_width=int(width),
            image_height=int(height),
            scored_at=scored_at or utc_now(),
        )

    @classmethod
    def for_slide(
        cls,
        uri: str,
        summary: SlideSummary,
        *,
        model_name: str,
        model_version: int,
        width: int,
        height: int,
        scored_at: str | None = None,
    ) -> ResultRow:
        """Assemble a tiled input's row from its slide summary (the slide rule's verdict)."""
        row = cls.build(
            uri,
            Prediction(summary.top_k_mean, summary.label, summary.threshold),
            model_name=model_name,
            model_version=model_version,
            width=width,
            height=height,
            scored_at=scored_at,
        )
        return replace(
            row,
            tiles_scored=int(summary.tiles_scored),
            tissue_tiles=int(summary.tissue_tiles),
            grid_tiles=int(summary.grid_tiles),
            positive_fraction=round(float(summary.positive_fraction), 6),
            max_probability=round(float(summary.max_probability), 6),
            top_k_mean=round(float(summary.top_k_mean), 6),
            top_k=int(summary.top_k),
            scale=summary.scale,
            scale_assumed=bool(summary.scale_assumed),
        )

    @property
    def is_tiled(self) -> bool:
        """True for a tiled input's row (it has slide fields)."""
        return self.tiles_scored is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the row as a plain dict (JSON-ready); None slide fields are left out."""
        out = asdict(self)
        for name in SLIDE_COLUMNS:
            if out[name] is None:
                del out[name]
        return out

    def to_columns(self) -> dict[str, Any]:
        """Every column, slide fields as None for whole inputs (CSV and Parquet rows)."""
        return asdict(self)

    def to_json(self) -> str:
        """Return the row as one JSON line."""
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        """Rebuild a row from a dict, refusing missing columns (slide fields are optional)."""
        return cls(**_checked(cls, data, optional=SLIDE_COLUMNS))


class _JsonRow:
    """A row of fixed columns written as one JSON line (mixed into the row dataclasses)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the row as a plain dict (JSON-ready)."""
        # The rows are flat: no deep copy (asdict's) needed, and a slide writes 10^5 of them.
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]  # a mixin: always a dataclass

    def to_json(self) -> str:
        """Return the row as one JSON line."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild a row from a dict, refusing missing columns (extra ones are dropped)."""
        return cls(**_checked(cls, data))


@dataclass(frozen=True)
class TileRow(_JsonRow):
    """One scored tile of a tiled input, as other tools read it from ``<output>/tiles/``.

    ``x``, ``y``, ``width``, ``height`` are level-0 pixels of the input ``uri``;
    ``level`` the pyramid level the tile was read at.
    """

    uri: str
    x: int
    y: int
    width: int
    height: int
    level: int
    probability: float
    model_name: str
    model_version: int


@dataclass(frozen=True)
class ErrorRow(_JsonRow):
    """One input that could not be scored, with a one-line reason."""

    uri: str
    reason: str
    stage: str  # "read", "check", "score", ...
    at: str

    @classmethod
    def build(cls, uri: str, reason: str, stage: str) -> ErrorRow:
        """Make an error row stamped with the current time; the reason is kept to one line."""
        one_line = " ".join(str(reason).split())
        return cls(uri=uri, reason=one_line, stage=stage, at=utc_now())


# The slide fields: optional columns of ResultRow, present for tiled inputs only.
SLIDE_COLUMNS: tuple[str, ...] = (
    "tiles_scored",
    "tissue_tiles",
    "grid_tiles",
    "positive_fraction",
    "max_probability",
    "top_k_mean",
    "top_k",
    "scale",
    "scale_assumed",
)
# The columns every result row has (what readers require).
RESULT_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in fields(ResultRow) if f.name not in SLIDE_COLUMNS
)
# Every column of a result file with a fixed schema (CSV, Parquet): slide fields last.
ALL_RESULT_COLUMNS: tuple[str, ...] = RESULT_COLUMNS + SLIDE_COLUMNS
TILE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(TileRow))
ERROR_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ErrorRow))


def prediction_document(row: ResultRow, **extra: Any) -> dict[str, Any]:
    """The JSON a person reads beside an image: the row, extras and the disclaimer."""
    doc = row.to_dict()
    doc.update(extra)
    doc["disclaimer"] = DISCLAIMER
    return doc


def _checked(cls: type, data: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    missing = names - data.keys() - set(optional)
    if missing:
        raise ValueError(f"{cls.__name__} is missing columns: {sorted(missing)}")
    return {k: v for k, v in data.items() if k in names}
