"""The watcher's own logic, without a server: which objects become events, and when."""

from __future__ import annotations

from pathlib import Path

import pytest

from functions import watch
from histo_common import storage


class FakeDelivery(list):
    """The events the watcher would POST; ``answers`` are popped as accepted/refused."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[bool] = []

    def __call__(self, url: str, event) -> bool:
        self.append(event)
        return self.answers.pop(0) if self.answers else True


@pytest.fixture
def deliveries(monkeypatch) -> FakeDelivery:
    """Replace the HTTP delivery with a recorder."""
    fake = FakeDelivery()
    monkeypatch.setattr(watch, "deliver", fake)
    return fake


def test_local_bucket_events_name_the_bucket_and_object(tmp_path: Path, deliveries, benign_png):
    bucket = watch.watched_bucket(str(tmp_path / "buckets" / "uploads"))
    assert (bucket.name, bucket.local_root) == ("uploads", str(tmp_path / "buckets"))
    folder = tmp_path / "buckets" / "uploads"
    (folder / "case").mkdir()
    (folder / "case" / "a.png").write_bytes(benign_png)
    for name in ("a.png.gradcam.png", "a.png.prediction.json", "notes.txt", ".hidden.png"):
        (folder / name).write_bytes(b"x")

    done = watch.Watcher(bucket, "http://unused/", settle=False).poll()

    assert done == [str(folder / "case" / "a.png")]
    (event,) = deliveries
    assert event["type"] == "google.cloud.storage.object.v1.finalized"
    assert event["source"] == "//storage.googleapis.com/projects/_/buckets/uploads"
    assert event["subject"] == "objects/case/a.png"
    assert event.data["name"] == "case/a.png"
    assert event.data["generation"] == str((folder / "case" / "a.png").stat().st_mtime_ns)


def test_settle_waits_one_poll_and_each_generation_is_sent_once(
    tmp_path: Path, deliveries, benign_png, malignant_png
):
    folder = tmp_path / "uploads"
    watcher = watch.Watcher(watch.watched_bucket(str(folder)), "http://unused/", settle=True)
    (folder / "a.png").write_bytes(benign_png)

    assert watcher.poll() == []  # first sight: maybe still being copied
    assert len(watcher.poll()) == 1
    assert watcher.poll() == []  # same generation: not again
    (folder / "a.png").write_bytes(malignant_png)
    watcher.poll()
    assert len(watcher.poll()) == 1  # a new generation is a new event
    assert len({e["id"] for e in deliveries}) == 2


def test_failed_delivery_is_retried_on_a_later_poll(tmp_path: Path, deliveries, benign_png):
    folder = tmp_path / "uploads"
    watcher = watch.Watcher(watch.watched_bucket(str(folder)), "http://unused/", settle=False)
    (folder / "a.png").write_bytes(benign_png)
    deliveries.answers = [False]

    assert watcher.poll() == []
    assert watcher.failures == 1
    assert watcher.poll() == [str(folder / "a.png")]
    assert deliveries[0]["id"] == deliveries[1]["id"]  # a redelivery keeps its id


def test_gcs_bucket_with_prefix(gcs_bucket, deliveries, benign_png):
    name = gcs_bucket[len("gs://") :]
    storage.write_bytes(f"{gcs_bucket}/in/a.png", benign_png)
    storage.write_bytes(f"{gcs_bucket}/other/b.png", benign_png)
    bucket = watch.watched_bucket(f"{gcs_bucket}/in")
    assert (bucket.name, bucket.prefix, bucket.local_root) == (name, "in/", None)

    watch.Watcher(bucket, "http://unused/", settle=False).poll()

    assert [e.data["name"] for e in deliveries] == ["in/a.png"]
    generation = storage.stat(f"{gcs_bucket}/in/a.png").generation
    assert deliveries[0].data["generation"] == str(generation)


def test_function_environment_maps_local_buckets(tmp_path: Path):
    config = watch.WatchConfig(
        bucket=watch.watched_bucket(str(tmp_path / "b" / "uploads")), model_uri="m", port=0
    )
    env = watch.function_environment(config, {"LOCAL_BUCKET_ROOT": "/elsewhere", "PATH": "/bin"})
    assert env["LOCAL_BUCKET_ROOT"] == str(tmp_path / "b")
    assert env["MODEL_URI"] == "m"
    assert env["PYTHONPATH"].split(":")[0] == str(watch.REPO_ROOT)
    gcs = watch.WatchConfig(bucket=watch.watched_bucket("gs://p-uploads"), model_uri="m", port=0)
    assert "LOCAL_BUCKET_ROOT" not in watch.function_environment(gcs, {"LOCAL_BUCKET_ROOT": "/x"})


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        watch.parse_args(["--bucket", "gs://Not_A_Bucket", "--model", "m"])
    assert "valid bucket name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        watch.parse_args(["--bucket", "/tmp/x", "--model", "m", "--interval", "0"])
