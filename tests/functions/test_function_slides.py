"""The function on large uploads: tiled, or refused with the Beam command that scores them."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from support import function_env

from functions.settings import FunctionSettings
from histo_common import bucket_events, storage
from histo_common.samples import SlideSample, encode_png, generate_slide, synth_slide_image

REPO_ROOT = Path(__file__).resolve().parents[2]


def _post(url: str, event) -> requests.Response:
    from cloudevents.conversion import to_binary

    headers, body = to_binary(event)
    return requests.post(url, headers=headers, data=body, timeout=300)


def _upload(local: Path, uri: str) -> int:
    storage.write_bytes(uri, local.read_bytes(), content_type="image/tiff")
    return int(storage.stat(uri).generation or 0)


def _overlaps_lesion(tile: dict, sample: SlideSample) -> bool:
    return any(
        p.malignant
        and tile["x"] < p.x + p.width
        and p.x < tile["x"] + tile["width"]
        and tile["y"] < p.y + p.height
        and p.y < tile["y"] + tile["height"]
        for p in sample.patches
    )


def test_slide_upload_gets_heatmap_overlay_and_slide_fields(
    function_server, gcs_bucket, finalized_event, tmp_path
):
    sample = generate_slide(str(tmp_path / "slide.tif"), 1024, 768, seed=3, mpp=None)
    bucket = gcs_bucket[len("gs://") :]
    uri = f"{gcs_bucket}/cases/slide.svs"  # an Aperio name on a TIFF: OpenSlide reads either
    generation = _upload(Path(sample.uri), uri)
    event = finalized_event(bucket, "cases/slide.svs", generation, event_id="slide-1")

    response = _post(function_server, event)

    assert response.status_code == 200
    listing = set(storage.list_uris(f"{gcs_bucket}/cases/"))
    assert listing == {
        uri,
        uri + ".heatmap.png",
        uri + ".gradcam.png",
        uri + ".prediction.json",
    }
    doc = json.loads(storage.read_text(uri + ".prediction.json"))
    assert (doc["uri"], doc["event_id"], doc["source_generation"]) == (uri, "slide-1", generation)
    assert (doc["image_width"], doc["image_height"]) == (1024, 768)
    grid = (1024 // 48 + 1) * (768 // 48)  # 48 px tiles; the last column reaches past the edge
    assert 0 < doc["tiles_scored"] == doc["tissue_tiles"] < doc["grid_tiles"] == grid
    assert doc["label"] == "malignant"  # the planted lesion
    assert doc["probability"] == pytest.approx(doc["top_k_mean"])
    assert "assumed" in doc["scale"] and doc["scale_assumed"] is True
    assert doc["heatmap_uri"] == uri + ".heatmap.png"
    assert doc["gradcam_uri"] == uri + ".gradcam.png"
    top = doc["gradcam_tile"]
    assert top == doc["top_tiles"][0]
    assert top["probability"] == max(t["probability"] for t in doc["top_tiles"])
    assert _overlaps_lesion(top, sample)
    assert "research" in doc["disclaimer"].lower()
    for picture in (uri + ".heatmap.png", uri + ".gradcam.png"):
        with Image.open(io.BytesIO(storage.read_bytes(picture))) as image:
            assert image.format == "PNG" and min(image.size) > 200

    # A redelivery is a duplicate: nothing rewritten.
    written = storage.stat(uri + ".heatmap.png").generation
    assert _post(function_server, event).status_code == 200
    assert storage.stat(uri + ".heatmap.png").generation == written


def test_field_of_view_png_is_tiled_and_a_patch_is_not(
    make_client, finalized_event, send_event, local_buckets: Path, tiny_model, benign_png
):
    image, placements = synth_slide_image(400, 300, seed=4, islands=2, lesion=True)
    fov = local_buckets / "uploads" / "fov.png"
    fov.write_bytes(encode_png(image))
    patch = local_buckets / "uploads" / "patch.png"
    patch.write_bytes(benign_png)
    client = make_client(tiny_model.root_uri, local_root=local_buckets)

    for path in (fov, patch):
        event = finalized_event("uploads", path.name, storage.stat(str(path)).generation)
        assert send_event(client, event).status_code == 200

    fov_doc = json.loads(Path(f"{fov}.prediction.json").read_text())
    assert fov_doc["tiles_scored"] > 0 and fov_doc["image_format"] == "pillow-PNG"
    assert Path(f"{fov}.heatmap.png").is_file() and Path(f"{fov}.gradcam.png").is_file()
    patch_doc = json.loads(Path(f"{patch}.prediction.json").read_text())
    assert "tiles_scored" not in patch_doc  # a patch's row is what it always was
    assert not Path(f"{patch}.heatmap.png").exists()
    assert placements  # the field of view has tissue


def test_slide_with_more_tiles_than_the_timeout_allows_gets_the_beam_command(
    make_client, finalized_event, send_event, gcs_bucket, tiny_model_gcs, tmp_path
):
    sample = generate_slide(str(tmp_path / "big.tif"), 1024, 768, seed=3, mpp=None)
    bucket = gcs_bucket[len("gs://") :]
    uri = f"{gcs_bucket}/big.tif"
    generation = _upload(Path(sample.uri), uri)
    client = make_client(
        tiny_model_gcs,
        FUNCTION_TIMEOUT_SECONDS="2",
        SLIDE_TILES_PER_SECOND="10",  # 2 s x 10 tiles/s x 0.5: at most 10 tiles
        SLIDE_OUTPUT_URI="gs://results/slides/",
    )

    response = send_event(client, finalized_event(bucket, "big.tif", generation))

    assert response.status_code == 200  # not retried
    assert set(storage.list_uris(f"{gcs_bucket}/")) == {uri, uri + ".error.json"}
    doc = json.loads(storage.read_text(uri + ".error.json"))
    assert (
        "tissue tiles, more than the 10 this function scores within its 2 s timeout"
        in (doc["reason"])
    )
    command = doc["reason"].split("score it with Beam: ", 1)[1]
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "beam_jobs.score"]
    from beam_jobs.score import build_parser

    args, beam_options = build_parser().parse_known_args(words[3:])
    assert (args.input, args.model, args.output) == (
        [uri],
        tiny_model_gcs,
        "gs://results/slides/big.tif",
    )
    assert args.gradcam_top == 3 and beam_options == []


def test_multi_file_slide_and_oversized_slide_are_refused_with_a_reason(
    make_client, finalized_event, send_event, local_buckets: Path, tiny_model, tmp_path
):
    uploads = local_buckets / "uploads"
    (uploads / "case.mrxs").write_bytes(b"[GENERAL]\n")
    (uploads / "case").mkdir()
    (uploads / "case" / "Slidedat.ini").write_text("[GENERAL]\n")
    sample = generate_slide(str(uploads / "large.ndpi"), 512, 512, seed=1, mpp=None)
    client = make_client(tiny_model.root_uri, local_root=local_buckets, MAX_SLIDE_BYTES="1000")

    for name in ("case.mrxs", "case/Slidedat.ini", "large.ndpi"):
        generation = storage.stat(str(uploads / name)).generation
        assert send_event(client, finalized_event("uploads", name, generation)).status_code == 200

    mrxs = json.loads((uploads / "case.mrxs.error.json").read_text())
    assert "folder of files uploaded as separate objects" in mrxs["reason"]
    assert "python -m beam_jobs.score --input " + str(uploads / "case.mrxs") in mrxs["reason"]
    assert not (uploads / "case" / "Slidedat.ini.error.json").exists()  # not ours: skipped
    large = json.loads((uploads / "large.ndpi.error.json").read_text())
    assert "over the function's limit of 1,000 (MAX_SLIDE_BYTES)" in large["reason"]
    assert Path(sample.uri).stat().st_size > 1000


def test_unreadable_slide_gets_one_error_with_a_reason(
    make_client, finalized_event, send_event, local_buckets: Path, tiny_model
):
    uploads = local_buckets / "uploads"
    (uploads / "notes.svs").write_text("this is a text file with a slide's name")
    client = make_client(tiny_model.root_uri, local_root=local_buckets)

    generation = storage.stat(str(uploads / "notes.svs")).generation
    response = send_event(client, finalized_event("uploads", "notes.svs", generation))
    assert response.status_code == 200

    assert sorted(p.name for p in uploads.iterdir()) == ["notes.svs", "notes.svs.error.json"]
    doc = json.loads((uploads / "notes.svs.error.json").read_text())
    assert "not a whole-slide image OpenSlide recognises" in doc["reason"]
    assert doc["stage"] == "read"


def test_names_the_function_takes():
    assert bucket_events.wants_event("a/b.svs") and bucket_events.wants_event("x.ndpi")
    assert bucket_events.wants_event("x.mrxs")  # to say why it is not scored here
    assert not bucket_events.wants_event("series/1.dcm")
    assert not bucket_events.wants_event("x.svs.heatmap.png")
    assert not bucket_events.wants_event(".tmp-123.svs")
    settings = FunctionSettings(model_uri="m", timeout_s=540, slide_tiles_per_second=100.0)
    assert settings.max_slide_tiles == 27_000


def test_watcher_scores_a_dropped_slide(tmp_path, tiny_model):
    uploads = tmp_path / "buckets" / "uploads"
    uploads.mkdir(parents=True)
    generate_slide(str(uploads / "dropped.tif"), 640, 480, seed=2, mpp=None)

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "functions.watch",
            "--bucket",
            str(uploads),
            "--model",
            tiny_model.root_uri,
            "--once",
        ],
        cwd=REPO_ROOT,
        env=function_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    [line] = done.stdout.splitlines()
    assert line.startswith(f"{uploads}/dropped.tif -> ")
    for suffix in (".heatmap.png", ".gradcam.png", ".prediction.json"):
        assert f"dropped.tif{suffix}" in line
    doc = json.loads((uploads / "dropped.tif.prediction.json").read_text())
    assert doc["tiles_scored"] > 0
    heat = np.asarray(Image.open(uploads / "dropped.tif.heatmap.png").convert("RGB"))
    assert heat.std() > 10  # a picture, not a blank


def test_predict_http_tiles_a_large_upload(make_client, tiny_model):
    import base64

    image, _ = synth_slide_image(400, 300, seed=4, islands=2, lesion=True)
    client = make_client(tiny_model.root_uri, target="predict_http")

    response = client.post(
        "/predict?gradcam=base64",
        data={"file": (io.BytesIO(encode_png(image)), "field.png")},
        content_type="multipart/form-data",
    )

    assert response.status_code == 200
    doc = response.get_json()
    assert doc["uri"] == "upload:field.png" and doc["tiles_scored"] > 0
    assert {t["uri"] for t in doc["top_tiles"]} == {"upload:field.png"}
    text = json.dumps(
        {k: v for k, v in doc.items() if not k.endswith("_base64") and k != "model_uri"}
    )
    assert "/tmp" not in text  # the scratch copy's path never shows
    for key in ("heatmap_png_base64", "gradcam_png_base64"):
        with Image.open(io.BytesIO(base64.b64decode(doc[key]))) as picture:
            assert picture.format == "PNG"
    overlay = client.post("/predict?gradcam=1", data=encode_png(image))
    assert overlay.status_code == 200 and overlay.mimetype == "image/png"
    assert overlay.headers["X-Prediction-Label"] == doc["label"]

    refused = client.post(
        "/predict",
        data={"file": (io.BytesIO(b"notes, not a slide"), "notes.svs")},
        content_type="multipart/form-data",
    )
    assert refused.status_code == 400
    reason = refused.get_json()["error"]
    assert reason.startswith("upload:notes.svs: not a whole-slide image") and "/tmp" not in reason


def test_the_tissue_mask_is_planned_once_per_slide(tmp_path, loaded_tiny_model, monkeypatch):
    """The budget check and the scoring share one plan: planning is a slide's first cost."""
    from functions.logs import StageClock
    from functions.slide_screening import score_slide
    from model_export import slide_scoring

    calls: list[str] = []
    plan_slide = slide_scoring.plan_slide

    def counted(slide, *args, **kwargs):
        calls.append(slide.geometry.uri)
        return plan_slide(slide, *args, **kwargs)

    monkeypatch.setattr(slide_scoring, "plan_slide", counted)
    sample = generate_slide(str(tmp_path / "slide.tif"), 1024, 768, seed=3, mpp=None)
    settings = FunctionSettings(model_uri="unused")
    scored = score_slide(sample.uri, loaded_tiny_model, settings, StageClock())
    assert scored.row.is_tiled and (scored.row.tiles_scored or 0) > 0
    assert calls == [sample.uri]
