"""One rule for a dead worker on every storage, and a worker that comes back after its trial was taken.

Training is not the point here: the first "workers" are Optuna trials driven by hand on the real
storages; the last tests run real sweeps of tiny dense networks and stop or kill their workers.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep import records
from sweep.liveness import BEAT, Liveness, TakenOver, taken_over
from sweep.storage import open_storage
from sweep.worker import _guarded, _Signals
from tests.helpers import (
    ROOT,
    cheap_study,
    free_port,
    port_open,
    quiet_env,
    run_cli,
    trials_of,
    wait_for,
    wait_for_training,
)

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")


def _study(url: str, *, grace: int = 1) -> optuna.Study:
    storage = open_storage(url, heartbeat_interval=1, grace_period=grace, max_retries=2)
    return optuna.create_study(study_name="alive", storage=storage, load_if_exists=True)


def _running(study: optuna.Study, **user_attrs: object) -> optuna.Trial:
    """A trial started by a worker, with a parameter drawn and its worker recorded."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    for key, value in {"worker": "host-a:1", **user_attrs}.items():
        trial.set_user_attr(key, value)
    trial.storage.set_trial_system_attr(trial._trial_id, "sweep:repeat_scores", [0.5])
    return trial


def _reaped_on_optuna_beats(study: optuna.Study, trial: optuna.Trial, grace: int = 1) -> list[int]:
    """Beat once for ``trial`` as its worker would, fall silent past the grace period, and let another worker look."""
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(grace + 1.2)
    other = Liveness(study, interval_s=1, grace_s=grace, max_retries=2)
    assert not other.own_beats  # a relational storage: Optuna's heartbeats decide
    return other.reap()


def test_a_silent_worker_s_trial_is_failed_and_its_configuration_requeued_once(storage_url: str) -> None:
    study = _study(storage_url)
    trial = _running(study, verifies=3)
    assert _reaped_on_optuna_beats(study, trial) == [trial.number]
    trials = study.get_trials()
    assert trials[trial.number].state is TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
    assert retry.state is TrialState.WAITING and retry.params == trials[trial.number].params
    # The retry is the configuration, not the records of the worker that went silent.
    assert retry.user_attrs == {"verifies": 3}
    assert not [k for k in retry.system_attrs if k.startswith("sweep:")]
    # A second look fails nothing more and queues nothing more.
    assert Liveness(study, interval_s=1, grace_s=2, max_retries=2).reap() == []
    assert len(study.get_trials()) == len(trials)


def test_a_worker_that_comes_back_finds_its_trial_taken_and_writes_nothing_to_it(storage_url: str) -> None:
    study = _study(storage_url)
    zombie = _running(study)
    _reaped_on_optuna_beats(study, zombie)
    retry_number = max(t.number for t in study.get_trials())

    # The worker wakes up: its beat finds the trial finished, and training stops at the next batch.
    mine = Liveness(study, interval_s=1, grace_s=2, max_retries=2)
    with mine.beating(zombie):
        pass
    assert mine.lost()

    # Whatever it still tries to write ends the trial as taken over, and nothing reaches the storage.
    def objective(trial: optuna.Trial) -> float:
        records.set_attrs(trial, {"score": 0.1, "curves": {"val_loss": [[0.1]]}})
        return 0.1

    with pytest.raises(TakenOver):
        _guarded(objective, _Signals(), mine)(zombie)
    stored = study.get_trials()[zombie.number]
    assert stored.state is TrialState.FAIL and "score" not in stored.user_attrs
    assert "sweep:curves" not in stored.system_attrs
    # Optuna's own step refuses the result too; the worker names the trial and its retry in one line.
    with pytest.raises(ValueError, match="Cannot tell a FAIL trial"):
        study.tell(zombie, 0.1)
    line = taken_over(study, zombie.number)
    assert line == (
        f"trial {zombie.number} was taken over by another worker while this one was cut off; "
        f"its result is discarded (its configuration re-runs as trial {retry_number})"
    )


def test_a_live_trial_is_not_taken_over(storage_url: str) -> None:
    study = _study(storage_url, grace=3)
    trial = _running(study)
    assert taken_over(study, trial.number) is None
    mine = Liveness(study, interval_s=1, grace_s=3, max_retries=2)
    with mine.beating(trial):
        time.sleep(1.5)  # a beat from the thread, too
    assert not mine.lost()
    assert study.get_trials()[trial.number].state is TrialState.RUNNING


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_own_beats_judged_by_the_observer_s_own_clock(tmp_path: Path) -> None:
    """Where Optuna has no heartbeats (the gRPC proxy): a beat counter that stops moving for the grace period."""
    study = _study(f"sqlite:///{tmp_path / 'beats.db'}")
    clock = _Clock()
    observer = Liveness(study, interval_s=1, grace_s=10, max_retries=1, clock=clock)
    observer.own_beats = True  # judge sweep's own beats on this storage, as on the proxy
    silent = _running(study)  # a worker that died before its first beat: no beat at all
    beating = _running(study)
    study._storage.set_trial_system_attr(beating._trial_id, BEAT, 0)

    assert observer.reap() == []  # first sight starts this observer's clock
    clock.now += 9.0
    study._storage.set_trial_system_attr(beating._trial_id, BEAT, 1)
    assert observer.reap() == []  # 9 s < grace
    clock.now += 2.0
    assert observer.reap() == [silent.number]  # 11 s without a beat; the other beat 2 s ago
    clock.now += 7.5
    assert observer.reap() == []  # its counter moved 9.5 s ago
    clock.now += 1.0
    assert observer.reap() == [beating.number]  # and has not moved since: 10.5 s
    trials = study.get_trials()
    retries = sorted(t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs)
    assert retries == [silent.number, beating.number]
    assert {t.state for t in trials} == {TrialState.FAIL, TrialState.WAITING}


def test_own_beats_are_written_by_a_thread_and_a_second_observer_agrees(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path / 'thread.db'}")
    trial = _running(study)
    mine = Liveness(study, interval_s=1, grace_s=3, max_retries=1)
    mine.own_beats = True
    clock = _Clock()
    observer = Liveness(study, interval_s=1, grace_s=3, max_retries=1, clock=clock)
    observer.own_beats = True
    with mine.beating(trial):
        observer.reap()
        for _ in range(3):
            time.sleep(1.3)
            clock.now += 1.3
            assert observer.reap() == []  # the counter moves every second
    before = study.get_trials()[trial.number].system_attrs[BEAT]
    assert before >= 2
    clock.now += 4.0
    assert observer.reap() == [trial.number]  # the block ended: no more beats


def test_an_interrupted_trial_is_not_mistaken_for_a_taken_one(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path / 'int.db'}")
    trial = _running(study)
    signals = _Signals(signum=signal.SIGTERM)
    mine = Liveness(study, interval_s=1, grace_s=2, max_retries=1)
    from sweep.errors import Interrupted

    with pytest.raises(Interrupted):
        _guarded(lambda t: 0.0, signals, mine)(trial)
    assert records.trial_attr(study.get_trials()[trial.number], records.FAIL_REASON) == "interrupted"
    assert not mine.lost()


def _stop_outside_a_write(pid: int, url: str) -> None:
    """SIGSTOP ``pid`` at a moment it holds no SQLite write lock.

    A process stopped inside a SQLite transaction keeps the file's lock, and no other
    process can write until it resumes: SQLite's design, said in the README (on a
    server database the session is ended after the grace period, see test_storage).
    About 2% of stops land there; this test is about the other 98%.
    """
    path = url.removeprefix("sqlite:///")
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.05)
        probe = sqlite3.connect(path, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # it stopped inside a write
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.1)
        finally:
            probe.close()
    raise AssertionError(f"worker {pid} held the SQLite write lock at each of 50 stops")


def _paused_past_grace(study: Path, url: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """``sweep run`` with two workers; the worker of the first trial to train is stopped past the grace period."""
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study), "--storage", url, *extra],
                            cwd=ROOT, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = wait_for_training(url, study.stem)
        pid = int(str(victim.user_attrs[records.WORKER]).rsplit(":", 1)[1])
        _stop_outside_a_write(pid, url)
        try:
            # The other worker fails the silent trial and queues its configuration again.
            wait_for(lambda: trials_of(url, study.stem)[victim.number].state.name == "FAIL", timeout=60,
                     what=f"trial {victim.number} to be failed while its worker is stopped")
        except AssertionError as exc:
            os.kill(pid, signal.SIGCONT)
            proc.terminate()
            raise AssertionError(f"{exc}; the sweep printed:\n{proc.communicate(timeout=60)[1]}") from None
        finally:
            os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), victim.number


@pytest.mark.slow
def test_a_worker_paused_past_the_grace_period_discards_its_result_and_the_sweep_goes_on(tmp_path: Path) -> None:
    extra = "\n[worker]\nheartbeat_interval = 1\ngrace_period = 3\nmax_retries = 2\n"
    study = cheap_study(tmp_path, name="paused", n_trials=4, epochs=40, extra=extra)
    study.write_text(study.read_text().replace("patience = 3", "patience = 0"))
    url = f"sqlite:///{tmp_path / 'paused.db'}"
    result, victim = _paused_past_grace(study, url, "--workers", "2", "-q")
    assert result.returncode == 0, result.stderr
    trials = {t.number: t for t in trials_of(url, "paused")}
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim]
    assert result.stderr.splitlines() == [
        f"trial {victim}: no beat from its worker for 3 s; marked FAIL and its configuration queued again",
        f"trial {victim} was taken over by another worker while this one was cut off; its result is discarded "
        f"(its configuration re-runs as trial {retry.number})",
    ], result.stderr
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == 4  # the target, met exactly
    assert not [t for t in trials.values() if t.state.name in ("RUNNING", "WAITING")]
    # The stopped worker's result never reached its trial, and the retry's records are one run's.
    assert trials[victim].state.name == "FAIL" and trials[victim].values is None
    assert "score" not in trials[victim].user_attrs
    assert retry.state.name == "COMPLETE" and retry.params == trials[victim].params
    assert retry.values == [retry.user_attrs["score"]]


@pytest.mark.slow
def test_behind_the_proxy_a_killed_worker_s_trial_is_retried_within_twice_the_grace_period(tmp_path: Path) -> None:
    backend = f"sqlite:///{tmp_path / 'proxied.db'}"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sweep", "proxy", "--storage", backend, "--port", str(port)],
                              cwd=ROOT, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    grace = 6
    extra = f"\n[worker]\nheartbeat_interval = 1\ngrace_period = {grace}\nmax_retries = 2\n"
    study = cheap_study(tmp_path, name="proxykill", n_trials=3, epochs=60, extra=extra)
    study.write_text(study.read_text().replace("patience = 3", "patience = 0"))
    grpc_url = f"grpc://127.0.0.1:{port}"
    proc = None
    try:
        wait_for(lambda: port_open(port), timeout=60, what=f"the proxy to listen on port {port}")
        proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study), "--storage", grpc_url,
                                 "--workers", "2", "-q"],
                                cwd=ROOT, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        victim = wait_for_training(backend, "proxykill")
        pid = int(str(victim.user_attrs[records.WORKER]).rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: any(t.system_attrs.get("failed_trial") == victim.number
                             for t in trials_of(backend, "proxykill")),
                 timeout=4 * grace, every=0.2, what=f"trial {victim.number} to be failed and queued again")
        recovered = time.monotonic() - killed
        _, err = proc.communicate(timeout=400)
    finally:
        for p in (proc, server):
            if p is not None and p.poll() is None:
                p.terminate()
                p.communicate(timeout=30)
    assert recovered <= 2 * grace, f"retried {recovered:.1f} s after the kill"
    assert proc.returncode == 0, err
    trials = trials_of(backend, "proxykill")
    assert trials[victim.number].state.name == "FAIL"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


@pytest.mark.slow
def test_a_budget_held_by_a_dead_worker_s_repeat_is_given_back_and_no_trial_is_left_running(tmp_path: Path) -> None:
    """The budget counts repeats in flight: a worker that finds it spent waits for them, and reaps the dead one's."""
    extra = "\n[worker]\nheartbeat_interval = 1\ngrace_period = 2\nmax_retries = 1\n"
    study = cheap_study(tmp_path, name="spent", n_trials=1, epochs=3, extra=extra)
    study.write_text(study.read_text().replace("n_trials = 1", "budget = 3"))  # one repeat's worth
    url = f"sqlite:///{tmp_path / 'spent.db'}"
    assert run_cli("create", str(study), "--storage", url).returncode == 0
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    dead = optuna.load_study(study_name="spent", storage=storage).ask()  # its worker beat once, then died
    storage.record_heartbeat(dead._trial_id)
    result = run_cli("worker", "spent", "--storage", url, "-q")
    assert result.returncode == 0, result.stderr
    trials = trials_of(url, "spent")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], result.stderr
    assert trials[1].system_attrs.get("failed_trial") == dead.number
