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


def read_labels_csv(uri: str) -> list[LabelledImage]:
    """Read ``path,label[,patient_id]``; relative paths are resolved beside the CSV.

    Raises:
        LabelsError: naming the CSV and the problem.
    """
    try:
        text = storage.read_text(uri)
    except storage.StorageError as exc:
        raise LabelsError(f"cannot read labels CSV {uri}: {exc}") from exc
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise LabelsError(f"labels CSV {uri} has no rows")
    columns = set(rows[0])
    if not {"path", "label"} <= columns:
        raise LabelsError(
            f"labels CSV {uri} needs columns 'path' and 'label' (optional 'patient_id'); "
            f"it has {sorted(columns)}"
        )
    base = storage.parent(uri)
    out = []
    for line, row in enumerate(rows, start=2):
        path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not path or not label:
            raise LabelsError(f"labels CSV {uri} line {line}: empty path or label")
        is_absolute = storage.is_gcs(path) or path.startswith(("/", storage.FILE_SCHEME))
        full = path if is_absolute else storage.join(base, path)
        patient = (row.get("patient_id") or "").strip() or patient_id_from_name(path)
        out.append(LabelledImage(uri=full, label=label, patient_id=patient))
    return out


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
