"""What a sweep stores: compact curves, the summary attrs, fail reasons, what counts toward the target."""

from __future__ import annotations

import math

import optuna
import pytest

from sweep import records
from sweep.objective import curves_attr
from sweep.records import FailReason, StoredCurves, compact, counts, expand, rescore, summary_attrs
from sweep.stability import summarize
from sweep.train import Curves, Stop


def test_compact_keeps_six_digits_and_stores_non_finite_as_null() -> None:
    assert compact([0.123456789, math.inf, -math.inf, math.nan, 2.0]) == [0.123457, None, None, None, 2.0]
    back = expand(compact([0.5, math.nan]))
    assert back[0] == 0.5 and math.isnan(back[1])


def test_summary_fields_are_the_summary_attrs_written() -> None:
    attrs = summary_attrs(summarize([[1.0, 0.8, 0.7, 0.7]], [[1.0, 0.7, 0.5, 0.4]], tail=2))
    assert tuple(attrs) == records.SUMMARY_FIELDS


def test_summary_attrs_store_non_finite_numbers_as_null() -> None:
    attrs = summary_attrs(summarize([[1.0, math.inf]], tail=2))
    assert attrs["score"] is None and attrs["tail_mean"] is None
    assert attrs["diagnosis"] == "diverged"


@pytest.mark.parametrize(
    ("stored", "kind"),
    [
        ("diverged: non-finite loss at epoch 3 of repeat 0", FailReason.DIVERGED),
        ("interrupted", FailReason.INTERRUPTED),
        ("surplus: the study had reached its target", FailReason.SURPLUS),
        ("error: ValueError: bad", FailReason.ERROR),
        ("Stale trial", None),  # Optuna's own reason when a worker died
        ("divergedish", None),
        (None, None),
        (3, None),
    ],
)
def test_a_fail_reason_is_read_back_by_its_first_word(stored: object, kind: FailReason | None) -> None:
    assert FailReason.of(stored) is kind


def test_a_fail_reason_is_written_as_kind_then_detail() -> None:
    assert FailReason.INTERRUPTED.reason() == "interrupted"
    written = FailReason.DIVERGED.reason("non-finite loss at epoch 2 of repeat 1")
    assert written == "diverged: non-finite loss at epoch 2 of repeat 1"
    assert FailReason.of(written) is FailReason.DIVERGED


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ("COMPLETE", None, True),
        ("PRUNED", None, True),
        ("FAIL", "diverged: non-finite loss at epoch 1 of repeat 0", True),  # a result
        ("FAIL", "interrupted", False),  # run again on resume
        ("FAIL", "surplus: the study had reached its target", False),
        ("FAIL", None, False),  # its worker died
        ("RUNNING", None, False),
        ("WAITING", None, False),
    ],
)
def test_what_counts_toward_the_target(state: str, reason: str | None, expected: bool) -> None:
    assert counts(state, reason) is expected


def test_stored_curves_round_trip_and_rescore() -> None:
    curves = [
        Curves(loss=(1.0, 0.6, 0.4, 0.3), val_loss=(1.0, 0.7, 0.6, 0.8), metric_name="accuracy",
               val_metric=(0.5, 0.6, 0.7, 0.6), stop=Stop.COMPLETED),
        Curves(loss=(1.0, 0.5, 0.4, 0.3), val_loss=(0.9, 0.7, 0.65, 0.7), metric_name="accuracy",
               val_metric=(0.5, 0.6, 0.7, 0.6), stop=Stop.COMPLETED),
    ]  # fmt: skip
    stored = StoredCurves.from_attr(curves_attr(curves))
    assert stored.val_loss == [list(c.val_loss) for c in curves]
    assert stored.metric_name == "accuracy"
    cautious, bold = rescore(stored, risk=2.0, tail=2), rescore(stored, risk=0.0, tail=2)
    assert bold["score"] == pytest.approx(bold["tail_mean"])
    assert cautious["score"] == pytest.approx(cautious["tail_mean"] + 2.0 * cautious["tail_std"])
    assert cautious["tail_std"] > 0


def test_tally_and_best_trial_count_each_trial_once() -> None:
    from optuna.trial import TrialState, create_trial

    def trial(number: int, state: TrialState, **attrs: object) -> optuna.trial.FrozenTrial:
        t = create_trial(state=state, value=1.0 if state is TrialState.COMPLETE else None, user_attrs=attrs)
        t.number = number
        return t

    trials = [
        trial(0, TrialState.COMPLETE, score=0.5),
        trial(1, TrialState.COMPLETE, score=0.3),
        trial(2, TrialState.COMPLETE, score=math.nan),  # a non-finite score is never the best
        trial(3, TrialState.COMPLETE),  # no score (written by another tool)
        trial(4, TrialState.PRUNED, score=0.1),  # pruned trials are never the best
        trial(5, TrialState.FAIL, fail_reason="diverged: non-finite loss at epoch 1 of repeat 0"),
        trial(6, TrialState.FAIL, fail_reason="interrupted"),
        trial(7, TrialState.RUNNING),
    ]
    assert records.tally(trials) == records.Tally(done=6, running=1, failed=2)
    best = records.best_trial(trials)
    assert best is not None and best.number == 1
    assert records.best_trial(trials[2:4]) is None
