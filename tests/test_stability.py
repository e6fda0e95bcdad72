from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweep.stability import (
    BASELINE_TOLERANCE,
    HINTS,
    RULES,
    Diagnosis,
    Summary,
    judge_spread,
    repeat_score,
    residual_spread,
    residual_spreads,
    split_reference,
    summarize,
    window_words,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

Curves = list[list[float]]

loss = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)
curve = st.lists(loss, min_size=1, max_size=12)
tails = st.integers(min_value=1, max_value=8)


@st.composite
def trials(draw: st.DrawFn) -> tuple[Curves, Curves | None]:
    n_repeats = draw(st.integers(min_value=1, max_value=4))
    vals = draw(st.lists(curve, min_size=n_repeats, max_size=n_repeats))
    if not draw(st.booleans()):
        return vals, None
    trains = [draw(st.lists(loss, min_size=len(v), max_size=len(v))) for v in vals]
    return vals, trains


NUMERIC_FIELDS = ("tail_mean", "tail_std", "best", "degradation", "oscillation")


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(trial=trials(), shift=st.floats(min_value=-50.0, max_value=50.0), tail=tails)
def test_shifting_val_shifts_level_and_keeps_spread(
    trial: tuple[Curves, Curves | None], shift: float, tail: int
) -> None:
    vals, trains = trial
    before = summarize(vals, trains, tail=tail)
    after = summarize([[x + shift for x in v] for v in vals], trains, tail=tail)
    assert after.tail_mean == approx(before.tail_mean + shift)
    assert after.best == approx(before.best + shift)
    assert after.score == approx(before.score + shift)
    for name in ("tail_std", "oscillation", "degradation"):
        assert getattr(after, name) == approx(getattr(before, name)), name
    assert after.repeat_spread is None and before.repeat_spread is None  # no reference: not judged
    if trains is None:
        assert after.gap is None
    else:
        assert before.gap is not None
        assert after.gap == approx(before.gap + shift)


@settings(max_examples=150, deadline=None)
@given(
    trial=trials(),
    risks=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=2, max_size=2),
    tail=tails,
)
def test_score_is_non_decreasing_in_risk(
    trial: tuple[Curves, Curves | None], risks: list[float], tail: int
) -> None:
    vals, trains = trial
    low, high = sorted(risks)
    assert (
        summarize(vals, trains, tail=tail, risk=low).score
        <= summarize(vals, trains, tail=tail, risk=high).score
    )


@settings(max_examples=150, deadline=None)
@given(trial=trials(), data=st.data(), tail=tails)
def test_order_of_repeats_changes_no_score(
    trial: tuple[Curves, Curves | None], data: st.DataObject, tail: int
) -> None:
    vals, trains = trial
    order = data.draw(st.permutations(range(len(vals))))
    shuffled = summarize(
        [vals[i] for i in order],
        None if trains is None else [trains[i] for i in order],
        tail=tail,
    )
    plain = summarize(vals, trains, tail=tail)
    for name in ("score", "tail_mean", "tail_std", "best", "degradation", "oscillation"):
        assert getattr(shuffled, name) == approx(getattr(plain, name)), name
    assert shuffled.epochs == tuple(plain.epochs[i] for i in order)  # stored in repeat order
    assert shuffled.repeat_means == tuple(plain.repeat_means[i] for i in order)


@settings(max_examples=200, deadline=None)
@given(curve=curve, tail=tails, risk=st.floats(min_value=0.0, max_value=10.0))
def test_repeat_score_is_the_one_repeat_score_exactly(curve: list[float], tail: int, risk: float) -> None:
    """What repeat 0 reports to the pruner is, bit for bit, the pruned trial's ranked score."""
    assert repeat_score(curve, tail=tail, risk=risk) == summarize([curve], tail=tail, risk=risk).score


@settings(max_examples=200, deadline=None)
@given(trial=trials(), tail=tails, data=st.data())
def test_a_trial_near_its_baseline_is_never_stable(
    trial: tuple[Curves, Curves | None], tail: int, data: st.DataObject
) -> None:
    vals, trains = trial
    plain = summarize(vals, trains, tail=tail)
    # a baseline the trial's tail mean is within 10% of, or above
    ratio = data.draw(st.floats(min_value=0.0, max_value=1.0 / (1 - BASELINE_TOLERANCE) - 1e-9))
    baseline = plain.tail_mean * ratio
    s = summarize(vals, trains, tail=tail, baseline=baseline)
    assert s.diagnosis is not Diagnosis.STABLE
    if plain.tail_mean > 0 and s.diagnosis is not Diagnosis.DIVERGED:
        assert s.diagnosis is Diagnosis.NOT_LEARNING, s.hint
        assert f"baseline {baseline:.3g}" in s.hint


@settings(max_examples=150, deadline=None)
@given(
    trial=trials(),
    data=st.data(),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    risk=st.floats(min_value=0.0, max_value=10.0),
)
def test_any_non_finite_value_diverges(
    trial: tuple[Curves, Curves | None],
    data: st.DataObject,
    bad: float,
    risk: float,
) -> None:
    vals, trains = trial
    target = vals if trains is None or data.draw(st.booleans()) else trains
    r = data.draw(st.integers(min_value=0, max_value=len(target) - 1))
    i = data.draw(st.integers(min_value=0, max_value=len(target[r]) - 1))
    target[r][i] = bad

    summary = summarize(vals, trains, risk=risk)

    assert summary.score == math.inf
    assert summary.diagnosis is Diagnosis.DIVERGED
    assert summary.tail_mean == math.inf and summary.tail_std == math.inf
    attrs = summary.to_attrs()
    assert not any(isinstance(v, float) and math.isnan(v) for v in attrs.values())
    assert json.loads(json.dumps(attrs))["score"] == math.inf


@settings(max_examples=100, deadline=None)
@given(trial=trials(), tail=tails)
def test_fields_are_well_formed(trial: tuple[Curves, Curves | None], tail: int) -> None:
    vals, trains = trial
    s = summarize(vals, trains, tail=tail)
    assert s.tail_std >= 0 and s.degradation >= 0 and s.oscillation >= 0 and s.repeat_spread is None
    assert s.best <= s.tail_mean + 1e-12
    assert s.n_repeats == len(vals)
    assert s.epochs == tuple(len(v) for v in vals)
    assert s.hint.endswith(HINTS[s.diagnosis])


# --------------------------------------------------------------------------- examples


def test_a_single_deep_dip_does_not_beat_a_steady_low_finish() -> None:
    dip = summarize([[1.0, 0.5, 0.05, 0.6, 0.9, 0.5, 0.9, 0.5, 0.9]])
    steady = summarize([[1.0, 0.6, 0.4, 0.3, 0.26, 0.25, 0.25, 0.25, 0.25]])
    assert dip.best < steady.best
    assert dip.score > steady.score


def test_hand_computed_fields() -> None:
    s = summarize(
        [[3.0, 2.0, 1.0, 2.0], [4.0, 3.0]],
        [[3.0, 2.0, 1.0, 0.5], [4.0, 2.0]],
        tail=2,
        risk=2.0,
    )
    # tails [1, 2] and [4, 3]: means 1.5 and 3.5, variances 0.25 and 0.25
    assert s.tail_mean == approx(2.5)
    assert s.tail_std == approx(0.5)
    assert s.score == approx(2.5 + 2.0 * 0.5)
    assert s.best == 1.0
    # tails above the lows so far: [0, 1] and [0, 0]
    assert s.degradation == approx(0.25)
    assert s.oscillation == approx(1.0)
    assert s.gap == approx(2.5 - ((1.0 + 0.5) / 2 + (4.0 + 2.0) / 2) / 2)
    assert s.repeat_spread is None
    assert s.repeat_means == (1.5, 3.5)
    assert s.repeat_stds == (0.5, 0.5)
    assert s.n_repeats == 2
    assert s.epochs == (4, 2)
    # against a reference of (1.0, 4.0): residuals 0.5 and -0.5
    judged = summarize([[3.0, 2.0, 1.0, 2.0], [4.0, 3.0]], tail=2, reference=(1.0, 4.0))
    assert judged.repeat_spread == approx(0.5)
    assert judged.diagnosis is Diagnosis.UNSTABLE_ACROSS_REPEATS


def test_degradation_is_the_rise_above_the_lowest_loss_so_far() -> None:
    assert summarize([[1.0, 0.5, 0.2, 0.4, 0.6]], tail=2).degradation == approx((0.2 + 0.4) / 2)
    assert summarize([[1.0, 0.8, 0.6, 0.4, 0.2]], tail=2).degradation == 0.0  # only fell


def test_one_point_tails_and_one_repeat() -> None:
    s = summarize([[5.0, 3.0, 2.0]], tail=1)
    assert s.tail_mean == 2.0
    assert s.tail_std == 0.0
    assert s.oscillation == 0.0
    assert s.repeat_spread is None
    assert s.degradation == 0.0
    assert s.gap is None
    assert s.score == 2.0


def test_curves_shorter_than_the_tail_are_used_whole() -> None:
    assert summarize([[2.0, 1.0]], tail=10).tail_mean == 1.5


def test_numpy_arrays_are_accepted() -> None:
    as_lists = summarize([[1.0, 0.5, 0.4]], [[1.0, 0.4, 0.3]])
    as_arrays = summarize(np.array([[1.0, 0.5, 0.4]]), [np.array([1.0, 0.4, 0.3])])
    assert as_arrays == as_lists


FALLING = [1.0, 0.8, 0.65, 0.55, 0.48, 0.43, 0.39, 0.36, 0.33, 0.31]
SETTLED = [1.0, 0.6, 0.45, 0.41, 0.40, 0.40, 0.401, 0.399, 0.40, 0.40]
RISING_AFTER_MIN = [1.0, 0.7, 0.5, 0.42, 0.4, 0.44, 0.5, 0.56, 0.62, 0.68]
TRAIN_FALLING = [1.0, 0.7, 0.5, 0.4, 0.33, 0.28, 0.24, 0.21, 0.19, 0.17]
TRAIN_RISING = [1.0, 0.7, 0.5, 0.4, 0.38, 0.42, 0.47, 0.53, 0.6, 0.68]
ZIGZAG = [1.0, 0.7, 0.5, 0.42, 0.4, 0.6, 0.38, 0.62, 0.39, 0.6]

CASES: dict[str, tuple[Curves, Curves | None, Diagnosis, tuple[str, ...]]] = {
    "stable": ([SETTLED], None, Diagnosis.STABLE, ("nothing to change",)),
    "stable_with_train": (
        [SETTLED, [x * 1.01 for x in SETTLED]],
        [TRAIN_FALLING[:7] + [0.24] * 3] * 2,
        Diagnosis.STABLE,
        ("nothing to change",),
    ),
    "overfitting": (
        [RISING_AFTER_MIN],
        [TRAIN_FALLING],
        Diagnosis.OVERFITTING,
        ("dropout", "L2", "patience", "fewer units", "training loss kept falling"),
    ),
    "overfitting_without_train": (
        [RISING_AFTER_MIN],
        None,
        Diagnosis.OVERFITTING,
        ("dropout", "patience"),
    ),
    "oscillating": ([ZIGZAG], [TRAIN_FALLING], Diagnosis.OSCILLATING, ("learning rate", "batch")),
    "rising_together": (
        [RISING_AFTER_MIN],
        [TRAIN_RISING],
        Diagnosis.OSCILLATING,
        ("lower the learning rate", "training loss rose too"),
    ),
    "diverged_by_nan": (
        [[*FALLING[:5], math.nan]],
        None,
        Diagnosis.DIVERGED,
        ("lower the learning rate (/10)", "LayerNormalization", "training.clipnorm", "NaN"),
    ),
    "diverged_by_inf_in_train": (
        [FALLING],
        [TRAIN_FALLING[:4] + [math.inf] * 6],
        Diagnosis.DIVERGED,
        ("LayerNormalization", "adam/rmsprop"),
    ),
    "diverged_by_blow_up": (
        [[1.0, 0.9, 1.5, 3.0, 6.0, 12.0, 24.0]],
        None,
        Diagnosis.DIVERGED,
        ("lower the learning rate", "LayerNormalization", "training.clipnorm"),
    ),
    "underfitting": (
        [FALLING],
        [TRAIN_FALLING],
        Diagnosis.UNDERFITTING,
        ("more epochs", "more units (x2)", "raise the learning rate (x3)"),
    ),
    "unstable_across_repeats": (
        [SETTLED, [x * 1.6 for x in SETTLED], [x * 0.7 for x in SETTLED]],
        None,
        Diagnosis.UNSTABLE_ACROSS_REPEATS,
        ("lower the learning rate (/3)", "larger batch (x2)", "strengthen L2 (x10)", "per-split medians"),
    ),
    "harder_split_is_not_unstable": (
        [SETTLED, [x * 1.6 for x in SETTLED], [x * 0.7 for x in SETTLED]],
        None,
        Diagnosis.STABLE,
        ("nothing to change", "per-split medians"),
    ),
    "not_learning": (
        [[2.5, 2.4, 2.35, 2.3, 2.25, 2.2, 2.18, 2.16, 2.15, 2.14]],
        [[2.5, 2.4, 2.35, 2.3, 2.25, 2.2, 2.18, 2.16, 2.15, 2.14]],
        Diagnosis.NOT_LEARNING,
        ("only 6% below the baseline", "raise the learning rate"),
    ),
}
REFERENCES: dict[str, tuple[float, ...]] = {
    # every split equally hard for the study's trials: this trial's split-to-split spread is its own
    "unstable_across_repeats": (0.4, 0.4, 0.4),
    # the study's trials all find split 1 harder and split 2 easier, by as much as this one does
    "harder_split_is_not_unstable": (0.4, 0.64, 0.28),
}
BASELINES: dict[str, float] = {"not_learning": 2.30}


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e3])
@pytest.mark.parametrize("case", list(CASES))
def test_diagnosis_rules(case: str, scale: float) -> None:
    vals, trains, expected, words = CASES[case]
    reference = REFERENCES.get(case)
    baseline = BASELINES.get(case)
    summary = summarize(
        [[x * scale for x in v] for v in vals],
        None if trains is None else [[x * scale for x in u] for u in trains],
        reference=None if reference is None else [x * scale for x in reference],
        baseline=None if baseline is None else baseline * scale,
    )
    assert summary.diagnosis is expected, summary.hint
    for word in words:
        assert word in summary.hint


def test_a_curve_still_falling_is_not_overfitting() -> None:
    summary = summarize([FALLING])
    assert summary.degradation == 0.0
    assert summary.diagnosis is Diagnosis.UNDERFITTING


def test_overfitting_hint_has_the_numbers() -> None:
    hint = summarize([RISING_AFTER_MIN], [TRAIN_FALLING]).hint
    # tail 0.44..0.68 (mean 0.56), 0.04..0.28 above the low of 0.4 (mean 0.16)
    assert hint.startswith("validation loss over the last 5 epochs sits 0.16 (29%) above the lowest it had reached")


def test_diverged_fields() -> None:
    s = summarize([[1.0, 0.5, math.nan], [2.0, math.inf]], [[1.0, 0.5, 0.4], [1.0, 0.9]], risk=0.0)
    assert s.score == math.inf
    assert s.best == 0.5
    assert s.gap == math.inf
    assert s.hint.startswith("the loss became NaN or infinite in 2 of 2 repeat(s)")
    assert summarize([[math.nan]]).best == math.inf


@pytest.mark.parametrize(
    ("vals", "risk"), [([[1e308, 1.7e308, 1.7e308]], 1.0), ([[1e150, 0.0]], 1e200)]
)
def test_overflowing_finite_losses_diverge(vals: Curves, risk: float) -> None:
    s = summarize(vals, risk=risk)
    assert s.score == math.inf
    assert s.diagnosis is Diagnosis.DIVERGED
    assert s.hint.startswith("the loss grew too large to summarise")


def test_every_diagnosis_has_a_hint_and_a_rule() -> None:
    assert set(HINTS) == set(Diagnosis)
    assert RULES[0][0] is Diagnosis.DIVERGED
    assert [d for d, _ in RULES][-1] is Diagnosis.STABLE
    assert {d for d, _ in RULES} == set(Diagnosis) - {Diagnosis.PRUNED}  # set by the objective
    assert [d.value for d in Diagnosis] == [d.name.lower() for d in Diagnosis]
    assert str(Diagnosis.OVERFITTING) == "overfitting"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"val_curves": []},
            "The 'val_curves' parameter of summarize must hold at least one repeat. "
            "Got no repeats instead.",
        ),
        (
            {"val_curves": [[1.0], []]},
            "The 'val_curves' parameter of summarize must hold curves of at least one epoch. "
            "Got an empty curve for val_curves[1] instead.",
        ),
        (
            {"val_curves": [[1.0]], "train_curves": [[]]},
            "The 'train_curves' parameter of summarize must hold curves of at least one epoch. "
            "Got an empty curve for train_curves[0] instead.",
        ),
        (
            {"val_curves": [[1.0], [2.0]], "train_curves": [[1.0]]},
            "The 'train_curves' parameter of summarize must hold one curve per repeat "
            "(2, as val_curves). Got 1 instead.",
        ),
        (
            {"val_curves": [[1.0]], "tail": 0},
            "The 'tail' parameter of summarize must be an integer >= 1. Got 0 instead.",
        ),
        (
            {"val_curves": [[1.0]], "tail": 2.5},
            "The 'tail' parameter of summarize must be an integer >= 1. Got 2.5 instead.",
        ),
        (
            {"val_curves": [[1.0]], "risk": -0.5},
            "The 'risk' parameter of summarize must be a finite number >= 0. Got -0.5 instead.",
        ),
        (
            {"val_curves": [[1.0]], "risk": math.nan},
            "The 'risk' parameter of summarize must be a finite number >= 0. Got nan instead.",
        ),
        (
            {"val_curves": [[1.0]], "risk": math.inf},
            "The 'risk' parameter of summarize must be a finite number >= 0. Got inf instead.",
        ),
        (
            {"val_curves": [[[1.0, 2.0]]]},
            "The 'val_curves' parameter of summarize must hold 1-D curves. "
            "Got shape (1, 2) for val_curves[0] instead.",
        ),
        (
            {"val_curves": [[1.0, "high"]]},
            "The 'val_curves' parameter of summarize must hold curves of numbers. "
            "Got a non-numeric value in val_curves[0] instead.",
        ),
    ],
)
def test_invalid_input_is_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        summarize(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


# --------------------------------------------------------------------------- output


def test_to_attrs_is_plain_json() -> None:
    s = summarize([SETTLED, SETTLED[::-1][:6]], [TRAIN_FALLING, TRAIN_FALLING[:6]])
    attrs = s.to_attrs()
    back = json.loads(json.dumps(attrs))
    assert back == attrs
    assert set(attrs) == {f.name for f in Summary.__dataclass_fields__.values()}
    for name in (*NUMERIC_FIELDS, "score", "gap"):
        assert type(attrs[name]) is float, name
    assert type(attrs["n_repeats"]) is int
    assert attrs["epochs"] == [10, 6]  # repeat order
    assert attrs["diagnosis"] == s.diagnosis.value
    assert type(attrs["diagnosis"]) is str
    assert summarize([[1.0]]).to_attrs()["gap"] is None


def test_imports_numpy_only() -> None:
    code = (
        "import sys, sweep.stability; "
        "heavy = [m for m in ('tensorflow', 'keras', 'optuna', 'scipy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- what the splits cause


dyadic = st.integers(min_value=256, max_value=4096).map(lambda k: k / 1024)
"""Losses on a binary grid, so that shifting them by a grid offset is exact in floating point."""


@st.composite
def studies(draw: st.DrawFn) -> tuple[list[Curves], list[Curves], int, list[float], float]:
    """Trials of one study (every repeat r on split r), a tail, per-split offsets summing to zero, a baseline."""
    n_trials = draw(st.integers(min_value=3, max_value=8))
    n_repeats = draw(st.sampled_from([2, 4]))
    epochs = draw(st.integers(min_value=4, max_value=9))
    tail = draw(st.sampled_from([1, 2, 4]))
    grid = st.lists(dyadic, min_size=epochs, max_size=epochs)
    vals = [[draw(grid) for _ in range(n_repeats)] for _ in range(n_trials)]
    trains = [[draw(grid) for _ in range(n_repeats)] for _ in range(n_trials)]
    offsets = [draw(st.integers(min_value=-512, max_value=512)) / 1024 for _ in range(n_repeats - 1)]
    offsets.append(-sum(offsets))
    baseline = draw(st.integers(min_value=512, max_value=8192)) / 1024
    return vals, trains, tail, offsets, baseline


def judged_study(
    vals: list[Curves], trains: list[Curves], *, tail: int, baseline: float
) -> list[Summary]:
    """Every trial summarised against the study's per-split reference, as ``sweep rank`` judges them."""
    first = [summarize(v, u, tail=tail, baseline=baseline) for v, u in zip(vals, trains, strict=True)]
    reference = split_reference([s.repeat_means for s in first], n_repeats=len(vals[0]))
    assert reference is not None
    return [
        summarize(v, u, tail=tail, baseline=baseline, reference=reference)
        for v, u in zip(vals, trains, strict=True)
    ]


@settings(max_examples=200, deadline=None)
@given(study=studies())
def test_a_split_offset_changes_no_ranking_and_no_diagnosis(
    study: tuple[list[Curves], list[Curves], int, list[float], float],
) -> None:
    """A split that is harder (or easier) for every trial alike says nothing about any configuration.

    A split effect is measured against the average split, so the offsets sum
    to zero; a common shift of every split moves the loss level itself, which
    the relative thresholds are measured against (the ranking ignores that too:
    see the next test).
    """
    vals, trains, tail, offsets, baseline = study
    shifted = [[[x + c for x in v] for v, c in zip(trial, offsets, strict=True)] for trial in vals]
    before = judged_study(vals, trains, tail=tail, baseline=baseline)
    after = judged_study(shifted, trains, tail=tail, baseline=baseline)
    assert [s.score for s in after] == [s.score for s in before]
    assert [s.diagnosis for s in after] == [s.diagnosis for s in before]
    assert [s.repeat_spread for s in after] == [s.repeat_spread for s in before]


@settings(max_examples=100, deadline=None)
@given(study=studies(), data=st.data())
def test_any_split_offsets_keep_the_ranking(
    study: tuple[list[Curves], list[Curves], int, list[float], float], data: st.DataObject
) -> None:
    vals, trains, tail, _, baseline = study
    offsets = [data.draw(st.integers(min_value=-512, max_value=2048)) / 1024 for _ in vals[0]]
    shifted = [[[x + c for x in v] for v, c in zip(trial, offsets, strict=True)] for trial in vals]
    before = [s.score for s in judged_study(vals, trains, tail=tail, baseline=baseline)]
    after = [s.score for s in judged_study(shifted, trains, tail=tail, baseline=baseline)]
    assert sorted(range(len(before)), key=lambda i: (before[i], i)) == sorted(
        range(len(after)), key=lambda i: (after[i], i)
    )
    shift = sum(offsets) / len(offsets)
    assert after == approx_list([b + shift for b in before])


def approx_list(values: list[float]) -> object:
    return pytest.approx(values, rel=1e-12, abs=1e-12)


def test_the_reference_needs_three_complete_trials() -> None:
    assert split_reference([[1.0, 2.0], [2.0, 3.0]], n_repeats=2) is None
    assert split_reference([[1.0, 2.0], [2.0, 3.0], [3.0, 7.0], [9.0]], n_repeats=2) == (2.0, 3.0)
    assert split_reference([[1.0], [2.0], [3.0]], n_repeats=1) is None  # one split: no spread to judge


def test_rank_time_judgement_matches_summarize() -> None:
    vals = [SETTLED, [x * 1.6 for x in SETTLED], [x * 0.7 for x in SETTLED]]
    s = summarize(vals, reference=(0.4, 0.4, 0.4))
    diagnosis, hint, spread = judge_spread(
        tail_mean=s.tail_mean,
        tail_std=s.tail_std,
        repeat_means=s.repeat_means,
        reference=(0.4, 0.4, 0.4),
        window=window_words(5, s.epochs),
    )
    assert (diagnosis, hint, spread) == (s.diagnosis, s.hint, s.repeat_spread)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(min_value=1e-3, max_value=1e3, allow_nan=False), min_size=1, max_size=12),
        min_size=0,
        max_size=40,
    ),
    st.integers(min_value=1, max_value=12),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_residual_spreads_are_each_trials_residual_spread_to_the_bit(
    many: list[list[float]], splits: int, level: float
) -> None:
    reference = [level * (1 + i) for i in range(splits)]
    got = residual_spreads(many, reference)
    assert [None if x is None else x.hex() for x in got] == [
        None if (x := residual_spread(m, reference)) is None else x.hex() for m in many
    ]
    assert residual_spreads(many, None) == [None] * len(many)


def test_the_reference_counts_the_trials_it_always_counted() -> None:
    """Finite numbers (``bool`` and ``int`` among them) on every split; anything else leaves a trial out."""
    good = [[1.0, 2.0], [2, 3], [True, 4.0], [3.0, 5.0, 9.0]]
    bad = [[1.0, math.nan], [1.0, None], ["1.0", 2.0], [math.inf, 2.0], [1.0]]
    assert split_reference(good + bad, n_repeats=2) == (1.5, 3.5)  # splits 0 and 1: [1, 2, 1, 3], [2, 3, 4, 5]
    assert split_reference(bad + good[:2], n_repeats=2) is None
