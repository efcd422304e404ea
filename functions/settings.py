"""The function's configuration, read only from the environment and validated at start.

Terraform (``infra/function.tf``) sets ``MODEL_URI``, ``MAX_IMAGE_PIXELS`` and
``LOG_LEVEL``; the local watcher sets the same names plus ``LOCAL_BUCKET_ROOT``.

Slides and large fields of view are tiled within the function's timeout
(``FUNCTION_TIMEOUT_SECONDS``, the same number as Terraform's
``function_timeout_seconds``). How many tiles fit is the timeout times a measured
rate (``SLIDE_TILES_PER_SECOND``: tiles read and scored per second on the
deployed instance, e.g. from ``bench/bench_tiles.py``) times
:data:`TILE_TIME_SHARE`; a rate rather than a fixed tile count, so the limit
follows the timeout when Terraform changes it, and the one figure to measure is a
property of the model and the instance size. Larger slides get an
``.error.json`` with the Beam command that scores them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from histo_common import storage
from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

_N = TypeVar("_N", int, float)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_TIMEOUT_SECONDS = 120  # infra/variables.tf function_timeout_seconds
# Tiles read and scored per second on one function instance. bench/bench_tiles.py
# measured 440/s for the untrained 64 px custom CNN on 2 shared cores; a trained,
# larger model on 1 vCPU is slower, so the default is well under that.
DEFAULT_SLIDE_TILES_PER_SECOND = 100.0
# The share of the timeout spent reading and scoring tiles; the rest is for the
# download, the tissue mask, the heatmap, the Grad-CAM of the top tile and writing.
TILE_TIME_SHARE = 0.5
# Slides are downloaded to the instance's in-memory /tmp: keep them well under its memory.
DEFAULT_MAX_SLIDE_BYTES = 1024 * 1024 * 1024


class ConfigError(ValueError):
    """An environment variable that is missing or malformed; the message says which."""


@dataclass(frozen=True)
class FunctionSettings:
    """Everything the function reads from its environment.

    Attributes:
        model_uri: a model root (``<models>/<name>``: its latest version is used) or
            one version (``<models>/<name>/<version>``), local or ``gs://``.
        max_image_pixels: refuse images with more pixels than this.
        max_image_bytes: refuse files larger than this many bytes.
        log_level: the root logging level.
        local_bucket_root: when set, bucket ``b`` of an event is the local folder
            ``<local_bucket_root>/b`` (the embedded default); unset means ``gs://b``.
        timeout_s: the function's timeout in seconds (what Terraform deploys it with).
        slide_tiles_per_second: tiles one instance reads and scores per second.
        max_slide_bytes: slides larger than this are not downloaded (Beam scores them).
        slide_output_uri: where the Beam command suggested for a slide too large
            for the function writes (``<slide_output_uri>/<object name>``); unset:
            ``<slide URI>.scoring`` beside the slide.
    """

    model_uri: str
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_image_bytes: int = DEFAULT_MAX_BYTES
    log_level: str = "INFO"
    local_bucket_root: str | None = None
    timeout_s: int = DEFAULT_TIMEOUT_SECONDS
    slide_tiles_per_second: float = DEFAULT_SLIDE_TILES_PER_SECOND
    max_slide_bytes: int = DEFAULT_MAX_SLIDE_BYTES
    slide_output_uri: str | None = None

    @property
    def max_slide_tiles(self) -> int:
        """The most tissue tiles one event may score: timeout x rate x the tile share."""
        return max(1, int(self.timeout_s * self.slide_tiles_per_second * TILE_TIME_SHARE))

    def __post_init__(self) -> None:
        if not self.model_uri.strip():
            raise ConfigError(
                "MODEL_URI is not set: give the model root (e.g. gs://<prefix>-models/histo-cnn) "
                "or one version folder"
            )
        if self.max_image_pixels <= 0:
            raise ConfigError(f"MAX_IMAGE_PIXELS must be > 0, got {self.max_image_pixels}")
        if self.max_image_bytes <= 0:
            raise ConfigError(f"MAX_IMAGE_BYTES must be > 0, got {self.max_image_bytes}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        root = self.local_bucket_root
        if root is not None and (storage.is_gcs(root) or not os.path.isabs(root)):
            raise ConfigError(f"LOCAL_BUCKET_ROOT must be an absolute local folder, got {root!r}")
        if self.timeout_s <= 0:
            raise ConfigError(f"FUNCTION_TIMEOUT_SECONDS must be > 0, got {self.timeout_s}")
        if not self.slide_tiles_per_second > 0:
            raise ConfigError(
                f"SLIDE_TILES_PER_SECOND must be > 0, got {self.slide_tiles_per_second}"
            )
        if self.max_slide_bytes <= 0:
            raise ConfigError(f"MAX_SLIDE_BYTES must be > 0, got {self.max_slide_bytes}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FunctionSettings:
        """Parse settings from an environment mapping (``os.environ``).

        Raises:
            ConfigError: naming the variable and what is wrong with it.
        """
        return cls(
            model_uri=env.get("MODEL_URI", ""),
            max_image_pixels=_positive_int(env, "MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS),
            max_image_bytes=_positive_int(env, "MAX_IMAGE_BYTES", DEFAULT_MAX_BYTES),
            log_level=env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO",
            local_bucket_root=env.get("LOCAL_BUCKET_ROOT") or None,
            timeout_s=_positive_int(env, "FUNCTION_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
            slide_tiles_per_second=_positive_float(
                env, "SLIDE_TILES_PER_SECOND", DEFAULT_SLIDE_TILES_PER_SECOND
            ),
            max_slide_bytes=_positive_int(env, "MAX_SLIDE_BYTES", DEFAULT_MAX_SLIDE_BYTES),
            slide_output_uri=env.get("SLIDE_OUTPUT_URI", "").strip().rstrip("/") or None,
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _positive(env, name, default, int, "a whole number")


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    return _positive(env, name, default, float, "a number")


def _positive(
    env: Mapping[str, str], name: str, default: _N, parse: Callable[[str], _N], what: str
) -> _N:
    """``env[name]`` parsed and checked to be finite and > 0; ``default`` when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw.replace("_", ""))
    except ValueError as exc:
        raise ConfigError(f"{name} must be {what} > 0, got {raw!r}") from exc
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be {what} > 0, got {raw!r}")
    return value
