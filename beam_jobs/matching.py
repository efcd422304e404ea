"""The first stages of the scoring job: match the input patterns, write the manifest.

``MatchInputs`` turns the ``--input`` patterns into one ``MatchedFile`` per input
(Beam's ``fileio.MatchAll``, deduplicated by URI across patterns; the files of a
DICOM series or a MIRAX slide make one input), inside the
pipeline: the launcher only checks that the patterns match something
(:func:`beam_jobs.files.check_inputs`), so its time and memory do not grow with
the number of inputs. ``WriteManifest`` writes the matched files as
``<output>/manifest.jsonl`` (:class:`histo_common.layout.RunLayout`).
``DeleteMatching`` clears an earlier run's per-input images (``--overwrite``)
the same way: matched and deleted by the workers, not listed by the launcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from beam_jobs import files
from beam_jobs.model_handler import METRICS_NAMESPACE
from histo_common.layout import RunLayout
from histo_common.slides import MRXS_COMPANION_SUFFIXES, SERIES_MEMBER_SUFFIXES

FILE, SERIES, MIRAX = "file", "series", "mirax"


def input_key(uri: str) -> tuple[str, str]:
    """The input a matched file may belong to, as ``(kind, key)``.

    A slide can be many files: a DICOM WSI series is a folder of ``.dcm``
    objects (one per level), a MIRAX ``.mrxs`` comes with a folder of the same
    name. Matched with a ``**`` pattern, each of those files would be an input:
    the series scored once per object, every ``.dat`` an error row. So a
    ``.dcm`` object belongs to its folder's series, and a ``.dat``/``.ini`` file to
    the ``.mrxs`` named after its folder (when that was matched too); every
    other file is an input of its own.
    """
    folder, _, name = uri.rpartition("/")
    lower = name.lower()
    if lower.endswith(SERIES_MEMBER_SUFFIXES):
        return SERIES, folder
    if lower.endswith(".mrxs"):
        return MIRAX, uri[: -len(".mrxs")]
    if lower.endswith(MRXS_COMPANION_SUFFIXES):
        return MIRAX, folder
    return FILE, uri


class _OneInput(beam.DoFn):
    """The files grouped under one :func:`input_key` -> the input(s) they make.

    Each file is counted once however many patterns matched it (largest size
    kept). Counts distinct inputs as ``files_matched``.
    """

    def __init__(self) -> None:
        self.matched = Metrics.counter(METRICS_NAMESPACE, "files_matched")

    def process(
        self, grouped: tuple[tuple[str, str], Iterable[tuple[str, int]]]
    ) -> Iterator[files.MatchedFile]:
        (kind, key), found = grouped
        sizes: dict[str, int] = {}
        for uri, size in found:
            sizes[uri] = max(size, sizes.get(uri, 0))
        index = [u for u in sizes if u.lower().endswith(".mrxs")]
        if kind == SERIES:
            inputs = [files.MatchedFile(uri=key, size=sum(sizes.values()), series=True)]
        elif kind == MIRAX and index:
            inputs = [files.MatchedFile(uri=index[0], size=sum(sizes.values()))]
        else:  # a file, or companion files without their .mrxs: each its own input
            inputs = [files.MatchedFile(uri=u, size=n) for u, n in sorted(sizes.items())]
        for matched in inputs:
            self.matched.inc()
            yield matched


class MatchInputs(beam.PTransform):
    """Input patterns -> ``MatchedFile`` (one per distinct input; local paths absolute).

    An input is a file, or the files of one slide (see :func:`input_key`). A
    pattern that matches nothing adds nothing here: the launcher refuses a run
    whose patterns match no file before the pipeline starts. Folders named
    exactly by a pattern are matched (and become read errors downstream).

    Args:
        patterns: glob patterns or URIs, as :func:`beam_jobs.files.check_inputs` returns them.
    """

    def __init__(self, patterns: list[str] | tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = list(patterns)

    def expand(self, begin: beam.pvalue.PBegin) -> beam.PCollection:
        """Match every pattern; one element per distinct input."""
        return (
            begin
            | "Patterns" >> beam.Create(self.patterns)
            | "MatchAll" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "Named" >> beam.Map(files.matched_file)
            | "ByInput" >> beam.Map(lambda m: (input_key(m.uri), (m.uri, m.size)))
            | "GroupInputs" >> beam.GroupByKey()
            | "OneInput" >> beam.ParDo(_OneInput())
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


class DeleteMatching(beam.PTransform):
    """Patterns -> the files they match deleted by the workers; one count (for a side input).

    What ``--overwrite`` does with an earlier run's Grad-CAM overlays and slide
    heatmaps: there is one per input, so the pipeline lists and deletes them,
    in batches, rather than the launcher. Use the count as a side input of the
    first scoring step (:func:`after`) so nothing is written before they are gone.
    Counts ``old_outputs_deleted``.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        super().__init__()
        self.patterns = list(patterns)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        """Match (nothing matched is fine), delete in batches of up to 1,000, sum."""
        deleted = Metrics.counter(METRICS_NAMESPACE, "old_outputs_deleted")

        def delete(uris: list[str]) -> int:
            files.delete_files(uris)
            deleted.inc(len(uris))
            return len(uris)

        return (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Batches" >> beam.BatchElements(min_batch_size=1, max_batch_size=1000)
            | "Delete" >> beam.Map(delete)
            | "Count" >> beam.CombineGlobally(sum)
        )


def _unchanged(element: Any, _barrier: Any) -> Any:
    return element


def after(elements: beam.PCollection, barrier: beam.PCollection, label: str) -> beam.PCollection:
    """``elements``, passed on only once the one-value ``barrier`` is computed."""
    return elements | label >> beam.Map(_unchanged, beam.pvalue.AsSingleton(barrier))
