"""A study's trials as the allocation sees them: configurations, their repeat scores, the budget used.

Every worker builds the same view from the storage, so every worker reaches
the same :mod:`sweep.allocation` decision (there is no coordinator).

A configuration is the trial that drew it and every later trial that trained
more of its repeats (their ``verifies`` attr names it). Such a trial copies the
repeats already trained and adds its own, so the configuration's record is its
trial with the most repeats, and the others are *superseded*
(:func:`superseded`): reports leave them out. A trial writes its
``repeat_scores`` and ``epochs_trained`` after every repeat, so a running
trial's progress is in the storage too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweep import records
from sweep.allocation import Config, Plan, Policy

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from sweep.spec import StudySpec

__all__ = ["VERIFIES", "Ledger", "config_key", "key_of", "observe", "plan_of", "superseded", "trained_of"]

VERIFIES = "verifies"
"""User attr of a trial that trains more repeats of an earlier configuration: that configuration's key."""
REPEAT_SCORES = "repeat_scores"
"""Per-repeat score (``mean + risk * std`` of the repeat's tail), written after every repeat."""
EPOCHS_TRAINED = "epochs_trained"
"""Epochs this trial trained itself (repeats copied from an earlier trial left out), written after every repeat."""
FIRST_REPEAT = "first_repeat"
"""The first repeat a verifying trial trained itself (the ones before it were copied)."""


def plan_of(spec: StudySpec) -> Plan:
    """The allocation :class:`~sweep.allocation.Plan` of a study spec (epochs as the unit)."""
    a, racing = spec.allocation, spec.racing
    return Plan(
        policy=Policy(a.policy),
        repeats=spec.training.repeats,
        cost=float(spec.training.max_epochs),
        budget=None if spec.study.budget is None else float(spec.study.budget),
        keep=racing.keep,
        n_startup=racing.n_startup_trials,
        verify=a.verify,
    )


def config_key(trial: FrozenTrial) -> int:
    """The configuration a trial trains: its own number, or the one its ``verifies`` attr names."""
    return key_of(trial.number, trial.user_attrs)


def key_of(number: int, attrs: Mapping[str, Any]) -> int:
    """:func:`config_key` from a trial's number and user attrs (as ``sweep rank`` reads them with SQL)."""
    key = attrs.get(VERIFIES)
    return key if isinstance(key, int) and not isinstance(key, bool) else number


@dataclass(frozen=True)
class Ledger:
    """The allocation's view of a study."""

    configs: tuple[Config, ...]
    used: float
    """Epochs trained so far, plus ``cost`` for each repeat in flight or queued (except the asking trial's)."""
    records: dict[int, FrozenTrial]
    """For each configuration key, the trial that holds its most repeats."""


def observe(trials: Iterable[FrozenTrial], *, spec: StudySpec, asking: int | None = None) -> Ledger:
    """Read ``trials`` into configurations and the budget used.

    Args:
        asking: the number of the running trial that asks whether to go on: its
            repeat in flight has ended, so it is not counted as one.
    """
    risk, cost = spec.stability.risk, float(spec.training.max_epochs)
    used = 0.0
    best: dict[int, tuple[tuple[float, ...], FrozenTrial]] = {}
    busy: set[int] = set()
    closed: set[int] = set()
    for t in trials:
        state = t.state.name
        if state == "WAITING":
            if VERIFIES in t.user_attrs:
                busy.add(config_key(t))  # claimed and queued: the next worker to ask for a trial trains it
                used += cost
            continue
        used += epochs_trained(t)
        key = config_key(t)
        if state == "RUNNING":
            busy.add(key)
            if t.number != asking:
                used += cost
        elif state == "FAIL":
            if records.FailReason.of(t.user_attrs.get(records.FAIL_REASON)) is records.FailReason.DIVERGED:
                closed.add(key)
            continue
        elif state == "PRUNED" and not t.user_attrs.get(records.RACED_OUT):
            closed.add(key)  # the pruner stopped its repeat 0: nothing to compare
            continue
        scores = tuple(repeat_scores(t, risk=risk))
        if key not in best or len(scores) > len(best[key][0]):
            best[key] = (scores, t)
    configs = tuple(
        Config(key=key, scores=scores, busy=key in busy, closed=key in closed)
        for key, (scores, _) in sorted(best.items())
    )
    return Ledger(configs=configs, used=used, records={k: t for k, (_, t) in best.items()})


def superseded(trials: Iterable[tuple[int, str, int, int]]) -> set[int]:
    """Numbers of finished trials whose configuration has a later record with at least as many repeats.

    Args:
        trials: ``(number, state name, configuration key, repeats)`` of every trial.
    """
    finished = [t for t in trials if t[1] in ("COMPLETE", "PRUNED")]
    holder: dict[int, tuple[int, int]] = {}
    for number, _, key, n in finished:
        if key not in holder or (n, number) > holder[key]:
            holder[key] = (n, number)
    return {number for number, _, key, _ in finished if holder[key][1] != number}


def repeat_scores(trial: FrozenTrial, *, risk: float) -> list[float]:
    """The trial's per-repeat scores: as written after each repeat, else from its stored repeat means and stds."""
    stored = records.trial_attr(trial, REPEAT_SCORES)
    if isinstance(stored, list):
        return [_num(x) for x in stored]
    means, stds = records.trial_attr(trial, "repeat_means"), records.trial_attr(trial, "repeat_stds")
    if not (isinstance(means, list) and isinstance(stds, list)):
        return []
    return [_num(m) + risk * _num(s) for m, s in zip(means, stds, strict=False)]


def epochs_trained(trial: FrozenTrial) -> int:
    """Epochs the trial trained itself (older trials: every repeat's epochs)."""
    return trained_of(trial.user_attrs.get(EPOCHS_TRAINED), records.trial_attr(trial, "epochs"))


def trained_of(trained: Any, epochs: Any) -> int:
    """:func:`epochs_trained` from the stored ``epochs_trained`` and per-repeat ``epochs`` attrs."""
    if isinstance(trained, int):
        return trained
    return sum(e for e in epochs if isinstance(e, int)) if isinstance(epochs, list) else 0


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else math.inf
