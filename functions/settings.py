"""The function's configuration, read only from the environment and validated at start.

Terraform (``infra/function.tf``) sets ``MODEL_URI``, ``MAX_IMAGE_PIXELS`` and
``LOG_LEVEL``; the local watcher sets the same names plus ``LOCAL_BUCKET_ROOT``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from histo_common import storage
from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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
    """

    model_uri: str
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_image_bytes: int = DEFAULT_MAX_BYTES
    log_level: str = "INFO"
    local_bucket_root: str | None = None

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
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number > 0, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{name} must be a whole number > 0, got {raw!r}")
    return value
