"""Training data: reading labelled images, splitting by patient, and the tf.data pipeline.

Stages, in order: :func:`load_examples` (list, read and check every image, one
clear error for bad ones), :func:`split_examples` (by patient when patient ids
exist, else stratified by image), :func:`make_dataset` (parallel decode with the
contract's own decoder, cache, shuffle, augment, batch, prefetch).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from histo_common import storage
from histo_common.images import ImageError, inspect_image, prepare_for_model
from histo_common.labels import LabelledImage, LabelsError, discover_labelled_images
from model_export.contract import DEFAULT_CLASS_NAMES
from training.config import Augmentation, TrainConfig, replace
from training.models import MOBILENET_V2

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)

_READ_THREADS = 16


class DataError(ValueError):
    """Training data that cannot be used; the message names what and where."""


@dataclass(frozen=True)
class Example:
    """One labelled image with its encoded bytes, ready for the model's decoder."""

    uri: str
    label: int
    patient_id: str | None
    data: bytes


@dataclass(frozen=True)
class Dataset:
    """All examples of a run with their class names."""

    examples: list[Example]
    class_names: list[str]

    def summary(self) -> dict[str, object]:
        """Counts per class and number of patients (for metadata and logs)."""
        counts = Counter(self.class_names[e.label] for e in self.examples)
        patients = {e.patient_id for e in self.examples if e.patient_id is not None}
        return {
            "images": len(self.examples),
            "per_class": {name: counts.get(name, 0) for name in self.class_names},
            "patients": len(patients),
        }


def _read_one(item: LabelledImage) -> tuple[LabelledImage, bytes | None, str | None]:
    try:
        data = storage.read_bytes(item.uri)
        info = inspect_image(data)
        return item, prepare_for_model(data, info), None
    except (storage.StorageError, ImageError) as exc:
        return item, None, str(exc)


def load_examples(data_uri: str, *, skip_bad_images: bool = False) -> Dataset:
    """Read and check every labelled image under ``data_uri``.

    Args:
        data_uri: a folder laid out ``<root>/<class>/*`` or a labels CSV.
        skip_bad_images: log and skip unreadable images instead of failing.

    Raises:
        DataError: no images, fewer than two classes, or unreadable images (named).
    """
    try:
        items = discover_labelled_images(data_uri, DEFAULT_CLASS_NAMES)
    except LabelsError as exc:
        raise DataError(str(exc)) from exc
    class_names = sorted({item.label for item in items})
    if len(class_names) < 2:
        raise DataError(
            f"only one class ({class_names[0]!r}) found in {data_uri}; training needs at "
            "least two (e.g. benign/ and malignant/ folders)"
        )
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        results = list(pool.map(_read_one, items))
    bad = [(item.uri, reason) for item, data, reason in results if data is None]
    if bad and not skip_bad_images:
        listed = "; ".join(f"{uri}: {reason}" for uri, reason in bad[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} unreadable image(s) in {data_uri}: {listed}{more}. "
            "Fix or remove them, or pass --skip-bad-images"
        )
    for uri, reason in bad:
        logger.warning("Skipping %s: %s", uri, reason)
    examples = [
        Example(item.uri, class_names.index(item.label), item.patient_id, data)
        for item, data, _ in results
        if data is not None
    ]
    present = {e.label for e in examples}
    if len(present) < 2:
        raise DataError(f"after skipping bad images, {data_uri} has fewer than two classes")
    return Dataset(examples=examples, class_names=class_names)


@dataclass(frozen=True)
class Split:
    """Train and validation indices into a :class:`Dataset`, and how they were made."""

    train: list[int]
    validation: list[int]
    method: str  # "patient" or "stratified"
    validation_patients: list[str]


def _all_patient_ids(examples: Sequence[Example]) -> list[str] | None:
    """Every example's patient id in order, or None when any example has none."""
    ids: list[str] = []
    for example in examples:
        if example.patient_id is None:
            return None
        ids.append(example.patient_id)
    return ids


def split_examples(dataset: Dataset, validation_fraction: float, seed: int) -> Split:
    """Split by patient when every image has a patient id, else stratified by image.

    The patient split never puts one patient on both sides; it adds whole patients
    to validation, in a seeded random order, until it holds about
    ``validation_fraction`` of the images and every class, while leaving every
    class in training too.
    """
    examples = dataset.examples
    rng = np.random.default_rng(seed)
    n_classes = len(dataset.class_names)
    patients = _all_patient_ids(examples)
    if patients is not None and len(set(patients)) >= 3:
        by_patient: dict[str, list[int]] = {}
        for i, p in enumerate(patients):
            by_patient.setdefault(p, []).append(i)
        labels_of = {p: {examples[i].label for i in idx} for p, idx in by_patient.items()}
        target = validation_fraction * len(examples)
        for _attempt in range(200):
            order = list(rng.permutation(sorted(by_patient)))
            chosen: list[str] = []
            size = 0
            for p in order:
                if size >= target:
                    break
                chosen.append(p)
                size += len(by_patient[p])
            val_classes = set().union(*(labels_of[p] for p in chosen))
            rest = [p for p in by_patient if p not in chosen]
            train_classes = set().union(*(labels_of[p] for p in rest)) if rest else set()
            if len(val_classes) == n_classes and len(train_classes) == n_classes:
                val_set = set(chosen)
                val = [i for p in chosen for i in by_patient[p]]
                train = [i for p in by_patient if p not in val_set for i in by_patient[p]]
                return Split(sorted(train), sorted(val), "patient", sorted(chosen))
        logger.warning(
            "No patient split puts every class on both sides; splitting by image instead"
        )
    labels = np.array([e.label for e in examples])
    held_out: list[int] = []
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, round(validation_fraction * len(idx))) if len(idx) > 1 else 0
        held_out.extend(int(i) for i in idx[:k])
    held_out_set = set(held_out)
    train = [i for i in range(len(examples)) if i not in held_out_set]
    return Split(sorted(train), sorted(held_out), "stratified", [])


def _stratified_folds(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    fold = np.empty(len(labels), dtype=int)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def fold_splits(dataset: Dataset, k: int, seed: int) -> list[Split]:
    """K train/validation splits whose validation parts cover every image once.

    With patient ids, whole patients go to one fold (greedy balance of image
    counts, in a seeded random order, retried until every fold's validation and
    training parts hold every class); otherwise images are stratified by class.
    """
    examples = dataset.examples
    n_classes = len(dataset.class_names)
    labels = np.array([e.label for e in examples])
    rng = np.random.default_rng(seed)
    patients = _all_patient_ids(examples)
    fold: np.ndarray | None = None
    method = "stratified"
    if patients is not None and len(set(patients)) >= k:
        by_patient: dict[str, list[int]] = {}
        for i, p in enumerate(patients):
            by_patient.setdefault(p, []).append(i)
        for _attempt in range(500):
            sizes = np.zeros(k)
            candidate = np.empty(len(examples), dtype=int)
            for p in rng.permutation(sorted(by_patient)):
                f = int(np.argmin(sizes + rng.uniform(0, 1e-3, k)))
                candidate[by_patient[p]] = f
                sizes[f] += len(by_patient[p])
            ok = all(
                len(set(labels[candidate == f])) == n_classes
                and len(set(labels[candidate != f])) == n_classes
                for f in range(k)
            )
            if ok:
                fold, method = candidate, "patient"
                break
        else:
            logger.warning(
                "No grouping of the %d patients into %d folds puts every class on both "
                "sides of each fold; splitting by image instead",
                len(by_patient),
                k,
            )
    if fold is None:
        fold = _stratified_folds(labels, k, rng)
    splits = []
    for f in range(k):
        val = np.flatnonzero(fold == f).tolist()
        train = np.flatnonzero(fold != f).tolist()
        val_patients = (
            sorted({patients[i] for i in val}) if patients and method == "patient" else []
        )
        splits.append(Split(train, val, method, val_patients))
    return splits


# ------------------------------------------------------------ input size

# Random-crop strength when Augmentation.zoom is not given: small for patches (the
# lesion fills them), larger for fields of view (many crops of one large field).
PATCH_ZOOM = 0.1
FIELD_ZOOM = 0.3
# Sides with published ImageNet weights for MobileNetV2 (Keras applications).
MOBILENET_SIDES = (96, 128, 160, 192, 224)
CUSTOM_CNN_SIDES = (32, 128)  # the custom CNN's range: patches, up to small fields
# Downscaling the short side by more than this loses the cells the model must see.
MAX_DOWNSCALE = 4.0
# A field of view: the short side is at least this many times the input side.
FIELD_OF_VIEW_RATIO = 2.0


def native_size(dataset: Dataset) -> tuple[int, int]:
    """Median ``(width, height)`` of the images (read from their headers)."""
    sizes = np.array([_size_of(e) for e in dataset.examples])
    width, height = np.median(sizes, axis=0)
    return int(width), int(height)


def _size_of(example: Example) -> tuple[int, int]:
    info = inspect_image(example.data)
    return info.width, info.height


def default_image_size(architecture: str, short_side: int) -> int:
    """The input side for images whose short side is ``short_side`` pixels.

    MobileNetV2: the largest side with ImageNet weights (96 to 224) not above the
    images' short side (96 for small patches, upsampled). Custom CNN: the short side
    rounded down to a multiple of 8, within 32 to 128 (48 for 50 px IDC patches).
    """
    if architecture == MOBILENET_V2:
        fitting = [s for s in MOBILENET_SIDES if s <= short_side]
        return fitting[-1] if fitting else MOBILENET_SIDES[0]
    low, high = CUSTOM_CNN_SIDES
    return int(min(high, max(low, short_side // 8 * 8)))


def downscale_warning(size: tuple[int, int], image_size: int) -> str | None:
    """One sentence when images of ``size`` (w, h) shrink more than ``MAX_DOWNSCALE``x."""
    factor = min(size) / image_size
    if factor <= MAX_DOWNSCALE:
        return None
    return (
        f"images of about {size[0]} x {size[1]} px are downscaled {factor:.1f}x to "
        f"{image_size} px (more than {MAX_DOWNSCALE:.0f}x): cell detail is lost; use a "
        "larger --image-size or train on tiles"
    )


def resolve_input(config: TrainConfig, dataset: Dataset) -> tuple[TrainConfig, list[str]]:
    """Fill in the input size and crop strength from the data; warn on heavy downscaling.

    Returns:
        The config with ``image_size`` and ``augmentation.zoom`` set, and warnings
        (sentences, also logged).
    """
    size = native_size(dataset)
    image_size = config.image_size or default_image_size(config.architecture, min(size))
    if config.image_size is None:
        logger.info(
            "Input size %d px, from images of about %d x %d px and %s",
            image_size,
            *size,
            config.architecture,
        )
    aug = config.augmentation
    if aug.zoom is None:
        field = min(size) >= FIELD_OF_VIEW_RATIO * image_size
        aug = replace(aug, zoom=FIELD_ZOOM if field else PATCH_ZOOM)
    warnings = [w for w in [downscale_warning(size, image_size)] if w]
    for warning in warnings:
        logger.warning("Input: %s", warning)
    return replace(config, image_size=image_size, augmentation=aug), warnings


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights: n / (k * count_c), so each class counts equally in the loss."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    counts[counts == 0] = 1.0
    weights = len(labels) / (n_classes * counts)
    return {i: float(w) for i, w in enumerate(weights)}


# ----------------------------------------------------------------- tf.data


def _stain_matrix() -> tuple[tf.Tensor, tf.Tensor]:
    """RGB-from-HED and HED-from-RGB stain matrices as constants."""
    import tensorflow as tf

    # Haematoxylin, eosin, DAB optical densities (Ruifrok & Johnston 2001), rows normalised.
    rgb_from_hed = np.array(
        [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
    )
    rgb_from_hed /= np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)
    hed_from_rgb = np.linalg.inv(rgb_from_hed)
    return tf.constant(rgb_from_hed), tf.constant(hed_from_rgb)


def augment(image: tf.Tensor, aug: Augmentation, image_size: int) -> tf.Tensor:
    """Random H&E-aware augmentation of one ``[C, C, 3]`` float image in [0, 255].

    Returns ``[S, S, 3]`` with ``S = image_size``: a random square crop of ``C``
    (``C >= S``; at its largest, the whole image), resized to ``S``, then colour and
    stain jitter. Serving resizes the whole image, the crop's upper end.
    """
    import tensorflow as tf

    x = image
    if aug.flip:
        x = tf.image.random_flip_left_right(x)
        x = tf.image.random_flip_up_down(x)
    if aug.rotate90:
        x = tf.image.rot90(x, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
    zoom = PATCH_ZOOM if aug.zoom is None else aug.zoom
    if zoom > 0:
        # ``image`` may be cached larger than the input (see make_dataset), so that the
        # smallest crop is still at the input's resolution.
        keep = tf.random.uniform([], 1.0 - zoom, 1.0)
        side = tf.cast(tf.round(keep * tf.cast(tf.shape(x)[0], tf.float32)), tf.int32)
        x = tf.image.random_crop(x, tf.stack([side, side, 3]))
        x = tf.image.resize(x, [image_size, image_size], method="bilinear", antialias=True)
    if aug.stain > 0:
        rgb_from_hed, hed_from_rgb = _stain_matrix()
        od = -tf.math.log((x + 1.0) / 256.0)
        hed = tf.reshape(od, [-1, 3]) @ hed_from_rgb
        scale = tf.random.uniform([1, 3], 1.0 - aug.stain, 1.0 + aug.stain)
        shift = tf.random.uniform([1, 3], -aug.stain, aug.stain)
        od = tf.reshape((hed * scale + shift) @ rgb_from_hed, tf.shape(x))
        x = 256.0 * tf.exp(-tf.maximum(od, 0.0)) - 1.0
    x = tf.clip_by_value(x, 0.0, 255.0) / 255.0
    if aug.brightness > 0:
        x = tf.image.random_brightness(x, aug.brightness)
    if aug.contrast > 0:
        x = tf.image.random_contrast(x, 1.0 - aug.contrast, 1.0 + aug.contrast)
    if aug.saturation > 0:
        x = tf.image.random_saturation(x, 1.0 - aug.saturation, 1.0 + aug.saturation)
    if aug.hue > 0:
        x = tf.image.random_hue(x, aug.hue)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def crop_cache_size(image_size: int, augmentation: Augmentation) -> int:
    """Side at which training images are cached.

    The smallest random crop is then ``image_size`` itself, so crops are never upsampled.
    """
    zoom = PATCH_ZOOM if augmentation.zoom is None else augmentation.zoom
    return int(np.ceil(image_size / (1.0 - zoom))) if zoom > 0 else image_size


def make_dataset(
    examples: list[Example],
    indices: list[int],
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    augmentation: Augmentation | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Build the tf.data pipeline for a subset of examples.

    Decoding uses the SavedModel's own decoder (``model_export.preprocessing``), in
    parallel, and is cached once; training adds shuffling and augmentation (its
    images are cached at :func:`crop_cache_size` and cropped down to ``image_size``).
    """
    import tensorflow as tf

    from model_export.preprocessing import decode_and_resize

    data = tf.constant([examples[i].data for i in indices], dtype=tf.string)
    labels = tf.constant([examples[i].label for i in indices], dtype=tf.float32)
    ds = tf.data.Dataset.from_tensor_slices((data, labels))
    cache_size = image_size
    if training and augmentation is not None:
        cache_size = crop_cache_size(image_size, augmentation)
    ds = ds.map(
        lambda b, y: (decode_and_resize(b, cache_size), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).cache()
    if training:
        ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
        if augmentation is not None:
            ds = ds.map(
                lambda x, y: (augment(x, augmentation, image_size), y),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    options = tf.data.Options()
    options.deterministic = not training
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


def stain_reference(
    examples: list[Example], indices: list[int], image_size: int
) -> tuple[list[float], list[float]]:
    """The Reinhard reference: mean CIELAB channel means and standard deviations of images.

    Each image counts once, as the model sees it (decoded and resized by the contract's
    own decoder); the reference is the average of the per-image statistics, the
    "typical" image the normaliser maps every input to.

    Returns:
        ``(lab_mean, lab_std)``, three floats each.
    """
    from model_export.preprocessing import MIN_LAB_STD, lab_statistics

    means, stds = [], []
    dataset = make_dataset(examples, indices, image_size=image_size, batch_size=256, training=False)
    for images, _labels in dataset:
        mean, std = lab_statistics(images)
        means.append(mean.numpy())
        stds.append(std.numpy())
    lab_mean = np.concatenate(means).mean(axis=0)
    lab_std = np.maximum(np.concatenate(stds).mean(axis=0), MIN_LAB_STD)
    return [float(v) for v in lab_mean], [float(v) for v in lab_std]
