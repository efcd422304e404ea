"""The Beam stages on TestPipeline with assert_that, and the model handlers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import apache_beam as beam
import grpc
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from beam_jobs import files, stages
from beam_jobs.matching import MatchInputs
from beam_jobs.model_handler import HistoModelHandler, ServingModelHandler
from beam_jobs.transforms import ERRORS, EXPLAINED, ReadImages, ScoreImages
from model_export.identity import ModelIdentity, resolve_model

# The in-process engine; a bare TestPipeline would first try to download Prism.
RUNNER = "FnApiRunner"


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def test_read_images_splits_the_corpus(bad_corpus) -> None:
    patterns = [f"{bad_corpus.root}/*", bad_corpus.uri("folder.png")]
    scored = sorted(n for n, e in bad_corpus.expected.items() if e == "scored")
    errors = {
        "empty.png": "check",
        "notes.png": "check",
        "truncated.png": "check",
        "bomb.png": "check",
        "folder.png": "read",
    }
    with BeamTestPipeline(runner=RUNNER) as p:
        out = p | MatchInputs(patterns) | ReadImages()
        assert_that(
            out["images"] | "ImageNames" >> beam.Map(lambda im: _name(im.uri)),
            equal_to(scored),
            label="AllGoodImagesPass",
        )
        assert_that(
            out[ERRORS] | "ErrorNames" >> beam.Map(lambda e: (_name(e.uri), e.stage)),
            equal_to(list(errors.items())),
            label="EveryBadFileIsAnError",
        )


def test_read_images_refuses_big_files_unread(bad_corpus) -> None:
    matched = [files.MatchedFile(bad_corpus.uri("photo.jpg"), 10_000)]
    with BeamTestPipeline(runner=RUNNER) as p:
        out = p | beam.Create(matched) | ReadImages(max_bytes=1_000)
        assert_that(out["images"], equal_to([]), label="NoImages")
        assert_that(
            out[ERRORS] | beam.Map(lambda e: ("over the limit" in e.reason, e.stage)),
            equal_to([(True, "read")]),
            label="TooBig",
        )


def _probabilities_close(expected: dict[str, float]):
    def check(actual: list[tuple[str, float, str, int]]) -> None:
        got = {uri: p for uri, p, _, _ in actual}
        if got.keys() != expected.keys():
            raise BeamAssertException(f"scored {sorted(got)}, expected {sorted(expected)}")
        for uri, p in expected.items():
            if abs(got[uri] - p) > 1e-4:
                raise BeamAssertException(f"{uri}: probability {got[uri]} != {p}")
        if {v for *_, v in actual} != {1}:
            raise BeamAssertException(f"rows not stamped with version 1: {actual}")

    return check


def test_score_images_matches_the_model_and_isolates_bad_bytes(
    tiny_model, loaded_tiny_model, small_set: Path
) -> None:
    paths = sorted(small_set.rglob("*.png"))[::3]
    images = [stages.check_image(str(p), p.read_bytes()) for p in paths]
    expected = {
        im.uri: pred.probability
        for im, pred in zip(
            images, loaded_tiny_model.predict([im.data for im in images]), strict=True
        )
    }
    # Passes the header check's shape but not TensorFlow's decoder.
    bad = stages.CheckedImage("mem://bad.png", b"\x89PNG\r\n\x1a\nnot really", 1, 1, "PNG")
    identity = resolve_model(tiny_model.root_uri).identity
    handler = HistoModelHandler(identity.uri, identity=identity, min_batch_size=3, max_batch_size=4)
    with BeamTestPipeline(runner=RUNNER) as p:
        out = p | beam.Create([*images, bad]) | ScoreImages(handler)
        assert_that(
            out["results"]
            | "Scores" >> beam.Map(lambda r: (r.uri, r.probability, r.label, r.model_version)),
            _probabilities_close(expected),
            label="SameAsTheModel",
        )
        assert_that(
            out[ERRORS] | "Refused" >> beam.Map(lambda e: (e.uri, e.stage)),
            equal_to([("mem://bad.png", "score")]),
            label="BadBytesIsolated",
        )
        assert_that(out[EXPLAINED], equal_to([]), label="NoHeatmapsWithoutExplain")


def test_score_images_with_explain_yields_heatmaps(tiny_model, small_set: Path) -> None:
    paths = sorted(small_set.rglob("*.png"))[:2]
    images = [stages.check_image(str(p), p.read_bytes()) for p in paths]
    identity = resolve_model(tiny_model.version_uri).identity
    handler = HistoModelHandler(identity.uri, identity=identity, signature="explain")
    with BeamTestPipeline(runner=RUNNER) as p:
        out = p | beam.Create(images) | ScoreImages(handler)
        assert_that(
            out[EXPLAINED]
            | beam.Map(
                lambda pair: (
                    _name(pair[0].uri),
                    pair[1].heatmap.shape,
                    bool(0.0 <= pair[1].heatmap.min() <= pair[1].heatmap.max() <= 1.0),
                )
            ),
            equal_to([(_name(str(p)), (48, 48), True) for p in paths]),
        )


@pytest.fixture
def two_versions(tmp_path: Path, tiny_model) -> Path:
    """A model root holding the tiny model as versions 1 and 2."""
    root = tmp_path / "models" / "histo-cnn"
    shutil.copytree(tiny_model.version_uri, root / "1")
    shutil.copytree(tiny_model.version_uri, root / "2")
    meta = json.loads((root / "2" / "metadata.json").read_text())
    meta["version"] = 2
    (root / "2" / "metadata.json").write_text(json.dumps(meta))
    return root


def test_handler_picks_latest_version_or_the_one_named(two_versions: Path) -> None:
    latest = resolve_model(str(two_versions)).identity
    assert (latest.version, latest.uri) == (2, f"{two_versions}/2")
    named = resolve_model(f"{two_versions}/1").identity
    assert (named.version, named.uri) == (1, f"{two_versions}/1")
    model = HistoModelHandler(named.uri, identity=named).load_model()
    assert model.version == 1
    # The job's steps (patches, slide tiles, Grad-CAM) share one load per version.
    explain = HistoModelHandler(named.uri, identity=named, signature="explain")
    assert explain.load_model() is model
    assert HistoModelHandler(latest.uri, identity=latest).load_model().version == 2


def test_stream_steps_share_one_refreshing_model(two_versions: Path) -> None:
    from beam_jobs.model_handler import current_model
    from beam_jobs.slides import TileModelHandler
    from beam_jobs.stream import RefreshingModelHandler

    def handler() -> RefreshingModelHandler:
        identity = resolve_model(str(two_versions)).identity
        return RefreshingModelHandler(
            str(two_versions), identity=identity, poll_s=60, refresh=True, max_batch_duration_s=1
        )

    patches = handler().load_model()
    tiles = TileModelHandler(handler()).load_model()
    # One load per process: the patch and tile steps switch versions together.
    assert tiles.model is patches
    assert current_model(tiles.model).version == 2
    pinned = HistoModelHandler(
        f"{two_versions}/1", identity=resolve_model(f"{two_versions}/1").identity
    )
    assert current_model(pinned.load_model()).version == 1


def test_a_model_outlives_the_steps_that_held_it() -> None:
    """A runner that recreates its DoFns per bundle must not reload the model per bundle."""
    import gc

    from beam_jobs import model_handler

    class Loaded:
        pass

    loads: list[str] = []

    def load(key: str) -> Loaded:
        loads.append(key)
        return Loaded()

    held = model_handler.shared("first", lambda: load("first"))
    assert model_handler.shared("first", lambda: load("first")) is held
    del held  # the bundle's DoFn is torn down; nothing else holds the model
    gc.collect()
    model_handler.shared("first", lambda: load("first"))
    assert loads == ["first"]
    # Only the last few are kept: a process that went through many models lets old ones go.
    for key in ("second", "third", "fourth"):
        model_handler.shared(key, lambda key=key: load(key))
    gc.collect()
    model_handler.shared("first", lambda: load("first"))
    assert loads == ["first", "second", "third", "fourth", "first"]


def test_handler_batching_and_sharing_settings() -> None:
    identity = ModelIdentity("m", 1, "/m/1")
    handler = HistoModelHandler("/m/1", identity=identity)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 32, "max_batch_size": 256}
    assert handler.share_model_across_processes() is False
    assert HistoModelHandler(
        "/m/1", identity=identity, large_model=True
    ).share_model_across_processes()
    with pytest.raises(ValueError, match="batch sizes"):
        HistoModelHandler("/m/1", identity=identity, min_batch_size=8, max_batch_size=4)


class _InvalidArgument(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT


class _FakeServingClient:
    """Stands in for model_export.serving_client.ServingClient, backed by the real model."""

    model = None

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.signatures: list[str] = []

    def run(self, signature: str, images: list[bytes]) -> dict:
        import tensorflow as tf

        self.signatures.append(signature)
        try:
            return self.model.run(signature, images)
        except tf.errors.InvalidArgumentError as exc:
            raise _InvalidArgument(str(exc)) from exc


def test_serving_handler_scores_through_the_client(loaded_tiny_model, small_set: Path) -> None:
    _FakeServingClient.model = loaded_tiny_model
    identity = ModelIdentity("histo-cnn", 1, "host:8500")
    handler = ServingModelHandler("host:8500", identity=identity, client_factory=_FakeServingClient)
    client = handler.load_model()
    assert client.endpoint == "host:8500"
    paths = sorted(small_set.rglob("*.png"))[:3]
    images = [stages.check_image(str(p), p.read_bytes()) for p in paths]
    bad = stages.CheckedImage("mem://bad.png", b"\x89PNG\r\n\x1a\nxx", 1, 1, "PNG")
    results = list(handler.run_inference([images[0], bad, *images[1:]], client))
    assert [r.example.uri for r in results] == [
        images[0].uri,
        bad.uri,
        *[i.uri for i in images[1:]],
    ]
    assert results[1].inference.prediction is None
    assert "Invalid PNG" in results[1].inference.error
    expected = loaded_tiny_model.predict([i.data for i in images])
    got = [r.inference.prediction.probability for r in results if r.inference.prediction]
    np.testing.assert_allclose(got, [e.probability for e in expected], atol=1e-5)
    assert set(client.signatures) == {"serving_default"}
    assert results[0].model_id == "histo-cnn/1"
