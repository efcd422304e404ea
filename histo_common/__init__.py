"""Pieces shared by every deployable unit of the pipeline.

``storage`` (one I/O layer for ``gs://`` and local URIs), ``images`` (checks on
encoded image bytes before they reach the model), ``results`` (the result and
error row schemas that scoring, the function and the app write and read),
``overlay`` (Grad-CAM rendering), ``samples`` (synthetic H&E patches and slides
for the demo and the tests), and for inputs larger than a patch ``slides``
(whole-slide and large-image readers), ``tiling`` (the one tiling rule) and
``tissue`` (the tissue mask). It imports none of its users.
"""

DISCLAIMER = (
    "Research use only: this is not a medical device and its output must not be "
    "used for diagnosis or treatment decisions."
)
