"""Labelled examples: class from the folder, patient from the file name or a CSV.

Training and evaluation both need to know, for an image URI, its class and the
patient it came from, by the same rules:

- class: the name of the folder that holds the image (``.../benign/x.png``), or
  the ``label`` column of a labels CSV (``path,label[,patient_id]``);
- patient: the ``patient_id`` column, else the IDC convention
  (``8863_idx5_x1001_y1001_class0.png`` -> ``8863``), else the BreakHis one
  (``SOB_M_DC-14-2523-400-001.png`` -> ``14-2523``), else unknown (None).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from histo_common import storage
from histo_common.images import has_image_suffix

_IDC = re.compile(r"^(\d+)_idx\d+_x\d+_y\d+_class[01]\.\w+$", re.IGNORECASE)
_BREAKHIS = re.compile(r"^SOB_[BM]_[A-Z]+-(\d+-[0-9A-Z]+)-\d+-\d+\.\w+$", re.IGNORECASE)


class LabelsError(ValueError):
    """A labelled data source that cannot be used; the message names it."""


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image."""

    uri: str
    label: str
    patient_id: str | None = None


def patient_id_from_name(name: str) -> str | None:
    """Patient id from an IDC or BreakHis file name (base name or URI), else None."""
    base = storage.basename(name)
    for pattern in (_IDC, _BREAKHIS):
        match = pattern.match(base)
        if match:
            return match.group(1)
    return None


def label_from_folder(uri: str) -> str:
    """The class of an image laid out as ``<root>/<class>/<file>``."""
    return storage.basename(storage.parent(uri))


_PATH_COLUMNS = ("path", "uri", "filename", "file")
_PATIENT_COLUMNS = ("patient_id", "patient")


def parse_labels_csv(text: str, csv_uri: str) -> list[LabelledImage]:
    """Parse a labels CSV: a path column (``path``, ``uri``, ``filename`` or ``file``),
    ``label``, and optionally ``patient_id`` (or ``patient``); headers are case-blind.

    Relative paths are resolved beside the CSV; a missing patient id falls back to
    :func:`patient_id_from_name`. Labels are returned as written: training takes its
    class names from the data, evaluation maps them to its own.

    Raises:
        LabelsError: naming the CSV (and the line) for a missing column or an empty cell.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = {c.strip().lower(): c for c in reader.fieldnames or []}
    path_col = next((columns[c] for c in _PATH_COLUMNS if c in columns), None)
    label_col = columns.get("label")
    patient_col = next((columns[c] for c in _PATIENT_COLUMNS if c in columns), None)
    if path_col is None or label_col is None:
        raise LabelsError(
            f"labels CSV {csv_uri} needs columns 'path' (or 'uri') and 'label' "
            f"(optional 'patient_id'); it has {reader.fieldnames}"
        )
    base = storage.parent(csv_uri)
    out = []
    for line, row in enumerate(reader, start=2):
        path, label = (row.get(path_col) or "").strip(), (row.get(label_col) or "").strip()
        if not path and not label:
            continue  # a blank line
        if not path or not label:
            raise LabelsError(f"labels CSV {csv_uri} line {line}: empty path or label")
        is_absolute = "://" in path or path.startswith("/")
        full = path if is_absolute else storage.join(base, path)
        patient = (row.get(patient_col) or "").strip() if patient_col else ""
        out.append(
            LabelledImage(uri=full, label=label, patient_id=patient or patient_id_from_name(path))
        )
    if not out:
        raise LabelsError(f"labels CSV {csv_uri} has no rows")
    return out


def read_labels_csv(uri: str) -> list[LabelledImage]:
    """Read and parse a labels CSV through the storage layer (see :func:`parse_labels_csv`).

    Raises:
        LabelsError: naming the CSV and the problem.
    """
    try:
        text = storage.read_text(uri)
    except storage.StorageError as exc:
        raise LabelsError(f"cannot read labels CSV {uri}: {exc}") from exc
    return parse_labels_csv(text, uri)


def discover_labelled_images(data_uri: str) -> list[LabelledImage]:
    """List labelled images from a folder (``<root>/<class>/*``) or a labels CSV.

    Raises:
        LabelsError: when nothing usable is there, with what was expected.
    """
    if data_uri.lower().endswith(".csv"):
        return read_labels_csv(data_uri)
    try:
        uris = [u for u in storage.list_uris(data_uri) if has_image_suffix(u)]
    except storage.StorageError as exc:
        raise LabelsError(f"cannot list {data_uri}: {exc}") from exc
    root = data_uri.rstrip("/") + "/"
    images = []
    for uri in uris:
        rel = uri[len(root) :] if uri.startswith(root) else uri
        if "/" not in rel:
            continue  # a file directly under the root has no class folder
        images.append(
            LabelledImage(
                uri=uri, label=label_from_folder(uri), patient_id=patient_id_from_name(uri)
            )
        )
    if not images:
        raise LabelsError(
            f"no labelled images found under {data_uri}: expected {root}benign/*.png and "
            f"{root}malignant/*.png (one folder per class), or a labels CSV "
            "(path,label[,patient_id])"
        )
    return images
