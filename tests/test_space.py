from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweep.space import Hyperparams, distributions, searched_names, suggest
from sweep.spec import PARAM_NAMES, SearchSection

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAMILIES = ("lstm", "gru", "dense")
N_TRIALS = 12

ALL_FIXED: dict[str, Any] = {
    "n_layers": 3,
    "units": 17,
    "activation": "selu",
    "learning_rate": 0.00123,
    "optimizer": "nadam",
    "batch_size": 48,
    "dropout": 0.25,
    "l2": 1e-5,
    "layer_norm": True,
}

ALL_SEARCHED: dict[str, Any] = {
    "n_layers": {"low": 1, "high": 4},
    "units": {"low": 8, "high": 256, "log": True},
    "activation": ["tanh", "relu", "gelu"],
    "learning_rate": {"low": 1e-5, "high": 1e-1, "log": True},
    "optimizer": ["adam", "adamw", "nadam", "rmsprop", "sgd"],
    "batch_size": [16, 32, 64],
    "dropout": {"low": 0.0, "high": 0.6},
    "l2": {"low": 1e-7, "high": 1e-2, "log": True},
    "layer_norm": [False, True],
}

STEPPED: dict[str, Any] = {
    "n_layers": {"low": 1, "high": 7, "step": 2},
    "units": {"low": 8, "high": 64, "step": 8},
    "dropout": {"low": 0.0, "high": 0.5, "step": 0.1},
    "learning_rate": {"low": 0.001, "high": 0.01},
}

SPACES: dict[str, dict[str, Any]] = {"defaults": {}, "fixed": ALL_FIXED, "searched": ALL_SEARCHED, "stepped": STEPPED}


def expected_names(family: str) -> set[str]:
    return set(PARAM_NAMES) | ({"layer_norm"} if family != "dense" else set())


def run_space(
    search: SearchSection, family: str, n_trials: int = N_TRIALS
) -> list[tuple[optuna.trial.FrozenTrial, Hyperparams]]:
    """Optimise a trivial objective; return each finished trial with the Hyperparams suggest gave it."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn: dict[int, Hyperparams] = {}

    def objective(trial: optuna.Trial) -> float:
        hp = suggest(trial, search, family=family)
        drawn[trial.number] = hp
        return float(hp.units) * hp.learning_rate

    study.optimize(objective, n_trials=n_trials)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * n_trials
    return [(t, drawn[t.number]) for t in trials]


@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_trial_carries_every_name(family: str, space: str) -> None:
    search = SearchSection.model_validate(SPACES[space])
    for trial, hp in run_space(search, family):
        assert set(trial.params) == expected_names(family)
        for name in PARAM_NAMES:
            assert trial.params[name] == getattr(hp, name)
        if family == "dense":
            assert hp.layer_norm is False
        else:
            assert trial.params["layer_norm"] is hp.layer_norm


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_values_come_back_exactly(family: str) -> None:
    search = SearchSection.model_validate(ALL_FIXED)
    for trial, hp in run_space(search, family, n_trials=3):
        expected = {**ALL_FIXED, "layer_norm": family != "dense"}
        assert hp.as_dict() == expected
        for name, value in expected.items():
            assert type(getattr(hp, name)) is type(value), name
        assert trial.params == {k: v for k, v in expected.items() if k in expected_names(family)}


def test_defaults_fix_activation_optimizer_l2_and_layer_norm() -> None:
    search = SearchSection()
    for _, hp in run_space(search, "lstm", n_trials=6):
        assert (hp.activation, hp.optimizer, hp.l2, hp.layer_norm) == ("tanh", "adam", 0.0, False)
        assert 1 <= hp.n_layers <= 2
        assert 16 <= hp.units <= 128
        assert 1e-4 <= hp.learning_rate <= 1e-2
        assert hp.batch_size in (32, 64, 128)
        assert 0.0 <= hp.dropout <= 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_ranges_and_choices_are_respected(family: str) -> None:
    search = SearchSection.model_validate(ALL_SEARCHED)
    results = run_space(search, family, n_trials=30)
    for _, hp in results:
        assert type(hp.n_layers) is int and 1 <= hp.n_layers <= 4
        assert type(hp.units) is int and 8 <= hp.units <= 256
        assert type(hp.learning_rate) is float and 1e-5 <= hp.learning_rate <= 1e-1
        assert type(hp.dropout) is float and 0.0 <= hp.dropout <= 0.6
        assert type(hp.l2) is float and 1e-7 <= hp.l2 <= 1e-2
        assert hp.activation in ("tanh", "relu", "gelu")
        assert hp.optimizer in ("adam", "adamw", "nadam", "rmsprop", "sgd")
        assert hp.batch_size in (16, 32, 64)
        assert type(hp.batch_size) is int
    # A log range over four decades is sampled on both sides of its geometric middle.
    rates = [hp.learning_rate for _, hp in results]
    assert min(rates) < 1e-3 < max(rates)


def test_steps_are_respected() -> None:
    search = SearchSection.model_validate(STEPPED)
    for _, hp in run_space(search, "gru", n_trials=25):
        assert hp.n_layers in (1, 3, 5, 7)
        assert hp.units % 8 == 0 and 8 <= hp.units <= 64
        assert 0.0 <= hp.dropout <= 0.5
        assert math.isclose(hp.dropout * 10, round(hp.dropout * 10), abs_tol=1e-9)


@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("family", FAMILIES)
def test_from_params_rebuilds_the_same_values(family: str, space: str) -> None:
    search = SearchSection.model_validate(SPACES[space])
    for trial, hp in run_space(search, family):
        assert Hyperparams.from_params(trial.params) == hp


def test_from_params_without_layer_norm_is_false() -> None:
    params = {k: v for k, v in ALL_FIXED.items() if k != "layer_norm"}
    assert Hyperparams.from_params(params).layer_norm is False


def test_from_params_needs_all_eight_names() -> None:
    params = {k: v for k, v in ALL_FIXED.items() if k != "units"}
    with pytest.raises(KeyError, match="units"):
        Hyperparams.from_params(params)


@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("family", FAMILIES)
def test_distributions_match_what_optuna_recorded(family: str, space: str) -> None:
    search = SearchSection.model_validate(SPACES[space])
    expected = distributions(search, family=family)
    assert set(expected) == expected_names(family)
    for trial, _ in run_space(search, family, n_trials=4):
        assert trial.distributions == expected


def test_distribution_kinds() -> None:
    search = SearchSection.model_validate({**ALL_SEARCHED, "l2": 0.0, "units": {"low": 8, "high": 64, "step": 8}})
    dists = distributions(search, family="lstm")
    assert dists["n_layers"] == IntDistribution(1, 4)
    assert dists["units"] == IntDistribution(8, 64, step=8)
    assert dists["learning_rate"] == FloatDistribution(1e-5, 1e-1, log=True)
    assert dists["dropout"] == FloatDistribution(0.0, 0.6)
    assert dists["activation"] == CategoricalDistribution(["tanh", "relu", "gelu"])
    assert dists["l2"] == CategoricalDistribution([0.0])
    assert dists["layer_norm"] == CategoricalDistribution([False, True])


def test_enqueued_params_are_used() -> None:
    search = SearchSection.model_validate(ALL_SEARCHED)
    wanted = {
        "n_layers": 2,
        "units": 33,
        "activation": "relu",
        "learning_rate": 0.002,
        "optimizer": "sgd",
        "batch_size": 64,
        "dropout": 0.1,
        "l2": 1e-4,
        "layer_norm": True,
    }
    study = optuna.create_study()
    study.enqueue_trial(wanted)
    hp = suggest(study.ask(), search, family="lstm")
    assert hp.as_dict() == wanted


def test_searched_names_lists_only_the_varying_ones() -> None:
    assert searched_names(SearchSection.model_validate(ALL_FIXED), family="lstm") == []
    assert searched_names(SearchSection.model_validate(ALL_SEARCHED), family="lstm") == [*PARAM_NAMES, "layer_norm"]
    assert searched_names(SearchSection.model_validate(ALL_SEARCHED), family="dense") == list(PARAM_NAMES)
    assert searched_names(SearchSection(), family="gru") == [
        "n_layers",
        "units",
        "learning_rate",
        "batch_size",
        "dropout",
    ]
    one_choice = SearchSection.model_validate({"batch_size": [64], "layer_norm": [False, True]})
    assert "batch_size" not in searched_names(one_choice, family="lstm")
    assert "layer_norm" in searched_names(one_choice, family="lstm")
    assert "layer_norm" not in searched_names(one_choice, family="dense")


# --------------------------------------------------------------------------- property


@st.composite
def int_ranges(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(min_value=1, max_value=4095))
    high = draw(st.integers(min_value=low + 1, max_value=4096))
    if draw(st.booleans()):
        return {"low": low, "high": high, "log": True}
    step = draw(st.integers(min_value=1, max_value=max(1, (high - low))))
    return {"low": low, "high": high, "step": step}


@st.composite
def rate_ranges(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.floats(min_value=1e-8, max_value=1.0, allow_nan=False, allow_infinity=False))
    above = st.floats(min_value=low, max_value=10.0, allow_nan=False, allow_infinity=False)
    high = draw(above.filter(lambda h: h > low))
    return {"low": low, "high": high, "log": draw(st.booleans())}


@st.composite
def dropout_ranges(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.floats(min_value=0.0, max_value=0.9, allow_nan=False))
    high = draw(st.floats(min_value=low, max_value=0.99, allow_nan=False).filter(lambda h: h > low))
    return {"low": low, "high": high}


@pytest.mark.filterwarnings("ignore:The distribution is specified by .* the range is not divisible:UserWarning")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(units=int_ranges(), rate=rate_ranges(), dropout=dropout_ranges(), seed=st.integers(0, 2**31 - 1))
def test_suggestions_stay_within_random_bounds(
    units: dict[str, Any], rate: dict[str, Any], dropout: dict[str, Any], seed: int
) -> None:
    search = SearchSection.model_validate({"units": units, "learning_rate": rate, "dropout": dropout})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(3):
        trial = study.ask()
        hp = suggest(trial, search, family="lstm")
        assert trial.distributions == distributions(search, family="lstm")
        assert type(hp.units) is int
        assert units["low"] <= hp.units <= units["high"]
        if "step" in units:
            assert (hp.units - units["low"]) % units["step"] == 0
        assert rate["low"] <= hp.learning_rate <= rate["high"]
        assert dropout["low"] <= hp.dropout <= dropout["high"]
        study.tell(trial, 0.0)
