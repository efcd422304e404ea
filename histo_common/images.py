"""Checks on encoded image bytes before they reach the model.

The SavedModel decodes images itself; these checks only read headers, so a bulk
job, the Cloud Function and the app can turn a bad file (empty, not an image, too
large, truncated, an unsupported format) into one clear reason instead of a
TensorFlow error, and without decoding a decompression bomb.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from histo_common.errors import one_line

# Formats the SavedModel decodes in its graph (tf.io.decode_image).
MODEL_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF"})
# Formats Pillow reads that we transcode losslessly to PNG before the model sees them.
TRANSCODE_FORMATS = frozenset({"TIFF", "WEBP"})
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

DEFAULT_MAX_PIXELS = 25_000_000  # e.g. 5000 x 5000; patches are far smaller
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ImageError(ValueError):
    """An input that is not a usable image; ``str(err)`` is a one-line reason."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an encoded image says."""

    format: str
    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        """Number of pixels (width x height)."""
        return self.width * self.height


def has_image_suffix(name: str) -> bool:
    """Return True when ``name`` ends like an image file we accept."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def sniff_format(data: bytes) -> str | None:
    """Return the image format named by the magic bytes, or None."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def inspect_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ImageInfo:
    """Check encoded bytes and return their header facts.

    Args:
        data: the encoded file.
        max_pixels: refuse images with more pixels than this (decompression bombs).
        max_bytes: refuse files larger than this.

    Returns:
        The format, size and colour mode.

    Raises:
        ImageError: with a one-line reason when the bytes are not a usable image.
    """
    from PIL import Image

    if not data:
        raise ImageError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"file is {len(data):,} bytes, over the limit of {max_bytes:,}")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(f"not an image: content starts with {data[:8]!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                mode = img.mode
                if width * height > max_pixels:
                    raise ImageError(
                        f"image is {width}x{height} = {width * height:,} pixels, "
                        f"over the limit of {max_pixels:,}"
                    )
                if width == 0 or height == 0:
                    raise ImageError(f"image has no pixels ({width}x{height})")
                img.verify()  # checksums and structure, without decoding pixel data
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image is too large to decode safely: {exc}") from exc
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ImageError(f"corrupt or truncated {fmt}: {one_line(exc)}") from exc
    if fmt not in MODEL_FORMATS | TRANSCODE_FORMATS:
        raise ImageError(f"unsupported image format {fmt}")
    return ImageInfo(format=fmt, width=width, height=height, mode=mode)


def prepare_for_model(data: bytes, info: ImageInfo) -> bytes:
    """Return bytes the SavedModel can decode: unchanged, or TIFF/WebP as lossless PNG."""
    if info.format in MODEL_FORMATS:
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        img.convert("RGBA" if "A" in img.mode else "RGB").save(out, format="PNG")
        return out.getvalue()


def check_and_prepare(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[bytes, ImageInfo]:
    """Inspect ``data`` and return model-ready bytes with the header facts."""
    info = inspect_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    return prepare_for_model(data, info), info


def median_size(images: Iterable[bytes]) -> tuple[int, int]:
    """Median ``(width, height)`` of encoded images, from their headers only.

    This is the training scale a model records (``native_size`` in its metadata):
    50 x 50 for IDC patches, whatever input size the network resizes them to.

    Raises:
        ImageError: when ``images`` is empty or one has no readable header.
    """
    from PIL import Image

    sizes = []
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as img:
                sizes.append(img.size)
        except Exception as exc:  # PIL raises many types for corrupt files
            raise ImageError(f"cannot read an image header: {one_line(exc)}") from exc
    if not sizes:
        raise ImageError("no images to measure")
    widths = sorted(w for w, _ in sizes)
    heights = sorted(h for _, h in sizes)
    mid = len(sizes) // 2
    return widths[mid], heights[mid]
