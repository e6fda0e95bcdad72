"""One trial end to end: real training on digits, racing of repeats, pruned values, stored records."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweep import ledger, records
from sweep.allocation import Action, Config, go_on
from sweep.data import load_dataset
from sweep.objective import Objective
from sweep.report import rank
from sweep.runner import prepare_study
from sweep.search import PrunerView, should_prune
from sweep.space import distributions
from sweep.spec import StudySpec, load_spec
from sweep.stability import repeat_score
from sweep.storage import open_storage
from tests.helpers import write_study

GOOD = {
    "n_layers": 1,
    "units": 12,
    "activation": "tanh",
    "learning_rate": 0.03,
    "optimizer": "adam",
    "batch_size": 64,
    "dropout": 0.0,
    "l2": 1e-6,
}
"""Learns digits within 3 epochs (validation loss well under 1)."""
HOPELESS = {**GOOD, "learning_rate": 0.001, "optimizer": "sgd", "units": 4, "batch_size": 128}
"""Plain SGD at lr 0.001 for 3 epochs: stays near ln(10) = 2.30, the class-prior baseline."""


def _study(
    tmp_path: Path,
    extra: str,
    *,
    pruner: optuna.pruners.BasePruner | None = None,
    overrides: tuple[str, ...] = (),
    held: bool = False,
) -> tuple[optuna.Study, StudySpec]:
    """The study on a SQLite file: through sweep's storage (``held``: trials' writes held) or Optuna's own."""
    spec = load_spec(write_study(tmp_path, name="obj", epochs=3, extra=extra), overrides=list(overrides))
    url = f"sqlite:///{tmp_path / 'obj.db'}"
    prepare_study(spec, url=url)
    storage = open_storage(url) if held else url
    return optuna.load_study(study_name="obj", storage=storage, pruner=pruner or optuna.pruners.NopPruner()), spec


def _finished(study: optuna.Study, spec: StudySpec, repeat0_scores: list[float], *, steps: int = 3) -> None:
    """Finished trials whose repeat 0 scored as given (tail std 0), intermediate values flat at that score."""
    dists = distributions(spec.search, family=spec.model.family)
    for score in repeat0_scores:
        study.add_trial(create_trial(
            state=TrialState.COMPLETE,
            value=score,
            params={**GOOD, "layer_norm": False},
            distributions=dists,
            user_attrs={"repeat_means": [score, score], "repeat_stds": [0.0, 0.0]},
            intermediate_values={step: score for step in range(steps)},
        ))  # fmt: skip


def _run(study: optuna.Study, spec: StudySpec, params: dict[str, Any]) -> optuna.trial.FrozenTrial:
    study.enqueue_trial({**params, "layer_norm": False})
    objective = Objective(spec, load_dataset(source="digits"))
    study.optimize(objective, n_trials=1)
    return study.trials[-1]


@pytest.mark.slow
def test_racing_stops_a_hopeless_configuration_after_one_repeat_and_keeps_a_contender(tmp_path: Path) -> None:
    study, spec = _study(tmp_path, "\n[racing]\nn_startup_trials = 2\nkeep = 0.5\n")
    _finished(study, spec, [1.9, 2.0, 2.05, 2.1])

    good = _run(study, spec, GOOD)
    assert good.state is TrialState.COMPLETE
    assert good.user_attrs["n_repeats"] == 2 and len(records.trial_attr(good, "epochs")) == 2
    assert good.user_attrs[records.STOPPED] == "all 2 repeats ran"
    assert good.value == good.user_attrs["score"]

    hopeless = _run(study, spec, HOPELESS)
    assert hopeless.state is TrialState.PRUNED
    attrs = hopeless.user_attrs
    assert attrs[records.RACED_OUT] is True
    assert attrs["n_repeats"] == 1 and len(records.trial_attr(hopeless, records.CURVES)["val_loss"]) == 1
    assert attrs[records.STOPPED].startswith("stopped after 1 of 2 repeats: raced out: its repeat-0 score")
    assert attrs["diagnosis"] == "pruned" and "not trained to the end" in records.trial_attr(hopeless, "hint")
    # one number: Optuna's value (its last report), the stored score and the ranked score
    assert hopeless.value == attrs["score"]
    ranked = {r.number: r for r in rank("obj", url=f"sqlite:///{tmp_path / 'obj.db'}", include_all=True)}
    assert ranked[hopeless.number].score == hopeless.value
    assert ranked[hopeless.number].state == "PRUNED"
    assert min(r.rank for r in ranked.values() if r.state == "PRUNED") > max(
        r.rank for r in ranked.values() if r.state == "COMPLETE"
    )


@pytest.mark.slow
@pytest.mark.parametrize("held", [False, True], ids=["one-call-per-write", "held-writes"])
def test_a_pruned_trial_reports_its_running_score_and_gets_no_training_advice(tmp_path: Path, held: bool) -> None:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    study, spec = _study(tmp_path, "\n[racing]\nenabled = false\n", pruner=pruner,
                         overrides=('pruner.name="median"',), held=held)  # fmt: skip
    _finished(study, spec, [0.05, 0.05, 0.05])  # far better than 2 epochs of anything

    trial = _run(study, spec, GOOD)
    assert trial.state is TrialState.PRUNED
    val = records.trial_attr(trial, records.CURVES)["val_loss"][0]
    assert len(val) == 2  # pruned at the first epoch after the warm-up
    reported = [trial.intermediate_values[i] for i in sorted(trial.intermediate_values)]
    assert reported == pytest.approx([repeat_score(val[: i + 1], tail=5) for i in range(len(val))], rel=1e-5)
    assert trial.value == trial.user_attrs["score"] == reported[-1]
    assert trial.user_attrs["diagnosis"] == "pruned"
    assert trial.user_attrs[records.STOPPED] == "pruned at epoch 2 of repeat 0 by the median pruner"
    assert "more epochs" not in records.trial_attr(trial, "hint")


def race(study: optuna.Study, score0: float, spec: StudySpec) -> str:
    """Why a new trial whose repeat 0 scored ``score0`` stops there, as the allocation reads the study; or ``""``."""
    seen = ledger.observe(study.get_trials(deepcopy=False), spec=spec)
    me = Config(key=10_000, scores=(score0,), busy=True)
    step = go_on([*seen.configs, me], ledger.plan_of(spec), me.key, used=seen.used)
    return "" if step.action is Action.REPEAT else step.reason


def test_race_rule_cuts_at_the_keep_fraction(tmp_path: Path) -> None:
    study, spec = _study(tmp_path, "\n[racing]\nn_startup_trials = 3\nkeep = 0.25\n")
    _finished(study, spec, [1.0, 2.0])
    assert race(study, 9.0, spec) == ""  # two finished trials: still starting up
    _finished(study, spec, [3.0, 4.0, 5.0, 6.0, 7.0])
    # pool of 8 with the trial itself: the best 25% are the 2 lowest
    assert race(study, 1.5, spec) == ""
    assert race(study, 2.0, spec) == ""
    verdict = race(study, 2.5, spec)
    assert verdict == "raced out: its repeat-0 score 2.5 is not among the best 25% of 8 repeat-0 scores (cut 2)"


def test_race_ignores_trials_pruned_inside_repeat_0(tmp_path: Path) -> None:
    study, spec = _study(tmp_path, "\n[racing]\nn_startup_trials = 1\nkeep = 0.5\n")
    dists = distributions(spec.search, family=spec.model.family)
    study.add_trial(create_trial(
        state=TrialState.PRUNED, params={**GOOD, "layer_norm": False}, distributions=dists,
        user_attrs={"repeat_means": [0.01], "repeat_stds": [0.0]}, intermediate_values={0: 0.01},
    ))  # fmt: skip
    assert race(study, 5.0, spec) == ""  # a half-trained repeat 0 is no yardstick: still starting up
    _finished(study, spec, [1.0])
    assert race(study, 5.0, spec).startswith("raced out")


# --------------------------------------------------------------------------- asking the pruner


def test_the_pruner_view_reads_the_complete_trials_again_once_they_are_a_heartbeat_old(tmp_path: Path) -> None:
    study, spec = _study(tmp_path, "")
    _finished(study, spec, [1.0, 2.0])
    now = [0.0]
    view = PrunerView(study, max_age_s=30, clock=lambda: now[0])
    complete = (TrialState.COMPLETE,)

    assert [t.number for t in view.get_trials(deepcopy=False, states=complete)] == [0, 1]
    _finished(study, spec, [3.0])  # another worker's trial completes
    now[0] = 29.0
    assert len(view.get_trials(deepcopy=False, states=complete)) == 2 and view.reads == 1
    now[0] = 30.0
    assert len(view.get_trials(deepcopy=False, states=complete)) == 3 and view.reads == 2
    # Any other state is read from the study each time; the rest of the study is the study's.
    study.ask()
    assert [t.state for t in view.get_trials(states=(TrialState.RUNNING,))] == [TrialState.RUNNING]
    assert len(view.get_trials()) == 4 and view.reads == 2
    assert view.direction is study.direction and view.study_name == "obj"


@pytest.mark.parametrize(
    "pruner",
    [
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
        optuna.pruners.PercentilePruner(40.0, n_startup_trials=1, n_warmup_steps=1),
        optuna.pruners.NopPruner(),
        optuna.pruners.HyperbandPruner(min_resource=1, max_resource=6, reduction_factor=2),
    ],
    ids=["median", "median-starting-up", "percentile", "none", "hyperband"],
)
def test_should_prune_decides_as_optuna_asked_at_every_epoch_would(tmp_path: Path, pruner: Any) -> None:
    """Two copies of one study: trials asked through ``should_prune`` and through Optuna end the same way."""
    decisions: dict[str, list[list[bool]]] = {}
    reads = 0
    for way in ("sweep", "optuna"):
        (tmp_path / way).mkdir()
        study, spec = _study(tmp_path / way, "", pruner=copy.deepcopy(pruner))
        _finished(study, spec, [0.5, 0.9, 1.3, 1.7], steps=6)
        decisions[way] = []
        for curve in ([2.0, 1.6, 1.2, 1.1, 1.0, 0.9], [2.0, 1.0, 0.6, 0.5, 0.45, 0.4], [1.0, 1.5, 1.8, 1.9, 2.0, 2.1]):
            view = PrunerView(study, max_age_s=30)  # one per trial, as the objective makes it
            trial = study.ask()
            reported: dict[int, float] = {}
            asked = []
            for step, value in enumerate(curve):
                trial.report(value, step)
                reported[step] = value
                asked.append(should_prune(trial, reported, view) if way == "sweep" else trial.should_prune())
            decisions[way].append(asked)
            reads += view.reads
            study.tell(trial, state=TrialState.PRUNED if any(asked) else TrialState.COMPLETE, values=None
                       if any(asked) else [curve[-1]])  # fmt: skip
    assert decisions["sweep"] == decisions["optuna"]
    assert any(any(asked) for asked in decisions["sweep"]) or isinstance(pruner, optuna.pruners.NopPruner)
    if isinstance(pruner, optuna.pruners.PercentilePruner):
        assert reads == 3  # 18 decisions of 3 trials, each on one read of the complete trials (within 30 s)
