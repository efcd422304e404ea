"""``RunInference`` model handlers for the SavedModel contract.

Beam's stock ``TFModelHandlerTensor`` cannot load our SavedModel under Keras 3,
so :class:`HistoModelHandler` loads it with ``model_export.loader.load_model``
(the one loader every unit uses) and calls its signature on raw image bytes.
:class:`ServingModelHandler` sends the same bytes to TensorFlow Serving over gRPC
instead. Both score with :func:`model_export.scoring.score_batch`, the one
scoring function (and error policy) of every unit, and return one
``PredictionResult`` per input whose ``inference`` is a
:class:`~model_export.scoring.ScoreOutcome`: an image the model refuses becomes
an outcome with a reason; a failing model or server fails the bundle, which the
runner retries.

Model sharing: RunInference keeps one loaded model per worker process in a
``shared.Shared`` handle, so every DoFn thread of that process uses the same
model; and the job's RunInference steps (patches, slide tiles, Grad-CAM of the
top images) share one load per process and version through
:func:`shared_model` instead of loading it once each. Sharing one copy across
processes (``large_model=True``) is off by default: the tiny CNN loads in a
second and the cross-process proxy would pickle every batch.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_jobs.config import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MIN_BATCH_SIZE
from beam_jobs.stages import CheckedImage
from model_export import contract
from model_export.identity import ModelIdentity
from model_export.scoring import score_batch

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "histoscreen"

# What this process has loaded, by key, while some step holds it; and the last
# few loads held here too. A runner may set up and tear down a step's DoFn per
# bundle (the local streaming runner does): with only weak references the model
# was dropped between bundles and loaded again for the next one (a second or
# more per bundle, which is what made the local stream take 14 s per file).
_LOADED: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()
_RECENT: OrderedDict[Hashable, Any] = OrderedDict()
KEEP_RECENT = 2  # a job uses one model (the stream: one per version); tests load many
_LOADING = threading.Lock()


def shared(key: Hashable, load: Callable[[], Any]) -> Any:
    """What ``load`` gives, made once per process and ``key`` and kept while in use.

    Every RunInference step keeps its own model; the job's steps score with the
    same model, so the second asks here and gets the first's (a SavedModel serves
    concurrent calls). A step loading while another does waits for that load
    rather than starting its own. The last :data:`KEEP_RECENT` keys asked for
    stay loaded even while no step holds them, so a runner that recreates its
    DoFns per bundle does not reload the model per bundle.
    """
    with _LOADING:
        value = _LOADED.get(key)
        if value is None:
            value = load()
            _LOADED[key] = value
        _RECENT[key] = value
        _RECENT.move_to_end(key)
        while len(_RECENT) > KEEP_RECENT:
            _RECENT.popitem(last=False)
        return value


def shared_model(model_uri: str) -> Any:
    """The model at ``model_uri``, loaded once per process while any step holds it."""
    from model_export.loader import load_model

    return shared(("model", model_uri), lambda: load_model(model_uri))


@runtime_checkable
class ModelSource(Protocol):
    """A model that follows new versions (the stream's): the one to score the next batch with."""

    def current(self) -> Any:
        """The loaded model to score the next batch with."""
        ...


def current_model(loaded: Any) -> Any:
    """The model to score the next batch with: a source's current version, else ``loaded``."""
    return loaded.current() if isinstance(loaded, ModelSource) else loaded


class _ContractHandler(ModelHandler[CheckedImage, PredictionResult, Any]):
    """What both handlers share: batching, byte counting, metrics namespace."""

    def __init__(
        self,
        *,
        identity: ModelIdentity,
        signature: str = contract.PREDICT_SIGNATURE,
        min_batch_size: int = DEFAULT_MIN_BATCH_SIZE,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        large_model: bool = False,
    ) -> None:
        if signature not in (contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE):
            raise ValueError(f"unknown signature {signature!r}")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"batch sizes must satisfy 1 <= min <= max, got {min_batch_size}, {max_batch_size}"
            )
        super().__init__(
            min_batch_size=min_batch_size, max_batch_size=max_batch_size, large_model=large_model
        )
        self.identity = identity
        self.signature = signature

    def get_num_bytes(self, batch: Sequence[CheckedImage]) -> int:
        """Bytes of encoded images in the batch (Beam's ``num_bytes`` metric)."""
        return sum(len(image.data) for image in batch)

    def get_metrics_namespace(self) -> str:
        """Namespace of RunInference's own metrics."""
        return METRICS_NAMESPACE

    def run_inference(
        self,
        batch: Sequence[CheckedImage],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Score one batch; images the model refuses get an outcome with the reason."""
        outcomes = score_batch(
            model, [image.data for image in batch], self.identity, signature=self.signature
        )
        model_id = f"{self.identity.name}/{self.identity.version}"
        return [
            PredictionResult(im, out, model_id) for im, out in zip(batch, outcomes, strict=True)
        ]


class HistoModelHandler(_ContractHandler):
    """Loads a model version in the contract and scores raw image bytes with it.

    Args:
        model_uri: a model root (the latest integer version is loaded) or a version URI.
            The scoring job pins the version it resolved at launch, so every worker
            loads the same one even if a newer version appears mid-job.
        identity: name, version and URI stamped on every row.
        signature: ``serving_default``, or ``explain`` to get Grad-CAM heatmaps too.
    """

    def __init__(self, model_uri: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_uri = model_uri

    def load_model(self) -> Any:  # a LoadedModel; stream.py overrides with a RefreshingModel
        """Load the model with the project's loader (local or ``gs://``), once per process."""
        return shared_model(self.model_uri)


class ServingModelHandler(_ContractHandler):
    """Scores through TensorFlow Serving's gRPC API (``--model-endpoint host:port``).

    Args:
        endpoint: ``host:port`` of the model server.
        identity: name and version stamped on rows (from the model's metadata when
            the job was given ``--model``, else asked of the server at launch);
            requests name this version, so rows never credit another one.
        client_factory: builds the client (anything with ``run(signature, images)``)
            from the endpoint; defaults to ``model_export.serving_client.ServingClient``.
    """

    def __init__(self, endpoint: str, client_factory: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.client_factory = client_factory

    def load_model(self) -> Any:  # a ServingClient, or what client_factory builds
        """Create the gRPC client (one per worker process, shared by its threads)."""
        logger.info("Scoring through TensorFlow Serving at %s", self.endpoint)
        if self.client_factory is not None:
            return self.client_factory(self.endpoint)
        from model_export.serving_client import ServingClient

        version = self.identity.version if self.identity.version > 0 else None
        return ServingClient(self.endpoint, self.identity.name, version=version)
