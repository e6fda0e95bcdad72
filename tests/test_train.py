"""Fitting one model: curves, early stopping, pruning, divergence, interruption (tiny real models)."""

from __future__ import annotations

import math

import pytest

from sweep.data import load_dataset, make_splits, prepare
from sweep.model import model_shape
from sweep.space import Hyperparams
from sweep.train import Stop, configure_threads, fit_repeat, release


@pytest.fixture(scope="module")
def tabular():
    configure_threads(2)
    ds = load_dataset(source="diabetes")
    (split,) = make_splits(ds, n_splits=1, validation_fraction=0.2, seed=0)
    return model_shape(ds), prepare(ds, split)


def _params(**changes) -> Hyperparams:
    base = dict(n_layers=1, units=8, activation="tanh", learning_rate=0.01, optimizer="adam",
                batch_size=64, dropout=0.0, l2=0.0)
    return Hyperparams(**{**base, **changes})


def _fit(tabular, params: Hyperparams, **kwargs):
    shape, data = tabular
    curves, _ = fit_repeat(params, family="dense", shape=shape, data=data, seed=1, **kwargs)
    release()
    return curves


def test_curves_have_one_value_per_epoch(tabular) -> None:
    c = _fit(tabular, _params(), max_epochs=4, patience=0)
    assert c.stop is Stop.COMPLETED
    assert c.epochs == 4 and len(c.loss) == 4 and len(c.metric) == 4 and c.metric_name == "mae"
    assert all(math.isfinite(v) for v in c.val_loss)


def test_same_seed_same_curves(tabular) -> None:
    assert _fit(tabular, _params(), max_epochs=2, patience=0).val_loss == pytest.approx(
        _fit(tabular, _params(), max_epochs=2, patience=0).val_loss, rel=1e-5)


def test_pruning_hook_stops_training(tabular) -> None:
    seen: list[int] = []

    def hook(epoch: int, val: float) -> bool:
        seen.append(epoch)
        return epoch == 1

    c = _fit(tabular, _params(), max_epochs=10, patience=0, on_epoch=hook)
    assert c.stop is Stop.PRUNED and c.epochs == 2 and seen == [0, 1]


def test_non_finite_loss_is_divergence(tabular) -> None:
    c = _fit(tabular, _params(n_layers=2, units=12, activation="elu", learning_rate=10.0, optimizer="sgd"),
             max_epochs=5, patience=0)
    assert c.stop is Stop.DIVERGED
    assert not math.isfinite(c.val_loss[-1]) or not math.isfinite(c.loss[-1])


def test_should_stop_interrupts_within_a_batch(tabular) -> None:
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    c = _fit(tabular, _params(batch_size=16), max_epochs=50, patience=0, should_stop=should_stop)
    assert c.stop is Stop.INTERRUPTED
    assert c.epochs <= 1
