"""The app on tiled inputs: an uploaded slide, and a scoring run holding slides.

The page is shown a run the real Beam scoring job wrote over a synthetic slide
and a patch (result rows with the slide fields, tile rows, a heatmap per slide,
``summary.json``); the data layer is also checked on a run written by the shared
slide scorer (``model_export.slide_scoring``) into the run layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import data
from histo_common import DISCLAIMER
from histo_common.layout import RunLayout, RunModel, Summary
from histo_common.results import ResultRow
from histo_common.samples import generate_slide
from model_export.slide_scoring import SlideSettings, score_input

APP_FILE = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")


def _open(page: str, monkeypatch: pytest.MonkeyPatch, tiny_model, results: Path) -> AppTest:
    monkeypatch.setenv("HISTO_MODEL_URI", tiny_model.root_uri)
    monkeypatch.setenv("HISTO_SAMPLES_URI", str(tiny_model.sample_dir))
    monkeypatch.setenv("HISTO_RESULTS_URI", str(results))
    at = AppTest.from_file(APP_FILE, default_timeout=120)
    at.run()
    if page != "Analyse images":
        at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert DISCLAIMER in [w.value for w in at.warning]
    return at


def _table_with(at: AppTest, column: str, without: str = "-"):
    """The one dataframe with ``column`` and not ``without`` (plain tables have no key here)."""
    [table] = [
        d.value for d in at.dataframe if column in d.value.columns and without not in d.value
    ]
    return table


def _captions(at: AppTest) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


def test_an_uploaded_slide_shows_heatmap_fields_and_top_tiles(
    monkeypatch: pytest.MonkeyPatch, tiny_model, tmp_path: Path, sample_dir: Path
) -> None:
    slide = Path(generate_slide(str(tmp_path / "case.tif"), 768, 576, seed=3, mpp=None).uri)
    patch = sorted((sample_dir / "benign").glob("*.png"))[0]
    at = _open("Analyse images", monkeypatch, tiny_model, tmp_path / "results")

    at.file_uploader(key="uploads").set_value(
        [
            ("case.tif", slide.read_bytes(), "image/tiff"),
            (patch.name, patch.read_bytes(), "image/png"),
        ]
    ).run()

    assert not at.exception, [e.value for e in at.exception]
    infos = [i.value for i in at.info]
    [verdict] = [t for t in infos if t.startswith("Slide: ")]
    assert "tissue tiles scored of" in verdict and "threshold 0.500" in verdict
    assert len([t for t in infos if t.startswith("Prediction: ")]) == 1  # the patch, as before
    captions = _captions(at)
    assert any(
        c.startswith("Tile probabilities over the thumbnail (generic-tiff)") for c in captions
    )
    tiles = [c for c in captions if c.startswith("tile at x=")]
    assert len(tiles) == 3
    shown = [float(c.rsplit("p=", 1)[1]) for c in tiles]
    assert shown == sorted(shown, reverse=True)  # most suspicious first
    fields = _table_with(at, "field").set_index("field")["value"]
    assert int(fields["tiles_scored"]) > 0
    assert int(fields["tiles_scored"]) == int(fields["tissue_tiles"]) < int(fields["grid_tiles"])
    assert float(fields["max_probability"]) == pytest.approx(shown[0], abs=1e-3)


def test_a_slide_file_that_cannot_be_read_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tiny_model, tmp_path: Path
) -> None:
    at = _open("Analyse images", monkeypatch, tiny_model, tmp_path / "results")

    at.file_uploader(key="uploads").set_value(
        [("scan.svs", b"a text file with a slide's name", "application/octet-stream")]
    ).run()

    assert not at.exception
    [error] = [e.value for e in at.error]
    assert error.startswith("scan.svs: scan.svs: not a whole-slide image OpenSlide recognises")
    assert "/tmp" not in error  # the temporary copy's path is not shown


@dataclass(frozen=True)
class SlideRun:
    run: RunLayout
    slide_uri: str
    patch_uri: str
    tiles_scored: int


def write_slide_run(root: Path, sample_dir: Path, model) -> SlideRun:
    """A scoring run of one slide and one patch, written by the shared scorer into the layout."""
    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    slide_uri = generate_slide(str(inputs / "slide.tif"), 768, 576, seed=5, mpp=None).uri
    patch = sorted((sample_dir / "malignant").glob("*.png"))[0]
    patch_uri = str(inputs / patch.name)
    Path(patch_uri).write_bytes(patch.read_bytes())
    settings = SlideSettings.from_metadata(model.metadata)
    scores = [score_input(model, uri, model.identity, settings) for uri in (slide_uri, patch_uri)]
    run = RunLayout(str(root / "results" / "slides-run"))
    for folder in ("results", "tiles"):
        Path(run.output, folder).mkdir(parents=True)
    rows = [s.row for s in scores if s.row is not None]
    Path(run.output, "results", "part-00000.jsonl").write_text(
        "".join(r.to_json() + "\n" for r in rows)
    )
    slide_score = scores[0]
    Path(run.output, "tiles", "part-00000.jsonl").write_text(
        "".join(t.to_json() + "\n" for t in slide_score.tiles)
    )
    heatmap = Path(run.heatmap(slide_uri, str(inputs)))
    heatmap.parent.mkdir(parents=True)
    heatmap.write_bytes(slide_score.heatmap_png())
    summary = Summary(
        inputs=[f"{inputs}/*"],
        output=run.output,
        base=str(inputs),
        model=RunModel(name=model.name, version=model.version, version_uri=model.uri),
        matched=2,
        scored=2,
        failed=0,
        complete=True,
    )
    Path(run.summary).write_text(summary.to_json())
    return SlideRun(run, slide_uri, patch_uri, len(slide_score.tiles))


def test_the_data_layer_reads_slides_heatmaps_and_tiles(
    tmp_path: Path, sample_dir: Path, loaded_tiny_model
) -> None:
    written = write_slide_run(tmp_path, sample_dir, loaded_tiny_model)

    run = data.load_scoring_run(written.run.output)

    slides = data.slide_rows(run.results)
    assert slides["uri"].tolist() == [written.slide_uri]
    assert ResultRow.from_dict(slides.iloc[0].dropna().to_dict()).is_tiled
    assert run.saved_heatmap(written.slide_uri) == written.run.heatmap(
        written.slide_uri, run.summary.base
    )
    assert run.saved_heatmap(written.patch_uri) is None
    tiles = data.load_tiles(written.run.output, written.slide_uri)
    assert len(tiles) == written.tiles_scored == int(slides.iloc[0]["tiles_scored"])
    assert tiles["probability"].is_monotonic_decreasing
    assert data.load_tiles(written.run.output, written.patch_uri).empty
    assert not data.is_tiled_row(run.results[run.results["uri"] == written.patch_uri].iloc[0])


@pytest.fixture(scope="module")
def beam_slide_run(
    tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, tiny_model
) -> SlideRun:
    """The real scoring job (DirectRunner) over one synthetic slide and one patch."""
    from beam_jobs import score

    root = tmp_path_factory.mktemp("beam-slides")
    inputs = root / "inputs"
    inputs.mkdir()
    slide_uri = generate_slide(str(inputs / "slide.tif"), 768, 576, seed=5, mpp=None).uri
    patch = sorted((sample_dir / "malignant").glob("*.png"))[0]
    patch_uri = str(inputs / patch.name)
    Path(patch_uri).write_bytes(patch.read_bytes())
    run = RunLayout(str(root / "results" / "beam-run"))
    score.run(["--input", f"{inputs}/*", "--model", tiny_model.root_uri, "--output", run.output])
    tiles = data.load_tiles(run.output, slide_uri)
    return SlideRun(run, slide_uri, patch_uri, len(tiles))


def test_the_scoring_runs_page_shows_the_slides_of_a_beam_run(
    monkeypatch: pytest.MonkeyPatch, tiny_model, beam_slide_run: SlideRun
) -> None:
    written = beam_slide_run
    results = Path(written.run.output).parent
    at = _open("Scoring runs", monkeypatch, tiny_model, results)

    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Images scored"], metrics["Slides (tiled)"]) == ("2", "1")
    slides = _table_with(at, "tiles_scored", without="scored_at")  # not the results table
    assert slides["uri"].tolist() == [written.slide_uri]
    assert int(slides.iloc[0]["tiles_scored"]) == written.tiles_scored > 0
    heatmap = written.run.heatmap(written.slide_uri, str(Path(written.slide_uri).parent))
    assert Path(heatmap).is_file()  # where the run layout says the job wrote it
    assert f"Heatmap saved by the run: {heatmap}" in _captions(at)
    [fields] = [d.value for d in at.dataframe if "field" in d.value.columns]
    assert fields.set_index("field").loc["tiles_scored", "value"] == str(written.tiles_scored)
    tiles = _table_with(at, "level")
    assert len(tiles) == min(written.tiles_scored, 50)
    assert tiles["probability"].is_monotonic_decreasing

    # Selecting the slide's row in the results table shows the same, without reading its pixels.
    table = at.dataframe(key="results_table").value
    row = table.index[table["uri"] == written.slide_uri][0]
    at.session_state["results_table"] = {"selection": {"rows": [int(row)], "columns": []}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [d.value for d in at.dataframe if "level" in d.value.columns]
    assert len(shown) == 2 and all(len(t) == len(tiles) for t in shown)  # slides section, row
