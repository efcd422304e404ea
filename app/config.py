"""The app's settings: where the model, the sample images and the runs live.

Parsed once at the edge from environment variables (``HISTO_MODEL_URI``,
``HISTO_SAMPLES_URI``, ``HISTO_RESULTS_URI``) and optional command-line flags
(``streamlit run app/streamlit_app.py -- --model-uri ...``) into a validated
:class:`AppConfig`; the sidebar lets a user change them for their session.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from histo_common import storage

DEFAULT_MODEL_URI = "buckets/models/histo-cnn"
DEFAULT_SAMPLES_URI = "buckets/training-data/sample"
DEFAULT_RESULTS_URI = "buckets/results"

ENV_MODEL_URI = "HISTO_MODEL_URI"
ENV_SAMPLES_URI = "HISTO_SAMPLES_URI"
ENV_RESULTS_URI = "HISTO_RESULTS_URI"


class ConfigError(ValueError):
    """A setting that cannot be used; ``str(err)`` names it and says why."""


def validate_uri(uri: str, *, what: str) -> str:
    """Return ``uri`` stripped of spaces and a trailing slash, or raise ConfigError.

    Args:
        uri: a local path, ``file://`` URI or ``gs://bucket/prefix``.
        what: the setting's name, for the message.

    Raises:
        ConfigError: when the URI is empty or malformed.
    """
    clean = uri.strip()
    if not clean:
        raise ConfigError(f"{what} is empty: give a local folder or a gs://bucket/prefix URI")
    if clean not in ("/", "gs://"):
        clean = clean.rstrip("/")
    try:
        if storage.is_gcs(clean):
            storage.split_gcs(clean)
        else:
            storage.local_path(clean)
    except storage.InvalidObjectName as exc:
        raise ConfigError(f"{what} {uri!r} is not a valid URI: {exc}") from exc
    return clean


@dataclass(frozen=True)
class AppConfig:
    """Where the app reads from; every field is a local path or a ``gs://`` URI."""

    model_uri: str = DEFAULT_MODEL_URI  # a model root (latest version) or one version
    samples_uri: str = DEFAULT_SAMPLES_URI  # folder of sample images (class subfolders)
    results_uri: str = DEFAULT_RESULTS_URI  # folder holding scoring/evaluation runs

    def __post_init__(self) -> None:
        for name, what in (
            ("model_uri", "model URI"),
            ("samples_uri", "samples URI"),
            ("results_uri", "results URI"),
        ):
            object.__setattr__(self, name, validate_uri(getattr(self, name), what=what))


def config_from_env(environ: Mapping[str, str], argv: Sequence[str] = ()) -> AppConfig:
    """Build the config from environment variables, then command-line flags over them.

    Args:
        environ: usually ``os.environ``.
        argv: arguments after ``--`` on the ``streamlit run`` line (unknown ones ignored).

    Raises:
        ConfigError: when a setting is empty or malformed.
    """
    parser = argparse.ArgumentParser(
        prog="streamlit run app/streamlit_app.py --", add_help=False, allow_abbrev=False
    )
    parser.add_argument("--model-uri", default=environ.get(ENV_MODEL_URI) or DEFAULT_MODEL_URI)
    parser.add_argument(
        "--samples-uri", default=environ.get(ENV_SAMPLES_URI) or DEFAULT_SAMPLES_URI
    )
    parser.add_argument(
        "--results-uri", default=environ.get(ENV_RESULTS_URI) or DEFAULT_RESULTS_URI
    )
    args, _unknown = parser.parse_known_args(list(argv))
    return AppConfig(
        model_uri=args.model_uri, samples_uri=args.samples_uri, results_uri=args.results_uri
    )
