"""An ensemble of classifiers that is itself a classifier in the contract's shape.

Members (each ``inputs -> backbone -> head``) become one model whose backbone
concatenates the members' feature maps and whose head averages their logits,
each member's head reading its own channels. Grad-CAM over the concatenated map
then sums the members' weighted feature maps before the ReLU: the ensemble's
heatmap, with no change to the exported graph. The training job uses it for the
cross-fitted fold models.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="histoscreen")
class ChannelSlice(layers.Layer):
    """Channels ``[start, stop)`` of the last axis (one member's share of the features)."""

    def __init__(self, start: int, stop: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start = int(start)
        self.stop = int(stop)

    def call(self, inputs: Any) -> Any:  # a symbolic or eager tensor
        """Slice the last axis."""
        return inputs[..., self.start : self.stop]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Same shape with ``stop - start`` channels."""
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self) -> dict:
        """Serialisable configuration."""
        return {**super().get_config(), "start": self.start, "stop": self.stop}


def ensemble_classifier(members: list[keras.Model], name: str) -> keras.Model:
    """Combine classifiers with ``backbone``/``head`` sub-models into one.

    Args:
        members: trained classifiers of the same architecture and input size.
        name: the ensemble model's name.

    Returns:
        A model ``inputs -> backbone -> head -> probabilities`` whose output is the
        activation of the members' mean logit.
    """
    if len(members) == 1:
        return members[0]
    shape = members[0].input_shape[1:]
    inputs = keras.Input(shape, name="image")
    feature_maps, heads, bounds = [], [], []
    start = 0
    for i, member in enumerate(members):
        backbone = member.get_layer("backbone")
        wrapped = keras.Model(backbone.input, backbone.output, name=f"member{i}_backbone")
        feature_maps.append(wrapped(inputs))
        channels = int(backbone.output.shape[-1])
        bounds.append((start, start + channels))
        start += channels
        heads.append(member.get_layer("head"))
    backbone = keras.Model(
        inputs, layers.Concatenate(axis=-1, name="member_features")(feature_maps), name="backbone"
    )
    features = keras.Input(backbone.output.shape[1:], name="features")
    logits = []
    for i, (head, (lo, hi)) in enumerate(zip(heads, bounds, strict=True)):
        wrapped = keras.Model(head.input, head.output, name=f"member{i}_head")
        logits.append(wrapped(ChannelSlice(lo, hi, name=f"member{i}_channels")(features)))
    head = keras.Model(features, layers.Average(name="mean_logit")(logits), name="head")
    activation = members[0].get_layer("probabilities").activation
    outputs = layers.Activation(activation, name="probabilities", dtype="float32")(
        head(backbone(inputs))
    )
    return keras.Model(inputs, outputs, name=name)
