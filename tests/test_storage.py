"""Storage URLs: choice, validation and masking; reading something that is not a sweep storage."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from sweep.errors import UserError
from sweep.outage import is_outage
from sweep.storage import mask, resolve_url
from tests.helpers import run_cli


def test_precedence_flag_env_file_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    assert resolve_url(None) == "sqlite:///sweep.db"
    assert resolve_url(None, "sqlite:///file.db") == "sqlite:///file.db"
    monkeypatch.setenv("SWEEP_STORAGE", "sqlite:///env.db")
    assert resolve_url(None, "sqlite:///file.db") == "sqlite:///env.db"
    assert resolve_url("sqlite:///flag.db", "sqlite:///file.db") == "sqlite:///flag.db"
    assert resolve_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url("mysql://u@h/db") == "mysql+pymysql://u@h/db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://u:s3cret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql+psycopg://u:p@ss@h/db", "postgresql+psycopg://***@h/db"),
        ("postgresql+psycopg://u@h/db?password=s3cret&sslmode=require", "postgresql+psycopg://u@h/db?password=***&sslmode=require"),
        ("mysql+pymysql://u:s3cret@h:abc/db", "mysql+pymysql://***@h:abc/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_mask_never_shows_a_password(url: str, shown: str) -> None:
    assert mask(url) == shown


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:sweep.db", "allowed: sqlite:///FILE"),
        ("postgresqlx://a/b", "allowed: sqlite:///FILE"),
        ("mysql+pymysql://u:pw@host:abc/db", "allowed: sqlite:///FILE"),
        ("postgresql+psycopg://u:p@ss@h/db", "write '@' in a user name or password as %40"),
        ("grpc://hostonly", "a proxy URL is grpc://HOST:PORT"),
    ],
)
def test_malformed_urls_are_user_errors(url: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_url(url)
    result = run_cli("status", "x", "--storage", url)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "pw@" not in result.stderr and "p@ss" not in result.stderr


def test_a_file_that_is_not_an_optuna_storage(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    import sqlite3

    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    text = tmp_path / "notes.txt"
    text.write_text("hello " * 1000)
    for path in (other, text):
        for command in ("status", "rank"):
            result = run_cli(command, "x", "--storage", f"sqlite:///{path}")
            assert result.returncode == 2, result.stderr
            assert "is not an Optuna storage" in result.stderr
            assert "Traceback" not in result.stderr


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    result = run_cli("status", "x", "--storage", "postgresql+psycopg://u:s3cret@127.0.0.1:1/db")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot open storage" in result.stderr
    assert "s3cret" not in result.stderr


_POP = """
import sys, time
import optuna
from sweep.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="queue", storage=open_storage(sys.argv[1]))
while time.time() < float(sys.argv[2]):
    time.sleep(0.01)
for _ in range(10):
    trial = study.ask()
    print(trial.number, flush=True)
"""


def test_each_queued_trial_is_taken_by_one_process_only_on_sqlite(tmp_path: Path) -> None:
    """SQLite ignores FOR UPDATE: without immediate transactions two workers could run one queued trial."""
    import subprocess
    import sys
    import time

    import optuna

    url = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(study_name="queue", storage=url)
    for i in range(40):
        study.enqueue_trial({"x": i}, skip_if_exists=False)
    start = time.time() + 5  # all four begin popping at the same moment
    procs = [
        subprocess.Popen([sys.executable, "-c", _POP, url, repr(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    taken = [int(n) for p in procs for n in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(taken) == list(range(40))  # each of the 40 exactly once


def test_a_running_trial_that_never_beat_is_reaped_one_grace_period_later(storage_url: str) -> None:
    """A worker that dies between starting a trial and its first heartbeat leaves a trial with no beat."""
    import optuna

    from sweep.storage import open_storage

    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="unbeaten")
    orphan = study.ask()  # RUNNING, and ask() records no heartbeat
    optuna.storages.fail_stale_trials(study)
    assert study.trials[orphan.number].state is optuna.trial.TrialState.RUNNING  # given a beat, not failed yet
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[orphan.number].state is optuna.trial.TrialState.FAIL


@pytest.mark.parametrize("server", ["postgresql", "mysql"])
def test_a_worker_cut_off_inside_a_transaction_does_not_keep_its_trial_from_the_reaper(
    server: str, request: pytest.FixtureRequest
) -> None:
    """A worker paused mid-transaction holds its row lock; the server ends its session after the grace period.

    (After 10 s here: the server never ends a session sooner, ``MIN_IDLE_TRANSACTION_S``.)
    """
    import threading

    import optuna

    from sweep.storage import open_storage

    url = request.getfixturevalue(f"{'postgres' if server == 'postgresql' else server}_url")
    paused = open_storage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=paused, study_name="locked")
    trial = study.ask()
    holder = paused.engine.connect()  # the paused worker: its beat took the row lock, then it stopped
    holder.begin()
    holder.exec_driver_sql(f"SELECT trial_id FROM trials WHERE trial_id = {trial._trial_id} FOR UPDATE")
    reaper = open_storage(url, heartbeat_interval=1, grace_period=2)
    done = threading.Event()

    def fail_it() -> None:
        reaper.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        done.set()

    threading.Thread(target=fail_it, daemon=True).start()
    try:
        assert done.wait(timeout=60), "the reaper still waits on the paused worker's lock"  # ended after 10 s
        assert reaper.get_trial(trial._trial_id).state is optuna.trial.TrialState.FAIL
        # The worker resumes: its ended session is an outage to wait out, and then its trial is gone.
        with pytest.raises(Exception) as resumed:
            holder.exec_driver_sql("SELECT 1")
        assert is_outage(resumed.value), repr(resumed.value)
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            paused.set_trial_system_attr(trial._trial_id, "sweep:beat", 9)
    finally:
        with contextlib.suppress(Exception):
            holder.close()  # frees the lock if the server did not
        for s in (paused, reaper):
            s.engine.dispose()


@pytest.mark.parametrize("server", ["postgresql", "mysql"])
def test_a_server_that_refuses_the_credentials_is_an_error_at_once_not_an_outage(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Waiting out a wrong user or a missing database would only delay the one line that says so."""
    import sqlalchemy as sa

    from tests.helpers import cheap_study

    good = sa.engine.make_url(request.getfixturevalue(f"{'postgres' if server == 'postgresql' else server}_url"))
    wrong = [good.set(username="nobody", password="pw"), good.set(database="no_such_database")]
    study = cheap_study(tmp_path)
    for url in wrong:
        shown = url.render_as_string(hide_password=False)
        started = time.monotonic()
        result = run_cli("create", str(study), "--storage", shown, timeout=120)
        assert result.returncode in (1, 2) and time.monotonic() - started < 30, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: ") and ("nobody" in line or "no_such_database" in line), line
        assert ":pw@" not in line  # the password is masked


def test_a_sweep_storage_holds_a_running_trial_s_writes_and_optuna_s_does_not(tmp_path: Path) -> None:
    import optuna

    from sweep.batch import HeldWrites
    from sweep.storage import open_storage

    url = f"sqlite:///{tmp_path / 'held.db'}"
    storage = open_storage(url)
    assert isinstance(storage, HeldWrites) and isinstance(storage, optuna.storages.RDBStorage)
    assert not isinstance(optuna.storages.RDBStorage(url), HeldWrites)
    # Nothing held, every write is Optuna's own: what another process reads at once.
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial.set_user_attr("worker", "host:1")
    assert optuna.load_study(study_name=study.study_name, storage=url).trials[0].user_attrs == {"worker": "host:1"}


@pytest.mark.parametrize("server", ["postgresql", "mysql"])
def test_a_process_keeps_one_idle_connection_to_a_database_server(server: str, request: pytest.FixtureRequest) -> None:
    """Two threads writing at once open two connections; once idle, a worker holds one of the server's
    ``max_connections``, not SQLAlchemy's five (64 workers holding two each exhausted PostgreSQL's 100)."""
    import sqlalchemy as sa

    from sweep.storage import open_storage

    url = request.getfixturevalue("postgres_url" if server == "postgresql" else "mysql_url")
    database = sa.engine.make_url(url).database
    count = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :n"
        if server == "postgresql"
        else "SELECT count(*) FROM information_schema.processlist WHERE db = :n"
    )
    observer = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def connections() -> int:
        with observer.connect() as conn:  # itself one of them
            return int(conn.execute(sa.text(count), {"n": database}).scalar_one()) - 1

    storage = open_storage(url)
    engine = storage.engine  # type: ignore[attr-defined]
    with engine.connect() as a, engine.connect() as b:
        a.execute(sa.text("SELECT 1"))
        b.execute(sa.text("SELECT 1"))
        assert connections() == 2
    assert connections() == 1
    engine.dispose()
    assert connections() == 0
