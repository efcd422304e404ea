"""The Streamlit web app: the pipeline's interactive front end for people.

It sits at the end of the pipeline beside the Cloud Function and the bulk Beam
jobs, and like them it only *reads* the SavedModel contract (``model_export``)
and the files the other units write:

- **Analyse images**: upload images (or try a random sample) and see the model's
  prediction, probability and threshold, with the Grad-CAM overlay;
- **Scoring runs**: browse a bulk scoring run's result and error rows, and open
  any image with its overlay;
- **Evaluation**: an evaluation run's metrics with confidence intervals and plots;
- **Model & training**: the model version's metadata, training history curves and
  architecture summary.

``config`` parses settings at the edge, ``data`` and ``scoring`` hold the logic
as plain functions the tests call directly, ``views`` draws the pages and
``streamlit_app`` is the entry point (``make app``). Research use only.
"""
