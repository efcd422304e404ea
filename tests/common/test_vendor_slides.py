"""Real vendor files, as OpenSlide reads them in the wild (OpenSlide's own test fixtures,
``tests/data/openslide``): an Aperio SVS, a corrupt one, a DICOM WSI series and a TIFF
whose resolution tag is an image editor's 72 dpi."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from histo_common.images import check_and_prepare
from histo_common.samples import encode_png
from histo_common.slides import SlideError, open_slide
from model_export.scoring import score_batch
from model_export.slide_scoring import SlideSettings, score_input

VENDOR = Path(__file__).resolve().parents[1] / "data" / "openslide"


def test_aperio_svs_opens_with_its_vendor_and_scale() -> None:
    with open_slide(str(VENDOR / "small.svs")) as slide:
        geometry = slide.geometry
        assert (geometry.vendor, geometry.dimensions) == ("aperio", (16, 16))
        assert geometry.mpp == pytest.approx(0.499)  # from the SVS ImageDescription
        pixels = slide.read_region(0, 0, 0, 16, 16)
    assert pixels.shape == (16, 16, 3) and pixels.std() > 0


def test_dicom_wsi_series_opens_from_its_folder_or_a_member(tmp_path: Path) -> None:
    case = tmp_path / "case"
    case.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(VENDOR / name, case / name)
    for uri in (str(case), str(case / "boxes_0.dcm")):
        with open_slide(uri) as slide:
            assert (slide.geometry.vendor, slide.geometry.dimensions) == ("dicom", (16, 16))
            assert slide.read_region(0, 0, 0, 16, 16).shape == (16, 16, 3)


def test_screen_dpi_in_a_tiff_is_not_taken_for_a_scan_scale(caplog) -> None:
    """boxes.tiff says 72 dpi (352.8 um/px): trusting it would cut one-pixel tiles."""
    with open_slide(str(VENDOR / "boxes.tiff")) as slide:
        assert slide.geometry.vendor == "generic-tiff" and slide.geometry.level_count == 4
        assert slide.geometry.mpp is None
    assert "352.8 um/px" in caplog.text and "boxes.tiff" in caplog.text


def test_corrupt_svs_is_one_error_naming_it(loaded_tiny_model) -> None:
    model = loaded_tiny_model
    settings = SlideSettings.from_metadata(model.metadata)
    uri = str(VENDOR / "unreadable.svs")
    score = score_input(model, uri, model.identity, settings)
    assert score.row is None and score.uri == uri and score.stage == "read"
    # Read through OpenSlide (Pillow cannot decode every SVS): the reason names the file.
    assert score.error and "unreadable.svs: cannot read region" in score.error
    with pytest.raises(SlideError, match=r"unreadable\.svs"), open_slide(uri) as slide:
        slide.read_region(0, 0, 0, 16, 16)


@pytest.mark.parametrize(
    ("name", "whole"), [("small.svs", True), ("boxes.tiff", False), ("boxes_0.dcm", True)]
)
def test_real_vendor_files_are_scored(loaded_tiny_model, name: str, whole: bool) -> None:
    model = loaded_tiny_model
    settings = SlideSettings.from_metadata(model.metadata)
    uri = str(VENDOR / name)
    score = score_input(model, uri, model.identity, settings)
    assert score.error is None and score.row is not None, score.error
    assert 0.0 <= score.row.probability <= 1.0
    assert score.row.label in model.metadata.class_names
    assert (score.summary is None) is whole
    if not whole:
        return
    # Patch-sized, so scored whole, from OpenSlide's pixels handed on as PNG (Pillow
    # cannot decode the DICOM series, nor every SVS).
    with open_slide(uri) as slide:
        pixels = slide.read_region(0, 0, 0, *slide.geometry.dimensions)
    ready, _info = check_and_prepare(encode_png(pixels))
    (expected,) = score_batch(model, [ready], model.identity)
    assert expected.prediction is not None
    assert score.row.probability == pytest.approx(expected.prediction.probability, abs=1e-6)
