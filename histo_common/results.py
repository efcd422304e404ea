"""The result and error rows every scorer writes and every reader reads.

Bulk scoring (Beam), the Cloud Function and the app describe one scored image
with a :class:`ResultRow` and one image that could not be scored with an
:class:`ErrorRow`. Keeping the schema here means the files they write have the
same columns wherever they come from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from histo_common import DISCLAIMER


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
    """One scored image."""

    uri: str
    probability: float
    label: str
    threshold: float
    model_name: str
    model_version: int
    image_width: int
    image_height: int
    scored_at: str

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
        """Assemble a row from a prediction and the model's identity."""
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

    def to_dict(self) -> dict[str, Any]:
        """Return the row as a plain dict (JSON-ready)."""
        return asdict(self)

    def to_json(self) -> str:
        """Return the row as one JSON line."""
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        """Rebuild a row from a dict, refusing unknown or missing columns."""
        return cls(**_checked(cls, data))


@dataclass(frozen=True)
class ErrorRow:
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

    def to_dict(self) -> dict[str, Any]:
        """Return the row as a plain dict (JSON-ready)."""
        return asdict(self)

    def to_json(self) -> str:
        """Return the row as one JSON line."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorRow:
        """Rebuild a row from a dict, refusing unknown or missing columns."""
        return cls(**_checked(cls, data))


RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ResultRow))
ERROR_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ErrorRow))


def prediction_document(row: ResultRow, **extra: Any) -> dict[str, Any]:
    """The JSON a person reads beside an image: the row, extras and the disclaimer."""
    doc = row.to_dict()
    doc.update(extra)
    doc["disclaimer"] = DISCLAIMER
    return doc


def _checked(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    missing = names - data.keys()
    if missing:
        raise ValueError(f"{cls.__name__} is missing columns: {sorted(missing)}")
    return {k: v for k, v in data.items() if k in names}
