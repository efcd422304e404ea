"""Pieces shared by every deployable unit of the pipeline.

``storage`` (one I/O layer for ``gs://`` and local URIs), ``images`` (checks on
encoded image bytes before they reach the model), ``results`` (the result and
error row schemas that scoring, the function and the app write and read),
``overlay`` (Grad-CAM rendering) and ``samples`` (synthetic H&E patches for the
demo and the tests). It imports none of its users.
"""

DISCLAIMER = (
    "Research use only: this is not a medical device and its output must not be "
    "used for diagnosis or treatment decisions."
)
