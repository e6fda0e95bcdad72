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

import pytest

from sweep import records
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
    worker_pids,
)

pytestmark = pytest.mark.slow
SECRET = "pw-never-printed-4711"


def test_three_workers_on_postgres_reach_exactly_the_target(postgres_url: str, tmp_path: Path) -> None:
    study = cheap_study(tmp_path, n_trials=9)
    result = run_cli("run", str(study), "--storage", postgres_url, "--workers", "3", timeout=600)
    assert result.returncode == 0, result.stderr
    trials = trials_of(postgres_url, "cheap")
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
    assert sum(t.state.name == "COMPLETE" for t in trials_of(url, "cheap")) == 10


def test_killed_worker_trial_fails_after_grace_and_is_retried(postgres_url: str, tmp_path: Path) -> None:
    extra = "\n[worker]\nheartbeat_interval = 1\ngrace_period = 4\nmax_retries = 2\n"
    study = cheap_study(tmp_path, name="killed", n_trials=2, epochs=60, extra=extra)
    text = study.read_text().replace("patience = 3", "patience = 0")
    study.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study), "--storage", postgres_url, "-q"],
                            cwd=ROOT, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = wait_for_training(postgres_url, "killed")
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
    trials = {t.number: t for t in trials_of(postgres_url, "killed")}
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
                            cwd=ROOT, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    terminated = 0
    try:
        wait_for_training(postgres_url, "dropped")
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
    assert sum(t.state.name == "COMPLETE" for t in trials_of(postgres_url, "dropped")) == 6


def test_sigterm_to_sweep_worker_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    study = cheap_study(tmp_path, name="termed", n_trials=1, epochs=1)
    assert run_cli("run", str(study), "--storage", postgres_url, "-q").returncode == 0
    # Long trials from here on, so that the signal lands in one (not between two).
    assert run_cli("run", str(study), "--storage", postgres_url, "-q", "--allow-spec-change",
                   "--set", "training.max_epochs=400", "--set", "training.patience=0").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "worker", "termed", "--storage", postgres_url,
                             "--n-trials", "50", "-q"],
                            cwd=ROOT, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_training(postgres_url, "termed")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    trials = trials_of(postgres_url, "termed")
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
    assert len(trials_of(url, "fp")) == 1


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
                              cwd=ROOT, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    assert sum(t.state.name == "COMPLETE" for t in trials_of(backend, "proxied")) == 3


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

