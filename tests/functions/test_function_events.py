"""on_upload in process: real CloudEvents through functions-framework's Flask app."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from functions import screening
from histo_common import DISCLAIMER, storage


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def huge_png_header(width: int = 6000, height: int = 6000) -> bytes:
    """A PNG whose header claims an enormous size (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def _bucket_name(gcs_bucket: str) -> str:
    return gcs_bucket[len("gs://") :]


def _object_names(prefix_uri: str) -> set[str]:
    return {storage.basename(u) for u in storage.list_uris(prefix_uri)}


def test_structured_event_scores_gcs_object_and_writes_both_outputs(
    finalized_event,
    send_event,
    make_client,
    gcs_bucket,
    tiny_model_gcs,
    malignant_png,
):
    client = make_client(tiny_model_gcs)
    uri = f"{gcs_bucket}/slides/case 1/patch.png"
    storage.write_bytes(uri, malignant_png, content_type="image/png")
    generation = storage.stat(uri).generation

    response = send_event(
        client,
        finalized_event(
            _bucket_name(gcs_bucket), "slides/case 1/patch.png", generation, event_id="e-1"
        ),
        mode="structured",
    )

    assert response.status_code == 200
    doc = json.loads(storage.read_text(uri + ".prediction.json"))
    assert doc["uri"] == uri
    assert 0.0 <= doc["probability"] <= 1.0
    assert doc["label"] == ("malignant" if doc["probability"] >= 0.5 else "benign")
    assert doc["threshold"] == pytest.approx(0.5)
    assert (doc["model_name"], doc["model_version"]) == ("histo-cnn", 1)
    assert doc["event_id"] == "e-1"
    assert doc["source_generation"] == generation
    assert doc["disclaimer"] == DISCLAIMER
    assert doc["scored_at"].endswith("Z")
    assert doc["gradcam_uri"] == uri + ".gradcam.png"
    overlay = Image.open(io.BytesIO(storage.read_bytes(uri + ".gradcam.png")))
    assert overlay.format == "PNG"
    assert overlay.width > 256  # drawn large, with the colour scale beside it
    meta = storage.stat(uri + ".prediction.json").metadata
    assert meta["source-generation"] == str(generation)


def test_binary_event_on_local_bucket_writes_outputs_beside_the_image(
    finalized_event,
    send_event,
    make_client,
    local_buckets: Path,
    tiny_model,
    benign_png,
    loaded_tiny_model,
):
    client = make_client(tiny_model.root_uri, local_root=local_buckets)
    image = local_buckets / "uploads" / "sub" / "b.png"
    image.parent.mkdir()
    image.write_bytes(benign_png)
    generation = storage.stat(str(image)).generation

    response = send_event(client, finalized_event("uploads", "sub/b.png", generation))

    assert response.status_code == 200
    assert sorted(p.name for p in image.parent.iterdir()) == [
        "b.png",
        "b.png.gradcam.png",
        "b.png.prediction.json",
    ]
    doc = json.loads((image.parent / "b.png.prediction.json").read_text())
    expected = loaded_tiny_model.predict([benign_png])[0]
    assert doc["uri"] == str(image)
    assert doc["probability"] == pytest.approx(expected.probability, abs=1e-5)
    assert doc["label"] == expected.label


def test_duplicate_events_write_outputs_once(
    finalized_event, send_event, make_client, gcs_bucket, tiny_model, benign_png
):
    client = make_client(tiny_model.root_uri)
    uri = f"{gcs_bucket}/dup.png"
    storage.write_bytes(uri, benign_png)
    generation = storage.stat(uri).generation
    event = finalized_event(_bucket_name(gcs_bucket), "dup.png", generation, event_id="same")
    assert send_event(client, event).status_code == 200
    before = {u: storage.stat(u) for u in (uri + ".prediction.json", uri + ".gradcam.png")}

    # The same delivery again, then a redelivery of the same generation with a new id.
    assert send_event(client, event).status_code == 200
    redelivery = finalized_event(_bucket_name(gcs_bucket), "dup.png", generation, event_id="new")
    assert send_event(client, redelivery, mode="structured").status_code == 200

    after = {u: storage.stat(u) for u in before}
    assert {u: (i.generation, i.updated) for u, i in after.items()} == {
        u: (i.generation, i.updated) for u, i in before.items()
    }
    assert json.loads(storage.read_text(uri + ".prediction.json"))["event_id"] == "same"


def test_new_generation_overwrites_and_stale_event_is_ignored(
    finalized_event, send_event, make_client, gcs_bucket, tiny_model, benign_png, malignant_png
):
    client = make_client(tiny_model.root_uri)
    bucket = _bucket_name(gcs_bucket)
    uri = f"{gcs_bucket}/re.png"
    storage.write_bytes(uri, benign_png)
    first = storage.stat(uri).generation
    assert send_event(client, finalized_event(bucket, "re.png", first)).status_code == 200

    storage.write_bytes(uri, malignant_png)  # a re-upload: a newer generation
    second = storage.stat(uri).generation
    assert second > first
    prediction_before = storage.stat(uri + ".prediction.json")
    # A late delivery of the first generation's event changes nothing.
    assert send_event(client, finalized_event(bucket, "re.png", first)).status_code == 200
    assert storage.stat(uri + ".prediction.json").generation == prediction_before.generation

    assert send_event(client, finalized_event(bucket, "re.png", second)).status_code == 200
    doc = json.loads(storage.read_text(uri + ".prediction.json"))
    assert doc["source_generation"] == second
    assert storage.stat(uri + ".gradcam.png").metadata["source-generation"] == str(second)

    # And the first generation's event once more, now that newer outputs exist.
    assert send_event(client, finalized_event(bucket, "re.png", first)).status_code == 200
    assert json.loads(storage.read_text(uri + ".prediction.json"))["source_generation"] == second


@pytest.mark.parametrize(
    "name",
    ["a.png.gradcam.png", "a.png.prediction.json", "a.png.error.json", "notes.txt", "scan.dcm"],
)
def test_own_outputs_and_non_images_are_skipped_with_one_log_line(
    finalized_event, send_event, make_client, local_buckets: Path, tiny_model, caplog, name: str
):
    client = make_client(tiny_model.root_uri, local_root=local_buckets)
    path = local_buckets / "uploads" / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    generation = storage.stat(str(path)).generation
    caplog.set_level("INFO", logger="functions")

    response = send_event(client, finalized_event("uploads", name, generation))

    assert response.status_code == 200
    assert sorted(p.name for p in (local_buckets / "uploads").iterdir()) == [name]
    lines = [r for r in caplog.records if r.name == "functions.screening"]
    assert len(lines) == 1
    assert lines[0].getMessage().startswith("skipped")


BAD_FILES = {
    "empty.png": (b"", "empty file"),
    "text.png": (b"hello, this is not a picture\n", "not an image"),
    "huge.png": (huge_png_header(), "over the limit of 25,000,000"),
    "bomb.png": (huge_png_header(100_000, 100_000), "too large to decode safely"),
    "junk.jpg": (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "JPEG"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_get_an_error_document_and_a_2xx(
    finalized_event, send_event, make_client, local_buckets: Path, tiny_model, name: str
):
    client = make_client(tiny_model.root_uri, local_root=local_buckets)
    data, reason = BAD_FILES[name]
    path = local_buckets / "uploads" / name
    path.write_bytes(data)
    generation = storage.stat(str(path)).generation

    response = send_event(client, finalized_event("uploads", name, generation, event_id="bad-1"))

    assert response.status_code == 200
    doc = json.loads((local_buckets / "uploads" / f"{name}.error.json").read_text())
    assert reason in doc["reason"]
    assert "\n" not in doc["reason"]
    assert (doc["uri"], doc["event_id"], doc["source_generation"]) == (
        str(path),
        "bad-1",
        generation,
    )
    assert doc["disclaimer"] == DISCLAIMER
    assert sorted(p.name for p in (local_buckets / "uploads").iterdir()) == [
        name,
        f"{name}.error.json",
    ]


def test_truncated_png_gets_an_error_document(
    finalized_event, send_event, make_client, local_buckets: Path, tiny_model, benign_png
):
    client = make_client(tiny_model.root_uri, local_root=local_buckets)
    path = local_buckets / "uploads" / "cut.png"
    path.write_bytes(benign_png[: len(benign_png) // 2])

    response = send_event(
        client, finalized_event("uploads", "cut.png", storage.stat(str(path)).generation)
    )

    assert response.status_code == 200
    doc = json.loads((local_buckets / "uploads" / "cut.png.error.json").read_text())
    assert doc["stage"] in ("check", "score")
    assert doc["reason"]
    assert not (local_buckets / "uploads" / "cut.png.prediction.json").exists()


def test_bad_reupload_replaces_the_good_outputs_with_an_error(
    finalized_event, send_event, make_client, local_buckets: Path, tiny_model, benign_png
):
    client = make_client(tiny_model.root_uri, local_root=local_buckets)
    path = local_buckets / "uploads" / "x.png"
    path.write_bytes(benign_png)
    assert (
        send_event(
            client, finalized_event("uploads", "x.png", storage.stat(str(path)).generation)
        ).status_code
        == 200
    )
    assert (local_buckets / "uploads" / "x.png.prediction.json").exists()

    path.write_bytes(b"oops")
    generation = storage.stat(str(path)).generation
    assert send_event(client, finalized_event("uploads", "x.png", generation)).status_code == 200

    names = sorted(p.name for p in (local_buckets / "uploads").iterdir())
    assert names == ["x.png", "x.png.error.json"]


def test_file_over_the_byte_limit_is_refused_before_download(
    finalized_event, send_event, make_client, local_buckets: Path, tiny_model, benign_png
):
    client = make_client(tiny_model.root_uri, local_root=local_buckets, MAX_IMAGE_BYTES=100)
    path = local_buckets / "uploads" / "big.png"
    path.write_bytes(benign_png)
    assert len(benign_png) > 100

    response = send_event(
        client, finalized_event("uploads", "big.png", storage.stat(str(path)).generation)
    )

    assert response.status_code == 200
    doc = json.loads((local_buckets / "uploads" / "big.png.error.json").read_text())
    assert "over the limit of 100" in doc["reason"]


def test_other_event_types_and_missing_objects_write_nothing(
    finalized_event, send_event, make_client, local_buckets: Path, tiny_model, benign_png
):
    client = make_client(tiny_model.root_uri, local_root=local_buckets)
    path = local_buckets / "uploads" / "d.png"
    path.write_bytes(benign_png)
    deleted = finalized_event(
        "uploads", "d.png", 1, event_type="google.cloud.storage.object.v1.deleted"
    )
    assert send_event(client, deleted).status_code == 200
    assert send_event(client, finalized_event("uploads", "gone.png", 1)).status_code == 200
    assert send_event(client, finalized_event("uploads", "../escape.png", 1)).status_code == 200
    assert sorted(p.name for p in (local_buckets / "uploads").iterdir()) == ["d.png"]


def test_log_lines_are_json_with_uri_and_event_id(
    finalized_event, send_event, make_client, local_buckets: Path, tiny_model, benign_png
):
    from functions.logs import configure_logging

    client = make_client(tiny_model.root_uri, local_root=local_buckets)
    buffer = io.StringIO()
    configure_logging("INFO", stream=buffer)
    try:
        for name, data in (("ok.png", benign_png), ("bad.png", b"nope")):
            path = local_buckets / "uploads" / name
            path.write_bytes(data)
            event = finalized_event(
                "uploads", name, storage.stat(str(path)).generation, event_id=f"id-{name}"
            )
            assert send_event(client, event).status_code == 200
    finally:
        configure_logging("INFO")

    entries = [json.loads(line) for line in buffer.getvalue().splitlines()]
    ours = [e for e in entries if e["logger"].startswith("functions")]
    assert {e["status"] for e in ours if "status" in e} == {"scored", "error"}
    for entry in ours:
        assert entry["severity"] in ("INFO", "WARNING")
        assert entry["event_id"] in ("id-ok.png", "id-bad.png")
        assert entry["uri"] == str(local_buckets / "uploads" / entry["event_id"][3:])
    # Where the scored event's time went, stage by stage (bench/bench_function.py reads it).
    [scored] = [e for e in ours if e.get("status") == "scored"]
    stages = scored["stages_ms"]
    assert {"storage", "read", "check", "explain", "draw", "encode", "json"} <= set(stages)
    assert all(ms >= 0 for ms in stages.values())
    assert sum(stages.values()) <= scored["elapsed_ms"] + 1.0


def test_unloadable_model_makes_the_event_retry(
    finalized_event, send_event, make_client, local_buckets: Path, tmp_path, benign_png
):
    client = make_client(str(tmp_path / "no-models" / "histo-cnn"), local_root=local_buckets)
    path = local_buckets / "uploads" / "m.png"
    path.write_bytes(benign_png)

    response = send_event(
        client, finalized_event("uploads", "m.png", storage.stat(str(path)).generation)
    )

    assert response.status_code == 500
    assert sorted(p.name for p in (local_buckets / "uploads").iterdir()) == ["m.png"]


def test_screen_object_without_any_event(local_buckets: Path, loaded_tiny_model, benign_png):
    from functions.settings import FunctionSettings

    settings = FunctionSettings(model_uri="unused", local_bucket_root=str(local_buckets))
    path = local_buckets / "uploads" / "plain.png"
    path.write_bytes(benign_png)

    outcome = screening.screen_object(
        "uploads", "plain.png", None, "ev", settings, lambda: loaded_tiny_model
    )
    again = screening.screen_object(
        "uploads", "plain.png", None, "ev", settings, lambda: loaded_tiny_model
    )

    assert outcome.status is screening.Status.SCORED
    assert outcome.outputs == (f"{path}.gradcam.png", f"{path}.prediction.json")
    assert again.status is screening.Status.DUPLICATE


def test_overlay_left_by_an_interrupted_delivery_is_replaced(
    local_buckets: Path, loaded_tiny_model, benign_png
):
    """A first upload writes its overlay create-only; one already there is written over."""
    from functions.settings import FunctionSettings

    settings = FunctionSettings(model_uri="unused", local_bucket_root=str(local_buckets))
    path = local_buckets / "uploads" / "half.png"
    path.write_bytes(benign_png)
    leftover = Path(screening.gradcam_uri(str(path)))
    leftover.write_bytes(b"an overlay from a delivery that stopped before its prediction")

    outcome = screening.screen_object(
        "uploads", "half.png", None, "ev", settings, lambda: loaded_tiny_model
    )

    assert outcome.status is screening.Status.SCORED
    assert leftover.read_bytes().startswith(b"\x89PNG")
    with Image.open(leftover) as overlay:
        assert min(overlay.size) > 256
    doc = json.loads(Path(screening.prediction_uri(str(path))).read_text())
    assert doc["gradcam_uri"] == str(leftover)
