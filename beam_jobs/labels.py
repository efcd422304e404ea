"""True labels and patient ids for evaluation: from folders, file names or a CSV.

- Label from the path: the last ``benign/`` or ``malignant/`` folder in the URI.
- Patient id from the file name: IDC patches (``8863_idx5_x1001_y1001_class0.png``
  -> ``8863``) and BreakHis images (``SOB_M_DC-14-2523-400-001.png`` -> ``14-2523``).
- A labels CSV with ``path`` (or ``uri``), ``label`` and optional ``patient_id``
  columns; relative paths are relative to the CSV's folder. It wins over the path.

Pure functions (reading the CSV goes through ``beam_jobs.files``). The patient
rule is ``histo_common.labels.patient_id_from_name``, the one training splits by.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from histo_common import labels as shared_labels
from histo_common.labels import patient_id_from_name as patient_from_name

CLASS_NAMES = ("benign", "malignant")
logger = logging.getLogger(__name__)

_LABEL_ALIASES = {"0": "benign", "1": "malignant", "b": "benign", "m": "malignant"}


class LabelsError(ValueError):
    """A labels CSV that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class TrueLabel:
    """The known truth about one image."""

    label: str  # "benign" or "malignant"
    patient_id: str | None = None


def normalise_uri(uri: str) -> str:
    """A join key for URIs: ``gs://`` unchanged, local paths absolute and normalised."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return os.path.normpath(os.path.abspath(path))


def normalise_label(value: str) -> str | None:
    """``benign``/``malignant`` (also ``0``/``1``, ``B``/``M``), or None if unknown."""
    text = value.strip().lower()
    text = _LABEL_ALIASES.get(text, text)
    return text if text in CLASS_NAMES else None


def label_from_path(uri: str) -> str | None:
    """The class named by the last ``benign/`` or ``malignant/`` folder in ``uri``."""
    folders = uri.split("://", 1)[-1].split("/")[:-1]
    for folder in reversed(folders):
        if folder.lower() in CLASS_NAMES:
            return folder.lower()
    return None


def parse_labels_csv(text: str, csv_uri: str) -> dict[str, TrueLabel]:
    """Parse a labels CSV into ``{normalised uri: TrueLabel}``.

    The columns and path rules are the shared ones (``histo_common.labels``); here
    labels are mapped to benign/malignant (``0``/``1``, ``B``/``M`` accepted).

    Raises:
        LabelsError: for a missing column or an unknown label, naming the row.
    """
    try:
        rows = shared_labels.parse_labels_csv(text, csv_uri)
    except shared_labels.LabelsError as exc:
        raise LabelsError(str(exc)) from exc
    labels: dict[str, TrueLabel] = {}
    for line_no, row in enumerate(rows, start=2):
        label = normalise_label(row.label)
        if label is None:
            raise LabelsError(f"{csv_uri} line {line_no}: unknown label {row.label!r}")
        labels[normalise_uri(row.uri)] = TrueLabel(label, row.patient_id)
    return labels


def true_label(uri: str, labels: dict[str, TrueLabel] | None) -> TrueLabel | None:
    """The truth for ``uri``: the labels CSV if it names it, else its folder; None if unknown."""
    if labels:
        found = labels.get(normalise_uri(uri))
        if found is not None:
            return found
    label = label_from_path(uri)
    return TrueLabel(label, patient_from_name(uri)) if label else None


def require_some_label(
    uris: Iterable[str], labels: dict[str, TrueLabel] | None, source: str
) -> None:
    """Stop early, with what to do, when not one of ``uris`` has a known label.

    Raises:
        LabelsError: when no URI is labelled by ``labels`` or by its folder.
    """
    count = 0
    for uri in uris:
        count += 1
        if true_label(uri, labels) is not None:
            return
    raise LabelsError(
        f"none of the {count} images in {source} has a label: put them under benign/ and "
        "malignant/ folders or pass --labels with a CSV naming them (path,label[,patient_id])"
    )


def read_labels_csv(uri: str) -> dict[str, TrueLabel]:
    """Read and parse a labels CSV through Beam's ``FileSystems`` (``gs://`` or local).

    Raises:
        LabelsError: when it cannot be read or parsed.
    """
    from beam_jobs import files

    try:
        text = files.read_file(uri).decode("utf-8-sig")
    except Exception as exc:  # any storage failure: one sentence naming the file
        raise LabelsError(f"cannot read labels CSV {uri}: {exc}") from exc
    labels = parse_labels_csv(text, uri)
    logger.info("Read %d labels from %s", len(labels), uri)
    return labels
