"""Evaluation job: metrics, plots and an HTML report for a model on labelled images.

``python -m beam_jobs.evaluate --input 'data/**.png' --model models/histo-cnn
--output results/eval1`` scores the images (the scoring job's stages, so its
``results/``, ``errors/`` and ``summary.json`` are written too), or
``--scores results/run1`` reads an existing scoring output. Labels come from the
``benign/``/``malignant/`` folders or ``--labels labels.csv`` (with optional
patient ids). Writes ``metrics.json``, ``plots/*.png`` and a self-contained
``report.html``; with ``--min-auc`` and friends it also writes ``BLESSED`` or
``NOT_BLESSED`` into the model version folder.
"""

from __future__ import annotations

import histo_common.tensorflow_env  # noqa: F401  (first: sets up TensorFlow before its import)

# isort: split
import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.runner import PipelineResult

from beam_jobs import evaluation, files, gate, score, summary
from beam_jobs.config import ConfigError, EvaluateConfig, GateConfig, ScoreConfig
from beam_jobs.labels import LabelsError, read_labels_csv, require_some_label
from histo_common.results import ResultRow
from model_export.loader import ModelLoadError, resolve_version

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The job's own flags; everything else is a Beam pipeline option."""
    # No abbreviations: a Beam flag must never be taken for a prefix of one of ours.
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m beam_jobs.evaluate",
        description="Evaluate a histoscreen model on labelled images (research use only). "
        "Unknown flags are Beam pipeline options (--runner, --project, ...).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", action="append", help="labelled images to score (glob or URI); repeatable"
    )
    source.add_argument("--scores", help="an existing scoring output folder to evaluate")
    parser.add_argument("--output", required=True, help="output folder URI")
    parser.add_argument("--labels", help="labels CSV: path (or uri), label, optional patient_id")
    score.add_model_flags(parser)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--gallery-size", type=int, default=12, help="most confident errors shown")
    for flag, metric in gate.MIN_FLAGS.items():
        parser.add_argument(f"--min-{flag}", type=float, metavar="X", help=f"gate: {metric} >= X")
    for flag, metric in gate.MAX_FLAGS.items():
        parser.add_argument(f"--max-{flag}", type=float, metavar="X", help=f"gate: {metric} <= X")
    parser.add_argument(
        "--strict-gate", action="store_true", help="exit with status 3 when NOT_BLESSED"
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[EvaluateConfig, list[str]]:
    """Split ``argv`` into the job's config and Beam's pipeline arguments."""
    args, pipeline_args = build_parser().parse_known_args(argv)
    values = vars(args)
    minimums = {
        metric: values[f"min_{flag.replace('-', '_')}"]
        for flag, metric in gate.MIN_FLAGS.items()
        if values[f"min_{flag.replace('-', '_')}"] is not None
    }
    maximums = {
        metric: values[f"max_{flag}"]
        for flag, metric in gate.MAX_FLAGS.items()
        if values[f"max_{flag}"] is not None
    }
    config = EvaluateConfig(
        output=args.output,
        inputs=tuple(args.input or ()),
        scores=args.scores,
        model=args.model,
        model_endpoint=args.model_endpoint,
        labels=args.labels,
        gate=GateConfig(minimums=minimums, maximums=maximums),
        bootstrap=args.bootstrap,
        seed=args.seed,
        gallery_size=args.gallery_size,
        strict_gate=args.strict_gate,
        max_pixels=args.max_pixels,
        max_bytes=args.max_bytes,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.max_batch_size,
        large_model=args.large_model,
        overwrite=args.overwrite,
    )
    return config, pipeline_args


def _model_uri(config: EvaluateConfig, scoring_summary: dict | None) -> str | None:
    """The model version to explain errors with and to bless: --model, else the scoring
    run's (from its summary.json); None when only a serving endpoint is known."""
    if config.model:
        return resolve_version(config.model)[0]
    if scoring_summary and not config.model_endpoint:
        uri = (scoring_summary.get("model") or {}).get("uri")
        # A scoring run through TF Serving records its endpoint, not a model folder.
        return uri if uri and "/" in uri else None
    return None


@dataclass(frozen=True)
class ScoreSource:
    """Where the evaluated rows come from, once added to the pipeline."""

    rows: beam.PCollection  # result rows as dicts
    errors: beam.PCollection  # error rows (only counted)
    matched: int | None  # files matched by the scoring run, when known
    model_uri: str | None  # the model version, for Grad-CAM and the gate
    source: dict[str, Any]  # recorded in metrics.json
    plan: score.ScoringPlan | None = None  # set when this job scores


def add_scoring_source(
    pipeline: beam.Pipeline, config: EvaluateConfig, labels: dict | None
) -> ScoreSource:
    """Score ``--input`` with the scoring job's stages (writing its outputs too)."""
    score_config = ScoreConfig(
        inputs=config.inputs,
        output=config.output,
        model=config.model,
        model_endpoint=config.model_endpoint,
        formats=("jsonl",),
        max_pixels=config.max_pixels,
        max_bytes=config.max_bytes,
        min_batch_size=config.min_batch_size,
        max_batch_size=config.max_batch_size,
        large_model=config.large_model,
    )
    plan = score.plan_scoring(config.inputs, config.model, config.model_endpoint)
    require_some_label((m.uri for m in plan.matched), labels, "--input")
    score.prepare_output(config.output, config.overwrite)
    plan = score.write_plan(plan, config.output)
    scored = score.add_scoring(pipeline, score_config, plan)
    return ScoreSource(
        rows=scored["results"] | "RowsToDicts" >> beam.Map(ResultRow.to_dict),
        errors=scored["errors"],
        matched=len(plan.matched),
        model_uri=_model_uri(config, None) if config.model_endpoint else plan.identity.uri,
        source={"inputs": list(config.inputs), "labels": config.labels},
        plan=plan,
    )


def add_existing_scores(
    pipeline: beam.Pipeline, config: EvaluateConfig, labels: dict | None
) -> ScoreSource:
    """Read the result and error rows of an earlier scoring output (``--scores``)."""
    results = summary.results_pattern(config.scores)
    if not files.list_files(results):
        raise files.InputError(f"no results/*.jsonl under --scores {config.scores}")
    require_some_label(
        (row["uri"] for row in files.read_json_lines(results)), labels, config.scores
    )
    rows = (
        pipeline
        | "ReadScores" >> beam.io.ReadFromText(results)
        | "ParseScores" >> beam.Map(json.loads)
    )
    errors_glob = summary.errors_pattern(config.scores)
    if files.list_files(errors_glob):
        errors = pipeline | "ReadErrors" >> beam.io.ReadFromText(errors_glob)
    else:
        errors = pipeline | "NoErrors" >> beam.Create([])
    scoring_summary = summary.read_summary(config.scores)
    return ScoreSource(
        rows=rows,
        errors=errors,
        matched=(scoring_summary or {}).get("matched"),
        model_uri=_model_uri(config, scoring_summary),
        source={"scores": config.scores, "labels": config.labels},
    )


def run(
    argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None
) -> PipelineResult:
    """Build and run the evaluation pipeline; apply the gate.

    Returns:
        The finished pipeline's result.

    Raises:
        ConfigError, files.InputError, ModelLoadError, LabelsError: for bad flags or inputs.
        summary.IncompleteOutputError: when scoring lost an input.
    """
    config, pipeline_args = parse_args(argv)
    started = time.monotonic()
    labels = read_labels_csv(config.labels) if config.labels else None
    pipeline = test_pipeline or beam.Pipeline(options=score.pipeline_options(pipeline_args))
    if config.inputs:
        scores = add_scoring_source(pipeline, config, labels)
    else:
        scores = add_existing_scores(pipeline, config, labels)

    settings = evaluation.EvaluationSettings(
        output=config.output,
        model_uri=scores.model_uri,
        labels_csv=config.labels,
        matched=scores.matched,
        bootstrap=config.bootstrap,
        seed=config.seed,
        gallery_size=config.gallery_size,
        gate=config.gate,
        max_pixels=config.max_pixels,
        max_bytes=config.max_bytes,
        source=scores.source,
    )
    error_count = scores.errors | "CountErrors" >> beam.combiners.Count.Globally()
    _ = (
        scores.rows
        | "CollectScores" >> beam.combiners.ToList()
        | "WriteEvaluation"
        >> beam.Map(
            evaluation.write_evaluation,
            n_errors=beam.pvalue.AsSingleton(error_count),
            settings=settings,
        )
    )
    result = pipeline.run()
    runner = pipeline.options.view_as(StandardOptions).runner or "DirectRunner"
    if scores.plan is not None:
        score.finish(
            result,
            output=config.output,
            inputs=config.inputs,
            plan=scores.plan,
            started=started,
            runner=runner,
        )
    else:
        result.wait_until_finish()
    apply_gate(config, scores.model_uri)
    return result


def apply_gate(config: EvaluateConfig, model_uri: str | None) -> dict | None:
    """Write BLESSED/NOT_BLESSED beside the model from the written ``metrics.json``.

    Returns:
        The blessing section, or None without a gate.
    """
    uri = files.join(config.output, evaluation.METRICS_FILE)
    document = json.loads(files.read_file(uri))
    image = document["image_level"]
    logger.info(
        "Evaluation: AUC %s, sensitivity %s, specificity %s on %d labelled images; report at %s",
        image["roc_auc"]["value"],
        image["sensitivity"]["value"],
        image["specificity"]["value"],
        document["counts"]["labelled"],
        files.join(config.output, evaluation.REPORT_FILE),
    )
    blessing = document.get("blessing")
    if blessing is None:
        return None
    if model_uri:
        text = gate.blessing_text(blessing, document["model"], config.output)
        gate.write_blessing(model_uri, blessing["blessed"], text)
    else:
        logger.warning("No model URI known: the gate's verdict is only in %s", uri)
    verdict = gate.BLESSED if blessing["blessed"] else gate.NOT_BLESSED
    logger.info("Gate: %s %s", verdict, "; ".join(blessing["reasons"]))
    if config.strict_gate and not blessing["blessed"]:
        raise NotBlessedError(f"{verdict}: {'; '.join(blessing['reasons'])}")
    return blessing


class NotBlessedError(RuntimeError):
    """The model failed the gate and ``--strict-gate`` was given."""


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``histo-evaluate``); returns the exit status."""
    score.configure_logging()
    try:
        run(argv)
    except (ConfigError, files.InputError, ModelLoadError, LabelsError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except summary.IncompleteOutputError as exc:
        sys.stderr.write(f"error: output is incomplete: {exc}\n")
        return 1
    except NotBlessedError as exc:
        sys.stderr.write(f"{exc}\n")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
