"""Slide readers on real files: OpenSlide (pyramidal TIFF, Aperio-style SVS, DICOM WSI),
Pillow for plain images, gs:// through the storage emulator, and bad slides."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histo_common import storage
from histo_common.samples import synth_slide_image, write_pyramidal_tiff
from histo_common.slides import SlideError, SlideGeometry, open_slide, read_geometry


@pytest.fixture(scope="module")
def slide_image() -> np.ndarray:
    image, _ = synth_slide_image(1024, 768, seed=3)
    return image


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory, slide_image: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("pyr") / "slide.tif"
    write_pyramidal_tiff(slide_image, str(path), mpp=0.5)
    return path


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory: pytest.TempPathFactory, pyramid: Path) -> list[Path]:
    """The pyramid as a DICOM WSI series, converted by wsidicomizer: its files, in one folder."""
    from wsidicomizer import WsiDicomizer

    folder = tmp_path_factory.mktemp("dicom") / "series"
    folder.mkdir()
    files = WsiDicomizer.convert(
        pyramid,
        folder,
        tile_size=256,
        include_label=False,
        include_overview=False,
        include_thumbnail=False,
        workers=1,
    )
    return [Path(f) for f in files]


def test_pyramidal_tiff_geometry_and_regions(pyramid: Path, slide_image: np.ndarray) -> None:
    with open_slide(str(pyramid)) as slide:
        g = slide.geometry
        assert g.vendor == "generic-tiff"
        assert g.dimensions == (1024, 768)
        assert g.level_dimensions == ((1024, 768), (512, 384))
        assert g.level_downsamples == (1.0, 2.0)
        assert g.mpp == pytest.approx(0.5, rel=1e-3)
        region = slide.read_region(300, 200, 0, 64, 48)
        assert region.dtype == np.uint8 and region.shape == (48, 64, 3)
        np.testing.assert_array_equal(region, slide_image[200:248, 300:364])
        # Level 1 is a 2x2 mean of level 0; coordinates stay level-0.
        low = slide.read_region(300, 200, 1, 16, 16).astype(int)
        expected = slide_image[200:232, 300:332].reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
        assert np.abs(low - expected).max() <= 1
        # Past the edge is white glass, not black or transparent.
        edge = slide.read_region(1000, 760, 0, 50, 50)
        assert (edge[10:, :] == 255).all() and (edge[:, 30:] == 255).all()
        thumb, down = slide.thumbnail(256)
        assert max(thumb.shape[:2]) == 256 and down == pytest.approx(4.0)


def test_geometry_round_trips_as_a_dict(pyramid: Path) -> None:
    g = read_geometry(str(pyramid))
    assert SlideGeometry.from_dict(g.to_dict()) == g
    assert g.best_level_for_downsample(1.9) == 0
    assert g.best_level_for_downsample(2.0) == 1
    assert g.best_level_for_downsample(8.0) == 1


def test_aperio_svs_through_openslide(tmp_path: Path, slide_image: np.ndarray) -> None:
    """A TIFF with an Aperio description is read as ``aperio`` with the MPP it states."""
    path = tmp_path / "case.svs"
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            slide_image,
            tile=(256, 256),
            photometric="rgb",
            compression="zlib",
            metadata=None,
            description="Aperio Image Library v12.0.15 \n1024x768 [0,0 1024x768] (256x256) "
            "|AppMag = 20|MPP = 0.4990",
        )
        tw.write(
            slide_image[::2, ::2],
            tile=(256, 256),
            photometric="rgb",
            compression="zlib",
            metadata=None,
            description="Aperio Image Library v12.0.15 \n1024x768 -> 512x384",
        )
    with open_slide(str(path)) as slide:
        assert slide.geometry.vendor == "aperio"
        assert slide.geometry.level_count == 2
        assert slide.geometry.mpp == pytest.approx(0.499)
        np.testing.assert_array_equal(slide.read_region(10, 20, 0, 8, 8), slide_image[20:28, 10:18])


def test_dicom_wsi_series_folder(dicom_series: list[Path], slide_image: np.ndarray) -> None:
    """A DICOM WSI series made by wsidicomizer from the TIFF, opened by its folder."""
    assert len(dicom_series) == 2 and all(f.suffix == ".dcm" for f in dicom_series)
    folder = dicom_series[0].parent
    with open_slide(str(folder)) as slide:
        assert slide.geometry.vendor == "dicom"
        assert slide.geometry.level_dimensions == ((1024, 768), (512, 384))
        assert slide.geometry.mpp == pytest.approx(0.5, rel=1e-3)
        region = slide.read_region(300, 200, 0, 64, 48).astype(int)
        # wsidicomizer re-encodes tiles (JPEG by default): close, not equal.
        assert np.abs(region - slide_image[200:248, 300:364]).mean() < 6


def test_plain_png_read_by_region(tmp_path: Path, slide_image: np.ndarray) -> None:
    path = tmp_path / "field.png"
    Image.fromarray(slide_image).save(path)
    with open_slide(str(path)) as slide:
        assert slide.geometry.vendor == "pillow-PNG"
        assert slide.geometry.level_count == 1 and slide.geometry.mpp is None
        np.testing.assert_array_equal(
            slide.read_region(500, 100, 0, 70, 30), slide_image[100:130, 500:570]
        )
        thumb, down = slide.thumbnail(512)
        assert thumb.shape == (384, 512, 3) and down == pytest.approx(2.0)
        with pytest.raises(SlideError, match="level 1"):
            slide.read_region(0, 0, 1, 4, 4)


def test_gcs_slide_is_downloaded_once(gcs_bucket: str, pyramid: Path, tmp_path: Path) -> None:
    uri = f"{gcs_bucket}/slides/slide.tif"
    storage.write_bytes(uri, pyramid.read_bytes())
    with open_slide(uri, cache_dir=str(tmp_path)) as slide:
        assert slide.geometry.uri == uri
        assert slide.geometry.level_count == 2
    copies = list((tmp_path / "histoscreen-slides").glob("*/slide.tif"))
    assert len(copies) == 1
    with open_slide(uri, cache_dir=str(tmp_path)):
        pass
    assert list((tmp_path / "histoscreen-slides").glob("*/slide.tif")) == copies


def test_gcs_mrxs_brings_its_companion_folder(gcs_bucket: str, tmp_path: Path) -> None:
    """The .mrxs and every file of its folder are fetched side by side (OpenSlide needs
    both); this fake MIRAX is then refused by OpenSlide with one reason naming it."""
    from histo_common.slides import localise

    uri = f"{gcs_bucket}/case.mrxs"
    storage.write_bytes(uri, b"[GENERAL]\nSLIDE_VERSION = 01.02\n")
    storage.write_bytes(f"{gcs_bucket}/case/Slidedat.ini", b"[GENERAL]\n")
    storage.write_bytes(f"{gcs_bucket}/case/Data0000.dat", b"\0" * 16)
    local = localise(uri, cache_dir=str(tmp_path))
    assert local.name == "case.mrxs"
    assert sorted(p.name for p in (local.parent / "case").iterdir()) == [
        "Data0000.dat",
        "Slidedat.ini",
    ]
    with pytest.raises(SlideError) as err:
        open_slide(uri, cache_dir=str(tmp_path))
    assert str(err.value).startswith(uri)


# ---------------------------------------------------------------- bad slides


def _one_error(uri: str, **kwargs: object) -> str:
    with pytest.raises(SlideError) as err, open_slide(uri, **kwargs) as slide:
        slide.thumbnail(64)
        slide.read_region(0, 0, 0, 32, 32)
    text = str(err.value)
    assert text.startswith(uri) and "\n" not in text
    return text


def test_truncated_tiff(tmp_path: Path, pyramid: Path) -> None:
    data = pyramid.read_bytes()
    for cut in (len(data) // 2, 200):
        path = tmp_path / f"cut{cut}.tif"
        path.write_bytes(data[: len(data) - cut])
        assert "truncated" in _one_error(str(path))


def test_pyramid_missing_a_level(tmp_path: Path, pyramid: Path) -> None:
    path = tmp_path / "missing.tif"
    shutil.copy(pyramid, path)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        page = tif.pages[1]
        n = len(page.dataoffsets)
        page.tags["TileOffsets"].overwrite([0] * n)
        page.tags["TileByteCounts"].overwrite([0] * n)
    assert "missing level" in _one_error(str(path))


def test_non_pyramidal_huge_images(tmp_path: Path, slide_image: np.ndarray) -> None:
    tiled = tmp_path / "flat.tif"
    tifffile.imwrite(tiled, slide_image, tile=(256, 256), photometric="rgb")
    assert "without a pyramid" in _one_error(str(tiled), max_pixels=500_000)
    png = tmp_path / "flat.png"
    Image.fromarray(slide_image).save(png)
    assert "over the limit" in _one_error(str(png), max_pixels=500_000)
    # The same pixels as a pyramid are fine: level 0 is only read in tiles.
    pyr = tmp_path / "pyr.tif"
    write_pyramidal_tiff(slide_image, str(pyr), min_side=128)
    with open_slide(str(pyr), max_pixels=500_000) as slide:
        assert slide.geometry.level_count == 3


def test_text_file_named_svs(tmp_path: Path) -> None:
    path = tmp_path / "notes.svs"
    path.write_text("not a slide\n")
    assert "not a whole-slide image" in _one_error(str(path))


def test_mrxs_without_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "case.mrxs"
    path.write_text("[GENERAL]\n")
    assert "companion folder case/" in _one_error(str(path))


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    assert "does not exist" in _one_error(str(tmp_path / "nope.tif"))
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    assert "empty" in _one_error(str(empty))
    folder = tmp_path / "series"
    folder.mkdir()
    assert "without .dcm" in _one_error(str(folder))


def test_dicom_series_on_gcs_is_fetched_whole(
    gcs_bucket: str, tmp_path: Path, dicom_series: list[Path]
) -> None:
    for f in dicom_series:
        storage.write_bytes(f"{gcs_bucket}/case-7/{f.name}", f.read_bytes())
    uri = f"{gcs_bucket}/case-7"
    with open_slide(uri, cache_dir=str(tmp_path / "cache")) as slide:
        assert slide.geometry.uri == uri and slide.geometry.vendor == "dicom"
        assert slide.geometry.level_count == 2


def test_slide_pool_reuses_and_closes_the_least_recent(tmp_path: Path, pyramid: Path) -> None:
    from histo_common.slides import SlidePool

    uris = []
    for name in ("a", "b", "c"):
        shutil.copy(pyramid, tmp_path / f"{name}.tif")
        uris.append(str(tmp_path / f"{name}.tif"))
    pool = SlidePool(max_open=2)
    a = pool.get(uris[0])
    assert pool.get(uris[0]) is a
    b = pool.get(uris[1])
    pool.get(uris[0])  # a is now the most recent; b goes next
    pool.get(uris[2])
    assert pool.get(uris[0]) is a and pool.get(uris[1]) is not b
    pool.close()
    with pytest.raises(SlideError):
        pool.get(str(tmp_path / "missing.tif"))
