"""The synthetic sample generator: deterministic, and the class difference it claims."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from histo_common import storage
from histo_common.samples import generate_samples, main, synth_patch


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def test_same_seed_same_files(tmp_path: Path) -> None:
    generate_samples(str(tmp_path / "a"), count=20, seed=7)
    generate_samples(str(tmp_path / "b"), count=20, seed=7)
    generate_samples(str(tmp_path / "c"), count=20, seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_layout_and_counts(tmp_path: Path) -> None:
    counts = generate_samples(str(tmp_path), count=50, seed=0, malignant_fraction=0.4)
    assert counts == {"benign": 30, "malignant": 20}
    assert len(list((tmp_path / "benign").glob("*.png"))) == 30
    assert len(list((tmp_path / "malignant").glob("*.png"))) == 20


def _nuclear_stats(image: np.ndarray) -> tuple[float, float]:
    """Share of nuclear (dark purple) pixels, and mean darkness of those pixels."""
    rgb = image.astype(np.float32) / 255.0
    darkness = 1.0 - rgb.mean(axis=-1)
    nuclear = (darkness > 0.45) & (rgb[..., 2] > rgb[..., 1])
    share = float(nuclear.mean())
    return share, float(darkness[nuclear].mean()) if nuclear.any() else 0.0


def test_malignant_nuclei_are_denser_and_darker() -> None:
    stats = {True: [], False: []}
    for i in range(40):
        for malignant in (True, False):
            rng = np.random.default_rng([99, int(malignant), i])
            stats[malignant].append(_nuclear_stats(synth_patch(rng, malignant)))
    mal, ben = np.array(stats[True]), np.array(stats[False])
    assert mal[:, 0].mean() > 2.5 * ben[:, 0].mean()  # nuclear area
    assert mal[:, 1].mean() > ben[:, 1].mean() + 0.03  # darker nuclei
    # Separable but not trivially: most malignant patches above most benign ones.
    assert np.median(mal[:, 0]) > np.percentile(ben[:, 0], 90)


def test_looks_like_h_and_e() -> None:
    """Pink background (red > green), purple nuclei (blue > green)."""
    image = synth_patch(np.random.default_rng(0), malignant=True).astype(np.float32)
    background = image[image.mean(axis=-1) > 170]
    assert background[:, 0].mean() > background[:, 1].mean() + 20
    dark = image[image.mean(axis=-1) < 110]
    assert dark[:, 2].mean() > dark[:, 1].mean()


def test_planted_lesion_is_where_asked() -> None:
    rng = np.random.default_rng(1)
    image = synth_patch(rng, malignant=False, size=64, lesion=(0.25, 0.25, 0.2))
    darkness = 1.0 - image.astype(np.float32).mean(axis=-1) / 255.0
    assert darkness[:32, :32].mean() > darkness[32:, 32:].mean() + 0.05


def test_writes_to_gcs(gcs_bucket: str) -> None:
    generate_samples(gcs_bucket + "/samples", count=6, seed=0, size=32)
    uris = storage.list_uris(gcs_bucket + "/samples/**.png")
    assert len(uris) == 6
    assert {u.split("/")[-2] for u in uris} == {"benign", "malignant"}


def test_cli_rejects_bad_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--output", str(tmp_path), "--count", "1"]) == 2
    assert "count" in capsys.readouterr().err


def test_overlay_draws_heat_where_the_heatmap_is_high() -> None:
    import io

    from PIL import Image

    from histo_common.overlay import overlay_caption, render_overlay

    image = np.full((50, 50, 3), 200, np.uint8)
    heat = np.zeros((12, 12), np.float32)
    heat[:6, :6] = 1.0  # hot top-left quadrant
    caption = overlay_caption("malignant", 0.93, 0.5, "malignant")
    png = render_overlay(image, heat, caption=caption)
    out = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert out.shape[0] > 256 and out.shape[1] > 256  # enlarged to be readable
    # Inside the image area (below the caption): red where hot, blue-ish where cold.
    hot = out[40:100, 20:80].reshape(-1, 3).mean(axis=0)
    cold = out[220:270, 180:240].reshape(-1, 3).mean(axis=0)
    assert hot[0] > hot[2] + 40
    assert cold[2] > cold[0] + 40
    # The caption fits: the canvas is at least as wide as the text needs.
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    needed = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(caption, font=font)
    assert out.shape[1] >= needed


# ---------------------------------------------------------------- slides


def test_synthetic_slide_is_deterministic_with_a_planted_lesion(tmp_path: Path) -> None:
    from histo_common.samples import generate_slide
    from histo_common.slides import open_slide

    a = generate_slide(str(tmp_path / "a.tif"), 768, 512, seed=2, mpp=0.5)
    b = generate_slide(str(tmp_path / "b.tif"), 768, 512, seed=2, mpp=0.5)
    generate_slide(str(tmp_path / "c.tif"), 768, 512, seed=3, mpp=0.5)
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    assert (tmp_path / "a.tif").read_bytes() != (tmp_path / "c.tif").read_bytes()
    assert a.patches == b.patches
    malignant = [p for p in a.patches if p.malignant]
    assert 0 < len(malignant) < len(a.patches)
    with open_slide(a.uri) as slide:
        assert slide.geometry.mpp == pytest.approx(0.5, rel=1e-3)

        # Malignant cells carry more haematoxylin (darker) than benign ones.
        def darkness(p):
            return 255 - slide.read_region(p.x, p.y, 0, p.width, p.height).mean()

        benign = [p for p in a.patches if not p.malignant]
        assert np.mean([darkness(p) for p in malignant]) > np.mean([darkness(p) for p in benign])


def test_parse_idc_name() -> None:
    from histo_common.samples import parse_idc_name

    assert parse_idc_name("8863_idx5_x1001_y1501_class1.png") == ("8863", 1001, 1501, True)
    assert parse_idc_name("8863_idx5_x51_y1_class0.png") == ("8863", 51, 1, False)
    assert parse_idc_name("synthetic_benign_00001.png") is None


def test_reassemble_patches_at_their_coordinates(tmp_path: Path) -> None:
    """Patches in the IDC layout go back where their names say (no real data needed)."""
    from PIL import Image

    from histo_common.samples import GLASS_RGB, reassemble_idc_patient
    from histo_common.slides import open_slide

    root = tmp_path / "idc"
    colours = {}
    for i, (x, y, cls) in enumerate([(1, 1, 0), (51, 1, 1), (301, 251, 1), (1, 251, 0)]):
        folder = root / ("malignant" if cls else "benign")
        folder.mkdir(parents=True, exist_ok=True)
        colour = (40 * i + 20, 100, 200 - 30 * i)
        colours[(x - 1, y - 1)] = colour
        Image.new("RGB", (50, 50), colour).save(folder / f"77_idx5_x{x}_y{y}_class{cls}.png")
    Image.new("RGB", (50, 50)).save(root / "benign" / "78_idx5_x1_y1_class0.png")
    sample = reassemble_idc_patient(str(root), "77", str(tmp_path / "77.tif"), mpp=4.0)
    assert (sample.width, sample.height) == (350, 300)
    assert len(sample.patches) == 4
    assert sum(p.malignant for p in sample.patches) == 2
    with open_slide(sample.uri) as slide:
        assert slide.geometry.dimensions == (350, 300)
        for (x, y), colour in colours.items():
            assert tuple(slide.read_region(x + 10, y + 10, 0, 1, 1)[0, 0]) == colour
        assert tuple(slide.read_region(200, 100, 0, 1, 1)[0, 0]) == GLASS_RGB
    with pytest.raises(ValueError, match="no IDC patches of patient 99"):
        reassemble_idc_patient(str(root), "99", str(tmp_path / "99.tif"))
