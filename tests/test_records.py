"""What a sweep stores: compact curves, the summary attrs, fail reasons, what counts toward the target."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from sweep import records
from sweep.objective import curves_attr
from sweep.records import FailReason, StoredCurves, compact, counts, expand, rescore, summary_attrs
from sweep.stability import HINTS, Diagnosis, summarize
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


def _long_attrs(repeats: int = 50) -> dict[str, object]:
    """The attrs of a 50-repeat trial (the most a study file allows) with a long hint and fail reason."""
    val = [[1.0 + 0.01 * r, 0.8, 0.7 + 0.001 * r, 0.71] for r in range(repeats)]
    summary = summarize(val, tail=2)
    curves = [Curves(loss=tuple(v), val_loss=tuple(v)) for v in val]
    return {
        records.CURVES: curves_attr(curves),
        **summary_attrs(summary),
        records.FAIL_REASON: "error: ValueError: " + "x" * 400,
        records.STOPPED: "all 50 repeats ran",
        "repeat_scores": [0.7] * repeats,
    }


def test_user_attrs_fit_one_line_and_the_rest_is_kept_whole_in_system_attrs() -> None:
    attrs = _long_attrs()
    assert len(attrs["hint"]) > records.USER_TEXT_MAX  # what was seen, then the remedy

    user, system = records.split_attrs(attrs)

    for key, value in user.items():
        assert len(f"{key} {value}") <= records.USER_TEXT_MAX + len(key) + 1, key
        assert not isinstance(value, list), key
    assert set(system) == {f"sweep:{k}" for k in (*records.PER_REPEAT, "hint", records.FAIL_REASON)}
    # The hint's user attr is what to change; the whole text (with the evidence) is a system attr.
    assert user["hint"] == HINTS[Diagnosis.UNDERFITTING]
    assert attrs["hint"].endswith(": " + user["hint"])
    assert user[records.FAIL_REASON] == attrs[records.FAIL_REASON][: records.USER_TEXT_MAX - 1] + "…"
    assert FailReason.of(user[records.FAIL_REASON]) is FailReason.ERROR
    for key, value in attrs.items():
        assert records.attr(key, user, system) == value, key


def test_attr_reads_a_study_written_before_the_split() -> None:
    """Studies written before 2026-12 kept everything in user attrs: read whole from there."""
    attrs = _long_attrs(repeats=2)
    for key, value in attrs.items():
        assert records.attr(key, attrs, {}) == value
    assert records.attr("missing", attrs, {}, "default") == "default"


def test_set_attrs_writes_a_running_trial_as_split_attrs_places_them(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    trial = study.ask()
    attrs = _long_attrs(repeats=3)

    records.set_attrs(trial, attrs)

    stored = study._storage.get_trial(trial._trial_id)
    user, system = records.split_attrs(attrs)
    assert stored.user_attrs == user
    assert {k: v for k, v in stored.system_attrs.items() if k.startswith("sweep:")} == system
    for key, value in attrs.items():
        assert records.trial_attr(stored, key) == value, key


def test_set_attrs_of_a_trial_whose_writes_are_held_is_one_transaction_of_the_same_rows(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from sweep import batch
    from sweep.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/held.db")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    attrs = _long_attrs(repeats=3)
    begun: list[object] = []
    sa.event.listen(storage.engine, "begin", begun.append)  # type: ignore[attr-defined]

    with batch.held(trial):
        records.set_attrs(trial, attrs)
        assert begun == []  # nothing written yet: about twenty attrs wait for one transaction

    assert len(begun) == 1
    stored = study._storage.get_trial(trial._trial_id)
    user, system = records.split_attrs(attrs)
    assert stored.user_attrs == user
    assert {k: v for k, v in stored.system_attrs.items() if k.startswith("sweep:")} == system
    for key, value in attrs.items():
        assert records.trial_attr(stored, key) == value, key
