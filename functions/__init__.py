"""The upload-triggered Cloud Function: one image in, its Grad-CAM and prediction beside it.

Where it sits: ``training`` exports a model in the SavedModel contract
(``model_export``); this unit loads that model once per instance and scores every
image finalized in the uploads bucket, writing ``<name>.gradcam.png`` and
``<name>.prediction.json`` (or ``<name>.error.json`` for a file that can never be
scored) beside it. The bulk counterpart is ``beam_jobs``; the app reads the same
outputs.

- ``main``: the thin functions-framework handlers ``on_upload`` (CloudEvent) and
  ``predict_http`` (HTTP, with an upload page).
- ``screening``: the plain, event-free logic (``screen_object``, ``score_image``).
- ``settings``: the environment, parsed and validated into ``FunctionSettings``.
- ``runtime``: the per-instance globals (settings, the lazily loaded model).
- ``logs``: structured JSON log lines for Cloud Logging.
- ``watch``: the embedded default for Eventarc, a folder or emulator-bucket watcher
  that sends real CloudEvents to the function running under functions-framework.
- ``package``: builds the deployable source zip.
"""
