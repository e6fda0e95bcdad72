"""The worker process on its own: held start-up, forked start-up, recycling, and what a refused study leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna

from sweep.worker import MemoryBound
from tests.helpers import ROOT, cheap_study, run_cli, worker_pids, write_study


def _held_worker(url: str, study: str, stdin: str) -> subprocess.CompletedProcess[str]:
    """``python -m sweep.worker STUDY --await-go`` fed ``stdin``, as the supervisor starts it."""
    return subprocess.run(
        [sys.executable, "-m", "sweep.worker", study, "--await-go", "--target", "3"],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "SWEEP_WORKER_STORAGE": url},
        cwd=ROOT,
        timeout=120,
    )


def test_a_held_worker_leaves_on_end_of_input_without_touching_the_storage(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    proc = _held_worker(f"sqlite:///{db}", "held-study", "")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not db.exists()


def test_a_held_worker_told_go_opens_the_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="other", storage=url)
    proc = _held_worker(url, "no-such-study", "go\n")
    # It went on to look the study up, and says (in one line, with exit 2) that it is not there.
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no-such-study" in proc.stderr and "Traceback" not in proc.stderr


def test_a_refused_resume_leaves_no_worker_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'refused.db'}"
    study = write_study(tmp_path, name="refused-resume", n_trials=1, epochs=1)
    first = run_cli("run", str(study), "--storage", url, timeout=600)
    assert first.returncode == 0, first.stderr
    # The workers start (and import TensorFlow) while the supervisor checks the study; when it
    # refuses the changed spec, they are killed before they touch anything.
    second = run_cli("run", str(study), "--storage", url, "--set", "training.max_epochs=2", "--workers", "2")
    assert second.returncode == 2
    assert "training.max_epochs" in second.stderr and "Traceback" not in second.stderr
    assert worker_pids("refused-resume") == []


def _bound(ends: list[float], limit: float = 96.0) -> MemoryBound:
    memory = MemoryBound(limit_mb=limit)
    for rss in ends:
        memory.record(rss)
    return memory


def test_recycle_soon_looks_two_trials_ahead() -> None:
    # By trial count: recycling comes after trial 5, so say so after trial 3.
    flat = [500.0] * 5
    assert [_bound(flat[:d]).soon(max_trials=5) for d in range(1, 6)] == [False, False, True, True, True]
    # By memory: 14 MB a trial; after trial 5 (56 MB) two more end at 84; after trial 6 (70) at 98.
    steady = [500.0 + 14 * i for i in range(7)]
    assert not _bound(steady[:5]).soon(max_trials=50)
    assert _bound(steady[:6]).soon(max_trials=50)
    assert not _bound(steady[:1]).soon(max_trials=50)  # one trial: no growth known yet


def test_a_spare_started_ahead_takes_over_at_each_recycle(tmp_path: Path) -> None:
    import threading
    import time


    url = f"sqlite:///{tmp_path / 'spare.db'}"
    study = cheap_study(tmp_path, name="spare", n_trials=6, epochs=1)
    seen: dict[int, bytes] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for pid in worker_pids("spare"):
                try:
                    seen.setdefault(pid, Path(f"/proc/{pid}/cmdline").read_bytes())
                except OSError:
                    pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # Spares are for workers that are not forked (GPU workers, worker.fork = false).
        result = run_cli("run", str(study), "--storage", url, "--workers", "1", "--set", "worker.max_trials=2",
                         "--set", "worker.fork=false")  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="spare", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    ran = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials}  # "host:pid" of each trial's worker
    assert len(ran) == 3 and ran <= set(seen)
    # Three worker lives of two trials: the first started with its slot, the next two started
    # ahead as spares (no slot until told 'go'); none is left behind.
    with_slot = [pid for pid, cmd in seen.items() if b"--slot" in cmd.split(b"\0")]
    spares = [pid for pid, cmd in seen.items() if b"--slot" not in cmd.split(b"\0")]
    assert all(b"--await-go" in cmd.split(b"\0") for pid, cmd in seen.items() if pid in spares)
    assert len(with_slot) == 1, seen
    assert len(spares) >= 2, seen
    assert worker_pids("spare") == []


def test_a_worker_leaves_before_the_trial_that_would_pass_the_memory_limit() -> None:
    assert not _bound([500.0]).over()
    assert not _bound([500.0 + 14 * i for i in range(6)]).over()  # 70 MB: the next ends at 84
    assert _bound([500.0 + 14 * i for i in range(7)]).over()  # 84 MB: the next would end at 98
    assert _bound([500.0, 600.0]).over()  # past the limit
    assert not _bound([500.0, 530.0, 540.0]).over()  # 40 MB, largest step 30: the next ends at 70


def test_the_largest_trial_so_far_bounds_the_next_one() -> None:
    """Uneven trials: the mean rate (20 MB) would let the next 50 MB trial end at 116 MB."""
    ends = [500.0, 505.0, 555.0, 560.0, 566.0]  # steps 5, 50, 5, 6: 66 MB so far
    memory = _bound(ends)
    assert memory.growth == 66.0 and memory.step == 50.0
    assert memory.over()  # 66 + 50 > 96: leave now
    assert not _bound(ends, limit=120.0).over()


def test_memory_bound_holds_over_a_simulated_run_of_uneven_trials() -> None:
    """Trials of random sizes, none larger than the first large one: no trial end passes the bound."""
    import random

    rng = random.Random(0)
    for _ in range(200):
        memory, worst = MemoryBound(limit_mb=96.0), 0.0
        memory.record(800.0)
        largest = rng.uniform(5, 60)
        memory.record(800.0 + largest)  # the largest trial comes first ...
        while not memory.over():
            memory.record(memory.ends[-1] + rng.uniform(0, largest))  # ... the others grow less
            worst = max(worst, memory.growth)
        assert worst <= 96.0, worst


def test_no_successor_is_asked_for_when_the_study_is_about_to_end(tmp_path: Path) -> None:
    from optuna.trial import TrialState, create_trial

    from sweep.worker import work_after_two_more

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'end.db'}")
    for _ in range(5):
        study.add_trial(create_trial(value=1.0))
    assert work_after_two_more(study, target=10)  # 5 left, nobody else running: a successor gets 3
    assert not work_after_two_more(study, target=7)  # this worker's next two trials end the study
    assert work_after_two_more(study, target=None)  # a time-limited sweep always has work
    study.ask()  # another worker is running a trial
    study.add_trial(create_trial(state=TrialState.RUNNING))  # and another
    assert not work_after_two_more(study, target=10)  # 3 left, two running workers take them
    assert work_after_two_more(study, target=13)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_recycled_workers_are_forks_of_one_process_that_imported_tensorflow(tmp_path: Path) -> None:
    import threading
    import time

    from tests.helpers import quiet_env, wait_for

    url = f"sqlite:///{tmp_path / 'forked.db'}"
    study = cheap_study(tmp_path, name="forked", n_trials=6, epochs=1)
    seen: dict[int, tuple[str, int]] = {}  # worker pid: (its title, its parent)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for pid in worker_pids("forked"):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                    seen.setdefault(pid, (title, _parent(pid)))
                except OSError:
                    pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    cmd = [sys.executable, "-m", "sweep", "run", str(study), "--storage", url, "--set", "worker.max_trials=2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, out + err
    trials = optuna.load_study(study_name="forked", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    ran = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials}  # "host:pid" of each trial's worker
    assert len(ran) == 3 and ran <= set(seen), (ran, seen)  # three lives of two trials
    parents = {parent for _, parent in seen.values()}
    assert len(parents) == 1 and proc.pid not in parents, (proc.pid, seen)  # all forked by one process
    (title, _), *_ = seen.values()
    assert title.split()[1:5] == ["-m", "sweep.worker", "forked", "--threads"], title  # ps shows what it is
    assert all("--slot 0" in t for t, _ in seen.values())
    assert worker_pids("forked") == []
    server = Path(f"/proc/{parents.pop()}")
    wait_for(lambda: not server.exists(), timeout=30, what="the fork server to end with the sweep")


def test_a_killed_supervisor_leaves_no_forked_worker_behind(tmp_path: Path) -> None:
    import signal

    from tests.helpers import quiet_env, wait_for, wait_for_training

    url = f"sqlite:///{tmp_path / 'orphans.db'}"
    study = write_study(tmp_path, name="orphans", n_trials=4, epochs=30)
    cmd = [sys.executable, "-m", "sweep", "run", str(study), "--storage", url, "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=quiet_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_training(url, "orphans", timeout=180)
        workers = worker_pids("orphans")
        assert len(workers) == 2, workers
        server = _parent(workers[0])
        assert server != proc.pid
        proc.send_signal(signal.SIGKILL)  # no handler runs: only the kernel can tell the workers
        proc.wait(timeout=30)
        wait_for(lambda: worker_pids("orphans") == [] and not Path(f"/proc/{server}").exists(), timeout=60,
                 what="the workers and their fork server to end with the supervisor")  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()


def test_run_sweep_called_from_python_leaves_no_fork_server_behind(tmp_path: Path) -> None:
    from sweep.runner import run_sweep
    from sweep.spec import load_spec

    def servers() -> list[int]:
        mine = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and _parent(int(entry.name)) == os.getpid() and \
                        b"sweep.preload" in (entry / "cmdline").read_bytes():  # fmt: skip
                    mine.append(int(entry.name))
            except OSError:
                continue
        return mine

    spec = load_spec(cheap_study(tmp_path, name="library", n_trials=2, epochs=1))
    during: set[int] = set()
    result = run_sweep(spec=spec, storage=f"sqlite:///{tmp_path / 'library.db'}", workers=2,
                       on_progress=lambda _: during.update(servers()))  # fmt: skip
    assert result.done == 2, result
    assert len(during) == 1  # the workers were forked from one process that this one started
    assert servers() == []  # and it ended with the sweep
