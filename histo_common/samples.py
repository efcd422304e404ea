"""Synthetic H&E-like patches, so the demo and the tests run with no dataset.

These are NOT real tissue. They imitate what an H&E patch looks like (pink
eosin-stained stroma with fibres, purple haematoxylin-stained nuclei) and how
malignant patches differ from benign ones in real data: more nuclei, larger,
more irregular in shape and size, and darker. Real results need real data laid
out the same way: ``<root>/benign/*.png`` and ``<root>/malignant/*.png``.

Usage::

    python -m histo_common.samples --output data/sample_bucket --count 300 --seed 0
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from histo_common import storage

logger = logging.getLogger(__name__)

CLASS_NAMES = ("benign", "malignant")
DEFAULT_SIZE = 64
DEFAULT_COUNT = 300


@dataclass(frozen=True)
class NucleusStyle:
    """How nuclei of one class are drawn."""

    count: tuple[int, int]  # min, max nuclei per patch (at 64 px)
    radius: tuple[float, float]  # mean radius range in px (at 64 px)
    irregularity: float  # 0 round .. 1 very ragged outline
    darkness: tuple[float, float]  # haematoxylin intensity range


BENIGN = NucleusStyle(count=(6, 12), radius=(2.0, 3.0), irregularity=0.08, darkness=(0.45, 0.6))
MALIGNANT = NucleusStyle(count=(20, 34), radius=(3.2, 5.2), irregularity=0.4, darkness=(0.7, 0.95))

# Optical densities of the two stains (rows: haematoxylin, eosin) per RGB channel,
# after Ruifrok & Johnston; rendering through them gives H&E-like colours.
_STAIN_OD = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]], dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    coarse = rng.random((size // scale + 2, size // scale + 2)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    return np.asarray(img, dtype=np.float32) / 255.0


def _draw_nuclei(
    rng: np.random.Generator,
    size: int,
    style: NucleusStyle,
    centres: np.ndarray,
) -> np.ndarray:
    """Return a haematoxylin density map with one ragged ellipse per centre."""
    scale = size / DEFAULT_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    density = np.zeros((size, size), dtype=np.float32)
    for cy, cx in centres:
        r = rng.uniform(*style.radius) * scale
        aspect = rng.uniform(1.0, 1.0 + 0.8 * style.irregularity)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        theta = np.arctan2(v, u)
        wobble = 1.0 + style.irregularity * 0.35 * (
            np.sin(3 * theta + rng.uniform(0, 6.3)) + np.sin(5 * theta + rng.uniform(0, 6.3))
        )
        dist = np.sqrt((u / aspect) ** 2 + (v * aspect) ** 2) / (r * wobble)
        dark = rng.uniform(*style.darkness)
        nucleus = np.clip(1.3 - dist, 0.0, 1.0) ** 0.5 * dark
        density = np.maximum(density, nucleus)
    return density


def synth_patch(
    rng: np.random.Generator,
    malignant: bool,
    size: int = DEFAULT_SIZE,
    lesion: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Draw one synthetic H&E patch.

    Args:
        rng: the random generator (the patch is a pure function of its state).
        malignant: draw malignant-looking nuclei.
        size: side in pixels.
        lesion: ``(cy, cx, radius)`` as fractions of ``size``. When given, the
            patch has benign nuclei everywhere plus malignant nuclei packed inside
            that disc only (a planted lesion, used to check Grad-CAM).

    Returns:
        ``size x size x 3`` uint8 RGB.
    """
    scale = size / DEFAULT_SIZE
    stroma = 0.35 + 0.25 * _smooth_noise(rng, size, max(2, size // 8))
    fibres = _smooth_noise(rng, size, max(2, size // 32))
    eosin = np.clip(stroma * (0.8 + 0.4 * fibres), 0, 1)
    style = MALIGNANT if malignant else BENIGN
    area = (size / DEFAULT_SIZE) ** 2
    n = int(rng.integers(style.count[0], style.count[1] + 1) * area)
    centres = rng.uniform(0, size, size=(n, 2))
    haem = _draw_nuclei(rng, size, style, centres)
    if lesion is not None:
        cy, cx, radius = (v * size for v in lesion)
        k = int(MALIGNANT.count[1] * np.pi * (radius / size) ** 2 * 2.5 * area) + 4
        ang = rng.uniform(0, 2 * np.pi, k)
        rad = radius * np.sqrt(rng.uniform(0, 1, k))
        inside = np.stack([cy + rad * np.sin(ang), cx + rad * np.cos(ang)], axis=1)
        haem = np.maximum(haem, _draw_nuclei(rng, size, MALIGNANT, inside))
    eosin = eosin * (1.0 - 0.7 * haem)
    od = haem[..., None] * _STAIN_OD[0] * 1.6 + eosin[..., None] * _STAIN_OD[1] * 0.9
    od += rng.normal(0, 0.025 / max(scale, 1.0), size=od.shape).astype(np.float32)
    rgb = 255.0 * np.exp(-np.clip(od, 0, None) * 1.4)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """Encode an RGB uint8 array as PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def generate_samples(
    output: str,
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    malignant_fraction: float = 0.4,
) -> dict[str, int]:
    """Write a labelled synthetic set as ``<output>/benign/*.png``, ``<output>/malignant/*.png``.

    The set is a pure function of ``(count, seed, size, malignant_fraction)``.

    Args:
        output: folder URI (local path, ``file://`` or ``gs://``).
        count: number of images in all.
        seed: random seed.
        size: side of each patch in pixels.
        malignant_fraction: share of malignant patches (real sets are imbalanced).

    Returns:
        Number of images written per class.
    """
    if count < 2:
        raise ValueError(f"count must be at least 2 (one per class), got {count}")
    if not 0.0 < malignant_fraction < 1.0:
        raise ValueError(f"malignant_fraction must be in (0, 1), got {malignant_fraction}")
    n_malignant = max(1, round(count * malignant_fraction))
    counts = {"benign": count - n_malignant, "malignant": n_malignant}
    for label, n in counts.items():
        for i in range(n):
            rng = np.random.default_rng([seed, CLASS_NAMES.index(label), i])
            patch = synth_patch(rng, malignant=label == "malignant", size=size)
            name = f"synthetic_{label}_{i:05d}.png"
            storage.write_bytes(
                storage.join(output, label, name), encode_png(patch), content_type="image/png"
            )
    return counts


# ---------------------------------------------------------------- slides

GLASS_RGB = (242, 240, 244)
IDC_NAME_RE = re.compile(
    r"^(?P<patient>\d+)_idx\d+_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<cls>[01])\.png$"
)


@dataclass(frozen=True)
class PatchPlacement:
    """Where one labelled patch lies on a slide (level-0 pixels)."""

    x: int
    y: int
    width: int
    height: int
    malignant: bool
    source: str = ""


@dataclass(frozen=True)
class SlideSample:
    """A slide written for tests or benchmarks, with the truth about its regions."""

    uri: str
    width: int
    height: int
    mpp: float | None
    patches: tuple[PatchPlacement, ...]


def write_pyramidal_tiff(
    image: np.ndarray,
    uri: str,
    *,
    mpp: float | None = None,
    tile: int = 256,
    min_side: int = 256,
    compression: str = "zlib",
) -> int:
    """Write an RGB array as a tiled pyramidal TIFF that OpenSlide reads as ``generic-tiff``.

    Reduced levels (each half the last, down to ``min_side``) are top-level pages
    with ``subfiletype=1``; resolution tags (pixels per cm) carry ``mpp`` when given.

    Returns:
        The number of levels written.
    """
    import tempfile
    from pathlib import Path

    import tifffile

    levels = [image]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        prev = levels[-1]
        h, w = (prev.shape[0] // 2) * 2, (prev.shape[1] // 2) * 2
        levels.append(
            prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        )
    with tempfile.TemporaryDirectory(prefix="histo-slide-") as tmp:
        local = Path(tmp) / "slide.tif"
        with tifffile.TiffWriter(local) as tw:
            for i, level in enumerate(levels):
                resolution: tuple[float, float] | None = None
                if mpp:
                    per_cm = 1e4 / (mpp * image.shape[1] / level.shape[1])
                    resolution = (per_cm, per_cm)
                tw.write(
                    level,
                    tile=(tile, tile),
                    compression=compression,
                    photometric="rgb",
                    subfiletype=0 if i == 0 else 1,
                    resolution=resolution,
                    resolutionunit="CENTIMETER" if resolution else None,
                )
        storage.write_bytes(uri, local.read_bytes(), content_type="image/tiff")
    return len(levels)


def synth_slide_image(
    width: int,
    height: int,
    seed: int = 0,
    *,
    islands: int = 3,
    lesion: bool = True,
    patch: int = DEFAULT_SIZE,
) -> tuple[np.ndarray, tuple[PatchPlacement, ...]]:
    """Draw a synthetic slide: benign tissue islands with a planted malignant region.

    The malignant region lies inside the first island; the rest is glass.

    The tissue is laid out on a grid of ``patch``-pixel cells, each a
    :func:`synth_patch`; a cell belongs to an island when its centre lies inside
    one of ``islands`` ellipses. NOT real tissue.

    Returns:
        ``(rgb [height, width, 3], placements)``: every tissue cell with its class.
    """
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[...] = GLASS_RGB
    image = np.clip(image + rng.normal(0, 1.5, image.shape), 0, 255).astype(np.uint8)
    centres = []
    for _ in range(islands):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        rx, ry = rng.uniform(0.1, 0.22) * width, rng.uniform(0.1, 0.22) * height
        centres.append((cx, cy, rx, ry))
    lesion_disc = None
    if lesion and centres:
        cx, cy, rx, ry = centres[0]
        lesion_disc = (cx, cy, 0.5 * min(rx, ry))
    placements = []
    for row in range(height // patch):
        for col in range(width // patch):
            px, py = col * patch + patch / 2, row * patch + patch / 2
            inside = any(
                ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 <= 1 for cx, cy, rx, ry in centres
            )
            if not inside:
                continue
            malignant = bool(
                lesion_disc is not None
                and (px - lesion_disc[0]) ** 2 + (py - lesion_disc[1]) ** 2 <= lesion_disc[2] ** 2
            )
            cell = np.random.default_rng([seed, row, col])
            y0, x0 = row * patch, col * patch
            image[y0 : y0 + patch, x0 : x0 + patch] = synth_patch(cell, malignant, size=patch)
            placements.append(PatchPlacement(x0, y0, patch, patch, malignant))
    return image, tuple(placements)


def generate_slide(
    uri: str,
    width: int = 2048,
    height: int = 1536,
    seed: int = 0,
    *,
    mpp: float | None = 0.5,
    islands: int = 3,
    lesion: bool = True,
) -> SlideSample:
    """Write a synthetic pyramidal TIFF slide to ``uri`` (see :func:`synth_slide_image`)."""
    image, placements = synth_slide_image(width, height, seed, islands=islands, lesion=lesion)
    write_pyramidal_tiff(image, uri, mpp=mpp)
    return SlideSample(uri=uri, width=width, height=height, mpp=mpp, patches=placements)


def parse_idc_name(name: str) -> tuple[str, int, int, bool] | None:
    """``8863_idx5_x1001_y1001_class0.png`` -> ``("8863", 1001, 1001, False)``; None otherwise."""
    match = IDC_NAME_RE.match(name)
    if not match:
        return None
    return match["patient"], int(match["x"]), int(match["y"]), match["cls"] == "1"


def reassemble_idc_patient(
    idc_root: str, patient: str, uri: str, *, mpp: float | None = None
) -> SlideSample:
    """Put one IDC patient's patches back at the coordinates in their file names.

    The patches (``<idc_root>/{benign,malignant}/<patient>_idx5_x<X>_y<Y>_class<C>.png``)
    are pasted on glass into one canvas, written as a pyramidal TIFF at ``uri``.
    Places without a patch (the dataset dropped them) stay glass.

    Returns:
        The slide and every patch's placement and class (the ground truth).
    """
    found = []
    for class_dir in ("benign", "malignant"):
        for src in storage.list_uris(storage.join(idc_root, class_dir, f"{patient}_*.png")):
            parsed = parse_idc_name(storage.basename(src))
            if parsed is not None and parsed[0] == patient:
                found.append((src, parsed))
    if not found:
        raise ValueError(f"no IDC patches of patient {patient} under {idc_root}")
    images = []
    for src, (_, x, y, malignant) in found:
        with Image.open(io.BytesIO(storage.read_bytes(src))) as img:
            rgb = np.asarray(img.convert("RGB"))
        images.append((src, x, y, malignant, rgb))
    x_min = min(x for _, x, _, _, _ in images)
    y_min = min(y for _, _, y, _, _ in images)
    width = max(x - x_min + im.shape[1] for _, x, _, _, im in images)
    height = max(y - y_min + im.shape[0] for _, _, y, _, im in images)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[...] = GLASS_RGB
    placements = []
    for src, x, y, malignant, rgb in images:
        h, w = rgb.shape[:2]
        canvas[y - y_min : y - y_min + h, x - x_min : x - x_min + w] = rgb
        placements.append(PatchPlacement(x - x_min, y - y_min, w, h, malignant, src))
    write_pyramidal_tiff(canvas, uri, mpp=mpp)
    logger.info(
        "Reassembled IDC patient %s: %d patches into a %dx%d slide at %s",
        patient,
        len(placements),
        width,
        height,
        uri,
    )
    return SlideSample(uri=uri, width=width, height=height, mpp=mpp, patches=tuple(placements))


def main(argv: list[str] | None = None) -> int:
    """Command line: generate a synthetic labelled sample set."""
    parser = argparse.ArgumentParser(
        description="Generate synthetic H&E-like patches (NOT real tissue) in "
        "<output>/benign and <output>/malignant."
    )
    parser.add_argument("--output", required=True, help="folder URI (path, file:// or gs://)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="images in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="patch side in pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = generate_samples(args.output, args.count, args.seed, args.size)
    except (ValueError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(counts.values())
    print(
        f"Wrote {total} synthetic patches ({counts['benign']} benign, "
        f"{counts['malignant']} malignant, {args.size} px, seed {args.seed}) to {args.output}"
    )
    print("These are synthetic, not real tissue: real results need real data.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
