"""Which model version a URI or a served model means: resolution without TensorFlow.

A model root (``<models>/<name>``) means its latest complete version (one with
``metadata.json``); a version URI (``<models>/<name>/<integer>``) means itself.
:func:`resolve_model` turns either into a :class:`ModelIdentity` with the version's
metadata, checking that the folder and the metadata agree. The loader
(:mod:`model_export.loader`) loads what this resolves, and the Beam jobs pin a
version at launch with it; neither needs TensorFlow for that, so this module
imports only the contract and the storage layer (a test checks ``sys.modules``).

For a model served by TensorFlow Serving, :func:`served_identity` asks the
server which version of a named model is available (``GetModelStatus``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from histo_common import storage
from model_export import contract

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model URI that does not hold a usable model in the contract."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model scored a row: name, integer version and the version's URI.

    For a served model the URI is the server's ``host:port``.
    """

    name: str
    version: int
    uri: str


@dataclass(frozen=True)
class ResolvedModel:
    """A model version pinned at launch: who it is and, from a URI, its metadata.

    A model known only as TF Serving serves it has no metadata at hand.
    """

    identity: ModelIdentity
    metadata: contract.ModelMetadata | None = None

    @property
    def positive_class(self) -> str:
        """The class the model's probability is of (the contract's default without metadata)."""
        return self.metadata.positive_class if self.metadata else contract.DEFAULT_POSITIVE_CLASS


def is_version_folder(name: str) -> bool:
    """True for an integer version folder name."""
    return re.fullmatch(r"\d+", name) is not None


def list_versions(model_root: str) -> list[int]:
    """Integer versions under ``<models>/<name>`` that have their metadata (complete ones)."""
    versions = set()
    prefix = model_root.rstrip("/") + "/"
    for uri in storage.list_uris(model_root):
        rel = uri[len(prefix) :] if uri.startswith(prefix) else ""
        match = re.fullmatch(r"(\d+)/" + re.escape(contract.METADATA_FILE), rel)
        if match:
            versions.add(int(match.group(1)))
    return sorted(versions)


def resolve_version(uri: str) -> tuple[str, int]:
    """Return ``(version_uri, version)`` for a model root or a version URI.

    A root resolves to its newest complete version not marked ``NOT_BLESSED``; a
    version URI resolves to itself, marked or not (with a warning when marked).

    Raises:
        ModelLoadError: when nothing loadable is there.
    """
    clean = uri.rstrip("/")
    last = storage.basename(clean)
    try:
        if is_version_folder(last):
            if not storage.exists(storage.join(clean, contract.METADATA_FILE)):
                raise ModelLoadError(
                    f"{clean} has no {contract.METADATA_FILE}: it is not a complete model "
                    "version (an export still running, or not a model folder)"
                )
            if _not_blessed(clean):
                logger.warning(
                    "Loading %s although it is marked %s (see %s)",
                    clean,
                    contract.NOT_BLESSED,
                    storage.join(clean, contract.NOT_BLESSED),
                )
            return clean, int(last)
        versions = list_versions(clean)
        if not versions:
            raise ModelLoadError(
                f"no model versions found under {clean}: expected <root>/<integer version>/ "
                f"with {contract.METADATA_FILE}; train one with `python -m training --output "
                "...` or pass the URI of a version"
            )
        for version in reversed(versions):
            if not _not_blessed(f"{clean}/{version}"):
                return f"{clean}/{version}", version
            logger.info("Skipping %s/%d: marked %s", clean, version, contract.NOT_BLESSED)
    except storage.StorageError as exc:
        raise ModelLoadError(f"cannot read model at {clean}: {exc}") from exc
    raise ModelLoadError(
        f"every version under {clean} is marked {contract.NOT_BLESSED}: pass the URI of a "
        "version to load one anyway, or train or bless a better one"
    )


def _not_blessed(version_uri: str) -> bool:
    """True when the version folder holds a ``NOT_BLESSED`` verdict."""
    return storage.exists(storage.join(version_uri, contract.NOT_BLESSED))


def read_metadata(version_uri: str) -> contract.ModelMetadata:
    """Read and validate ``metadata.json`` of a model version.

    Raises:
        ModelLoadError: when it cannot be read or does not follow the contract.
    """
    meta_uri = storage.join(version_uri, contract.METADATA_FILE)
    try:
        text = storage.read_text(meta_uri)
    except storage.StorageError as exc:
        raise ModelLoadError(f"cannot read {meta_uri}: {exc}") from exc
    try:
        return contract.ModelMetadata.from_json(text, source=meta_uri)
    except contract.ContractError as exc:
        raise ModelLoadError(str(exc)) from exc


def resolve_model(uri: str) -> ResolvedModel:
    """Pin the version ``uri`` means and read its metadata (no TensorFlow, no weights).

    Local version URIs are made absolute, so rows and summaries mean them from anywhere.

    Raises:
        ModelLoadError: when no usable version is there, or its metadata names
            another version than its folder.
    """
    version_uri, version = resolve_version(uri)
    metadata = read_metadata(version_uri)
    if metadata.version != version:
        raise ModelLoadError(
            f"{version_uri}/{contract.METADATA_FILE} says version {metadata.version}, "
            f"but the folder is version {version}"
        )
    if "://" not in version_uri:
        version_uri = os.path.abspath(version_uri)
    return ResolvedModel(ModelIdentity(metadata.model_name, version, version_uri), metadata)


def resolve(
    model: str | None,
    endpoint: str | None = None,
    serving_model_name: str = contract.DEFAULT_MODEL_NAME,
) -> ResolvedModel:
    """Pin the model a job scores with: ``model``'s version, else what ``endpoint`` serves.

    With ``model`` (also when scoring through ``endpoint``: the rows then name the
    version from its metadata, and requests ask the server for that version), see
    :func:`resolve_model`; with only ``endpoint``, :func:`served_identity` under
    ``serving_model_name``.

    Raises:
        ModelLoadError: when neither is given or neither holds a usable version.
    """
    if model:
        return resolve_model(model)
    if endpoint:
        return ResolvedModel(served_identity(endpoint, serving_model_name))
    raise ModelLoadError("give a model URI (--model) or a TF Serving endpoint (--model-endpoint)")


def served_identity(endpoint: str, model_name: str = contract.DEFAULT_MODEL_NAME) -> ModelIdentity:
    """The version TensorFlow Serving at ``endpoint`` serves under ``model_name``.

    Asks the server's ``ModelService.GetModelStatus`` and takes the highest
    version whose state is AVAILABLE.

    Raises:
        ModelLoadError: when the server cannot be asked, or serves no available
            version of ``model_name``; the message names the endpoint and the name.
    """
    from model_export.serving_client import ServingClient, ServingError

    client = ServingClient(endpoint, model_name)
    try:
        version = client.available_version()
    except ServingError as exc:
        raise ModelLoadError(
            f"cannot ask TF Serving at {endpoint} for model {model_name!r}: {exc}; check "
            "--model-endpoint, and --serving-model-name against the server's models.config"
        ) from exc
    finally:
        client.close()
    return ModelIdentity(model_name, version, endpoint)
