"""Evaluation job: metrics, plots and an HTML report for a model on labelled images.

``python -m beam_jobs.evaluate --input 'data/**.png' --model models/histo-cnn
--output results/eval1`` scores the images (the scoring job's stages, so its
``results/``, ``errors/`` and ``summary.json`` are written too), or
``--scores results/run1`` reads an existing scoring output's JSON Lines rows.
Labels come from the ``benign/``/``malignant/`` folders or ``--labels
labels.csv`` (with optional patient ids), read once at launch; when no scored
image has a label the job says so after the run (the launcher does not list the
inputs). This module only
wires Beam: rows -> labelled scores -> the most confident errors explained
(``ExplainErrors``) -> one step that hands everything to
:func:`evaluation.outputs.write_evaluation`, which computes the metrics, decides
the gate and writes ``metrics.json``, ``plots/``, ``report.html`` and, with
``--min-auc`` and friends, ``BLESSED`` or ``NOT_BLESSED`` in the model version
folder (names from :mod:`histo_common.layout`).
"""

from __future__ import annotations

import histo_common.tensorflow_env  # noqa: F401  (first: sets up TensorFlow before its import)

# isort: split
import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
from apache_beam.runners.runner import PipelineResult

from beam_jobs import files, score, summary
from beam_jobs.config import ConfigError, EvaluateConfig, EvaluationSettings, GateConfig
from beam_jobs.transforms import ExplainErrors
from evaluation import gate, outputs
from evaluation.outputs import EvaluationError, LabelledScore, RunFacts
from histo_common import storage
from histo_common.labels import (
    LabelledImage,
    LabelsError,
    by_uri,
    read_labels_csv,
    require_some_label,
    true_label,
    unlabelled_error,
)
from histo_common.layout import DocumentError, MetricsDocument, RunLayout, Summary
from histo_common.results import ResultRow
from model_export import contract
from model_export import identity as model_identity
from model_export.contract import DEFAULT_CLASS_NAMES as CLASS_NAMES
from model_export.identity import ModelIdentity, ModelLoadError

logger = logging.getLogger(__name__)

# Manifest rows the launcher looks at for a label; past them the pipeline decides.
LABEL_PROBE_ROWS = 10_000


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


def _gate_limits(values: dict[str, Any], kind: str, flags: dict[str, str]) -> dict[str, float]:
    """The ``--<kind>-<flag>`` values given, by metric (argparse's dest: ``-`` -> ``_``)."""
    limits = {}
    for flag, metric in flags.items():
        value = values[f"{kind}_{flag}".replace("-", "_")]
        if value is not None:
            limits[metric] = value
    return limits


def parse_args(argv: Sequence[str] | None) -> tuple[EvaluateConfig, list[str]]:
    """Split ``argv`` into the job's config and Beam's pipeline arguments."""
    args, pipeline_args = build_parser().parse_known_args(argv)
    values = vars(args)
    gate_config = GateConfig(
        minimums=_gate_limits(values, "min", gate.MIN_FLAGS),
        maximums=_gate_limits(values, "max", gate.MAX_FLAGS),
    )
    try:
        settings = EvaluationSettings(
            bootstrap=args.bootstrap,
            seed=args.seed,
            gallery_size=args.gallery_size,
            gate=gate_config,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    config = EvaluateConfig(
        output=args.output,
        options=score.options_from_args(args),
        evaluation=settings,
        inputs=tuple(args.input or ()),
        scores=args.scores,
        labels=args.labels,
        strict_gate=args.strict_gate,
    )
    return config, pipeline_args


@dataclass(frozen=True)
class ScoreSource:
    """Where the evaluated rows come from, once added to the pipeline."""

    rows: beam.PCollection  # result rows as dicts
    errors: beam.PCollection  # error rows (only counted)
    explainer: ModelIdentity | None  # the model that explains the gallery, if any
    facts: RunFacts  # what the evaluation records about the scored set
    plan: score.ScoringPlan | None = None  # set when this job scores
    matched: beam.PCollection | None = None  # the matched files, when this job scores


def add_scoring_source(pipeline: beam.Pipeline, config: EvaluateConfig) -> ScoreSource:
    """Score ``--input`` with the scoring job's stages (writing its outputs too).

    The inputs are matched inside the pipeline; whether any has a label is known
    once they are scored (:func:`report_outcome`).
    """
    scoring = config.scoring()
    plan = score.start_scoring(scoring)
    scored = score.add_scoring(pipeline, scoring, plan)
    return ScoreSource(
        rows=scored["results"] | "RowsToDicts" >> beam.Map(ResultRow.to_dict),
        errors=scored["errors"],
        explainer=plan.identity,
        facts=RunFacts(
            model_version_uri=plan.identity.uri if config.options.model else None,
            errors=0,
            unlabelled=0,
            source={"inputs": list(config.inputs), "labels": config.labels},
            class_names=CLASS_NAMES,
        ),
        plan=plan,
        matched=scored["matched"],
    )


def _model_for_scores(
    config: EvaluateConfig, scoring: Summary | None
) -> tuple[ModelIdentity | None, str | None]:
    """Choose the model that explains the gallery and the version the gate blesses.

    For ``--scores``: ``--model``/``--model-endpoint`` when given, else the scoring
    run's model version.
    """
    options = config.options
    if options.has_model:
        identity = model_identity.resolve(
            options.model, options.model_endpoint, options.serving_model_name
        ).identity
        return identity, identity.uri if options.model else None
    version_uri = scoring.model.version_uri if scoring is not None else None
    if scoring is not None and version_uri:
        return ModelIdentity(scoring.model.name, scoring.model.version, version_uri), version_uri
    return None, None


def add_existing_scores(
    pipeline: beam.Pipeline, config: EvaluateConfig, labels: dict[str, LabelledImage] | None
) -> ScoreSource:
    """Read the JSON Lines result and error rows of an earlier scoring output (``--scores``).

    The rows are read once, by the pipeline; at launch only the summary and the
    manifest's first rows (to say early when nothing has a label) are read.
    """
    scored_run = RunLayout(config.scores or "")
    if files.first_file(scored_run.results_pattern) is None:
        raise files.InputError(f"no {scored_run.results_pattern} under --scores {config.scores}")
    try:
        scoring = summary.read_summary(scored_run.output)
    except DocumentError as exc:
        raise files.InputError(str(exc)) from exc
    if files.exists(scored_run.manifest):
        matched = (row["uri"] for row in files.read_json_lines(scored_run.manifest))
        require_some_label(
            matched, CLASS_NAMES, labels, config.scores or "", limit=LABEL_PROBE_ROWS
        )
    rows = (
        pipeline
        | "ReadScores" >> beam.io.ReadFromText(scored_run.results_pattern)
        | "ParseScores" >> beam.Map(json.loads)
    )
    if files.list_files(scored_run.errors_pattern):
        errors = pipeline | "ReadErrors" >> beam.io.ReadFromText(scored_run.errors_pattern)
    else:
        errors = pipeline | "NoErrors" >> beam.Create([])
    explainer, version_uri = _model_for_scores(config, scoring)
    return ScoreSource(
        rows=rows,
        errors=errors,
        explainer=explainer,
        facts=RunFacts(
            model_version_uri=version_uri,
            errors=0,
            unlabelled=0,
            matched=scoring.matched if scoring else None,
            source={"scores": config.scores, "labels": config.labels},
            class_names=CLASS_NAMES,
        ),
    )


UNLABELLED = "unlabelled"


def label_row(
    row: dict[str, Any], labels: dict[str, LabelledImage] | None
) -> Iterator[LabelledScore | beam.pvalue.TaggedOutput]:
    """A result row with its true label, or its URI on the ``unlabelled`` output."""
    truth = true_label(row["uri"], CLASS_NAMES, labels)
    if truth is None:
        yield beam.pvalue.TaggedOutput(UNLABELLED, row["uri"])
    else:
        yield LabelledScore.from_row(row, CLASS_NAMES.index(truth.label), truth.patient_id)


def evaluate_all(
    scores: list[LabelledScore],
    gallery: list[Any],
    *,
    errors: int,
    unlabelled: int,
    matched: int | None,
    facts: RunFacts,
    settings: EvaluationSettings,
    output: str,
) -> MetricsDocument | None:
    """The one evaluation step: the counts from the side inputs, then every output.

    Without a labelled score nothing is written; the launcher then says what to do.
    """
    if not scores:
        logger.error("No scored image has a label: nothing to evaluate in %s", output)
        return None
    matched = matched if matched is not None else facts.matched
    facts = replace(facts, errors=errors, unlabelled=unlabelled, matched=matched)
    gallery = sorted(gallery, key=lambda g: abs(g.probability - g.threshold), reverse=True)
    return outputs.write_evaluation(scores, gallery, facts, settings, output)


def add_evaluation(
    pipeline: beam.Pipeline,
    source: ScoreSource,
    config: EvaluateConfig,
    labels: dict[str, LabelledImage] | None,
) -> None:
    """Label the rows, explain the most confident errors and write the evaluation."""
    labels_view = beam.pvalue.AsSingleton(pipeline | "Labels" >> beam.Create([labels]))
    labelled = source.rows | "Label" >> beam.FlatMap(label_row, labels_view).with_outputs(
        UNLABELLED, main="scores"
    )
    explain = None
    if source.explainer is not None:
        explain = score.options_handler(
            source.explainer, config.options, contract.EXPLAIN_SIGNATURE
        )
    gallery = labelled.scores | "ExplainErrors" >> ExplainErrors(
        config.evaluation.gallery_size,
        explain,
        CLASS_NAMES,
        config.options.max_pixels,
        config.options.max_bytes,
    )
    error_count = source.errors | "CountErrors" >> beam.combiners.Count.Globally()
    unlabelled_count = labelled[UNLABELLED] | "CountUnlabelled" >> beam.combiners.Count.Globally()
    if source.matched is not None:
        matched_count = source.matched | "CountMatched" >> beam.combiners.Count.Globally()
    else:
        matched_count = pipeline | "MatchedUnknown" >> beam.Create([None])
    _ = (
        labelled.scores
        | "CollectScores" >> beam.combiners.ToList()
        | "WriteEvaluation"
        >> beam.Map(
            evaluate_all,
            gallery=beam.pvalue.AsList(gallery),
            errors=beam.pvalue.AsSingleton(error_count),
            unlabelled=beam.pvalue.AsSingleton(unlabelled_count),
            matched=beam.pvalue.AsSingleton(matched_count),
            facts=source.facts,
            settings=config.evaluation,
            output=config.output,
        )
    )


def run(
    argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None
) -> PipelineResult:
    """Build and run the evaluation pipeline.

    Returns:
        The finished pipeline's result.

    Raises:
        ConfigError, files.InputError, ModelLoadError, LabelsError: for bad flags or inputs.
        summary.IncompleteOutputError: when scoring lost an input.
        NotBlessedError: with ``--strict-gate``, when the model was not blessed.
    """
    config, pipeline_args = parse_args(argv)
    labels = by_uri(read_labels_csv(config.labels, CLASS_NAMES)) if config.labels else None
    pipeline = test_pipeline or beam.Pipeline(options=score.pipeline_options(pipeline_args))
    if config.inputs:
        source = add_scoring_source(pipeline, config)
    else:
        source = add_existing_scores(pipeline, config, labels)
    add_evaluation(pipeline, source, config, labels)
    result = pipeline.run()
    matched = source.facts.matched
    if source.plan is not None:
        matched = score.finish(result, config=config.scoring(), plan=source.plan).matched
    else:
        result.wait_until_finish()
    report_outcome(config, matched)
    return result


def report_outcome(config: EvaluateConfig, matched: int | None = None) -> MetricsDocument:
    """Log what the evaluation wrote; with ``--strict-gate``, fail on NOT_BLESSED.

    Raises:
        LabelsError: when no scored image had a label (nothing was evaluated).
        NotBlessedError: when the gate refused the model and ``--strict-gate`` was given.
    """
    uri = RunLayout(config.output).metrics
    if not files.exists(uri):
        source = "--input" if config.inputs else f"--scores {config.scores}"
        raise unlabelled_error(matched, CLASS_NAMES, source)
    document = MetricsDocument.from_json(storage.read_text(uri), source=uri)
    logger.info(outputs.describe(document, config.output))
    blessing = document.blessing
    if config.strict_gate and blessing is not None and not blessing.blessed:
        raise NotBlessedError(f"{blessing.verdict}: {'; '.join(blessing.reasons)}")
    return document


class NotBlessedError(RuntimeError):
    """The model failed the gate and ``--strict-gate`` was given."""


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``histo-evaluate``); returns the exit status."""
    score.configure_logging()
    try:
        run(argv)
    except (ConfigError, files.InputError, ModelLoadError, LabelsError, EvaluationError) as exc:
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
