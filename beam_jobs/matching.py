"""The first stages of the scoring job: match the input patterns, write the manifest.

``MatchInputs`` turns the ``--input`` patterns into one ``MatchedFile`` per file
(Beam's ``fileio.MatchAll``, deduplicated by URI across patterns), inside the
pipeline: the launcher only checks that the patterns match something
(:func:`beam_jobs.files.check_inputs`), so its time and memory do not grow with
the number of inputs. ``WriteManifest`` writes the matched files as
``<output>/manifest.jsonl`` (:class:`histo_common.layout.RunLayout`).
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from beam_jobs import files
from beam_jobs.model_handler import METRICS_NAMESPACE
from histo_common.layout import RunLayout


class _CountMatched(beam.DoFn):
    """Count each distinct matched file (the ``files_matched`` counter)."""

    def __init__(self) -> None:
        self.matched = Metrics.counter(METRICS_NAMESPACE, "files_matched")

    def process(self, uri_and_size: tuple[str, int]) -> Iterator[files.MatchedFile]:
        uri, size = uri_and_size
        self.matched.inc()
        yield files.MatchedFile(uri=uri, size=size)


class MatchInputs(beam.PTransform):
    """Input patterns -> ``MatchedFile`` (one per distinct URI; local paths absolute).

    A pattern that matches nothing adds nothing here: the launcher refuses a run
    whose patterns match no file before the pipeline starts. Folders named
    exactly by a pattern are matched (and become read errors downstream).

    Args:
        patterns: glob patterns or URIs, as :func:`beam_jobs.files.check_inputs` returns them.
    """

    def __init__(self, patterns: list[str] | tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = list(patterns)

    def expand(self, begin: beam.pvalue.PBegin) -> beam.PCollection:
        """Match every pattern; one element per distinct file."""
        return (
            begin
            | "Patterns" >> beam.Create(self.patterns)
            | "MatchAll" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "Named" >> beam.Map(files.matched_file)
            | "ByUri" >> beam.Map(lambda m: (m.uri, m.size))
            | "OncePerUri" >> beam.CombinePerKey(max)
            | "CountMatched" >> beam.ParDo(_CountMatched())
        )


class WriteManifest(beam.PTransform):
    """Matched files -> ``<output>/manifest.jsonl``, one JSON object per line (one file)."""

    def __init__(self, output: str) -> None:
        super().__init__()
        self.uri = RunLayout(output).manifest

    def expand(self, matched: beam.PCollection) -> beam.PCollection:
        """Write the manifest; return its file name."""
        return (
            matched
            | "ManifestLines" >> beam.Map(files.manifest_line)
            | "WriteManifestFile"
            >> beam.io.WriteToText(self.uri, shard_name_template="", num_shards=1)
        )
