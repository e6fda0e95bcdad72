"""The remedy table: one source for each hint's words and its parameter change, fitted to the search space."""

from __future__ import annotations

import pytest

from sweep.remedy import REMEDIES, Change, Remedy, fit
from sweep.spec import Choice, Fixed, Range
from sweep.stability import HINTS, Diagnosis

SPACE = {
    "learning_rate": Range(1e-4, 1e-2, integer=False, log=True),
    "batch_size": Choice((32, 64, 128)),
    "units": Range(16, 128, integer=True, log=True),
    "dropout": Range(0.0, 0.5, integer=False, step=0.05),
    "l2": Fixed(0.0),
}


def test_every_diagnosis_has_a_remedy_and_its_hint_is_the_remedy_s_words() -> None:
    assert set(REMEDIES) == {d.value for d in Diagnosis}
    for d in Diagnosis:
        assert HINTS[d] == REMEDIES[d.value].hint()
        for change in REMEDIES[d.value].changes:
            assert change.text() in HINTS[d]  # the words name the size of the change
    assert HINTS[Diagnosis.OSCILLATING] == "lower the learning rate (/3), or use a larger batch (x2)"


def test_a_remedy_moves_each_parameter_within_the_space() -> None:
    params = {"learning_rate": 0.003, "batch_size": 32, "units": 100, "dropout": 0.42, "l2": 0.0, "optimizer": "adam"}
    assert REMEDIES["oscillating"].apply(params, SPACE) == {**params, "learning_rate": 0.001, "batch_size": 64}
    # dropout +0.1 is clipped to 0.5; units /2 rounds to an integer; l2 is fixed by the study: left alone
    assert REMEDIES["overfitting"].apply(params, SPACE) == {**params, "dropout": 0.5, "units": 50}
    # the learning rate cannot go below the range: it stops at its low end
    low = {**params, "learning_rate": 2e-4}
    assert REMEDIES["diverged"].apply(low, SPACE) == {**low, "learning_rate": 1e-4}


def test_a_remedy_that_cannot_move_anything_is_none() -> None:
    at_the_edges = {"learning_rate": 1e-4, "batch_size": 128, "units": 16, "dropout": 0.5, "l2": 0.0}
    assert REMEDIES["oscillating"].apply(at_the_edges, SPACE) is None
    assert REMEDIES["stable"].apply(at_the_edges, SPACE) is None


@pytest.mark.parametrize(
    ("wanted", "current", "param", "expected"),
    [
        (0.13, 0.1, Range(0.0, 0.5, integer=False, step=0.05), 0.15),  # snapped to the step
        (110.0, 48.0, Choice((32, 64, 128)), 128),  # the nearest choice above
        (24.0, 48.0, Choice((32, 64, 128)), 32),  # the nearest choice below
        (256.0, 128.0, Choice((32, 64, 128)), None),  # nothing above
        (7.6, 5.0, Range(1, 10, integer=True), 8),
        (0.5, 0.1, Fixed(0.1), None),  # the study holds it fixed
    ],
)
def test_fit(wanted: float, current: float, param: object, expected: object) -> None:
    assert fit(wanted, current, param) == expected  # type: ignore[arg-type]


def test_a_multiple_of_nothing_starts_from_a_floor() -> None:
    strengthen = Remedy((Change("l2", "*", 10, "strengthen L2"),))
    space = {"l2": Range(0.0, 0.01, integer=False)}
    assert strengthen.apply({"l2": 0.0}, space) == {"l2": 1e-4}
    assert strengthen.hint() == "strengthen L2 (x10)"
