"""The SavedModel contract: export (``export``), loading (``loader``), TF Serving client.

Training writes models through this package; Beam jobs, the Cloud Function and the
app read them through :func:`model_export.loader.load_model`. It imports none of
its users. Heavy modules (TensorFlow) are imported only by the submodules that
need them.
"""
