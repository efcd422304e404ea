"""The training job: reads labelled images from a bucket, trains, exports a model version.

It sits at the start of the pipeline: ``python -m training --data URI --output URI``
(or the container in ``training/Dockerfile``) trains the custom CNN or MobileNetV2
and hands the model to ``model_export``, which writes the SavedModel contract that
Beam jobs, the Cloud Function and the app load.
"""
