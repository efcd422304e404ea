"""Dataflow readiness, checked offline: build both jobs for DataflowRunner without submitting.

``python -m beam_jobs.dataflow_check`` (``make dataflow-check``, run in
``.venv-dataflow`` where ``apache-beam[gcp]`` lives) builds the batch scoring
job and the streaming job with ``--runner DataflowRunner --dry_run`` for
``gs://`` inputs and outputs, then checks each job description: the runner,
the streaming flag, the steps (``RunInference`` among them) and the staged
worker setup (``--setup_file``, ``--requirements_file``). Any ``gs://`` call
made while building goes to an in-process storage emulator, so no account or
network is needed. Exits 1 naming what is missing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_export.contract import METADATA_FILE, ModelMetadata
from model_export.identity import ModelIdentity

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT = "histoscreen-check"
BUCKET = "histoscreen-dataflow-check"
MODEL_ROOT = f"gs://{BUCKET}/models/histo-cnn"
DATAFLOW_ARGS = (
    "--runner=DataflowRunner",
    "--no_auth",
    "--dry_run=True",
    f"--project={PROJECT}",
    "--region=europe-west4",
    f"--temp_location=gs://{BUCKET}/tmp",
    f"--setup_file={REPO_ROOT / 'setup.py'}",
    f"--requirements_file={REPO_ROOT / 'beam_jobs' / 'requirements-worker.txt'}",
    "--requirements_cache=skip",
)
# The launchers resolve the model's version from its metadata through model_export,
# which imports TensorFlow; this venv has none, so the check names the version.
IDENTITY = ModelIdentity(name="histo-cnn", version=1, uri=f"{MODEL_ROOT}/1")
# The version's metadata, as training writes it: with a training scale, so the
# batch job is built with its slide path (tiling large inputs) as on a real model.
METADATA = ModelMetadata(
    model_name=IDENTITY.name,
    version=IDENTITY.version,
    class_names=["benign", "malignant"],
    positive_class="malignant",
    threshold=0.5,
    threshold_method="youden",
    image_size=48,
    architecture="check",
    native_size=[50, 50],
)
STAGED = {
    "workflow.tar.gz": "the project (--setup_file)",
    "requirements.txt": "the worker requirements (--requirements_file)",
}
BATCH_STEPS = (
    "MatchInputs",
    "WriteManifest",
    "DeleteOldImages",
    "AfterOldImagesDeleted",
    "ReadImages",
    "RunInference",
    "ScoreSlides",
    "AssembleSlides",
    "WriteTiles",
    "WriteResults",
    "WriteErrors",
    "Reconcile",
)
STREAM_STEPS = (
    "ReadNotifications",
    "DropDuplicates",
    "FixedWindows",
    "ReadImages",
    "RunInference",
    "ScoreSlides",
    "AssembleSlides",
    "WriteTiles",
    "WriteResults",
    "WriteErrors",
)


@dataclass
class JobCheck:
    """What one dry-run job description says, and what is wrong with it."""

    name: str
    runner: str
    streaming: bool
    steps: list[str]
    staged: list[str]
    problems: list[str] = field(default_factory=list)


def staged_artifacts(result: Any) -> list[str]:
    """The names of the files the job would stage for its workers (sdist, requirements)."""
    from apache_beam.portability.api import beam_runner_api_pb2

    names = []
    environments = result.job.proto_pipeline.components.environments
    for environment in environments.values():
        for dependency in environment.dependencies:
            payload = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                dependency.role_payload
            )
            names.append(payload.staged_name)
    return names


def describe(name: str, result: Any, options: PipelineOptions) -> JobCheck:
    """Read a dry run's job: runner, streaming flag, steps and staged files."""
    from apache_beam.options.pipeline_options import StandardOptions

    job = result.job
    steps = [t.unique_name for t in job.proto_pipeline.components.transforms.values()]
    standard = options.view_as(StandardOptions)
    return JobCheck(
        name, str(standard.runner), bool(standard.streaming), steps, staged_artifacts(result)
    )


def check(job: JobCheck, *, streaming: bool, steps: Sequence[str]) -> JobCheck:
    """Fill ``job.problems``: runner, streaming flag, required steps, staged worker setup."""
    if job.runner != "DataflowRunner":
        job.problems.append(f"runner is {job.runner}, not DataflowRunner")
    if job.streaming != streaming:
        job.problems.append(f"streaming is {job.streaming}, expected {streaming}")
    for step in steps:
        if not any(step in name.split("/") for name in job.steps):
            job.problems.append(f"no {step} step")
    for staged, what in STAGED.items():
        if staged not in job.staged:
            job.problems.append(f"{what} is not staged for the workers ({staged})")
    return job


def _seed_storage() -> None:
    """Create the bucket the jobs name and the model version's metadata they read."""
    from histo_common import storage

    storage._gcs_client().create_bucket(BUCKET)
    storage.write_text(storage.join(IDENTITY.uri, METADATA_FILE), METADATA.to_json())


def build_batch() -> JobCheck:
    """Dry-run the batch scoring job on gs:// paths."""
    import apache_beam as beam

    from beam_jobs import score

    config, pipeline_args = score.parse_args(
        [
            "--input",
            f"gs://{BUCKET}/images/**.png",
            "--model",
            f"{MODEL_ROOT}/1",
            "--output",
            f"gs://{BUCKET}/run",
            *DATAFLOW_ARGS,
        ]
    )
    # The launcher's input check lists gs://; the plan it would make is named here,
    # as for a rerun with --overwrite (the old run's images deleted in the pipeline).
    plan = score.ScoringPlan(
        patterns=list(config.inputs),
        identity=IDENTITY,
        base=f"gs://{BUCKET}/images",
        clear_old_images=True,
    )
    options = score.pipeline_options(pipeline_args)
    pipeline = beam.Pipeline(options=options)
    score.add_scoring(pipeline, config, plan)
    return describe("batch", pipeline.run(), options)


def build_stream() -> JobCheck:
    """Dry-run the streaming job reading a Pub/Sub subscription."""
    from beam_jobs import stream

    subscription = f"projects/{PROJECT}/subscriptions/histoscreen-stream"
    config, pipeline_args = stream.parse_args(
        [
            "--subscription",
            subscription,
            "--model",
            f"{MODEL_ROOT}/1",
            "--output",
            f"gs://{BUCKET}/stream",
            *DATAFLOW_ARGS,
        ]
    )
    pipeline = stream.build_pipeline(config, pipeline_args, subscription, identity=IDENTITY)
    return describe("stream", pipeline.run(), pipeline.options)


def main(argv: Sequence[str] | None = None) -> int:
    """Build and check both jobs; print one line per job; 1 when any check fails."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from gcp_storage_emulator.server import create_server

    from beam_jobs.pubsub_emulator import free_port
    from histo_common import storage

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    storage.reset_clients()
    try:
        _seed_storage()
        jobs = [
            check(build_batch(), streaming=False, steps=BATCH_STEPS),
            check(build_stream(), streaming=True, steps=STREAM_STEPS),
        ]
    finally:
        server.stop()
    failed = False
    for job in jobs:
        status = "ok" if not job.problems else "FAILED: " + "; ".join(job.problems)
        sys.stdout.write(
            f"dataflow-check {job.name}: {job.runner}, streaming={job.streaming}, "
            f"{len(job.steps)} steps: {status}\n"
        )
        failed = failed or bool(job.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
