"""A running trial's writes held and written in few transactions, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from sweep import batch
from sweep.liveness import TakenOver
from sweep.storage import open_storage


class Transactions:
    """Transactions begun on a storage's engine."""

    def __init__(self, storage: Any) -> None:
        import sqlalchemy as sa

        self.count = 0
        sa.event.listen(storage.engine, "begin", self._begun)

    def _begun(self, conn: Any) -> None:
        self.count += 1


@pytest.fixture
def running(storage_url: str) -> Iterator[tuple[optuna.Trial, optuna.storages.RDBStorage, Transactions]]:
    """A running trial on a sweep storage; a plain storage on the same database (another worker's view)."""
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="held", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    other = optuna.storages.RDBStorage(storage_url)
    yield trial, other, Transactions(storage)
    other.engine.dispose()
    storage.engine.dispose()  # type: ignore[attr-defined]


def _stored(other: optuna.storages.RDBStorage, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    return other.get_trial(trial._trial_id)


def _write_some(trial: optuna.Trial) -> None:
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("score", 0.25)
    trial.storage.set_trial_system_attr(trial._trial_id, "sweep:curves", {"val_loss": [[1.0, 0.5]]})
    trial.report(0.5, 0)
    trial.report(0.4, 1)


def test_held_writes_go_out_with_the_next_read_in_one_transaction(running: Any) -> None:
    trial, other, transactions = running
    with batch.held(trial):
        _write_some(trial)
        assert transactions.count == 0
        seen = _stored(other, trial)
        assert (seen.params, seen.user_attrs, seen.intermediate_values) == ({}, {}, {})
        assert "sweep:curves" not in seen.system_attrs

        (mine,) = trial.study.get_trials()  # a read of the study carries them: this worker reads what it wrote

        assert transactions.count == 1
        for frozen in (mine, _stored(other, trial)):
            assert frozen.params == {"x": trial.params["x"]}
            assert frozen.user_attrs == {"score": 0.25}
            assert frozen.system_attrs["sweep:curves"] == {"val_loss": [[1.0, 0.5]]}
            assert frozen.intermediate_values == {0: 0.5, 1: 0.4}
    assert transactions.count == 1  # nothing was left to write at the end


def test_flush_writes_what_is_held_in_one_transaction_and_the_end_writes_the_rest(running: Any) -> None:
    trial, other, transactions = running
    with batch.held(trial):
        _write_some(trial)
        batch.flush(trial)
        assert transactions.count == 1 and _stored(other, trial).user_attrs == {"score": 0.25}
        trial.set_user_attr("dashboard_seconds", 0.1)
        batch.flush(trial)
        batch.flush(trial)  # nothing held: no transaction
        assert transactions.count == 2
        trial.set_user_attr("last", True)
    assert transactions.count == 3
    assert _stored(other, trial).user_attrs == {"score": 0.25, "dashboard_seconds": 0.1, "last": True}


def test_a_block_that_raises_still_writes_what_it_held(running: Any) -> None:
    trial, other, _ = running
    with pytest.raises(optuna.TrialPruned), batch.held(trial):
        trial.report(0.9, 0)
        trial.set_user_attr("stopped", "pruned at epoch 1")
        raise optuna.TrialPruned()
    stored = _stored(other, trial)
    assert stored.intermediate_values == {0: 0.9} and stored.user_attrs == {"stopped": "pruned at epoch 1"}


def test_nothing_more_is_written_to_a_trial_another_worker_failed(running: Any) -> None:
    trial, other, _ = running
    other.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)  # a reaper took it over
    with pytest.raises(UpdateFinishedTrialError), batch.held(trial):
        trial.set_user_attr("score", 0.3)
        batch.flush(trial)
    with pytest.raises(UpdateFinishedTrialError), batch.held(trial):
        trial.set_user_attr("score", 0.3)
        trial.study.get_trials()  # a read that carries refused writes is refused with them
    with pytest.raises(UpdateFinishedTrialError), batch.held(trial):  # at the end of the block too
        trial.set_user_attr("score", 0.3)
    with pytest.raises(TakenOver), batch.held(trial):  # the worker knows: it writes nothing more
        trial.set_user_attr("score", 0.3)
        raise TakenOver(trial.number)
    assert _stored(other, trial).user_attrs == {}


def test_other_threads_and_other_system_attrs_write_at_once(running: Any) -> None:
    trial, other, _ = running
    with batch.held(trial):
        beat = threading.Thread(target=trial.storage.set_trial_system_attr, args=(trial._trial_id, "sweep:beat", 3))
        beat.start()
        beat.join()
        trial.storage.set_trial_system_attr(trial._trial_id, "completed_rung_0", 0.7)  # a pruner's own record
        trial.set_user_attr("held", True)
        stored = _stored(other, trial)
        assert stored.system_attrs == {"sweep:beat": 3, "completed_rung_0": 0.7}
        assert stored.user_attrs == {}


def test_a_note_written_while_held_reads_back_and_goes_out_with_the_trial(running: Any) -> None:
    from optuna_dashboard import get_note, save_note

    trial, other, transactions = running
    with batch.held(trial):
        save_note(trial, "### Trial 0: stable\n")
        assert get_note(trial) == "### Trial 0: stable\n"
        before = transactions.count
    assert transactions.count == before  # written by the read of the note, nothing at the end
    study_attrs = other.get_study_system_attrs(trial.study._study_id)
    assert any(key.startswith("dashboard:") for key in study_attrs)


def test_a_storage_that_cannot_hold_writes_each_write_at_once(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(storage=url)  # Optuna's own storage: nothing is held
    trial = study.ask()
    other = optuna.storages.RDBStorage(url)
    with batch.held(trial):
        trial.set_user_attr("score", 0.5)
        batch.flush(trial)
        assert other.get_trial(trial._trial_id).user_attrs == {"score": 0.5}
    memory = optuna.create_study()
    with batch.held(in_memory := memory.ask()):
        in_memory.set_user_attr("score", 0.5)
        assert memory.trials[0].user_attrs == {"score": 0.5}
