"""A database that goes away mid-sweep: a private PostgreSQL server, stopped and started under a real ``sweep run``.

Each test starts its own server (``initdb`` into a temporary folder, a free
port: :mod:`tests.pgserver`) so that stopping it touches no other test. Skipped where the
PostgreSQL server programs are not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from tests.helpers import ROOT, wait_for, write_study
from tests.pgserver import Server, private_server, unavailable

pytestmark = pytest.mark.slow
NOT_YET = (DBAPIError,)
"""What the database raises while it is still starting, or before the sweep has created its tables."""


@pytest.fixture
def server() -> Iterator[Server]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with private_server() as srv:
        yield srv


def _trials(url: str) -> list[tuple[int, str, set[str]]]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT trial_id, number, state FROM trials ORDER BY number")).all()
            attrs = conn.execute(sa.text("SELECT trial_id, key FROM trial_user_attributes")).all()
            attrs += conn.execute(sa.text("SELECT trial_id, key FROM trial_system_attributes")).all()
    finally:
        engine.dispose()
    keys: dict[int, set[str]] = {}
    for tid, key in attrs:
        keys.setdefault(tid, set()).add(key)
    return [(int(n), str(state).rsplit(".", 1)[-1], keys.get(tid, set())) for tid, n, state in rows]


def _sweep(study: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "200", "SWEEP_STORAGE": url}
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", "run", str(study), "-q", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_database_outage_mid_training_loses_nothing(server: Server, tmp_path: Path) -> None:
    study = write_study(tmp_path, name="outage", n_trials=2, epochs=8, extra="\n[racing]\nenabled = false\n")
    proc = _sweep(study, server.url, "--set", "dashboard.notes=false")
    try:
        # Once the first trial has reported two epochs, the database goes away for 15 s.
        epochs = "SELECT count(*) FROM trial_intermediate_values"
        wait_for(lambda: _sql(server.url, epochs)[0][0][0] >= 2, timeout=120, what="two epochs reported",  # type: ignore[index]
                 ignore=NOT_YET)  # fmt: skip
        out, err = _outage(server, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    trials = _trials(server.url)
    states = [s for _, s, _ in trials]
    assert "RUNNING" not in states and "WAITING" not in states, trials
    finished = [(n, keys) for n, s, keys in trials if s in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2, trials  # the target, with the trial that met the outage among them
    assert all("score" in keys and "sweep:curves" in keys for _, keys in finished)  # no result lost
    assert "Traceback" not in out + err
    assert "storage unreachable" in out + err  # one line when the wait began
    assert "storage back after" in out + err  # and one when it ended


def _outage(server: Server, proc: subprocess.Popen[str], seconds: float = 15) -> tuple[str, str]:
    """Stop the server for ``seconds``, start it again, and wait for the sweep to end; its output."""
    server.stop()
    time.sleep(seconds)
    server.start()
    return proc.communicate(timeout=600)


def _running(server: Server) -> Callable[[], bool]:
    return lambda: any(state == "RUNNING" for _, state, _ in _trials(server.url))


def _sql(url: str, *statements: str) -> list[object]:
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return [conn.execute(sa.text(s)).all() if s.lstrip().upper().startswith("SELECT") else
                    conn.execute(sa.text(s)) and None for s in statements]  # fmt: skip
    finally:
        engine.dispose()


# Holds the first write that ends a trial (RUNNING -> any other state, Optuna's ``tell``) for 60 s, so
# that the server can be stopped while exactly that write is in flight. A sequence is not rolled
# back with the aborted write, so the retry after the outage passes at once.
_HOLD_FIRST_TELL = [
    "CREATE SEQUENCE tell_hold",
    """CREATE FUNCTION hold_first_tell() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF nextval('tell_hold') = 1 THEN PERFORM pg_sleep(60); END IF;
         RETURN NEW;
       END $$""",
    """CREATE TRIGGER hold_first_tell BEFORE UPDATE ON trials FOR EACH ROW
       WHEN (OLD.state = 'RUNNING' AND NEW.state <> 'RUNNING') EXECUTE FUNCTION hold_first_tell()""",
]


def test_a_database_outage_at_the_end_of_a_trial_loses_nothing(server: Server, tmp_path: Path) -> None:
    study = write_study(tmp_path, name="tell", n_trials=2, epochs=3, extra="\n[racing]\nenabled = false\n")
    proc = _sweep(study, server.url, "--set", "dashboard.notes=false")
    try:
        wait_for(_running(server), timeout=120, what="a running trial", ignore=NOT_YET)
        _sql(server.url, *_HOLD_FIRST_TELL)
        held = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        wait_for(lambda: _sql(server.url, held)[0][0][0] == 1, timeout=180, what="the first trial's tell",  # type: ignore[index]
                 ignore=NOT_YET)  # fmt: skip
        out, err = _outage(server, proc)  # the tell is in flight: its transaction dies with the server
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    trials = _trials(server.url)
    assert [s for _, s, _ in trials] == ["COMPLETE", "COMPLETE"], trials  # the held trial's result was told again
    values = _sql(server.url, "SELECT count(*) FROM trial_values")[0]
    assert values[0][0] == 2, values  # type: ignore[index]
    assert "Traceback" not in out + err
    assert "storage unreachable" in out + err and "storage back after" in out + err


def test_a_database_gone_longer_than_the_outage_timeout_ends_the_sweep_with_one_line(
    server: Server, tmp_path: Path
) -> None:
    study = write_study(tmp_path, name="gone", n_trials=1, epochs=4)
    settings = ["--set", "worker.outage_timeout=5", "--set", "dashboard.notes=false",
                "--set", "worker.heartbeat_interval=1", "--set", "worker.grace_period=3"]  # fmt: skip
    proc = _sweep(study, server.url, *settings)
    try:
        wait_for(_running(server), timeout=120, what="a running trial", ignore=NOT_YET)
        server.stop()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unreachable" in errors[0], err
    # Nothing could be written while the server was gone, so the trial it interrupted is still RUNNING
    # there. Once the server is back, the next run sees its heartbeat stale, fails it and re-runs it.
    server.start()
    assert "RUNNING" in [s for _, s, _ in _trials(server.url)]
    rerun = _sweep(study, server.url, *settings)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out + err
    states = [s for _, s, _ in _trials(server.url)]
    assert "RUNNING" not in states and states.count("COMPLETE") == 1, states  # the interrupted trial's retry


def test_sweep_run_waits_for_a_database_that_is_down_when_it_starts(server: Server, tmp_path: Path) -> None:
    study = write_study(tmp_path, name="late", n_trials=2, epochs=2)
    server.stop()
    proc = _sweep(study, server.url, "--set", "dashboard.notes=false")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        # The wait has begun (however long the process took to start on a loaded machine), and it goes on.
        wait_for(lambda: any("storage unreachable while preparing the study" in line for line in lines),
                 timeout=120, what="sweep run to say it waits for the database")  # fmt: skip
        time.sleep(4)
        assert proc.poll() is None, "sweep run gave up on a database that was down"
        server.start()
        proc.wait(timeout=300)  # -q: its few lines of output fit in the pipe
        reader.join(timeout=10)
        out = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    assert proc.returncode == 0, out + err
    assert [s for _, s, _ in _trials(server.url)] == ["COMPLETE", "COMPLETE"]
    assert "Traceback" not in out + err


def test_an_outage_is_recognised_by_its_cause_not_by_the_error_optuna_raises() -> None:
    import optuna
    from sqlalchemy.exc import OperationalError

    from sweep.errors import Interrupted
    from sweep.outage import is_outage

    refused = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    try:
        try:
            raise refused
        except OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("an error in the storage") from exc
    except optuna.exceptions.StorageInternalError as wrapped:
        assert is_outage(wrapped)
    # A signal that comes while an outage is being handled is the signal, not the outage.
    try:
        try:
            raise refused
        except OperationalError:
            raise Interrupted(15) from None
    except Interrupted as stopped:
        assert stopped.__context__ is refused and not is_outage(stopped)
    assert not is_outage(ValueError("Cannot tell a FAIL trial."))


def test_a_storage_proxy_that_does_not_answer_is_an_outage() -> None:
    import optuna

    from sweep.outage import is_outage
    from tests.helpers import free_port

    proxy = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=free_port())  # nothing listens there
    with pytest.raises(Exception) as caught:
        proxy.get_all_studies()
    assert is_outage(caught.value), repr(caught.value)


def test_a_database_that_restarts_behind_the_proxy_is_an_outage_to_its_workers(server: Server) -> None:
    """The proxy says UNAVAILABLE (an outage, waited out) where Optuna's proxy says UNKNOWN (a refusal)."""
    import warnings

    import optuna

    from sweep.outage import is_outage
    from tests.helpers import free_port, port_open

    port = free_port()
    proxy = subprocess.Popen([sys.executable, "-m", "sweep", "proxy", "--storage", server.url, "--port", str(port)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: port_open(port), timeout=60, what="the proxy to listen")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        study = optuna.create_study(storage=client, study_name="behind")
        trial = study.ask()
        server.stop()
        with pytest.raises(Exception) as caught:
            client.set_trial_user_attr(trial._trial_id, "k", 1)
        assert is_outage(caught.value), repr(caught.value)
        assert "the database behind the proxy is down" in str(caught.value)
        server.start()
        wait_for(lambda: _answers(client, trial._trial_id), timeout=60, what="the proxy to answer again",
                 ignore=(Exception,))  # fmt: skip
        assert client.get_trial(trial._trial_id).user_attrs == {"k": 2}
    finally:
        proxy.terminate()
        _, err = proxy.communicate(timeout=30)
    assert "Traceback" not in err, err


def _answers(client: object, trial_id: int) -> bool:
    client.set_trial_user_attr(trial_id, "k", 2)  # type: ignore[attr-defined]
    return True
