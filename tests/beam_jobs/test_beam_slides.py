"""The scoring job on slides: a real run over a synthetic slide, a large plain image,
patches and five kinds of bad slides (DirectRunner, the tiny SavedModel, OpenSlide)."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histo_common.results import SLIDE_COLUMNS, ResultRow, TileRow
from histo_common.samples import generate_slide, synth_slide_image
from model_export.slide_scoring import SlideSettings, score_input

# name -> a word its error reason must hold
BAD_SLIDES = {
    "cut.tif": "truncated",
    "missing.tif": "missing level",
    "flat.tif": "without a pyramid",
    "notes.svs": "not a whole-slide image",
    "case.mrxs": "companion folder",
}
VENDOR = Path(__file__).resolve().parents[1] / "data" / "openslide"
MAX_PIXELS = 600_000  # flat.tif (1000x800, no pyramid) is over it; pyramids are not held to it
TILE_BATCH = 7  # tiles per work item: several items per slide, the last one short


def _rows(pattern: str) -> list[dict]:
    from beam_jobs import files

    return [
        json.loads(line)
        for uri in files.list_files(pattern)
        for line in Path(uri).read_text().splitlines()
        if line.strip()
    ]


def _write_bad_slides(root: Path, slide: Path) -> None:
    data = slide.read_bytes()
    (root / "cut.tif").write_bytes(data[: len(data) // 2])
    shutil.copy(slide, root / "missing.tif")
    with tifffile.TiffFile(root / "missing.tif", mode="r+b") as tif:
        page = tif.pages[1]
        n = len(page.dataoffsets)
        page.tags["TileOffsets"].overwrite([0] * n)
        page.tags["TileByteCounts"].overwrite([0] * n)
    flat, _ = synth_slide_image(1000, 800, seed=5)
    tifffile.imwrite(root / "flat.tif", flat, tile=(256, 256), photometric="rgb")
    (root / "notes.svs").write_text("these are notes\n")
    (root / "case.mrxs").write_text("[GENERAL]\n")


@dataclass(frozen=True)
class SlideRun:
    output: Path
    inputs: Path
    slide: str
    big_png: str
    patches: list[str]
    dicom_series: str


@pytest.fixture(scope="module")
def slide_run(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, tiny_model) -> SlideRun:
    from beam_jobs import score

    root = tmp_path_factory.mktemp("slide-inputs")
    slide = generate_slide(str(root / "slide.tif"), 1024, 768, seed=3, mpp=None).uri
    generate_slide(str(root / "glass.tif"), 600, 400, seed=1, islands=0, lesion=False)
    big, _ = synth_slide_image(300, 200, seed=4)
    Image.fromarray(big).save(root / "field.png")
    patches = []
    for path in sorted((sample_dir / "malignant").glob("*.png"))[:2]:
        shutil.copy(path, root / path.name)
        patches.append(str(root / path.name))
    bad = root / "bad"
    bad.mkdir()
    _write_bad_slides(bad, Path(slide))
    # A real DICOM WSI series (two objects, 16 px: scored whole through OpenSlide's pixels).
    series = root / "dicom-case"
    series.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(VENDOR / name, series / name)
    output = tmp_path_factory.mktemp("slide-run") / "run"
    score.run(
        [
            "--input",
            f"{root}/**",
            "--model",
            tiny_model.root_uri,
            "--output",
            str(output),
            "--formats",
            "jsonl,parquet",
            "--max-pixels",
            str(MAX_PIXELS),
            "--tile-batch",
            str(TILE_BATCH),
        ]
    )
    return SlideRun(output, root, slide, str(root / "field.png"), patches, str(series))


def test_every_input_is_one_row(slide_run: SlideRun) -> None:
    results = {r["uri"]: r for r in _rows(f"{slide_run.output}/results/*.jsonl")}
    errors = {r["uri"]: r for r in _rows(f"{slide_run.output}/errors/*.jsonl")}
    glass = str(slide_run.inputs / "glass.tif")
    series = slide_run.dicom_series
    assert set(results) == {slide_run.slide, slide_run.big_png, glass, series, *slide_run.patches}
    assert set(errors) == {str(slide_run.inputs / "bad" / name) for name in BAD_SLIDES}
    assert results[series]["image_width"] == 16  # one row for the series, none per object
    for name, word in BAD_SLIDES.items():
        reason = errors[str(slide_run.inputs / "bad" / name)]["reason"]
        assert word in reason and name in reason, reason
    summary = json.loads((slide_run.output / "summary.json").read_text())
    assert summary["matched"] == len(results) + len(errors)
    # One model call per work item of --tile-batch tiles (patches add their own calls).
    tiled = [results[uri]["tiles_scored"] for uri in (slide_run.slide, slide_run.big_png)]
    assert all(n > TILE_BATCH for n in tiled) and sum(n % TILE_BATCH for n in tiled) > 0
    items = sum(-(-n // TILE_BATCH) for n in tiled)
    assert items <= summary["counters"]["num_inferences"] <= items + len(slide_run.patches) + 1


def test_patches_keep_todays_rows(slide_run: SlideRun, loaded_tiny_model) -> None:
    results = {r["uri"]: r for r in _rows(f"{slide_run.output}/results/*.jsonl")}
    for uri in slide_run.patches:
        row = results[uri]
        assert not set(SLIDE_COLUMNS) & set(row), "a patch row must not carry slide fields"
        (expected,) = loaded_tiny_model.predict([Path(uri).read_bytes()])
        assert row["probability"] == pytest.approx(expected.probability, abs=1e-5)


@pytest.mark.parametrize("which", ["slide", "big_png"])
def test_tiled_input_rows_tiles_and_heatmap(
    slide_run: SlideRun, loaded_tiny_model, which: str
) -> None:
    uri = getattr(slide_run, which)
    row = ResultRow.from_dict(
        next(r for r in _rows(f"{slide_run.output}/results/*.jsonl") if r["uri"] == uri)
    )
    tiles = [TileRow.from_dict(t) for t in _rows(f"{slide_run.output}/tiles/*.jsonl")]
    tiles = sorted((t for t in tiles if t.uri == uri), key=lambda t: (t.y, t.x))
    assert row.is_tiled and row.tiles_scored == len(tiles) > 0
    assert row.tissue_tiles == len(tiles) < (row.grid_tiles or 0)
    # The fan-out scores what the single-process loop scores, tile for tile.
    model = loaded_tiny_model
    settings = SlideSettings.from_metadata(model.metadata, max_pixels=MAX_PIXELS)
    alone = score_input(model, uri, model.identity, settings)
    assert [(t.x, t.y, t.width, t.height, t.level) for t in tiles] == [
        (t.x, t.y, t.width, t.height, t.level) for t in alone.tiles
    ]
    np.testing.assert_allclose(
        [t.probability for t in tiles], [t.probability for t in alone.tiles], atol=1e-5
    )
    assert alone.row is not None
    assert row.probability == pytest.approx(alone.row.probability, abs=1e-5)
    assert row.label == alone.row.label and row.positive_fraction == alone.row.positive_fraction
    # Its heatmap, under heatmaps/ at the input's path.
    name = Path(uri).name + ".heatmap.png"
    (heatmap,) = [p for p in (slide_run.output / "heatmaps").rglob("*.png") if p.name == name]
    with Image.open(io.BytesIO(heatmap.read_bytes())) as img:
        assert img.format == "PNG" and img.width >= 512


def test_tile_rows_also_in_parquet(slide_run: SlideRun) -> None:
    import pyarrow.parquet as pq

    from beam_jobs import files

    jsonl = _rows(f"{slide_run.output}/tiles/*.jsonl")
    tables = [pq.read_table(u) for u in files.list_files(f"{slide_run.output}/tiles/*.parquet")]
    parquet = [r for t in tables for r in t.to_pylist()]
    key = lambda r: (r["uri"], r["x"], r["y"])  # noqa: E731
    assert sorted(parquet, key=key) == sorted(jsonl, key=key)


def test_slide_of_clean_glass_scores_no_tile(slide_run: SlideRun) -> None:
    uri = str(slide_run.inputs / "glass.tif")
    (row,) = [r for r in _rows(f"{slide_run.output}/results/*.jsonl") if r["uri"] == uri]
    assert row["tiles_scored"] == row["tissue_tiles"] == 0 and row["grid_tiles"] > 0
    assert row["label"] == "benign" and row["probability"] == 0.0
    assert not [t for t in _rows(f"{slide_run.output}/tiles/*.jsonl") if t["uri"] == uri]


def test_patch_only_run_writes_no_tile_files(scored_run) -> None:
    """A run without a tiled input has exactly today's outputs: no tiles/, no heatmaps/."""
    written = {
        p.relative_to(scored_run.output).parts[0]
        for p in scored_run.output.rglob("*")
        if p.is_file()
    }
    assert "results" in written and not written & {"tiles", "heatmaps"}


def test_slide_tiles_scored_through_tf_serving(
    tmp_path: Path, model_server: str, tiny_model, slide_run: SlideRun
) -> None:
    """--model (for the training scale) with --model-endpoint: tiles go to TF Serving as PNG."""
    from beam_jobs import score

    output = tmp_path / "served"
    score.run(
        [
            "--input",
            slide_run.slide,
            "--model",
            tiny_model.root_uri,
            "--model-endpoint",
            model_server,
            "--output",
            str(output),
        ]
    )
    served = {(t["x"], t["y"]): t["probability"] for t in _rows(f"{output}/tiles/*.jsonl")}
    local = {
        (t["x"], t["y"]): t["probability"]
        for t in _rows(f"{slide_run.output}/tiles/*.jsonl")
        if t["uri"] == slide_run.slide
    }
    assert served.keys() == local.keys()
    assert max(abs(served[k] - local[k]) for k in local) < 1e-4
    (row,) = _rows(f"{output}/results/*.jsonl")
    assert row["tiles_scored"] == len(local)


def test_slide_judged_by_the_model_version_that_scored_its_tiles(tmp_path: Path, tiny_model):
    """The stream's model can change mid-run: a slide takes the threshold and identity of
    the version that scored its tiles, and tiles of two versions make an error, not a row."""
    from model_fixtures import publish_version

    from beam_jobs.slides import SlideJob, TileOutcome, _AssembleSlide
    from histo_common.tiling import TileRegion
    from model_export.identity import read_metadata, resolve

    root = tmp_path / "histo-cnn"
    shutil.copytree(tiny_model.version_uri, root / "1")
    two = publish_version(root, root / "1", 2)
    metadata = json.loads((two / "metadata.json").read_text())
    metadata["threshold"] = 0.123
    (two / "metadata.json").write_text(json.dumps(metadata))
    one = resolve(str(root / "1")).identity
    job = SlideJob(SlideSettings.from_metadata(read_metadata(one.uri)), str(tmp_path), "")
    assemble = _AssembleSlide(job, one)
    region = TileRegion(0, 0, 50, 50, 0, 50, 50, 50, 50)

    def outcomes(*versions: tuple[int, str] | None) -> list:
        return [(region, TileOutcome(0.5, None, *(v or (None, None)))) for v in versions]

    v1, v2 = (1, one.uri), (2, str(two))
    assert assemble._scored_by(outcomes(None, None)) == (one, job.settings)  # a fixed model
    assert assemble._scored_by(outcomes(v1, v1)) == (one, job.settings)
    identity, settings = assemble._scored_by(outcomes(v2, v2))
    assert (identity.version, identity.uri, settings.threshold) == (2, str(two), 0.123)
    assert settings.scale == job.settings.scale and settings.top_k == job.settings.top_k
    with pytest.raises(
        ValueError, match=r"model changed while its tiles were scored \(versions 1, 2\)"
    ):
        assemble._scored_by(outcomes(v1, v2))


def test_work_items_score_like_the_loop_and_unreadable_ones_say_why(
    tmp_path: Path, loaded_tiny_model
) -> None:
    """A batch of work items (several tiles each) of a good and an unreadable slide."""
    from beam_jobs.slides import TileScorer, TileWork
    from histo_common.slides import SlidePool, open_slide
    from histo_common.tiling import TileRegion
    from model_export.slide_scoring import plan_input, tile_probabilities

    model = loaded_tiny_model
    settings = SlideSettings.from_metadata(model.metadata)
    uri = generate_slide(str(tmp_path / "slide.tif"), 1024, 768, seed=3, mpp=None).uri
    with open_slide(uri) as slide:
        regions = plan_input(slide, settings).tiles
        expected = tile_probabilities(model, slide, regions, settings.batch_size)
    assert len(regions) > 5
    corrupt = str(VENDOR / "unreadable.svs")
    region = TileRegion(0, 0, 16, 16, 0, 16, 16, 16, 16)
    scorer = TileScorer(model, SlidePool(2))
    items = [
        TileWork(uri, tuple(regions[:3])),
        TileWork(corrupt, (region, region)),
        TileWork(uri, tuple(regions[3:])),
    ]
    outcomes = scorer.score(items)
    assert [len(o) for o in outcomes] == [3, 2, len(regions) - 3]
    scored = [o.probability for o in outcomes[0] + outcomes[2]]
    np.testing.assert_allclose(scored, expected, atol=1e-5)  # same tiles, same order
    assert all(o.probability is None and "unreadable.svs" in (o.error or "") for o in outcomes[1])
