"""Bulk scoring and evaluation of image sets with Apache Beam.

Where it sits: ``training`` exports a model version in the SavedModel contract
(``model_export``); these jobs load that version and run it over many images at
once, on the DirectRunner locally or on Dataflow in the cloud, with ``gs://`` and
local paths alike (Beam's ``FileSystems``).

- ``score`` (``python -m beam_jobs.score``): one result row per image under
  ``<output>/results/``, one error row per unusable file under ``<output>/errors/``,
  optional Grad-CAM overlays, and a ``summary.json`` that checks nothing was lost.
- ``evaluate`` (``python -m beam_jobs.evaluate``): metrics with bootstrap intervals,
  plots, ``metrics.json``, a self-contained ``report.html`` and an optional
  promotion gate (``BLESSED`` / ``NOT_BLESSED`` beside the model version).

Every output name comes from ``histo_common.layout``; the metrics, plots, report
and gate are the ``evaluation`` unit's, which ``evaluate`` only wires into Beam.
Pure pieces (no Beam) live in ``stages``, ``labels`` and ``summary``; the
reusable Beam stages in ``transforms`` and the model handler for
``RunInference`` in ``model_handler``; the validated flags in ``config``.
Research use only.
"""
