"""Evaluation of a model on labelled, scored images: its own unit.

``metrics`` (pure numpy: point, ranking and calibration metrics with bootstrap
intervals; training reports its validation metrics with it), ``plots``
(matplotlib PNGs), ``report`` (one self-contained HTML page), ``gate`` (the
promotion verdict) and ``outputs`` (typed scores in, the metrics document,
plots, report and verdict out, where :mod:`histo_common.layout` says). It
imports only ``histo_common``, numpy, scikit-learn and matplotlib; the Beam job
``beam_jobs.evaluate`` wires it to a scoring pipeline.
"""
