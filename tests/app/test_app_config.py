"""The app's settings: environment variables and flags parsed into a validated config."""

from __future__ import annotations

import re

import pytest

from app.config import (
    DEFAULT_MODEL_URI,
    DEFAULT_RESULTS_URI,
    DEFAULT_SAMPLES_URI,
    AppConfig,
    ConfigError,
    config_from_env,
)


def test_defaults_are_the_local_buckets() -> None:
    config = config_from_env({})

    assert config == AppConfig(DEFAULT_MODEL_URI, DEFAULT_SAMPLES_URI, DEFAULT_RESULTS_URI)
    assert config.model_uri == "buckets/models/histo-cnn"


def test_environment_then_flags_override_the_defaults() -> None:
    environ = {
        "HISTO_MODEL_URI": "gs://acme-models/histo-cnn/",
        "HISTO_SAMPLES_URI": "gs://acme-training-data/sample",
        "HISTO_RESULTS_URI": "",  # empty means: use the default
    }

    config = config_from_env(environ, ["--results-uri", "/data/runs", "--unrelated", "-q"])

    assert config.model_uri == "gs://acme-models/histo-cnn"  # trailing slash dropped
    assert config.samples_uri == "gs://acme-training-data/sample"
    assert config.results_uri == "/data/runs"


def test_flag_prefixes_are_not_taken_for_settings() -> None:
    assert config_from_env({}, ["--model", "x"]).model_uri == DEFAULT_MODEL_URI


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model_uri", "   ", "model URI is empty"),
        ("results_uri", "gs://Bad Bucket/x", "results URI 'gs://Bad Bucket/x' is not a valid URI"),
        ("samples_uri", "gs://bucket/../etc", "samples URI"),
        ("samples_uri", "/data/\x00x", "samples URI"),
    ],
)
def test_invalid_settings_name_the_setting(field: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        AppConfig(**{field: value})
