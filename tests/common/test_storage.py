"""The storage layer, run against both backends with the same cases."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from histo_common import storage


@pytest.fixture(params=["local", "file-uri", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable root URI on each backend."""
    if request.param == "local":
        return str(tmp_path / "bucket")
    if request.param == "file-uri":
        return (tmp_path / "bucket").as_uri()
    return request.getfixturevalue("gcs_bucket")


def test_write_read_roundtrip(root: str) -> None:
    uri = storage.join(root, "slides", "a.png")
    storage.write_bytes(uri, b"\x89PNG payload", content_type="image/png")
    assert storage.read_bytes(uri) == b"\x89PNG payload"
    assert storage.exists(uri)
    info = storage.stat(uri)
    assert info.size == len(b"\x89PNG payload")
    assert info.generation is not None
    assert info.updated is not None


def test_overwrite_replaces_content(root: str) -> None:
    uri = storage.join(root, "x.txt")
    storage.write_text(uri, "first")
    storage.write_text(uri, "second")
    assert storage.read_text(uri) == "second"


def test_missing_object_names_uri(root: str) -> None:
    uri = storage.join(root, "nope", "missing.png")
    assert not storage.exists(uri)
    with pytest.raises(storage.ObjectNotFound, match=r"missing\.png"):
        storage.read_bytes(uri)
    with pytest.raises(storage.ObjectNotFound, match=r"missing\.png"):
        storage.stat(uri)
    with pytest.raises(storage.ObjectNotFound):
        storage.delete(uri)
    storage.delete(uri, missing_ok=True)


def test_empty_object(root: str) -> None:
    uri = storage.join(root, "empty.png")
    storage.write_bytes(uri, b"")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b""
    assert storage.stat(uri).size == 0


def test_large_object(root: str) -> None:
    payload = os.urandom(24 * 1024 * 1024)
    uri = storage.join(root, "big.bin")
    storage.write_bytes(uri, payload)
    assert storage.read_bytes(uri) == payload


@pytest.mark.parametrize("name", ["with space.png", "naïve-ñandú-組織.png", "a+b=c&d.png"])
def test_unusual_names(root: str, name: str) -> None:
    uri = storage.join(root, "odd folder", name)
    storage.write_bytes(uri, b"data")
    assert storage.read_bytes(uri) == b"data"
    listed = storage.list_uris(storage.join(root, "odd folder"))
    assert len(listed) == 1
    assert storage.read_bytes(listed[0]) == b"data"
    assert storage.basename(listed[0]) == name


@pytest.mark.parametrize("name", ["../escape.png", "a/../../b.png", "/etc/passwd", "nul\x00.png"])
def test_traversal_names_are_refused(root: str, name: str) -> None:
    with pytest.raises(storage.InvalidObjectName):
        storage.join(root, name)


@pytest.mark.parametrize("key", ["../x.png", "a/../../x.png", "x\x00.png"])
def test_gcs_keys_are_validated(key: str) -> None:
    with pytest.raises(storage.InvalidObjectName):
        storage.read_bytes(f"gs://some-bucket/{key}")


def test_list_prefix_and_globs(root: str) -> None:
    for name in ["s/benign/a.png", "s/benign/b.jpg", "s/malignant/c.png", "s/deep/x/y/d.png"]:
        storage.write_bytes(storage.join(root, name), b"1")
    storage.write_bytes(storage.join(root, "other/e.png"), b"1")

    def names(pattern: str) -> list[str]:
        return [
            u.split("/bucket/", 1)[-1].split(root, 1)[-1].lstrip("/")
            for u in storage.list_uris(pattern)
        ]

    assert names(storage.join(root, "s")) == [
        "s/benign/a.png",
        "s/benign/b.jpg",
        "s/deep/x/y/d.png",
        "s/malignant/c.png",
    ]
    assert names(root.rstrip("/") + "/s/*/*.png") == ["s/benign/a.png", "s/malignant/c.png"]
    assert names(root.rstrip("/") + "/s/**.png") == [
        "s/benign/a.png",
        "s/deep/x/y/d.png",
        "s/malignant/c.png",
    ]
    assert names(root.rstrip("/") + "/s/**/d.png") == ["s/deep/x/y/d.png"]
    assert names(root.rstrip("/") + "/s/benign/?.jpg") == ["s/benign/b.jpg"]
    assert storage.list_uris(storage.join(root, "absent")) == []
    # A plain key that names one object lists that object.
    assert names(storage.join(root, "other/e.png")) == ["other/e.png"]


def test_delete(root: str) -> None:
    uri = storage.join(root, "gone.txt")
    storage.write_text(uri, "x")
    storage.delete(uri)
    assert not storage.exists(uri)


def test_create_only_precondition(root: str) -> None:
    uri = storage.join(root, "once.json")
    storage.write_text(uri, "first", if_generation_match=0)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_text(uri, "second", if_generation_match=0)
    assert storage.read_text(uri) == "first"


def test_copy_tree_roundtrip(root: str, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"pb")
    (src / "variables" / "variables.index").write_bytes(b"idx")
    dest = storage.join(root, "models", "m", "1")
    written = storage.copy_tree_to(src, dest)
    assert len(written) == 2
    back = tmp_path / "back"
    storage.copy_tree_from(dest, back)
    assert (back / "saved_model.pb").read_bytes() == b"pb"
    assert (back / "variables" / "variables.index").read_bytes() == b"idx"


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    """A reader polling during many rewrites only ever sees a whole file."""
    uri = str(tmp_path / "f.bin")
    old, new = b"a" * 2_000_000, b"b" * 2_000_000
    storage.write_bytes(uri, old)
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = storage.read_bytes(uri)
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(40):
        storage.write_bytes(uri, new if i % 2 else old)
    stop.set()
    thread.join()
    assert seen <= {b"aa2000000", b"bb2000000"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_bad_bucket_name() -> None:
    with pytest.raises(storage.InvalidObjectName, match="bucket"):
        storage.read_bytes("gs://UPPER_case!/x")


def test_gcs_unreachable_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    from support import free_port

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(storage, "RETRY_DEADLINE_S", 1.0)
    storage.reset_clients()
    try:
        with pytest.raises(storage.StorageUnavailable):
            storage.read_bytes("gs://some-bucket/x.png")
    finally:
        storage.reset_clients()
