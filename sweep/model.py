"""Keras model families: stacked LSTM, stacked GRU and a dense MLP, or the user's builder.

Keras is imported inside the functions: importing this module is cheap, and
only a process that trains pays for TensorFlow.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sweep.errors import SpecError

if TYPE_CHECKING:
    import keras

    from sweep.data import Dataset, Prepared
    from sweep.space import Hyperparams


class Family(str, enum.Enum):
    LSTM = "lstm"
    GRU = "gru"
    DENSE = "dense"


class Head(str, enum.Enum):
    """The output layer and loss that fit the task."""

    CLASSIFICATION = "classification"  # softmax over classes, sparse categorical cross-entropy
    REGRESSION = "regression"  # linear units, mean squared error (also one-step forecasting)


@dataclass(frozen=True)
class ModelShape:
    """What a model needs to know about its data."""

    input_shape: tuple[int, ...]  # without the batch axis: (features,) or (steps, features)
    head: Head
    n_outputs: int  # classes for classification, targets for regression
    masked: bool = False  # variable-length sequences padded with PAD_VALUE


def model_shape(dataset: Dataset) -> ModelShape:
    """What the model families need to know about ``dataset``."""
    from sweep.data import Task

    if dataset.task is Task.CLASSIFICATION:
        head, outputs = Head.CLASSIFICATION, int(dataset.n_classes or 2)
    else:
        head, outputs = Head.REGRESSION, 1 if dataset.y.ndim == 1 else int(dataset.y.shape[1])
    return ModelShape(
        input_shape=tuple(int(d) for d in dataset.X.shape[1:]),
        head=head,
        n_outputs=outputs,
        masked=dataset.padded,
    )


def check_family(family: Family | str, shape: ModelShape, *, data_name: str) -> None:
    """Refuse a recurrent family on tabular data, with a one-line reason.

    Raises:
        SpecError: the family cannot read this data.
    """
    family = Family(family)
    if family is not Family.DENSE and len(shape.input_shape) != 2:
        what = (
            f"is tabular ({shape.input_shape[0]} features, no time axis)"
            if len(shape.input_shape) == 1
            else f"has samples of shape {shape.input_shape}"
        )
        raise SpecError(
            f"model.family: got {family.value!r} but data {data_name!r} {what}; recurrent families "
            "need (steps, features) sequences, so use 'dense' or give data.lookback"
        )


def build_model(
    params: Hyperparams,
    *,
    family: Family | str | None,
    shape: ModelShape,
    momentum: float = 0.9,
    clipnorm: float | None = None,
    steps_per_execution: int = 1,
    builder: Any = None,
) -> keras.Model:
    """Build and compile one model for ``params``.

    Recurrent families stack ``n_layers`` layers of ``units`` cells with
    ``return_sequences`` on all but the last, optional LayerNormalization
    between them, dropout and L2 kernel regularisation; the dense family is an MLP of
    the same depth and width (sequences are flattened first). With a ``builder``
    (a :class:`sweep.builder.Builder`; ``family`` None) the user's function builds
    it; a model it returns uncompiled is compiled here as a family's would be.
    """
    from keras import layers

    from sweep.data import PAD_VALUE

    if builder is not None:
        model = builder.build(params.as_dict(), shape)
        if not model.compiled:
            _compile(model, params, shape, momentum=momentum, clipnorm=clipnorm,
                     steps_per_execution=steps_per_execution)  # fmt: skip
        return model
    import keras

    family = Family(family)
    check_family(family, shape, data_name="data")
    regularizer = keras.regularizers.L2(params.l2) if params.l2 > 0 else None

    inputs = keras.Input(shape=shape.input_shape)
    x: Any = inputs
    if family is Family.DENSE:
        if len(shape.input_shape) > 1:
            x = layers.Flatten()(x)
        for _ in range(params.n_layers):
            x = layers.Dense(params.units, activation=params.activation, kernel_regularizer=regularizer)(x)
            if params.dropout > 0:
                x = layers.Dropout(params.dropout)(x)
    else:
        if shape.masked:
            x = layers.Masking(mask_value=PAD_VALUE)(x)
        cell = layers.LSTM if family is Family.LSTM else layers.GRU
        for i in range(params.n_layers):
            last = i == params.n_layers - 1
            x = cell(
                params.units,
                activation=params.activation,
                return_sequences=not last,
                kernel_regularizer=regularizer,
                dropout=params.dropout,
            )(x)
            if params.layer_norm and not last:
                x = layers.LayerNormalization()(x)
        if params.dropout > 0:
            x = layers.Dropout(params.dropout)(x)

    if shape.head is Head.CLASSIFICATION:
        # The outputs stay float32 under mixed precision (a float16 softmax loses precision).
        outputs = layers.Dense(shape.n_outputs, activation="softmax", dtype="float32")(x)
    else:
        outputs = layers.Dense(shape.n_outputs, dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=f"sweep_{family.value}")
    _compile(model, params, shape, momentum=momentum, clipnorm=clipnorm, steps_per_execution=steps_per_execution)
    return model


def _compile(
    model: keras.Model,
    params: Hyperparams,
    shape: ModelShape,
    *,
    momentum: float,
    clipnorm: float | None,
    steps_per_execution: int,
) -> None:
    """Compile with the trial's optimizer and learning rate and the task's loss and metric."""
    if shape.head is Head.CLASSIFICATION:
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    else:
        loss, metrics = "mse", ["mae"]
    model.compile(
        optimizer=make_optimizer(params.optimizer, params.learning_rate, momentum=momentum, clipnorm=clipnorm),
        loss=loss,
        metrics=metrics,
        steps_per_execution=steps_per_execution,
    )


def export_model(trained: keras.Model, *, shape: ModelShape, prepared: Prepared, nested: bool = False) -> keras.Model:
    """``trained`` as a model of the raw inputs: the scaling fitted on the training rows is inside it.

    The features are standardised by a ``Normalization`` layer holding the training rows'
    mean and variance (padded steps of variable-length sequences are masked on the raw
    input, as the trained model masked them on the scaled one); for regression a frozen
    ``Dense`` layer undoes the target scaling, so the outputs are in the data's own units.
    Only built-in Keras layers: ``keras.models.load_model`` reads the file without sweep.
    A builder's model (``nested``), which need not be a chain of layers, is called whole
    after the scaling (its own layers must load with plain Keras too).
    """
    import keras
    from keras import layers

    from sweep.data import PAD_VALUE

    inputs = keras.Input(shape=shape.input_shape, name="raw_inputs")
    x = inputs
    if shape.masked:
        x = layers.Masking(mask_value=PAD_VALUE, name="padding")(x)
    x = layers.Normalization(
        axis=-1,
        mean=prepared.x_mean.astype("float64").tolist(),
        variance=(prepared.x_scale.astype("float64") ** 2).tolist(),
        name="standardise_features",
    )(x)
    if nested:
        x = trained(x)
    for layer in () if nested else trained.layers:
        if isinstance(layer, layers.InputLayer | layers.Masking):
            continue  # the trained model's masking looked at scaled zeros; the mask now comes from the raw input
        x = layer(x)
    if prepared.y_mean is not None and prepared.y_scale is not None:
        scale = np.atleast_1d(prepared.y_scale).astype("float32")
        unscale = layers.Dense(scale.size, trainable=False, name="unscale_targets", dtype="float32")
        x = unscale(x)
        unscale.set_weights([np.diag(scale), np.atleast_1d(prepared.y_mean).astype("float32")])
    return keras.Model(inputs, x, name=f"{trained.name}_raw_inputs")


def make_optimizer(
    name: str, learning_rate: float, *, momentum: float = 0.9, clipnorm: float | None = None
) -> keras.optimizers.Optimizer:
    """One of adam, adamw, nadam, rmsprop or sgd (with momentum)."""
    import keras

    common: dict[str, Any] = {"learning_rate": learning_rate}
    if clipnorm is not None:
        common["clipnorm"] = clipnorm
    match name:
        case "adam":
            return keras.optimizers.Adam(**common)
        case "adamw":
            return keras.optimizers.AdamW(**common)
        case "nadam":
            return keras.optimizers.Nadam(**common)
        case "rmsprop":
            return keras.optimizers.RMSprop(**common)
        case "sgd":
            return keras.optimizers.SGD(momentum=momentum, **common)
    raise SpecError(f"search.optimizer: got {name!r}; allowed: adam, adamw, nadam, rmsprop, sgd")
