"""The diagnosis calibrated on the study: what sets a trial apart, in amounts the study can tell apart."""

from __future__ import annotations

import math
import statistics

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sweep.calibration import MIN_TRIALS, calibrate
from sweep.stability import Diagnosis, rediagnose, residual_spread, split_reference, summarize

Curves = list[list[float]]

dyadic = st.integers(min_value=256, max_value=4096).map(lambda k: k / 1024)
"""Losses on a binary grid, so that shifting them by a grid offset is exact in floating point."""


def calibrated_labels(
    vals: list[Curves], trains: list[Curves] | None, *, tail: int, baseline: float | None
) -> list[tuple[Diagnosis, str]]:
    """Every trial's label as ``sweep rank`` gives it: summarised, then judged with the whole study."""
    summaries = [
        summarize(v, None if trains is None else trains[i], tail=tail, baseline=baseline)
        for i, v in enumerate(vals)
    ]
    attrs = [s.to_attrs() for s in summaries]
    reference = split_reference([s.repeat_means for s in summaries], n_repeats=len(vals[0]))
    for a in attrs:
        a["repeat_spread"] = residual_spread(a["repeat_means"], reference)
    calibration = calibrate(attrs)
    assert calibration is not None
    out = []
    for a in attrs:
        judged = rediagnose(a, calibration=calibration, reference=reference, tail=tail)
        assert judged is not None
        out.append((judged[0], judged[1]))
    return out


@st.composite
def studies(draw: st.DrawFn) -> tuple[list[Curves], list[Curves], int, list[float], float | None]:
    """A study's trials (repeat r on split r), a tail, any per-split offsets, and a baseline or none."""
    n_trials = draw(st.integers(min_value=MIN_TRIALS + 1, max_value=9))
    n_repeats = draw(st.sampled_from([1, 2, 4]))
    epochs = draw(st.integers(min_value=3, max_value=9))
    tail = draw(st.sampled_from([1, 2, 4]))
    grid = st.lists(dyadic, min_size=epochs, max_size=epochs)
    vals = [[draw(grid) for _ in range(n_repeats)] for _ in range(n_trials)]
    trains = [[draw(grid) for _ in range(n_repeats)] for _ in range(n_trials)]
    offsets = [draw(st.integers(min_value=-1024, max_value=8192)) / 1024 for _ in range(n_repeats)]
    baseline = draw(st.one_of(st.none(), st.integers(min_value=512, max_value=8192).map(lambda k: k / 1024)))
    return vals, trains, tail, offsets, baseline


@settings(max_examples=150, deadline=None)
@given(study=studies())
@example(  # flat curves, a study without noise: the stored evidence's rounding once read as a rise
    study=(
        [[[0.25] * 7]] * 3 + [[[0.25] * 6 + [257 / 1024]]] * 4 + [[[257 / 1024] + [0.25] * 5 + [257 / 1024]]],
        [[[0.25] * 7]] * 8,
        1,
        [1 / 1024],
        None,
    )
)
def test_a_constant_added_to_every_curve_of_a_split_changes_no_label(
    study: tuple[list[Curves], list[Curves], int, list[float], float | None],
) -> None:
    """As the ranking: a split harder for every trial alike, or a loss measured from another zero, says nothing.

    The baseline is a loss on the same splits, so it moves with them (by the mean offset).
    """
    vals, trains, tail, offsets, baseline = study
    shifted = [[[x + c for x in v] for v, c in zip(trial, offsets, strict=True)] for trial in vals]
    moved = None if baseline is None else baseline + sum(offsets) / len(offsets)
    before = calibrated_labels(vals, trains, tail=tail, baseline=baseline)
    after = calibrated_labels(shifted, trains, tail=tail, baseline=moved)
    assert [d for d, _ in after] == [d for d, _ in before]


@settings(max_examples=150, deadline=None)
@given(study=studies())
def test_a_property_every_trial_shares_names_at_most_half_of_the_study(
    study: tuple[list[Curves], list[Curves], int, list[float], float | None],
) -> None:
    """Only an outlier of the study (over twice the others' median) is named for its jitter, rise, fall or spread."""
    vals, trains, tail, _, baseline = study
    labels = calibrated_labels(vals, trains, tail=tail, baseline=baseline)
    half = len(vals) / 2
    for diagnosis in (Diagnosis.OVERFITTING, Diagnosis.UNDERFITTING, Diagnosis.UNSTABLE_ACROSS_REPEATS):
        assert sum(d is diagnosis for d, _ in labels) <= half
    assert sum(d is Diagnosis.OSCILLATING and "jumps" in h for d, h in labels) <= half


def wave(level: float, amplitude: float, epochs: int = 12) -> list[float]:
    """A curve that falls to ``level`` and then swings by ``amplitude`` every epoch."""
    fall = [level + 1.0 / (e + 1) for e in range(epochs // 2)]
    return fall + [level + (amplitude if e % 2 else 0.0) for e in range(epochs - len(fall))]


def test_jitter_every_trial_shares_is_no_label_and_an_outlier_is() -> None:
    """The held-out series studies called most trials oscillating: a study-wide wiggle is the data, not a fault."""
    common = [[wave(0.30 + 0.01 * i, 0.05)] * 2 for i in range(6)]
    labels = calibrated_labels(common, None, tail=5, baseline=2.0)
    assert Diagnosis.OSCILLATING not in {d for d, _ in labels}
    wild = [[wave(0.30, 0.40)] * 2]
    labels = calibrated_labels(common + wild, None, tail=5, baseline=2.0)
    assert [d for d, _ in labels][-1] is Diagnosis.OSCILLATING
    assert "the study's median beyond any trend" in labels[-1][1]
    assert Diagnosis.OSCILLATING not in {d for d, _ in labels[:-1]}


def test_a_trial_that_learns_a_tenth_of_what_the_best_learns_is_not_learning() -> None:
    learns = [[[2.0, 1.0, 0.5, 0.4, 0.4, 0.4]] * 2 for _ in range(4)]
    barely = [[[2.0, 1.97, 1.96, 1.95, 1.95, 1.95]] * 2]
    labels = calibrated_labels(learns + barely, None, tail=3, baseline=2.0)
    assert labels[-1][0] is Diagnosis.NOT_LEARNING
    assert "where the study's best ends 1.6 below it" in labels[-1][1]


def test_a_finite_loss_that_explodes_is_diverged_whatever_its_first_epoch() -> None:
    """A score of 3.8e12 was reported as raced out: its first epoch was already huge, so `3 x first` missed it."""
    ordinary = [[[1.0, 0.6, 0.5, 0.45, 0.45]] for _ in range(4)]
    exploding = [[[3e12, 3.2e12, 3.5e12, 3.7e12, 3.8e12]]]
    labels = calibrated_labels(ordinary + exploding, None, tail=3, baseline=1.0)
    assert labels[-1][0] is Diagnosis.DIVERGED
    assert summarize(exploding[0], tail=3, baseline=1.0).diagnosis is not Diagnosis.DIVERGED  # uncalibrated


def test_too_few_trials_leave_the_fixed_rules() -> None:
    summaries = [summarize([[1.0, 0.5, 0.4]], tail=2).to_attrs() for _ in range(MIN_TRIALS)]
    calibration = calibrate(summaries)
    assert calibration is not None
    assert calibration.scales() is not None  # a trial being recorded is judged against all three
    assert calibration.scales(summaries[0]) is None  # one of them, against the two others: too few
    assert calibrate(summaries[:-1]) is None
    assert rediagnose(summaries[0], calibration=calibration, reference=None, tail=2) is None


def test_scales_leave_the_trial_itself_out() -> None:
    rows = [summarize([wave(0.3, a)], tail=5).to_attrs() for a in (0.0, 0.0, 0.0, 0.0, 1.0)]
    calibration = calibrate(rows)
    assert calibration is not None
    alone, with_all = calibration.scales(rows[-1]), calibration.scales()
    assert alone is not None and with_all is not None
    assert alone.trials == 4 and with_all.trials == 5
    assert math.isclose(alone.noise, 0.0, abs_tol=1e-12)


finite = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0.25, 0.5, 1.0]), finite, finite, finite, finite), min_size=1, max_size=12),
    st.integers(min_value=0, max_value=11),
    st.booleans(),
)
def test_scales_leave_out_one_occurrence_of_each_number_as_a_copy_without_it_would(
    numbers: list[tuple[float, float, float, float, float]], pick: int, spread: bool
) -> None:
    """Each scale is the median of the study's numbers less the trial's own (one of them, when others are equal)."""
    rows = [
        {"tail_mean": t, "baseline": None, "degradation": abs(d), "repeat_spread": abs(r) if spread else None,
         "evidence": {"first": t + g, "jitter": j, "val_slope": -g}}
        for j, t, d, r, g in numbers
    ]  # fmt: skip
    calibration = calibrate(rows)
    if calibration is None:
        return
    own = rows[pick % len(rows)]

    def median_without(values: tuple[float, ...], value: float | None) -> float:
        rest = list(values)
        if value is not None and value in rest:
            rest.remove(value)
        return statistics.median(rest) if rest else 0.0

    scales = calibration.scales(own)
    kept = len(rows) - 1
    if kept < MIN_TRIALS:
        assert scales is None
        return
    assert scales is not None and scales.trials == kept
    assert scales.noise == median_without(calibration.jitters, own["evidence"]["jitter"])
    assert scales.fall == median_without(calibration.falls, max(0.0, own["evidence"]["val_slope"] * -1))
    assert scales.degradation == median_without(calibration.degradations, own["degradation"])
    gain = median_without(calibration.gains, own["evidence"]["first"] - own["tail_mean"])
    assert scales.gain == max(gain, scales.noise, 1e-12)
    spreads = [s for s in calibration.spreads]
    if own["repeat_spread"] is not None:
        spreads.remove(own["repeat_spread"])
    assert scales.spread == (statistics.median(spreads) if len(spreads) >= MIN_TRIALS else None)
    stranger = {**own, "evidence": {**own["evidence"], "jitter": 99.0}}  # not one of the study's trials
    assert calibration.scales(stranger) == calibration.scales()


def test_the_documented_picture_of_each_diagnosis_is_named_so_by_the_rules() -> None:
    """docs/images/diagnosis.png draws one curve per label: the rules must give each panel its title."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "diagnosis.py"
    spec = importlib.util.spec_from_file_location("diagnosis_figure", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    judged = module.labels()
    assert {name: d.value for name, (d, _) in judged.items()} == {name: name for name in module.NAMES}


def test_every_diagnosis_but_pruned_has_a_calibrated_rule() -> None:
    from sweep.stability import CALIBRATED_RULES

    assert CALIBRATED_RULES[0][0] is Diagnosis.DIVERGED
    assert CALIBRATED_RULES[-1][0] is Diagnosis.STABLE
    assert {d for d, _ in CALIBRATED_RULES} == set(Diagnosis) - {Diagnosis.PRUNED}
