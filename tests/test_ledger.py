"""The allocation read from a real storage: every worker decides alike, and a real sweep spends its budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from sweep import ledger, records
from sweep.allocation import Action
from sweep.report import rank
from sweep.spec import StudySpec, spec_from_dict
from sweep.worker import allocate
from tests.helpers import run_cli, write_study


def _spec(**study: Any) -> StudySpec:
    return spec_from_dict(
        {
            "study": {"name": "ledger", **study},
            "data": {"source": "digits"},
            "model": {"family": "dense"},
            "training": {"max_epochs": 10, "repeats": 3},
        }
    )


def _add(study: optuna.Study, units: int, scores: list[float], *, epochs: int, state: TrialState = TrialState.PRUNED,
         verifies: int | None = None) -> None:  # fmt: skip
    """A finished trial as the objective records it (the summary attrs a report reads included)."""
    user: dict[str, Any] = {
        ledger.EPOCHS_TRAINED: epochs,
        "n_repeats": len(scores),
        "score": sum(scores) / len(scores),
        "diagnosis": "stable" if state is TrialState.COMPLETE else "pruned",
    }
    if state is TrialState.PRUNED:
        user[records.RACED_OUT] = True
    if verifies is not None:
        user[ledger.VERIFIES] = verifies
    study.add_trial(
        create_trial(
            state=state,
            value=sum(scores) / len(scores),
            params={"units": units},
            distributions={"units": IntDistribution(1, 100)},
            user_attrs=user,
            system_attrs={records.system_key(ledger.REPEAT_SCORES): scores},
        )
    )


def test_two_workers_reading_one_storage_decide_alike_and_never_verify_twice(storage_url: str) -> None:
    spec = _spec(budget=100)
    first = optuna.create_study(study_name="ledger", storage=storage_url)
    for units, score in [(10, 0.9), (20, 0.3), (30, 0.5), (40, 0.7), (50, 0.6), (60, 0.8), (70, 0.4), (80, 0.65)]:
        _add(first, units, [score], epochs=10)
    _add(first, 20, [0.3, 0.31], epochs=10, verifies=1)  # configuration 1 (units 20) has 2 of 3 repeats now
    second = optuna.load_study(study_name="ledger", storage=storage_url)

    # 90 of 100 epochs used, the best (configuration 1) lacks one repeat of 10: both see the same step
    seen = [ledger.observe(s.get_trials(deepcopy=False), spec=spec) for s in (first, second)]
    assert seen[0] == seen[1] and seen[0].used == 90
    assert [c.n for c in seen[0].configs if c.key == 1] == [2]

    step = allocate(first, spec)
    assert (step.action, step.key, step.repeat) == (Action.REPEAT, 1, 2)
    queued = second.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [(t.system_attrs["fixed_params"], t.user_attrs[ledger.VERIFIES]) for t in queued] == [({"units": 20}, 1)]
    # The other worker sees the claim: the configuration is not queued twice, and its epochs are spoken for
    again = allocate(second, spec)
    assert again.action is Action.STOP and again.reason == "the budget is spent (100 of 100)"
    assert len(second.get_trials(deepcopy=False, states=(TrialState.WAITING,))) == 1


def test_a_spent_budget_stops_every_worker(storage_url: str) -> None:
    spec = _spec(budget=35)
    study = optuna.create_study(study_name="ledger", storage=storage_url)
    for units, epochs in [(10, 10), (20, 7), (30, 10)]:
        _add(study, units, [0.5], epochs=epochs)
    step = allocate(study, spec)
    assert step.action is Action.STOP and step.reason == "the budget is spent (27 of 35)"
    assert study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) == []


def test_the_ranking_shows_a_configuration_once_with_its_most_repeats(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = optuna.create_study(study_name="ledger", storage=url)
    study.set_user_attr(records.SPEC, _spec(budget=100).to_json_dict())
    _add(study, 20, [0.1], epochs=10)  # trial 0: lucky once
    _add(study, 30, [0.4], epochs=10)  # trial 1
    _add(study, 20, [0.1, 0.6], epochs=10, verifies=0)  # trial 2
    _add(study, 20, [0.1, 0.6, 0.7], epochs=10, verifies=0, state=TrialState.COMPLETE)  # trial 3
    _add(study, 40, [0.2], epochs=10)  # trial 4
    ranked = rank("ledger", url=url, include_all=True)
    assert [(r.number, r.state, r.n_repeats) for r in ranked] == [
        (3, "COMPLETE", 3),
        (4, "PRUNED", 1),
        (1, "PRUNED", 1),
    ]
    assert [r.number for r in rank("ledger", url=url)] == [3]


@pytest.mark.slow
def test_a_real_sweep_spends_its_budget_to_within_one_training(tmp_path: Path) -> None:
    """The default allocation on a small budget (14 epochs of a dense model, 2 a repeat, 2 repeats): one run per
    configuration, then the best 2 verified."""
    study = write_study(tmp_path, name="budget", n_trials=1, family="dense", epochs=2,
                        extra='\n[allocation]\npolicy = "auto"\n')  # fmt: skip
    text = study.read_text().replace("n_trials = 1\n", "budget = 14\n").replace("patience = 3", "patience = 10")
    study.write_text(text.replace('source = "digits"', 'source = "breast_cancer"'))
    url = f"sqlite:///{tmp_path / 'b.db'}"
    result = run_cli("run", str(study), "--storage", url, "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr

    trials = optuna.load_study(study_name="budget", storage=url).get_trials(deepcopy=False)
    used = sum(t.user_attrs[ledger.EPOCHS_TRAINED] for t in trials)
    assert 14 - 2 < used <= 14
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    verified = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(verified) == 2 and all(t.user_attrs["n_repeats"] == 2 for t in verified)
    for t in verified:  # each verifies the configuration an earlier trial drew, whose repeat 0 it copied
        drew = trials[ledger.config_key(t)]
        assert drew.number < t.number and drew.params == t.params
        assert records.trial_attr(t, records.CURVES)["val_loss"][0] == records.trial_attr(drew, records.CURVES)[
            "val_loss"][0]  # fmt: skip
        assert drew.user_attrs["stopped"].startswith("stopped after 1 of 2 repeats: one run per configuration")
    shown = json.loads(run_cli("rank", "budget", "--storage", url, "--format", "json").stdout)
    assert [r["n_repeats"] for r in shown] == [2, 2]
    assert {r["number"] for r in shown} == {t.number for t in verified}
    assert shown[0]["score"] <= shown[1]["score"]


def test_status_says_how_much_of_the_budget_is_trained(tmp_path: Path) -> None:
    from sweep.report import study_status

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="ledger", storage=url)
    study.set_user_attr(records.SPEC, _spec(budget=100).to_json_dict())
    _add(study, 20, [0.3], epochs=10)
    _add(study, 20, [0.3, 0.4, 0.35], epochs=17, verifies=0, state=TrialState.COMPLETE)
    status = study_status("ledger", url=url)
    assert (status.epochs, status.budget) == (27, 100)
    lines = status.lines()
    assert "budget   27 of 100 epochs trained" in lines
    assert any(line.startswith("best     trial 1: score 0.35 over 3 repeats") for line in lines), lines


def test_a_repeat_queued_twice_by_two_workers_is_trained_once(tmp_path: Path) -> None:
    from sweep.worker import verified_elsewhere

    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = optuna.create_study(study_name="ledger", storage=url)
    _add(study, 20, [0.3], epochs=10)  # trial 0
    for _ in range(2):  # both workers decided before either had queued it
        study.enqueue_trial({"units": 20}, user_attrs={ledger.VERIFIES: 0})
    first = study.ask({"units": IntDistribution(1, 100)})
    second = study.ask({"units": IntDistribution(1, 100)})
    trials = study.get_trials(deepcopy=False)
    assert (first.number, second.number) == (1, 2)
    assert verified_elsewhere(first.number, 0, trials) is None
    assert verified_elsewhere(second.number, 0, trials) == 1
    assert verified_elsewhere(second.number, 5, trials) is None
