"""Many workers, crashes, dropped connections, signals and the gRPC proxy, on the real servers.

Training is not the point here: the trials are tiny dense networks of one or two epochs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from sweep import records
from tests.helpers import ROOT, cheap_study, free_port, port_open, run_cli, wait_for, worker_pids

pytestmark = pytest.mark.slow
SECRET = "pw-never-printed-4711"


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("SWEEP_STORAGE", None)
    return env


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _wait_for_training(url: str, name: str, timeout: float = 120) -> optuna.trial.FrozenTrial:
    """The first RUNNING trial of study ``name`` once it has reported an epoch (so a signal lands mid-trial)."""
    found: list[optuna.trial.FrozenTrial] = []

    def training() -> bool:
        found[:] = [t for t in _trials(url, name) if t.state.name == "RUNNING" and t.intermediate_values]
        return bool(found)

    wait_for(training, timeout=timeout, what=f"a trial of {name!r} to train", ignore=(KeyError,))
    return found[0]


def test_three_workers_on_postgres_reach_exactly_the_target(postgres_url: str, tmp_path: Path) -> None:
    study = cheap_study(tmp_path, n_trials=9)
    result = run_cli("run", str(study), "--storage", postgres_url, "--workers", "3", timeout=600)
    assert result.returncode == 0, result.stderr
    trials = _trials(postgres_url, "cheap")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 9
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    # Surplus trials (a race at the very end) are the only other kind allowed, and they say so.
    for t in trials:
        if t.state.name == "FAIL":
            assert t.user_attrs["fail_reason"].startswith("surplus")


def test_two_workers_on_one_sqlite_file_never_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = cheap_study(tmp_path, n_trials=10, epochs=1)
    result = run_cli("run", str(study), "--storage", url, "--workers", "2", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "locked" not in (result.stdout + result.stderr).lower()
    assert sum(t.state.name == "COMPLETE" for t in _trials(url, "cheap")) == 10


def test_killed_worker_trial_fails_after_grace_and_is_retried(postgres_url: str, tmp_path: Path) -> None:
    extra = "\n[worker]\nheartbeat_interval = 1\ngrace_period = 4\nmax_retries = 2\n"
    study = cheap_study(tmp_path, name="killed", n_trials=2, epochs=150, extra=extra)
    text = study.read_text().replace("patience = 3", "patience = 0")
    study.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study), "--storage", postgres_url, "-q"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = _wait_for_training(postgres_url, "killed")
        pid = int(str(victim.user_attrs[records.WORKER]).rsplit(":", 1)[1])  # host:pid of the worker training it
        assert pid in worker_pids("killed")
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    restarts = [line for line in err.splitlines() if "crashed" in line]
    assert restarts == ["worker 0 crashed (killed by signal 9); starting it again"], err
    trials = {t.number: t for t in _trials(postgres_url, "killed")}
    assert trials[victim.number].state.name == "FAIL"
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1
    assert retries[0].params == trials[victim.number].params  # (the snapshot may predate its params)
    assert retries[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == 2


def test_worker_survives_terminated_database_connections(postgres_url: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    study = cheap_study(tmp_path, name="dropped", n_trials=6, epochs=20)
    db = sa.engine.make_url(postgres_url).database
    admin = sa.create_engine(os.environ["SWEEP_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study), "--storage", postgres_url, "-q"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    terminated = 0
    try:
        _wait_for_training(postgres_url, "dropped")
        for _ in range(3):
            with admin.connect() as conn:
                terminated += conn.execute(sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": db}).scalar()
            time.sleep(2)
        _, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        admin.dispose()
    assert terminated > 0
    assert proc.returncode == 0, stderr
    assert sum(t.state.name == "COMPLETE" for t in _trials(postgres_url, "dropped")) == 6


def test_sigterm_to_sweep_worker_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    study = cheap_study(tmp_path, name="termed", n_trials=1, epochs=1)
    assert run_cli("run", str(study), "--storage", postgres_url, "-q").returncode == 0
    # Long trials from here on, so that the signal lands in one (not between two).
    assert run_cli("run", str(study), "--storage", postgres_url, "-q", "--allow-spec-change",
                   "--set", "training.max_epochs=400", "--set", "training.patience=0").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "worker", "termed", "--storage", postgres_url,
                             "--n-trials", "50", "-q"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_training(postgres_url, "termed")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    trials = _trials(postgres_url, "termed")
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert [t.user_attrs.get("fail_reason") for t in trials if t.state.name == "FAIL"] == ["interrupted"]


def test_worker_refuses_different_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fp.db'}"
    csv_file = tmp_path / "d.csv"
    rows = "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(60))
    csv_file.write_text("a,b,y\n" + rows)
    study = cheap_study(tmp_path, name="fp", n_trials=1, epochs=1)
    study.write_text(study.read_text().replace(
        'source = "breast_cancer"', 'source = "csv"\npath = "d.csv"\ntarget = "y"\ntask = "classification"'))
    assert run_cli("run", str(study), "--storage", url, "-q").returncode == 0
    csv_file.write_text("a,b,y\n" + rows.replace("6,", "5,"))
    refused = run_cli("worker", "fp", "--storage", url, "--n-trials", "2", "-q")
    assert refused.returncode == 2
    assert "refusing to train on different data" in refused.stderr
    assert len(_trials(url, "fp")) == 1


def test_mariadb_smoke_sweep(mysql_url: str, tmp_path: Path) -> None:
    study = cheap_study(tmp_path, name="maria", n_trials=2)
    result = run_cli("run", str(study), "--storage", mysql_url)
    assert result.returncode == 0, result.stderr
    ranked = json.loads(run_cli("rank", "maria", "--storage", mysql_url, "--format", "json").stdout)
    assert len(ranked) == 2 and ranked[0]["score"] <= ranked[1]["score"]


def test_grpc_proxy_serves_workers(tmp_path: Path) -> None:
    backend = f"sqlite:///{tmp_path / 'proxied.db'}"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sweep", "proxy", "--storage", backend, "--port", str(port)],
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: port_open(port), timeout=60, what=f"the proxy to listen on port {port}")
        study = cheap_study(tmp_path, name="proxied", n_trials=3)
        grpc_url = f"grpc://127.0.0.1:{port}"
        result = run_cli("run", str(study), "--storage", grpc_url, "--workers", "2")
        assert result.returncode == 0, result.stderr
        ranked = json.loads(run_cli("rank", "proxied", "--storage", grpc_url, "--format", "json").stdout)
        assert len(ranked) == 3
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert sum(t.state.name == "COMPLETE" for t in _trials(backend, "proxied")) == 3


def test_no_command_prints_the_password(postgres_url: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    with_password = sa.engine.make_url(postgres_url).set(password=SECRET).render_as_string(hide_password=False)
    study = cheap_study(tmp_path, name="secret", n_trials=1, epochs=1)
    outputs = [
        run_cli("run", str(study), "--storage", with_password),
        run_cli("status", "secret", "--storage", with_password),
        run_cli("rank", "secret", "--storage", with_password),
        run_cli("status", "nope", "--storage", with_password),
        run_cli("worker", "secret", "--storage", with_password, "--n-trials", "2", "-q"),
        run_cli("status", "secret", "--storage", with_password.replace("127.0.0.1", "127.0.0.1:1")),
    ]
    assert outputs[0].returncode == 0, outputs[0].stderr
    assert outputs[3].returncode == 2
    for out in outputs:
        assert SECRET not in out.stdout + out.stderr
    assert "***" in outputs[0].stderr + outputs[1].stdout


def _paused_past_grace(study: Path, url: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """``sweep run`` with two workers; the worker of the first trial to train is stopped past the grace period."""
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study), "--storage", url, *extra],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = _wait_for_training(url, study.stem)
        pid = int(str(victim.user_attrs[records.WORKER]).rsplit(":", 1)[1])
        os.kill(pid, signal.SIGSTOP)
        try:
            # The other worker fails the silent trial and queues its configuration again.
            wait_for(lambda: _trials(url, study.stem)[victim.number].state.name == "FAIL", timeout=60,
                     what=f"trial {victim.number} to be failed while its worker is stopped")
        finally:
            os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), victim.number


def test_a_worker_paused_past_the_grace_period_discards_its_result_and_the_sweep_goes_on(tmp_path: Path) -> None:
    extra = "\n[worker]\nheartbeat_interval = 1\ngrace_period = 3\nmax_retries = 2\n"
    study = cheap_study(tmp_path, name="paused", n_trials=4, epochs=40, extra=extra)
    study.write_text(study.read_text().replace("patience = 3", "patience = 0"))
    url = f"sqlite:///{tmp_path / 'paused.db'}"
    result, victim = _paused_past_grace(study, url, "--workers", "2", "-q")
    assert result.returncode == 0, result.stderr
    trials = {t.number: t for t in _trials(url, "paused")}
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


def test_behind_the_proxy_a_killed_worker_s_trial_is_retried_within_twice_the_grace_period(tmp_path: Path) -> None:
    backend = f"sqlite:///{tmp_path / 'proxied.db'}"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sweep", "proxy", "--storage", backend, "--port", str(port)],
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
                                cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        victim = _wait_for_training(backend, "proxykill")
        pid = int(str(victim.user_attrs[records.WORKER]).rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: any(t.system_attrs.get("failed_trial") == victim.number
                             for t in _trials(backend, "proxykill")),
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
    trials = _trials(backend, "proxykill")
    assert trials[victim.number].state.name == "FAIL"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
