"""A Conv1D front before an LSTM: the builder of studies/conv-lstm-series.toml.

sweep calls ``build(params, shape)`` once per repeat. ``params`` holds the
eight searched parameters (``n_layers``, ``units``, ``activation``,
``learning_rate``, ``optimizer``, ``batch_size``, ``dropout``, ``l2``), plus
``layer_norm`` and this study's ``[search.extra]`` ones (``filters``,
``kernel_size``). ``shape.input_shape`` is ``(steps, features)`` here. The
model is returned uncompiled: sweep compiles it with the trial's optimizer and
learning rate and the task's loss.
"""

import keras
from keras import layers


def build(params, shape):
    inputs = keras.Input(shape=shape.input_shape)
    x = layers.Conv1D(params["filters"], params["kernel_size"], padding="causal", activation="relu")(inputs)
    regularizer = keras.regularizers.L2(params["l2"]) if params["l2"] > 0 else None
    for i in range(params["n_layers"]):
        last = i == params["n_layers"] - 1
        x = layers.LSTM(params["units"], activation=params["activation"], return_sequences=not last,
                        kernel_regularizer=regularizer)(x)
    if params["dropout"] > 0:
        x = layers.Dropout(params["dropout"])(x)
    outputs = layers.Dense(shape.n_outputs)(x)  # one value per target (regression)
    return keras.Model(inputs, outputs, name="conv_lstm")
