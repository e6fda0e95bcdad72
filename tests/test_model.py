from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from sweep.data import PAD_VALUE  # noqa: E402
from sweep.errors import SpecError  # noqa: E402
from sweep.model import Family, Head, ModelShape, build_model, check_family, make_optimizer  # noqa: E402
from sweep.space import Hyperparams  # noqa: E402

STEPS, FEATURES, CLASSES = 5, 3, 4
SEQUENCE = (STEPS, FEATURES)
TABULAR = (6,)
RECURRENT = {"lstm": layers.LSTM, "gru": layers.GRU}
HEADS = {
    "classification": (Head.CLASSIFICATION, CLASSES, "sparse_categorical_crossentropy", "softmax"),
    "regression": (Head.REGRESSION, 1, "mse", "linear"),
}


def reset_session() -> None:
    """Clear Keras' global state between builds (the full garbage collection runs once per module)."""
    keras.backend.clear_session(free_memory=False)


@pytest.fixture(scope="module", autouse=True)
def free_memory_after_module() -> Iterator[None]:
    yield
    keras.backend.clear_session()


@pytest.fixture(autouse=True)
def fresh_session() -> Iterator[None]:
    reset_session()
    keras.utils.set_random_seed(0)
    yield
    reset_session()


def hp(**changes: Any) -> Hyperparams:
    base = Hyperparams(
        n_layers=2,
        units=4,
        activation="tanh",
        learning_rate=1e-2,
        optimizer="adam",
        batch_size=4,
        dropout=0.0,
        l2=0.0,
        layer_norm=False,
    )
    return dataclasses.replace(base, **changes)


def shape_for(family: str, head: str = "classification", *, masked: bool = False, tabular: bool = False) -> ModelShape:
    kind, n_outputs, _, _ = HEADS[head]
    input_shape = TABULAR if tabular else SEQUENCE
    return ModelShape(input_shape=input_shape, head=kind, n_outputs=n_outputs, masked=masked)


def of_type(model: Any, cls: type) -> list[Any]:
    return [layer for layer in model.layers if isinstance(layer, cls)]


def layer_kinds(model: Any) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


# --------------------------------------------------------------------------- heads


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("family", ["lstm", "gru", "dense"])
def test_output_shape_loss_and_head(family: str, head: str) -> None:
    _, n_outputs, loss, activation = HEADS[head]
    model = build_model(hp(), family=family, shape=shape_for(family, head))
    assert model.output_shape == (None, n_outputs)
    assert model.input_shape == (None, *SEQUENCE)
    assert model.loss == loss
    assert model.name == f"sweep_{family}"
    out = model.layers[-1]
    assert isinstance(out, layers.Dense)
    assert out.units == n_outputs
    assert out.activation.__name__ == activation
    assert out.kernel_regularizer is None
    prediction = model.predict(np.zeros((2, *SEQUENCE), dtype="float32"), verbose=0)
    assert prediction.shape == (2, n_outputs)
    if head == "classification":
        np.testing.assert_allclose(prediction.sum(axis=1), 1.0, rtol=1e-5)


def test_family_enum_is_accepted() -> None:
    model = build_model(hp(), family=Family.GRU, shape=shape_for("gru"))
    assert len(of_type(model, layers.GRU)) == 2


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="transformer"):
        build_model(hp(), family="transformer", shape=shape_for("lstm"))


# --------------------------------------------------------------------------- recurrent stacks


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("family", list(RECURRENT))
def test_recurrent_stack(family: str, n_layers: int) -> None:
    model = build_model(hp(n_layers=n_layers, units=6, activation="relu"), family=family, shape=shape_for(family))
    cells = of_type(model, RECURRENT[family])
    assert len(cells) == n_layers
    assert [c.return_sequences for c in cells] == [True] * (n_layers - 1) + [False]
    assert all(c.units == 6 for c in cells)
    assert all(c.cell.activation.__name__ == "relu" for c in cells)
    assert of_type(model, layers.Flatten) == []
    assert len(of_type(model, layers.Dense)) == 1  # the head only


@pytest.mark.parametrize("n_layers", [2, 3])
@pytest.mark.parametrize("family", list(RECURRENT))
def test_layer_norm_between_recurrent_layers(family: str, n_layers: int) -> None:
    cell = RECURRENT[family].__name__
    with_norm = build_model(hp(n_layers=n_layers, layer_norm=True), family=family, shape=shape_for(family))
    assert layer_kinds(with_norm) == [
        "InputLayer",
        *[kind for _ in range(n_layers - 1) for kind in (cell, "LayerNormalization")],
        cell,
        "Dense",
    ]
    reset_session()
    without = build_model(hp(n_layers=n_layers, layer_norm=False), family=family, shape=shape_for(family))
    assert of_type(without, layers.LayerNormalization) == []


def test_dense_ignores_layer_norm() -> None:
    model = build_model(hp(n_layers=3, layer_norm=True), family="dense", shape=shape_for("dense", tabular=True))
    assert of_type(model, layers.LayerNormalization) == []


@pytest.mark.parametrize("family", list(RECURRENT))
def test_recurrent_dropout(family: str) -> None:
    model = build_model(hp(dropout=0.3), family=family, shape=shape_for(family))
    assert [c.cell.dropout for c in of_type(model, RECURRENT[family])] == [0.3, 0.3]
    drops = of_type(model, layers.Dropout)
    assert len(drops) == 1
    assert drops[0].rate == 0.3
    assert layer_kinds(model)[-2:] == ["Dropout", "Dense"]
    reset_session()
    plain = build_model(hp(dropout=0.0), family=family, shape=shape_for(family))
    assert of_type(plain, layers.Dropout) == []
    assert all(c.cell.dropout == 0.0 for c in of_type(plain, RECURRENT[family]))


@pytest.mark.parametrize("family", list(RECURRENT))
def test_masking_iff_masked(family: str) -> None:
    masked = build_model(hp(), family=family, shape=shape_for(family, masked=True))
    masks = of_type(masked, layers.Masking)
    assert len(masks) == 1
    assert masks[0].mask_value == PAD_VALUE
    assert layer_kinds(masked)[:2] == ["InputLayer", "Masking"]
    reset_session()
    plain = build_model(hp(), family=family, shape=shape_for(family, masked=False))
    assert of_type(plain, layers.Masking) == []


def test_masked_padding_does_not_change_the_prediction() -> None:
    model = build_model(hp(n_layers=2), family="lstm", shape=shape_for("lstm", masked=True))
    rng = np.random.default_rng(0)
    short = rng.normal(size=(1, 3, FEATURES)).astype("float32") + 5.0
    padded = np.concatenate([short, np.full((1, STEPS - 3, FEATURES), PAD_VALUE, dtype="float32")], axis=1)
    other_tail = np.concatenate([short, np.full((1, STEPS - 3, FEATURES), 9.0, dtype="float32")], axis=1)
    pad_pred = model.predict(padded, verbose=0)
    assert not np.allclose(pad_pred, model.predict(other_tail, verbose=0))
    shorter = build_model(hp(n_layers=2), family="lstm", shape=ModelShape((3, FEATURES), Head.CLASSIFICATION, CLASSES))
    shorter.set_weights(model.get_weights())
    np.testing.assert_allclose(pad_pred, shorter.predict(short, verbose=0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- regularisation


@pytest.mark.parametrize("family", ["lstm", "gru", "dense"])
def test_l2_regulariser_iff_l2(family: str) -> None:
    model = build_model(hp(l2=1e-3), family=family, shape=shape_for(family))
    hidden = of_type(model, RECURRENT.get(family, layers.Dense))[: 2]
    assert len(hidden) == 2
    for layer in hidden:
        reg = layer.cell.kernel_regularizer if family in RECURRENT else layer.kernel_regularizer
        assert isinstance(reg, keras.regularizers.L2)
        assert math.isclose(float(reg.l2), 1e-3, rel_tol=1e-6)
    assert len(model.losses) == 2
    reset_session()
    plain = build_model(hp(l2=0.0), family=family, shape=shape_for(family))
    for layer in plain.layers:
        target = getattr(layer, "cell", layer)
        assert getattr(target, "kernel_regularizer", None) is None
    assert plain.losses == []


# --------------------------------------------------------------------------- dense


@pytest.mark.parametrize("n_layers", [1, 3])
def test_dense_mlp_on_tabular_data(n_layers: int) -> None:
    model = build_model(
        hp(n_layers=n_layers, units=7, activation="gelu", dropout=0.2),
        family="dense",
        shape=shape_for("dense", tabular=True),
    )
    assert model.input_shape == (None, *TABULAR)
    assert of_type(model, layers.Flatten) == []
    hidden = of_type(model, layers.Dense)[:-1]
    assert len(hidden) == n_layers
    assert all(d.units == 7 and d.activation.__name__ == "gelu" for d in hidden)
    assert layer_kinds(model) == ["InputLayer", *["Dense", "Dropout"] * n_layers, "Dense"]
    assert all(d.rate == 0.2 for d in of_type(model, layers.Dropout))


def test_dense_without_dropout_has_no_dropout_layer() -> None:
    model = build_model(hp(dropout=0.0), family="dense", shape=shape_for("dense", tabular=True))
    assert of_type(model, layers.Dropout) == []


def test_dense_flattens_sequences() -> None:
    model = build_model(hp(n_layers=1, units=5), family="dense", shape=shape_for("dense"))
    flatten = of_type(model, layers.Flatten)
    assert len(flatten) == 1
    assert flatten[0].output.shape == (None, STEPS * FEATURES)
    assert layer_kinds(model)[:3] == ["InputLayer", "Flatten", "Dense"]
    assert of_type(model, layers.Dense)[0].kernel.shape == (STEPS * FEATURES, 5)


# --------------------------------------------------------------------------- check_family


@pytest.mark.parametrize("family", ["lstm", "gru", Family.LSTM])
def test_check_family_refuses_recurrent_on_tabular(family: Any) -> None:
    shape = ModelShape(input_shape=TABULAR, head=Head.CLASSIFICATION, n_outputs=CLASSES)
    with pytest.raises(SpecError) as info:
        check_family(family, shape, data_name="breast_cancer")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"model.family: got {Family(family).value!r} but data 'breast_cancer' is tabular")
    assert "6 features" in message
    assert "'dense'" in message
    assert info.value.exit_code == 2


def test_check_family_accepts_what_fits() -> None:
    tabular = ModelShape(input_shape=TABULAR, head=Head.REGRESSION, n_outputs=1)
    sequence = ModelShape(input_shape=SEQUENCE, head=Head.REGRESSION, n_outputs=1)
    assert check_family("dense", tabular, data_name="d") is None
    assert check_family("dense", sequence, data_name="d") is None
    assert check_family("lstm", sequence, data_name="d") is None
    assert check_family("gru", sequence, data_name="d") is None


def test_build_model_refuses_recurrent_on_tabular() -> None:
    with pytest.raises(SpecError, match=r"^model\.family: got 'gru'"):
        build_model(hp(), family="gru", shape=shape_for("gru", tabular=True))


# --------------------------------------------------------------------------- optimizers

OPTIMIZER_CLASSES = {
    "adam": "Adam",
    "adamw": "AdamW",
    "nadam": "Nadam",
    "rmsprop": "RMSprop",
    "sgd": "SGD",
}


@pytest.mark.parametrize("name", list(OPTIMIZER_CLASSES))
def test_make_optimizer_class_rate_and_clipnorm(name: str) -> None:
    cls = getattr(keras.optimizers, OPTIMIZER_CLASSES[name])
    opt = make_optimizer(name, 0.003, clipnorm=1.5)
    assert type(opt) is cls
    assert math.isclose(float(opt.learning_rate), 0.003, rel_tol=1e-6)
    assert opt.clipnorm == 1.5
    assert make_optimizer(name, 0.003).clipnorm is None


def test_make_optimizer_sgd_momentum() -> None:
    opt = make_optimizer("sgd", 0.1, momentum=0.7)
    assert type(opt) is keras.optimizers.SGD
    assert opt.momentum == 0.7
    assert make_optimizer("sgd", 0.1).momentum == 0.9


def test_make_optimizer_clipnorm_clips_the_update() -> None:
    variable = keras.Variable(np.zeros(2, dtype="float32"))
    opt = make_optimizer("sgd", 1.0, momentum=0.0, clipnorm=1.0)
    opt.apply_gradients([(keras.ops.convert_to_tensor(np.array([30.0, 40.0], dtype="float32")), variable)])
    np.testing.assert_allclose(np.asarray(variable), [-0.6, -0.8], rtol=1e-5)


def test_make_optimizer_refuses_an_unknown_name() -> None:
    with pytest.raises(SpecError) as info:
        make_optimizer("adagrad", 0.01)
    assert str(info.value) == "search.optimizer: got 'adagrad'; allowed: adam, adamw, nadam, rmsprop, sgd"


def test_build_model_compiles_with_the_training_options() -> None:
    model = build_model(
        hp(optimizer="sgd", learning_rate=0.05),
        family="dense",
        shape=shape_for("dense", tabular=True),
        momentum=0.5,
        clipnorm=2.0,
        steps_per_execution=3,
    )
    assert type(model.optimizer) is keras.optimizers.SGD
    assert model.optimizer.momentum == 0.5
    assert model.optimizer.clipnorm == 2.0
    assert math.isclose(float(model.optimizer.learning_rate), 0.05, rel_tol=1e-6)
    assert model.steps_per_execution == 3


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("family", "head", "masked", "tabular"),
    [
        ("lstm", "classification", True, False),
        ("gru", "regression", False, False),
        ("dense", "classification", False, True),
        ("dense", "regression", False, False),
    ],
)
def test_tiny_fit(family: str, head: str, masked: bool, tabular: bool) -> None:
    rng = np.random.default_rng(0)
    shape = shape_for(family, head, masked=masked, tabular=tabular)
    x = rng.normal(size=(8, *shape.input_shape)).astype("float32")
    if masked:
        x[:4, -2:, :] = PAD_VALUE
    if head == "classification":
        y = rng.integers(0, CLASSES, size=8)
    else:
        y = rng.normal(size=(8, 1)).astype("float32")
    model = build_model(
        hp(dropout=0.1, l2=1e-4, layer_norm=True, optimizer="rmsprop"), family=family, shape=shape
    )
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 1 and math.isfinite(losses[0])
    metric = "accuracy" if head == "classification" else "mae"
    assert metric in history.history
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))
