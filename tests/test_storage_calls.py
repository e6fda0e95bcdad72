"""Fewer storage calls per trial, and every reader of what a trial stored unchanged (SQLite, PostgreSQL, MariaDB).

A trial's writes are held and written in a few transactions (:mod:`sweep.batch`);
the pruner reads the study's complete trials once a heartbeat interval
(:class:`sweep.search.PrunerView`). Training is the stand-in of
:mod:`benchmarks.storage_calls`; everything else is the real trial path.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import optuna
from optuna_dashboard import get_note

from benchmarks.harness import write_study
from benchmarks.storage_calls import BEFORE, EPOCHS, REPEATS, cheap_training, measure, stand_in_curves, study_sections
from sweep import records
from sweep.dashboard import write_trial
from sweep.data import load_dataset
from sweep.objective import Objective
from sweep.report import rank, study_status
from sweep.runner import prepare_study
from sweep.search import make_pruner
from sweep.spec import StudySpec, load_spec
from sweep.storage import open_storage, storage_options
from sweep.transfer import copy_studies

OLD_CALLS = 103
"""Transactions of one trial (5 repeats of 20 epochs, the median pruner) before its writes were held.

Measured on 2026-12-06 with ``python -m benchmarks.storage_calls --proxy --json`` run on the
committed tree before the change (``git archive ed8d53c``, the benchmark module copied in), on
PostgreSQL 15: 28 ``get_all_trials``, 22 ``set_trial_user_attr``, 20 ``set_trial_intermediate_value``,
12 ``set_trial_system_attr``, 9 ``set_trial_param`` and 12 others (``BEFORE`` in the module).
"""


def test_the_recorded_old_count_is_the_benchmarks() -> None:
    assert sum(BEFORE.values()) == OLD_CALLS


def test_a_trial_makes_at_most_a_quarter_of_its_old_storage_calls(storage_url: str, tmp_path: Path) -> None:
    report = measure(storage_url, tmp_path)

    assert report["trial"] == {"state": "COMPLETE", "epochs": [EPOCHS] * REPEATS, "intermediate_values": EPOCHS}
    calls = report["calls"]["trial"]
    assert sum(calls.values()) <= OLD_CALLS / 4, calls
    # Nothing is written one row at a time: the trial's writes go out with its reads and in three flushes.
    assert calls.get("write_held") == 3  # the parameters, the records, what the notes wrote
    for kind in ("set_trial_user_attr", "set_trial_intermediate_value", "set_trial_param", "set_study_system_attr"):
        assert kind not in calls, calls
    assert calls.get("set_trial_system_attr") == 1  # the first beat, written before the trial's writes are held
    assert report["method_calls"]["trial"]["set_trial_intermediate_value"] == EPOCHS  # every epoch still reported


# --------------------------------------------------------------------------- every reader unchanged

LATE_RISE = 0.007
CONFIGS = [0.01, 0.004, 0.006, 0.03, 0.0002, 0.008, LATE_RISE, 0.005]
"""Learning rates of the queued trials: complete, diverged (0.03), pruned (0.0002), raced out (``LATE_RISE``)."""


def _curves(seed: int, params: Any, max_epochs: int) -> tuple[list[float], list[float]]:
    train, val = stand_in_curves(seed, params, max_epochs)
    if params.learning_rate >= 0.02:
        val[3] = train[3] = math.nan
    elif params.learning_rate == LATE_RISE:  # good while the pruner looks, bad at the end: raced out
        val = [v + 0.8 if e >= 6 else 0.5 * v for e, v in enumerate(val)]
    elif params.learning_rate >= 0.005:  # a wobble in the tail: not stable
        val = [v + (0.05 if e % 2 else -0.05) * (seed % 3 + 1) for e, v in enumerate(val)]
    return train, val


def _run(url: str, folder: Path, name: str, *, held: bool) -> tuple[StudySpec, optuna.Study]:
    """The queued trials of ``CONFIGS`` run by the objective, writes held (now) or one call each (before)."""
    sections = study_sections(name, repeats=3, epochs=8)
    sections["pruner"] = {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 4}
    sections["allocation"] = {"policy": "racing"}
    sections["racing"] = {"n_startup_trials": 3, "keep": 0.5}
    spec = load_spec(write_study(folder, sections))
    prepare_study(spec, url=url)
    storage = open_storage(url, **storage_options(spec)) if held else optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(spec))
    for lr in CONFIGS:
        study.enqueue_trial({"n_layers": 1, "units": 16, "activation": "tanh", "learning_rate": lr,
                             "optimizer": "adam", "batch_size": 64, "dropout": 0.1, "l2": 1e-5, "layer_norm": False})
    notes = functools.partial(write_trial, spec=spec, store=None)
    objective = Objective(spec, load_dataset(source="digits"), on_recorded=notes)
    with cheap_training(_curves):
        study.optimize(objective, n_trials=len(CONFIGS), catch=(Exception,))
    return spec, study


def _stored(study: optuna.Study) -> list[dict[str, Any]]:
    """Everything stored of each trial, less the seconds the dashboard's note took to write."""
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "values": t.values,
            "params": t.params,
            "user_attrs": {k: v for k, v in t.user_attrs.items() if k != "dashboard_seconds"},
            "system_attrs": t.system_attrs,
            "intermediate_values": t.intermediate_values,
            "note": get_note(optuna.trial.Trial(study, t._trial_id)),
            "every attr whole": {
                k: records.trial_attr(t, k) for k in {*t.user_attrs, *t.system_attrs} if k != "dashboard_seconds"
            },
        }
        for t in study.get_trials()
    ]


def _ranked(name: str, url: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [r.as_dict() for r in rank(name, url=url, **kwargs)]


def test_held_writes_leave_every_reader_unchanged(storage_url: str, tmp_path: Path) -> None:
    """A study written now reads as one written before, one call per write: the same rows, ranks, notes, copies."""
    _, before = _run(storage_url, tmp_path, "before", held=False)
    _, now = _run(storage_url, tmp_path, "now", held=True)

    stored = _stored(now)
    assert stored == _stored(before)
    states = [t["state"] for t in stored]
    assert {"COMPLETE", "PRUNED", "FAIL"} <= set(states), states
    assert any(t["user_attrs"].get(records.RACED_OUT) for t in stored)
    assert all("dashboard_seconds" in t.user_attrs for t in [*now.get_trials(), *before.get_trials()])
    for kwargs in ({}, {"include_all": True}, {"risk": 2.0, "tail": 3, "include_all": True}, {"by": "tail_std"}):
        assert _ranked("now", storage_url, **kwargs) == _ranked("before", storage_url, **kwargs), kwargs
    status_now, status_before = study_status("now", url=storage_url), study_status("before", url=storage_url)
    assert (status_now.counts, status_now.done, status_now.epochs) == (
        status_before.counts, status_before.done, status_before.epochs,
    )  # fmt: skip
    # ``sweep copy`` of the study written now reads back the same elsewhere.
    copy_url = f"sqlite:///{tmp_path / 'copy.db'}"
    copy_studies(from_url=storage_url, to_url=copy_url, study="now")
    assert _ranked("now", copy_url, include_all=True) == _ranked("before", storage_url, include_all=True)
    copied = optuna.load_study(study_name="now", storage=copy_url)
    assert [{k: v for k, v in t.items() if k != "note"} for t in _stored(copied)] == [
        {k: v for k, v in t.items() if k != "note"} for t in stored
    ]
