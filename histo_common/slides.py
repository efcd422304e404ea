"""Whole-slide images and large fields of view, read region by region.

A :class:`Slide` is geometry (levels, their sizes and downsamples, microns per
pixel when known) plus reads: :meth:`Slide.read_region` in level-0 coordinates at
any level, and :meth:`Slide.thumbnail` from the smallest level that is large
enough. :func:`open_slide` picks the reader from the input:

- OpenSlide (``openslide-python`` with the ``openslide-bin`` library) for Aperio
  ``.svs``, Hamamatsu ``.ndpi``, MIRAX ``.mrxs`` (with its companion folder),
  Leica ``.scn``, tiled/pyramidal TIFF and DICOM WSI series (a folder of ``.dcm``
  files, or one file of the series);
- Pillow for plain PNG/JPEG/BMP/strip TIFF: these cannot be read by region, so
  they are decoded once and only under the pixel limit of
  :mod:`histo_common.images` (the decompression-bomb guard). A pyramidal slide is
  not held to that limit: its lowest level serves thumbnails and tissue masks,
  and level 0 is only ever read in tiles.

``gs://`` inputs are downloaded through :mod:`histo_common.storage` into a local
cache keyed by the object's generation (OpenSlide reads only local files); a
MIRAX ``.mrxs`` brings its companion folder and a DICOM folder all its files.
Every problem is one :class:`SlideError` sentence naming the input.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histo_common import storage
from histo_common.images import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)

# Suffixes OpenSlide reads as whole-slide images (TIFF may also be a plain image).
WSI_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
TIFF_SUFFIXES = (".tif", ".tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SLIDE_SUFFIXES = WSI_SUFFIXES + TIFF_SUFFIXES + PLAIN_SUFFIXES
# Slides made of a file plus a folder of files (stored as separate objects).
MULTI_FILE_SUFFIXES = (".mrxs", ".vms", ".vmu")
# The files of a MIRAX slide's companion folder (Slidedat.ini, Index.dat, Data*.dat).
MRXS_COMPANION_SUFFIXES = (".dat", ".ini")
# A DICOM WSI series is a folder of .dcm objects (one per level): none is a slide alone.
SERIES_MEMBER_SUFFIXES = (".dcm",)
SINGLE_FILE_SUFFIXES = tuple(
    s for s in WSI_SUFFIXES if s not in MULTI_FILE_SUFFIXES + SERIES_MEMBER_SUFFIXES
)
# Glass colour used where a region reaches past the slide or is transparent.
BACKGROUND_RGB = (255, 255, 255)
DEFAULT_THUMBNAIL_SIDE = 1024
# Coarser than any microscope scan (a 1.25x objective gives about 8 um/px): a TIFF's
# resolution tag saying more is an image editor's 72 or 96 dpi (352.8, 264.6 um/px),
# not a scale, and trusting it would cut one-pixel tiles.
MAX_PLAUSIBLE_MPP = 20.0


class SlideError(ValueError):
    """A slide that cannot be read; ``str(err)`` is one sentence naming the input."""


@dataclass(frozen=True)
class SlideGeometry:
    """What a slide is, without its pixels: serialisable, so work items can carry it.

    Attributes:
        uri: the input as the user named it.
        vendor: OpenSlide's format name (``aperio``, ``generic-tiff``, ``dicom``...) or
            ``pillow-<FORMAT>`` for a plain image.
        level_dimensions: ``(width, height)`` of each level, level 0 first.
        level_downsamples: level-0 pixels per pixel of each level.
        mpp: microns per level-0 pixel (mean of x and y), or None when unknown.
    """

    uri: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None = None

    def __post_init__(self) -> None:
        if not self.level_dimensions or len(self.level_dimensions) != len(self.level_downsamples):
            raise SlideError(f"{self.uri}: slide has no levels or inconsistent level lists")

    @property
    def level_count(self) -> int:
        """Number of pyramid levels (1 for a plain image)."""
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    @property
    def is_pyramidal(self) -> bool:
        """True when the slide has lower-resolution levels."""
        return self.level_count > 1

    def best_level_for_downsample(self, downsample: float) -> int:
        """The highest-resolution level not finer than needed, as OpenSlide chooses.

        That is the largest level downsample <= ``downsample`` (level 0 when none is).
        """
        best = 0
        for level, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = level
        return best

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for Beam work items and result rows)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlideGeometry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            uri=data["uri"],
            vendor=data["vendor"],
            level_dimensions=tuple((int(w), int(h)) for w, h in data["level_dimensions"]),
            level_downsamples=tuple(float(d) for d in data["level_downsamples"]),
            mpp=None if data.get("mpp") is None else float(data["mpp"]),
        )


class Slide:
    """An open slide: geometry plus region reads. Use as a context manager."""

    geometry: SlideGeometry

    def read_region(self, x0: int, y0: int, level: int, width: int, height: int) -> np.ndarray:
        """Read ``width x height`` pixels of ``level`` whose top-left is level-0 ``(x0, y0)``.

        Parts outside the slide (and transparent parts) come back as white glass.

        Returns:
            ``[height, width, 3]`` uint8 RGB.
        """
        raise NotImplementedError

    def thumbnail(self, max_side: int = DEFAULT_THUMBNAIL_SIDE) -> tuple[np.ndarray, float]:
        """A low-resolution view of the whole slide, read from a small level.

        Returns:
            ``(rgb, downsample)``: uint8 ``[h, w, 3]`` whose longer side is at most
            ``max_side``, and the level-0 pixels per thumbnail pixel.
        """
        from PIL import Image

        g = self.geometry
        width, height = g.dimensions
        target = max(width, height) / max_side
        level = g.best_level_for_downsample(max(target, 1.0))
        lw, lh = g.level_dimensions[level]
        if lw * lh > DEFAULT_MAX_PIXELS:
            raise SlideError(
                f"{g.uri}: its smallest level is {lw}x{lh} px, too large for a thumbnail; "
                "convert it to a pyramidal TIFF with lower-resolution levels"
            )
        region = self.read_region(0, 0, level, lw, lh)
        scale = max(1.0, max(lw, lh) / max_side)
        size = (max(1, round(lw / scale)), max(1, round(lh / scale)))
        if size != (lw, lh):
            region = np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR))
        return region, width / size[0]

    def close(self) -> None:
        """Release the reader."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide (thread-safe reads, as OpenSlide is)."""

    def __init__(self, uri: str, path: Path) -> None:
        import openslide

        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{uri}: OpenSlide cannot read it: {_one_line(exc)}") from exc
        props = self._slide.properties
        self.geometry = SlideGeometry(
            uri=uri,
            vendor=props.get(openslide.PROPERTY_NAME_VENDOR, "unknown"),
            level_dimensions=tuple((int(w), int(h)) for w, h in self._slide.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._slide.level_downsamples),
            mpp=_mpp(props, uri),
        )

    def read_region(self, x0: int, y0: int, level: int, width: int, height: int) -> np.ndarray:
        """Read a region through OpenSlide, composited onto white glass."""
        import openslide

        try:
            rgba = self._slide.read_region(
                (int(x0), int(y0)), int(level), (int(width), int(height))
            )
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"{self.geometry.uri}: cannot read region ({x0}, {y0}) at level {level}: "
                f"{_one_line(exc)}"
            ) from exc
        return _flatten_rgba(np.asarray(rgba))

    def close(self) -> None:
        """Close the OpenSlide handle."""
        self._slide.close()


class PillowSlide(Slide):
    """A plain image (PNG, JPEG, strip TIFF...) under the pixel limit, decoded once."""

    def __init__(self, uri: str, path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    width, height = img.size
                    fmt = img.format or "image"
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise SlideError(f"{uri}: image is too large to decode safely: {exc}") from exc
        except Exception as exc:  # Pillow raises many types for non-images
            raise SlideError(f"{uri}: not a readable image or slide: {_one_line(exc)}") from exc
        if width * height > max_pixels:
            raise SlideError(
                f"{uri}: {fmt} image is {width}x{height} = {width * height:,} px, over the "
                f"limit of {max_pixels:,} for an image without a pyramid; convert it to a "
                "tiled pyramidal TIFF (e.g. `vips tiffsave in out.tif --tile --pyramid`)"
            )
        self._path = path
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()
        self.geometry = SlideGeometry(
            uri=uri,
            vendor=f"pillow-{fmt}",
            level_dimensions=((width, height),),
            level_downsamples=(1.0,),
            mpp=None,
        )

    def _decoded(self) -> np.ndarray:
        from PIL import Image

        with self._lock:
            if self._pixels is None:
                try:
                    with Image.open(self._path) as img:
                        self._pixels = _flatten_rgba(np.asarray(img.convert("RGBA")))
                except Exception as exc:  # truncated or corrupt data shows only on decode
                    raise SlideError(
                        f"{self.geometry.uri}: corrupt or truncated image: {_one_line(exc)}"
                    ) from exc
            return self._pixels

    def read_region(self, x0: int, y0: int, level: int, width: int, height: int) -> np.ndarray:
        """Crop level 0 of the decoded image (only level 0 exists)."""
        if level != 0:
            raise SlideError(f"{self.geometry.uri}: has only level 0, asked for level {level}")
        return _crop_padded(self._decoded(), int(x0), int(y0), int(width), int(height))


def reader_only_png(slide: Slide) -> bytes | None:
    """A small slide's level 0 as PNG when only the slide reader decodes its file, else None.

    A patch-sized input is scored whole, from its bytes, like any image; Pillow
    decodes plain images and generic TIFFs, but not DICOM, NDPI, MIRAX or SVS
    with JPEG 2000 tiles, so those are read through OpenSlide and handed on as
    PNG (lossless: the pixels OpenSlide decoded).
    """
    if isinstance(slide, PillowSlide) or slide.geometry.vendor == "generic-tiff":
        return None
    from histo_common.samples import encode_png

    width, height = slide.geometry.dimensions
    return encode_png(slide.read_region(0, 0, 0, width, height))


def is_slide_uri(uri: str) -> bool:
    """True for names :func:`open_slide` may accept (by suffix, or a ``.dcm`` folder)."""
    return uri.lower().rstrip("/").endswith(SLIDE_SUFFIXES)


def open_slide(
    uri: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, cache_dir: str | None = None
) -> Slide:
    """Open a slide or image from a URI with the reader that fits it.

    Args:
        uri: a local path, ``file://`` or ``gs://`` URI of a slide file, a DICOM
            series folder, or a plain image.
        max_pixels: the pixel limit for images without a pyramid (also for a
            single-level tiled TIFF: it has no low-resolution level for the tissue
            mask and thumbnail).
        cache_dir: where ``gs://`` slides are downloaded (default: the temp folder).

    Returns:
        An open :class:`Slide` (close it, or use ``with``).

    Raises:
        SlideError: one sentence naming ``uri`` for anything unreadable.
    """
    import openslide

    try:
        path = localise(uri, cache_dir=cache_dir)
    except storage.StorageError as exc:
        raise SlideError(f"{uri}: cannot fetch it: {exc}") from exc
    target = _dicom_member(uri, path) if path.is_dir() else path
    if target.suffix.lower() == ".mrxs":
        companion = target.with_suffix("")
        if not companion.is_dir():
            raise SlideError(
                f"{uri}: a MIRAX .mrxs slide needs its companion folder "
                f"{companion.name}/ beside it (Slidedat.ini and the .dat files); it is missing"
            )
    if not target.is_file():
        raise SlideError(f"{uri}: does not exist")
    if target.stat().st_size == 0:
        raise SlideError(f"{uri}: empty file (0 bytes)")
    vendor = openslide.OpenSlide.detect_format(str(target))
    if vendor is None:
        if target.suffix.lower() in WSI_SUFFIXES:
            raise SlideError(
                f"{uri}: not a whole-slide image OpenSlide recognises (wrong format, "
                "truncated or corrupt), though its name ends in "
                f"{target.suffix}"
            )
        if target.suffix.lower() in TIFF_SUFFIXES and _is_tiled_tiff(uri, target):
            raise SlideError(
                f"{uri}: a tiled TIFF that OpenSlide cannot read (truncated or corrupt)"
            )
        return PillowSlide(uri, target, max_pixels=max_pixels)
    if target.suffix.lower() in TIFF_SUFFIXES or vendor in ("generic-tiff", "aperio"):
        _check_tiff_levels(uri, target)
    slide = OpenSlideSlide(uri, target)
    g = slide.geometry
    if not g.is_pyramidal and g.dimensions[0] * g.dimensions[1] > max_pixels:
        slide.close()
        width, height = g.dimensions
        raise SlideError(
            f"{uri}: {width}x{height} = {width * height:,} px without a pyramid (no "
            f"lower-resolution level), over the limit of {max_pixels:,}; convert it to a "
            "pyramidal TIFF (e.g. `vips tiffsave in out.tif --tile --pyramid`)"
        )
    return slide


def read_geometry(uri: str, **kwargs: Any) -> SlideGeometry:
    """Open ``uri`` only to read its geometry (cheap: no pixels are decoded)."""
    with open_slide(uri, **kwargs) as slide:
        return slide.geometry


class SlidePool:
    """A few open slides kept for reuse, least recently used closed first.

    A Beam worker gets tile regions of the same slide one after another (and of
    several slides interleaved); reopening a slide per tile would re-parse its
    headers each time. Thread-safe; ``close`` closes every slide still open.
    """

    def __init__(self, max_open: int = 4, **open_kwargs: Any) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self._max_open = max_open
        self._open_kwargs = open_kwargs
        self._slides: dict[str, Slide] = {}
        self._lock = threading.Lock()

    def get(self, uri: str) -> Slide:
        """The open slide for ``uri`` (opened on first use). Raises SlideError."""
        with self._lock:
            slide = self._slides.pop(uri, None)
            if slide is None:
                slide = open_slide(uri, **self._open_kwargs)
            self._slides[uri] = slide  # most recently used last
            while len(self._slides) > self._max_open:
                oldest = next(iter(self._slides))
                self._slides.pop(oldest).close()
            return slide

    def close(self) -> None:
        """Close every open slide."""
        with self._lock:
            for slide in self._slides.values():
                slide.close()
            self._slides.clear()


# ------------------------------------------------------------------ local copies


def localise(uri: str, *, cache_dir: str | None = None) -> Path:
    """Return a local path for ``uri``, downloading ``gs://`` objects once per generation.

    A MIRAX ``.mrxs`` comes with its companion folder (``<stem>/``) and a folder URI
    (a DICOM series) with every object under it.
    """
    if not storage.is_gcs(uri):
        return storage.local_path(uri)
    clean = uri.rstrip("/")
    name = storage.basename(clean)
    is_file = storage.exists(clean)
    if is_file:
        info = storage.stat(clean)
        key = f"{clean}#{info.generation}#{info.size}"
    else:
        members = storage.list_objects(clean + "/**")
        if not members:
            raise storage.ObjectNotFound(f"{uri} does not exist")
        key = clean + "#" + ",".join(f"{m.uri}@{m.generation}" for m in members)
    root = Path(cache_dir or tempfile.gettempdir()) / "histoscreen-slides"
    target = root / hashlib.sha256(key.encode()).hexdigest()[:16]
    marker = target / ".complete"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        if is_file:
            (tmp / name).write_bytes(storage.read_bytes(clean))
            if name.lower().endswith(".mrxs"):
                companion = clean[: -len(".mrxs")]
                storage.copy_tree_from(companion, tmp / Path(name).stem)
        else:
            storage.copy_tree_from(clean, tmp / name)
        marker_tmp = tmp / ".complete"
        marker_tmp.write_text(clean)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is the same
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("Downloaded slide %s to %s", uri, target)
    return target / name


def _dicom_member(uri: str, folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    if not files:
        raise SlideError(f"{uri}: is a folder without .dcm files (not a DICOM WSI series)")
    return files[0]


def _check_tiff_levels(uri: str, path: Path) -> None:
    """Refuse a TIFF pyramid with a level whose image data is missing.

    OpenSlide shows such a level as transparent; scoring it as glass would lose
    tissue silently, so it is an error naming the level.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for index, page in enumerate(tif.pages):
                counts = getattr(page, "databytecounts", None)
                if counts is not None and len(counts) and not any(counts):
                    raise SlideError(
                        f"{uri}: pyramid page {index} ({page.shape[1]}x{page.shape[0]} px) has "
                        "no image data (a missing level); re-export the slide"
                    )
    except SlideError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise SlideError(f"{uri}: corrupt or truncated TIFF: {_one_line(exc)}") from exc


def _is_tiled_tiff(uri: str, path: Path) -> bool:
    """True when the TIFF's first page is tiled; a damaged header is a SlideError."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages.first.is_tiled)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise SlideError(f"{uri}: corrupt or truncated TIFF: {_one_line(exc)}") from exc


def _mpp(props: Any, uri: str) -> float | None:
    """Microns per level-0 pixel from OpenSlide's properties, or None when unknown.

    A value coarser than :data:`MAX_PLAUSIBLE_MPP` is a screen resolution written
    by an image editor, not a scan's: it is ignored (with a warning naming ``uri``),
    so the input is tiled as if it had no scale rather than into one-pixel tiles.
    """
    import openslide

    values = []
    for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
        try:
            value = float(props.get(key, "nan"))
        except ValueError:
            continue
        if np.isfinite(value) and value > 0:
            values.append(value)
    if not values:
        return None
    mpp = float(np.mean(values))
    if mpp > MAX_PLAUSIBLE_MPP:
        logger.warning(
            "%s: its resolution says %.1f um/px, coarser than any microscope scan "
            "(an image editor's dpi?): ignored, the slide is treated as having no scale",
            uri,
            mpp,
        )
        return None
    return mpp


def _flatten_rgba(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA onto white glass.

    OpenSlide's premultiplied and Pillow's straight alpha both give white where alpha is 0.
    """
    if rgba.ndim == 3 and rgba.shape[2] == 4:
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        if alpha.min() >= 1.0:
            return np.ascontiguousarray(rgba[..., :3])
        rgb = rgba[..., :3].astype(np.float32)
        out = rgb * alpha + np.asarray(BACKGROUND_RGB, np.float32) * (1.0 - alpha)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgba[..., :3])


def _crop_padded(image: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    out = np.empty((height, width, 3), np.uint8)
    out[...] = BACKGROUND_RGB
    h, w = image.shape[:2]
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(w, x0 + width), min(h, y0 + height)
    if xe > xs and ye > ys:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
