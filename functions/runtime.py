"""Per-instance state: the validated settings and the model, each made once.

A function instance handles many events; the model (TensorFlow import plus a
SavedModel load, seconds) is loaded on the first event that needs it and kept for
the life of the instance. A new model version under the same root is picked up
by new instances (a redeploy, or instances recycled by the platform).
"""

from __future__ import annotations

import logging
import os
import threading

from functions.logs import configure_logging
from functions.settings import FunctionSettings
from model_export.loader import LoadedModel, load_model

logger = logging.getLogger(__name__)

_settings: FunctionSettings | None = None
_models: dict[str, LoadedModel] = {}
_model_lock = threading.Lock()


def start() -> FunctionSettings:
    """Read and validate the environment, set up JSON logging; called when the module loads.

    Raises:
        functions.settings.ConfigError: naming the variable that is wrong.
    """
    global _settings
    _settings = FunctionSettings.from_env(os.environ)
    configure_logging(_settings.log_level)
    return _settings


def settings() -> FunctionSettings:
    """The settings read at start (read now if ``start`` was not called)."""
    return _settings if _settings is not None else start()


def model() -> LoadedModel:
    """The model named by ``MODEL_URI``, loaded on first use and cached."""
    uri = settings().model_uri
    cached = _models.get(uri)
    if cached is not None:
        return cached
    with _model_lock:  # gunicorn serves requests on threads: load once
        if uri not in _models:
            logger.info("loading model from %s", uri, extra={"model_uri": uri})
            _models[uri] = load_model(uri)
        return _models[uri]


def reset(*, keep_models: bool = False) -> None:
    """Forget the settings, and the models unless ``keep_models`` (tests that change env)."""
    global _settings
    _settings = None
    if not keep_models:
        _models.clear()
