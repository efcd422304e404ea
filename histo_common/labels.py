"""Labelled images: the one home for true labels, used by training, evaluation and the app.

For an image URI, its class and the patient it came from, by one set of rules:

- **Class names** are given by the caller: the model's ``metadata.class_names``
  wherever a model is at hand, else the contract's default pair
  (``model_export.contract.DEFAULT_CLASS_NAMES``). A label is written as a class
  name or an alias, case-blind: the class's index (``0``, ``1``) or its initial
  when no other class shares it (``B``, ``M``). :func:`normalise_label` maps any
  of them to the class name, everywhere (folders and CSVs alike).
- **Folder rule**: an image's class is the *nearest folder above it that names a
  class* (or an alias of one). ``<root>/malignant/x.png``,
  ``<root>/malignant/slide-7/x.png`` and ``<root>/1/x.png`` are all malignant;
  folders that name no class are passed over, and an image under no class
  folder has no label. The same rule holds for a training folder, an evaluation
  glob and an upload's path.
- **Labels CSV**: a path column (``path``, ``uri``, ``filename`` or ``file``),
  ``label``, optionally ``patient_id`` (or ``patient``); headers case-blind,
  relative paths resolved beside the CSV. Read through :mod:`histo_common.storage`.
  A CSV entry wins over the folder.
- **Patient**: the ``patient_id`` column, else the IDC convention
  (``8863_idx5_x1001_y1001_class0.png`` -> ``8863``), else the BreakHis one
  (``SOB_M_DC-14-2523-400-001.png`` -> ``14-2523``), else unknown (None).

Problems are one :class:`LabelsError` naming the file (and the line).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from histo_common import storage
from histo_common.images import has_image_suffix

logger = logging.getLogger(__name__)

_IDC = re.compile(r"^(\d+)_idx\d+_x\d+_y\d+_class[01]\.\w+$", re.IGNORECASE)
_BREAKHIS = re.compile(r"^SOB_[BM]_[A-Z]+-(\d+-[0-9A-Z]+)-\d+-\d+\.\w+$", re.IGNORECASE)
_PATH_COLUMNS = ("path", "uri", "filename", "file")
_PATIENT_COLUMNS = ("patient_id", "patient")


class LabelsError(ValueError):
    """A labelled data source that cannot be used; the message names it (and the line)."""


@dataclass(frozen=True)
class LabelledImage:
    """One image with its known class (a class name) and patient, when known."""

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


def label_aliases(class_names: Sequence[str]) -> dict[str, str]:
    """``{written form (lower case): class name}`` for names, indexes and unique initials."""
    aliases = {name.lower(): name for name in class_names}
    aliases.update({str(i): name for i, name in enumerate(class_names)})
    initials = [name[:1].lower() for name in class_names]
    for name, initial in zip(class_names, initials, strict=True):
        if initials.count(initial) == 1:
            aliases.setdefault(initial, name)
    return aliases


def normalise_label(value: str, class_names: Sequence[str]) -> str | None:
    """The class name ``value`` stands for (``malignant``, ``1``, ``M`` ...), or None."""
    return label_aliases(class_names).get(value.strip().lower())


def label_from_folder(uri: str, class_names: Sequence[str]) -> str | None:
    """The class of the nearest folder above ``uri`` that names one (see the folder rule)."""
    aliases = label_aliases(class_names)
    folders = uri.split("://", 1)[-1].split("/")[:-1]
    for folder in reversed(folders):
        found = aliases.get(folder.lower())
        if found is not None:
            return found
    return None


def normalise_uri(uri: str) -> str:
    """A join key for URIs: ``gs://`` unchanged, local paths absolute and normalised."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return os.path.normpath(os.path.abspath(path))


def parse_labels_csv(text: str, csv_uri: str, class_names: Sequence[str]) -> list[LabelledImage]:
    """Parse a labels CSV (columns as in the module docstring) into labelled images.

    Labels are mapped to class names through :func:`normalise_label`; a missing
    patient id falls back to :func:`patient_id_from_name`.

    Raises:
        LabelsError: naming the CSV (and the line) for a missing column, an empty
            cell or an unknown label.
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
        path, written = (row.get(path_col) or "").strip(), (row.get(label_col) or "").strip()
        if not path and not written:
            continue  # a blank line
        if not path or not written:
            raise LabelsError(f"labels CSV {csv_uri} line {line}: empty path or label")
        label = normalise_label(written, class_names)
        if label is None:
            raise LabelsError(
                f"labels CSV {csv_uri} line {line}: unknown label {written!r}; expected one "
                f"of {list(class_names)} (or {', '.join(sorted(label_aliases(class_names)))})"
            )
        is_absolute = "://" in path or path.startswith("/")
        full = path if is_absolute else storage.join(base, path)
        patient = (row.get(patient_col) or "").strip() if patient_col else ""
        out.append(LabelledImage(full, label, patient or patient_id_from_name(path)))
    if not out:
        raise LabelsError(f"labels CSV {csv_uri} has no rows")
    return out


def read_labels_csv(uri: str, class_names: Sequence[str]) -> list[LabelledImage]:
    """Read and parse a labels CSV through the storage layer (see :func:`parse_labels_csv`).

    Raises:
        LabelsError: naming the CSV and the problem.
    """
    try:
        text = storage.read_text(uri)
    except storage.StorageError as exc:
        raise LabelsError(f"cannot read labels CSV {uri}: {exc}") from exc
    images = parse_labels_csv(text, uri, class_names)
    logger.info("Read %d labels from %s", len(images), uri)
    return images


def by_uri(images: Iterable[LabelledImage]) -> dict[str, LabelledImage]:
    """Labelled images keyed by :func:`normalise_uri`, for looking up scored URIs."""
    return {normalise_uri(image.uri): image for image in images}


def true_label(
    uri: str, class_names: Sequence[str], labels: Mapping[str, LabelledImage] | None = None
) -> LabelledImage | None:
    """The truth for ``uri``: the labels CSV (:func:`by_uri`) if it names it, else its folder.

    Returns:
        The labelled image, or None when neither says.
    """
    if labels:
        found = labels.get(normalise_uri(uri))
        if found is not None:
            return found
    label = label_from_folder(uri, class_names)
    return LabelledImage(uri, label, patient_id_from_name(uri)) if label else None


def discover_labelled_images(data_uri: str, class_names: Sequence[str]) -> list[LabelledImage]:
    """List labelled images from a folder (the folder rule) or a labels CSV.

    Raises:
        LabelsError: when nothing usable is there, with what was expected.
    """
    if data_uri.lower().endswith(".csv"):
        return read_labels_csv(data_uri, class_names)
    try:
        uris = [u for u in storage.list_uris(data_uri) if has_image_suffix(u)]
    except storage.StorageError as exc:
        raise LabelsError(f"cannot list {data_uri}: {exc}") from exc
    root = data_uri.rstrip("/") + "/"
    images = []
    for uri in uris:
        rel = uri[len(root) :] if uri.startswith(root) else uri
        label = label_from_folder(rel, class_names)  # folders above the root do not count
        if label is not None:
            images.append(LabelledImage(uri, label, patient_id_from_name(uri)))
    if not images:
        folders = " and ".join(f"{root}{name}/*.png" for name in class_names)
        raise LabelsError(
            f"no labelled images found under {data_uri}: expected {folders} (one folder "
            "per class), or a labels CSV (path,label[,patient_id])"
        )
    return images


def require_some_label(
    uris: Iterable[str],
    class_names: Sequence[str],
    labels: Mapping[str, LabelledImage] | None,
    source: str,
    *,
    limit: int | None = None,
) -> None:
    """Stop early, with what to do, when not one of ``uris`` has a known label.

    With ``limit``, at most that many URIs are looked at (a launcher must not
    read millions): when none of them has a label but more follow, the pipeline
    decides.

    Raises:
        LabelsError: when no URI is labelled by ``labels`` or by its folder.
    """
    count = 0
    for uri in uris:
        if limit is not None and count >= limit:
            return
        count += 1
        if true_label(uri, class_names, labels) is not None:
            return
    raise unlabelled_error(count, class_names, source)


def unlabelled_error(count: int | None, class_names: Sequence[str], source: str) -> LabelsError:
    """The error for images of which none has a label (``count`` of them, when known)."""
    folders = " and ".join(f"{name}/" for name in class_names)
    images = "images" if count is None else f"{count} images"
    return LabelsError(
        f"none of the {images} in {source} has a label: put them under {folders} "
        "folders or pass --labels with a CSV naming them (path,label[,patient_id])"
    )
