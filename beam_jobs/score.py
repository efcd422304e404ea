"""Bulk scoring job: score every matched image with a model version in the contract.

``python -m beam_jobs.score --input 'gs://bucket/slides/**.png' --model gs://models/histo-cnn
--output gs://results/run1/ [Beam pipeline options]`` (local paths work the same).

``MatchInputs`` (+ ``WriteManifest``) -> ``ScoreInputs`` (``ReadImages`` ->
``ScoreImages`` (RunInference); large inputs tiled by :mod:`beam_jobs.slides`) ->
``WriteResults`` and ``WriteErrors`` (+ Grad-CAM overlays), and ``Reconcile``: matched
URIs joined with result and error URIs, a lost input written as an error row, the
counts in ``<output>/summary.json``. The launcher only checks that each pattern
matches something and pins the model, so its time and memory do not grow with the
number of inputs. Runs on the
DirectRunner by default; pass ``--runner DataflowRunner --project P --region R
--temp_location gs://... --setup_file ./setup.py`` for Dataflow.
"""

from __future__ import annotations

import histo_common.tensorflow_env  # noqa: F401  (first: sets up TensorFlow before its import)

# isort: split
import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from beam_jobs import files, summary
from beam_jobs.config import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MIN_BATCH_SIZE,
    ConfigError,
    ScoreConfig,
    ScoringOptions,
)
from beam_jobs.matching import DeleteMatching, MatchInputs, WriteManifest, after
from beam_jobs.model_handler import METRICS_NAMESPACE, HistoModelHandler, ServingModelHandler
from beam_jobs.slides import TILES, SlideJob, WriteTiles, slide_job
from beam_jobs.transforms import (
    ERRORS,
    EXPLAINED,
    ExplainTop,
    ScoreInputs,
    WriteErrors,
    WriteOverlays,
    WriteResults,
)
from histo_common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from histo_common.layout import RunLayout, RunModel, Summary
from model_export import contract
from model_export import identity as model_identity
from model_export.identity import ModelIdentity, ModelLoadError
from model_export.slide_scoring import DEFAULT_TILE_BATCH

logger = logging.getLogger(__name__)

DEFAULT_RUNNER = "FnApiRunner"


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by scoring and evaluation: the model and how images are checked."""
    parser.add_argument("--model", help="model root (latest version) or a version URI")
    parser.add_argument(
        "--model-endpoint", help="host:port of TensorFlow Serving (gRPC) to score there instead"
    )
    parser.add_argument(
        "--serving-model-name",
        default=contract.DEFAULT_MODEL_NAME,
        help="with --model-endpoint and no --model: the model's name in TF Serving's "
        "models.config (its version is asked of the server); default %(default)s",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse images with more pixels (decompression bombs); default %(default)s",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="refuse larger files, unread; default %(default)s",
    )
    parser.add_argument(
        "--min-batch-size", type=int, default=DEFAULT_MIN_BATCH_SIZE, help="RunInference batching"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="RunInference batching"
    )
    parser.add_argument(
        "--large-model",
        action="store_true",
        help="share one model across worker processes instead of one per process",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace results already under --output"
    )


def build_parser() -> argparse.ArgumentParser:
    """The job's own flags; everything else is a Beam pipeline option."""
    # No abbreviations: a Beam flag must never be taken for a prefix of one of ours.
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m beam_jobs.score",
        description="Score images with a histoscreen model (research use only). "
        "Unknown flags are Beam pipeline options (--runner, --project, ...).",
    )
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        help="glob or URI of images (gs:// or local; ** crosses folders); repeatable",
    )
    parser.add_argument("--output", required=True, help="output folder URI")
    add_model_flags(parser)
    parser.add_argument(
        "--gradcam", action="store_true", help="write Grad-CAM overlays under <output>/gradcam/"
    )
    parser.add_argument(
        "--gradcam-top",
        type=int,
        metavar="N",
        help="overlays only for the N most suspicious images (implies --gradcam)",
    )
    parser.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help="result formats, comma-separated: jsonl (always), csv, parquet",
    )
    parser.add_argument(
        "--num-shards", type=int, default=0, help="output shards (0: runner decides)"
    )
    parser.add_argument(
        "--tile-stride",
        type=int,
        help="large inputs: pixels between tile origins at the training scale "
        "(default: the tile size, no overlap)",
    )
    parser.add_argument(
        "--tile-batch",
        type=int,
        default=DEFAULT_TILE_BATCH,
        help="large inputs: tiles per work item and model call (default %(default)s)",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> ScoringOptions:
    """The shared options from the flags :func:`add_model_flags` added."""
    return ScoringOptions(
        model=args.model,
        model_endpoint=args.model_endpoint,
        serving_model_name=args.serving_model_name,
        max_pixels=args.max_pixels,
        max_bytes=args.max_bytes,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.max_batch_size,
        large_model=args.large_model,
        overwrite=args.overwrite,
    )


def parse_args(argv: Sequence[str] | None) -> tuple[ScoreConfig, list[str]]:
    """Split ``argv`` into the job's config and Beam's pipeline arguments."""
    args, pipeline_args = build_parser().parse_known_args(argv)
    config = ScoreConfig(
        inputs=tuple(args.input),
        output=args.output,
        options=options_from_args(args),
        gradcam=args.gradcam or args.gradcam_top is not None,
        gradcam_top=args.gradcam_top,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        num_shards=args.num_shards,
        tile_stride=args.tile_stride,
        tile_batch=args.tile_batch,
    )
    return config, pipeline_args


def make_handler(
    identity: ModelIdentity,
    *,
    endpoint: str | None,
    signature: str,
    min_batch_size: int,
    max_batch_size: int,
    large_model: bool,
) -> HistoModelHandler | ServingModelHandler:
    """The RunInference handler: TensorFlow Serving when given an endpoint, else local."""
    kwargs: dict[str, Any] = {
        "identity": identity,
        "signature": signature,
        "min_batch_size": min_batch_size,
        "max_batch_size": max_batch_size,
        "large_model": large_model,
    }
    if endpoint:
        return ServingModelHandler(endpoint, **kwargs)
    return HistoModelHandler(identity.uri, **kwargs)


def options_handler(
    identity: ModelIdentity, options: ScoringOptions, signature: str
) -> HistoModelHandler | ServingModelHandler:
    """The RunInference handler for ``signature`` with the job's batching options."""
    return make_handler(
        identity,
        endpoint=options.model_endpoint,
        signature=signature,
        min_batch_size=options.min_batch_size,
        max_batch_size=options.max_batch_size,
        large_model=options.large_model,
    )


def prepare_output(output: str, overwrite: bool) -> bool:
    """Refuse to mix runs in one output folder, or clear the old run with ``overwrite``.

    The launcher deletes the old run's row shards and documents (a number that
    does not grow with the inputs); its per-input images (Grad-CAM overlays,
    slide heatmaps) are left to the pipeline, which deletes them before it
    scores (:class:`~beam_jobs.matching.DeleteMatching`).

    Returns:
        True when an earlier run was found, whose images
        (:meth:`~histo_common.layout.RunLayout.per_input_images`) are left to delete.

    Raises:
        ConfigError: when ``output`` already holds results and ``overwrite`` is False.
    """
    run = RunLayout(output)
    existing = next(filter(None, map(files.first_file, run.row_patterns)), None)
    if existing is None:
        return False
    if not overwrite:
        raise ConfigError(
            f"{output} already holds results ({existing}); choose a new --output or "
            "pass --overwrite"
        )
    removed = sum(files.delete_matching(p) for p in run.run_documents())
    logger.info("Removed %d row files and documents of an earlier run under %s", removed, output)
    return True


@dataclass(frozen=True)
class ScoringPlan:
    """What a pipeline will score, decided at launch without listing the inputs."""

    patterns: list[str]  # the input patterns as the pipeline matches them
    identity: ModelIdentity
    base: str  # the folder holding every input; overlay names are paths under it
    endpoint: str | None = None  # TensorFlow Serving host:port, when scoring there
    positive_class: str = contract.DEFAULT_POSITIVE_CLASS  # of the model's probability
    launched_at: float = field(default_factory=time.time)  # wall clock, for the summary
    clear_old_images: bool = False  # --overwrite found a run: its images go before scoring

    @property
    def run_model(self) -> RunModel:
        """The model as the summary records it: a version folder, or a serving endpoint."""
        return RunModel(
            name=self.identity.name,
            version=self.identity.version,
            version_uri=None if self.endpoint else self.identity.uri,
            endpoint=self.endpoint,
        )


def plan_scoring(
    inputs: Sequence[str],
    model: str | None,
    endpoint: str | None,
    serving_model_name: str = contract.DEFAULT_MODEL_NAME,
) -> ScoringPlan:
    """Check the inputs (one file per pattern) and pin the model version.

    Nothing here grows with the number of inputs: the pipeline matches them
    (:class:`beam_jobs.matching.MatchInputs`).

    Raises:
        files.InputError: when a pattern cannot be listed or none matches a file.
        ModelLoadError: when the model URI holds no usable version.
    """
    patterns = files.check_inputs(inputs)
    resolved = model_identity.resolve(model, endpoint, serving_model_name)
    identity = resolved.identity
    logger.info(
        "Scoring %s with %s version %d (%s)",
        " ".join(inputs),
        identity.name,
        identity.version,
        identity.uri,
    )
    return ScoringPlan(
        patterns=patterns,
        identity=identity,
        base=files.input_base(patterns),
        endpoint=endpoint,
        positive_class=resolved.positive_class,
    )


def start_scoring(config: ScoreConfig) -> ScoringPlan:
    """Check the inputs, pin the model, clear or refuse the output."""
    plan = plan_scoring(
        config.inputs,
        config.options.model,
        config.options.model_endpoint,
        config.options.serving_model_name,
    )
    had_run = prepare_output(config.output, config.options.overwrite)
    return replace(plan, clear_old_images=had_run)


def add_scoring(
    pipeline: beam.Pipeline, config: ScoreConfig, plan: ScoringPlan
) -> dict[str, beam.PCollection]:
    """Add the scoring stages to ``pipeline``; return its ``matched``, ``results``, ``errors``.

    Matching, the manifest and the reconciliation (``summary.json``) are stages
    of the pipeline, so the launcher never lists the inputs.
    """
    matched = pipeline | "MatchInputs" >> MatchInputs(plan.patterns)
    return score_matched(matched, config, plan, runner=_runner_name(pipeline))


def score_matched(
    matched: beam.PCollection, config: ScoreConfig, plan: ScoringPlan, runner: str = ""
) -> dict[str, beam.PCollection]:
    """The stages after matching: manifest, read, score, write, reconcile.

    Returns:
        ``matched``, ``results`` and ``errors`` (the lost inputs' rows included).
    """
    explain_all = config.gradcam and config.gradcam_top is None
    options = config.options
    signature = contract.EXPLAIN_SIGNATURE if explain_all else contract.PREDICT_SIGNATURE
    handler = options_handler(plan.identity, options, signature)

    _ = matched | "WriteManifest" >> WriteManifest(config.output)
    to_score = matched
    if plan.clear_old_images:  # --overwrite: the old run's images go before any new one
        old_images = RunLayout(config.output).per_input_images()
        cleared = matched.pipeline | "DeleteOldImages" >> DeleteMatching(old_images)
        to_score = after(matched, cleared, "AfterOldImagesDeleted")
    # Matching ends in a grouping by URI, so the files are already spread over workers.
    scored = to_score | "ScoreInputs" >> ScoreInputs(
        handler, plan.identity, options.max_pixels, options.max_bytes, job_slides(config, plan)
    )
    errors = scored[ERRORS]
    facts = summary.RunFacts(
        inputs=list(config.inputs),
        output=config.output,
        base=plan.base,
        model=plan.run_model,
        formats=list(config.formats),
        runner=runner,
        launched_at=plan.launched_at,
    )
    lost = {
        "matched": matched,
        "results": scored["results"],
        "errors": errors,
    } | "Reconcile" >> summary.Reconcile(facts)
    errors = (errors, lost) | "ErrorsAndLost" >> beam.Flatten()
    _ = scored["results"] | "WriteResults" >> WriteResults(
        config.output, config.formats, config.num_shards
    )
    _ = errors | "WriteErrors" >> WriteErrors(config.output, config.num_shards)
    if TILES in scored:
        _ = scored[TILES] | "WriteTiles" >> WriteTiles(
            config.output, config.formats, config.num_shards
        )

    if config.gradcam:
        if config.gradcam_top is None:  # explain_all: every image was explained
            explained = scored[EXPLAINED]
        else:
            explain = options_handler(plan.identity, options, contract.EXPLAIN_SIGNATURE)
            explained = scored["results"] | "ExplainTop" >> ExplainTop(
                config.gradcam_top, explain, options.max_pixels, options.max_bytes
            )
        _ = explained | "WriteOverlays" >> WriteOverlays(
            config.output, plan.base, plan.positive_class
        )
    return {"matched": matched, "results": scored["results"], ERRORS: errors}


def _runner_name(pipeline: beam.Pipeline) -> str:
    return pipeline.options.view_as(StandardOptions).runner or "DirectRunner"


def job_slides(config: ScoreConfig, plan: ScoringPlan) -> SlideJob | None:
    """How the job tiles large inputs (None: a model without metadata scores all whole)."""
    return slide_job(
        plan.identity,
        has_metadata=bool(config.options.model),
        output=config.output,
        base=plan.base,
        stride=config.tile_stride,
        batch_size=config.tile_batch,
        max_pixels=config.options.max_pixels,
        max_bytes=config.options.max_bytes,
    )


def query_counters(result: PipelineResult) -> dict[str, int]:
    """The job's Beam counters (images read, scored, failed, bytes ...), by name."""
    try:
        metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception as exc:  # not every runner answers metric queries
        logger.warning("Could not read Beam counters: %s", exc)
        return {}
    counters: dict[str, int] = {}
    for counter in metrics.get("counters", []):
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value)
    return counters


def finish(result: PipelineResult, *, config: ScoreConfig, plan: ScoringPlan) -> Summary:
    """Wait for the run; complete the summary the pipeline wrote; log it.

    Reads back one small document (never the rows): the pipeline counted them.

    Raises:
        summary.IncompleteOutputError: when an input was lost, or rows were duplicated
            or unexpected, or the pipeline wrote no summary.
    """
    result.wait_until_finish()
    elapsed = time.time() - plan.launched_at
    written = summary.read_summary(config.output)
    if written is None:
        raise summary.IncompleteOutputError(
            f"the pipeline wrote no {RunLayout(config.output).summary}: its reconciliation "
            "step did not run"
        )
    document = summary.with_launcher_facts(written, elapsed, query_counters(result))
    uri = summary.write_summary(document)
    line = summary.describe(document)
    (logger.info if document.complete else logger.error)(line)
    logger.info(
        "Scored %d, failed %d of %d files in %.1f s (%.1f images/s); summary at %s",
        document.scored,
        document.failed,
        document.matched,
        elapsed,
        document.images_per_s or 0.0,
        uri,
    )
    if not document.complete:
        raise summary.IncompleteOutputError(line)
    return document


def pipeline_options(pipeline_args: Sequence[str]) -> PipelineOptions:
    """Beam options from the leftover flags; the in-process runner when none is named.

    Without ``--runner`` the job runs on the DirectRunner's in-process engine
    (``FnApiRunner``) directly: Beam 2.77's ``DirectRunner`` would first try to
    download the Prism runner binary from GitHub and use it when it can.
    """
    options = PipelineOptions(list(pipeline_args))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    return options


def run(
    argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None
) -> PipelineResult:
    """Build and run the scoring pipeline, then check and summarise its output.

    Args:
        argv: command-line arguments (the job's flags and Beam pipeline options).
        test_pipeline: a ``TestPipeline`` to use instead of building one.

    Returns:
        The finished pipeline's result.

    Raises:
        ConfigError, files.InputError, ModelLoadError: for bad flags, inputs or model.
        summary.IncompleteOutputError: when rows do not account for every input.
    """
    config, pipeline_args = parse_args(argv)
    pipeline = test_pipeline or beam.Pipeline(options=pipeline_options(pipeline_args))
    plan = start_scoring(config)
    add_scoring(pipeline, config, plan)
    result = pipeline.run()
    finish(result, config=config, plan=plan)
    return result


def configure_logging() -> None:
    """INFO logs with time and logger name (replacing the handler Beam's import installs)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # Hundreds of "Converting string literal type hint to Any" lines per job build (our
    # modules' postponed annotations) drown the job's own lines.
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``histo-score``); returns the exit status."""
    configure_logging()
    try:
        run(argv)
    except (ConfigError, files.InputError, ModelLoadError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except summary.IncompleteOutputError as exc:
        sys.stderr.write(f"error: output is incomplete: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
