"""A tabular classifier of residual blocks: the builder of studies/residual-tabular.toml.

Each block is Dense -> Dropout -> Dense added back to its input, then a layer
normalisation: a shape the built-in ``dense`` family cannot express. ``width``
is this study's own parameter (``[search.extra]``); the eight are in
``params`` under their usual names.
"""

import keras
from keras import layers


def build(params, shape):
    inputs = keras.Input(shape=shape.input_shape)
    x = layers.Dense(params["width"], activation=params["activation"])(inputs)
    for _ in range(params["n_layers"]):
        h = layers.Dense(params["units"], activation=params["activation"])(x)
        h = layers.Dropout(params["dropout"])(h)
        h = layers.Dense(params["width"])(h)
        x = layers.LayerNormalization()(layers.Add()([x, h]))
    outputs = layers.Dense(shape.n_outputs, activation="softmax")(x)  # class probabilities
    return keras.Model(inputs, outputs, name="residual_mlp")
