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
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
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
