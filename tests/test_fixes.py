"""``sweep fix``: the unstable trials' remedies, queued once, and shown beside their originals by ``sweep rank``."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep import records
from tests.helpers import cheap_study, run_cli, trials_of

# (diagnosis, score) of the complete trials, best first; trial 5 is a pruned one.
RESULTS = [
    ("stable", 0.10), ("oscillating", 0.12), ("overfitting", 0.15), ("underfitting", 0.20), ("oscillating", 0.30)
]


@pytest.fixture
def study(tmp_path: Path) -> tuple[str, str]:
    """A study created by ``sweep create`` whose trials are written directly (training is not the point here)."""
    path = cheap_study(tmp_path, name="fixme")
    path.write_text(path.read_text().replace("batch_size = [64, 128]", "batch_size = [32, 64, 128]"))
    url = f"sqlite:///{tmp_path / 'f.db'}"
    assert run_cli("create", str(path), "--storage", url).returncode == 0
    s = optuna.load_study(study_name="fixme", storage=url)
    from sweep.space import distributions
    from sweep.spec import load_spec

    spec = load_spec(path)
    dists = distributions(spec.search, family="dense")
    for i, (diagnosis, score) in enumerate(RESULTS):
        params = {n: d.to_external_repr(d.to_internal_repr(_middle(d))) for n, d in dists.items()}
        params["learning_rate"] = 0.003
        params["batch_size"] = 32 if i != 2 else 128
        s.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=score,
            user_attrs={"diagnosis": diagnosis, "score": score, "tail_mean": score, "tail_std": 0.0,
                        "hint": f"seen: {diagnosis}"},
        ))  # fmt: skip
    s.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={}, distributions={},
                                          user_attrs={"diagnosis": "pruned"}))  # fmt: skip
    return "fixme", url


def _middle(d: object) -> object:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return d.choices[0]
    return d.low  # type: ignore[attr-defined]


def test_fix_queues_each_remedy_once_within_the_space_and_rank_shows_the_outcome(study: tuple[str, str]) -> None:
    name, url = study
    first = run_cli("fix", name, "--storage", url, "--top", "2")
    assert first.returncode == 0, first.stderr
    waiting = [t for t in trials_of(url, name) if t.state is TrialState.WAITING]
    assert [t.user_attrs[records.FIXES] for t in waiting] == [1, 2]  # the two best with a problem; not the stable one
    original = {t.number: t for t in trials_of(url, name)}
    oscillating, overfitting = waiting
    queued = {t.number: t.system_attrs["fixed_params"] for t in waiting}  # what the next worker trains
    assert queued[oscillating.number] == {**original[1].params, "learning_rate": 0.001, "batch_size": 64}
    assert queued[overfitting.number]["dropout"] == pytest.approx(original[2].params["dropout"] + 0.1)
    assert queued[overfitting.number]["batch_size"] == 128  # not a change overfitting asks for
    assert first.stdout.splitlines()[0] == (
        f"#1 oscillating: trial {oscillating.number} trains learning_rate 0.003 -> 0.001, batch_size 32 -> 64"
    )

    again = run_cli("fix", name, "--storage", url, "--top", "2")  # idempotent
    assert again.returncode == 0 and len(trials_of(url, name)) == len(original)
    assert "queued before; WAITING" in again.stdout

    # The fix trains (written here) and ranks better than the trial it fixes.
    s = optuna.load_study(study_name=name, storage=url)
    trial = s.ask()  # takes the first queued trial, the fix of #1
    assert trial.number == oscillating.number
    for key, value in {"diagnosis": "stable", "score": 0.11, "tail_mean": 0.11, "tail_std": 0.0}.items():
        trial.set_user_attr(key, value)
    s.tell(trial, 0.11)
    table = run_cli("rank", name, "--storage", url)
    assert f"#{oscillating.number} fixes #1 (oscillating): score 0.11 against 0.12, better by 0.01" in table.stdout
    ranked = json.loads(run_cli("rank", name, "--storage", url, "--format", "json").stdout)
    assert {r["number"]: r["fixes"] for r in ranked}[oscillating.number] == 1


def test_a_study_with_nothing_to_fix_says_so(tmp_path: Path) -> None:
    path = cheap_study(tmp_path, name="fine")
    url = f"sqlite:///{tmp_path / 'ok.db'}"
    assert run_cli("create", str(path), "--storage", url).returncode == 0
    result = run_cli("fix", "fine", "--storage", url)
    assert result.returncode == 0 and result.stdout.strip() == "fine: no complete trial has a problem to fix"
