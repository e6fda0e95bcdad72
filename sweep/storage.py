"""Storage URLs, password masking, and opening Optuna storages safely.

SQLite is the embedded default for one machine; PostgreSQL
(``postgresql+psycopg://``) and MySQL/MariaDB (``mysql+pymysql://``) serve many.
Only this module turns storage failures into :class:`~sweep.errors.StorageError`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep import records
from sweep.errors import StorageError, StudyNotFoundError, SweepError, UserError
from sweep.spec import DEFAULT_STORAGE, StudySpec, spec_from_dict

if TYPE_CHECKING:
    import optuna

ENV_STORAGE = "SWEEP_STORAGE"
SQLITE_TIMEOUT_S = 60.0
"""How long a SQLite writer waits for another process's lock before failing."""

log = logging.getLogger("sweep.storage")


def resolve_url(cli_url: str | None, spec_url: str | None = None) -> str:
    """The storage to use: ``--storage``, else ``$SWEEP_STORAGE``, else the study file, else ``sqlite:///sweep.db``."""
    for candidate in (cli_url, os.environ.get(ENV_STORAGE), spec_url, DEFAULT_STORAGE):
        if candidate:
            return _normalise(candidate)
    raise AssertionError("unreachable")


_ALLOWED_URLS = "sqlite:///FILE, postgresql+psycopg://USER:PASSWORD@HOST/DB, mysql+pymysql://USER:PASSWORD@HOST/DB or grpc://HOST:PORT"
_SECRET_QUERY = re.compile(r"((?:password|passwd|pwd)=)[^&]*", re.IGNORECASE)


def mask(url: str) -> str:
    """The URL with its password replaced by ``***``; safe to print and log. Never raises."""
    from sqlalchemy.engine import make_url

    try:
        if url.partition("://")[2].split("/", 1)[0].count("@") > 1:
            raise ValueError("ambiguous user info")
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL is still masked: keep only what follows the last '@'
        scheme, sep, rest = url.partition("://")
        shown = f"{scheme}{sep}***@{rest.rsplit('@', 1)[-1]}" if "@" in rest else url
    return _SECRET_QUERY.sub(r"\1***", shown)


def _normalise(url: str) -> str:
    """Check the URL's form once, here, so that no later step meets a malformed one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = url.strip()
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    elif url.startswith("mysql://"):
        url = "mysql+pymysql://" + url.split("://", 1)[1]
    if url.startswith("grpc://"):
        host, _, port = url.removeprefix("grpc://").rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--storage: got {url!r}; a proxy URL is grpc://HOST:PORT")
        return url
    userinfo = url.partition("://")[2].split("/", 1)[0]
    if userinfo.count("@") > 1:
        raise UserError(
            f"--storage: got {mask(url)!r}; write '@' in a user name or password as %40"
        )
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018  (a non-numeric port raises here)
    except (ArgumentError, ValueError):
        raise UserError(f"--storage: got {mask(url)!r}; allowed: {_ALLOWED_URLS}") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql") or (
        parsed.get_backend_name() == "sqlite" and not url.startswith("sqlite:///")
    ):
        raise UserError(f"--storage: got {mask(url)!r}; allowed: {_ALLOWED_URLS}")
    if parsed.get_backend_name() == "sqlite" and sqlite_path(url) is None:
        raise UserError(
            f"--storage: got {url!r}; an in-memory SQLite database cannot be shared by worker processes "
            "or kept after the run; allowed: sqlite:///FILE"
        )
    return url


def default_artifacts(url: str) -> str | None:
    """Where artifacts go when the study file does not say: beside a SQLite file, else nowhere."""
    path = sqlite_path(url)
    return str(path.resolve().with_name(path.stem + "-artifacts")) if path is not None else None


def storage_options(spec: StudySpec) -> dict[str, Any]:
    """The :func:`open_storage` settings a study's ``[worker]`` section gives (heartbeats, retries)."""
    w = spec.worker
    return {
        "heartbeat_interval": w.heartbeat_interval,
        "grace_period": w.grace_period,
        "max_retries": w.max_retries,
    }


def open_sweep(study_name: str, url: str) -> tuple[optuna.Study, StudySpec]:
    """Load a study created by ``sweep run`` and its stored spec.

    Raises:
        StudyNotFoundError: no such study.
        UserError: the study was not created by ``sweep`` (no stored spec).
    """
    study = load_study(study_name, url)
    spec = stored_spec(study_name, study.user_attrs)
    return load_study(study_name, url, **storage_options(spec)), spec


def stored_spec(study_name: str, user_attrs: Mapping[str, Any]) -> StudySpec:
    """The spec ``sweep run`` stored in a study's user attrs.

    Raises:
        UserError: the study was not created by ``sweep run`` (no stored spec).
        SpecError: the stored spec is not valid (written by hand, or by an incompatible version).
    """
    raw = user_attrs.get(records.SPEC)
    if raw is None:
        raise UserError(f"study {study_name!r} has no sweep spec; it was not created by 'sweep run'")
    return spec_from_dict(raw, source=f"stored spec of {study_name!r}")


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retries: int = 0,
    create: bool = True,
    pool_size: int = 1,
) -> optuna.storages.BaseStorage:
    """Open the storage behind ``url`` with heartbeats, pooling and lock timeouts set.

    Args:
        create: create the tables (and the SQLite file) when missing. Reading
            commands pass False so that a mistyped path is an error, not a new
            empty database.
        pool_size: connections to a database server kept open while idle. One, where
            SQLAlchemy keeps five: a worker's trial and its beats need one at a time,
            and a second, opened while both write at once, is closed after. Every idle
            connection counts against the server's ``max_connections`` (100 by default
            on PostgreSQL), which 64 workers keeping two each exhausted (benchmark 13).
            ``sweep proxy`` keeps one per thread.

    Raises:
        StorageError: the storage cannot be reached or is not an Optuna storage.
        UserError: a SQLite file that should exist does not.
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from sweep.liveness import retry_callback

    if optuna.logging.get_verbosity() < optuna.logging.WARNING:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines
    if url.startswith("grpc://"):
        host, _, port = url.removeprefix("grpc://").rpartition(":")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                proxy = optuna.storages.GrpcStorageProxy(host=host or "localhost", port=int(port))
            proxy.get_all_studies()  # fail here, in one clear line, if nothing answers
            return proxy
        except Exception as exc:  # grpc raises its own error types
            details = getattr(exc, "details", None)
            reason = details() if callable(details) else (str(exc).splitlines() or [type(exc).__name__])[0]
            raise StorageError(f"cannot reach the storage proxy {mask(url)}: {reason[:200]}") from None

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            if path.is_dir():
                raise UserError(f"--storage: '{path}' is a folder; allowed: the path of a SQLite file")
            if not create and not path.exists():
                raise UserError(f"--storage: SQLite file '{path}' does not exist")
            if create:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise UserError(
                        f"--storage: cannot create the folder of SQLite file '{path}': {exc.strerror}"
                    ) from None
            _enable_wal(path)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    else:
        engine_kwargs.update(pool_pre_ping=True, pool_recycle=3600, pool_size=pool_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = retry_callback(max_retries) if heartbeat_interval and max_retries > 0 else None
            storage: optuna.storages.RDBStorage = _heartbeat_tolerant_storage()(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=callback,
                skip_table_creation=not create,
            )
        if url.startswith("sqlite"):
            _immediate_transactions(storage.engine)
        elif grace_period:
            _bounded_idle_transactions(storage.engine, max(grace_period, MIN_IDLE_TRANSACTION_S))
        return storage
    except (SQLAlchemyError, optuna.exceptions.OptunaError, ImportError, ValueError, RuntimeError) as exc:
        raise storage_error(url, exc) from None


@functools.cache
def _heartbeat_tolerant_storage() -> type:
    """Optuna's RDBStorage, with a heartbeat that survives an outage.

    Optuna beats from a thread that dies at its first failed write: after a
    30 s outage the trial would beat no more and be failed as stale although
    its worker is alive. Here a beat that meets an outage is skipped (one line
    per outage), and the next beat, once the database answers, goes through.

    Optuna also never reaps a RUNNING trial that has no heartbeat at all, which
    is what a worker leaves when the database goes away between starting a
    trial and its first beat and the worker gives up: the trial would stay
    RUNNING for ever. Here the reaper gives such a trial a beat of the
    database's own clock when it first sees it, so that it is failed one grace
    period later unless a worker beats it by then.

    It also holds the writes of the trial a worker runs and writes them in a few
    transactions (:mod:`sweep.batch`).
    """
    import optuna
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    from sweep.batch import HeldWrites
    from sweep.outage import is_outage

    class HeartbeatTolerantStorage(HeldWrites, optuna.storages.RDBStorage):
        _missed = False

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                super().record_heartbeat(trial_id)  # a first beat that a reaper wrote a moment before is skipped
            except Exception as exc:
                if not is_outage(exc):
                    raise
                if not self._missed:
                    log.warning("storage unreachable: heartbeats skipped until it answers")
                self._missed = True
                return
            self._missed = False

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            self._beat_unbeaten(study_id)
            return list(super()._get_stale_trial_ids(study_id))

        def _beat_unbeaten(self, study_id: int) -> None:
            trials, beats = models.TrialModel, models.TrialHeartbeatModel
            # A worker that beats first at the same moment wins: the integrity error is ignored.
            with _create_scoped_session(self.scoped_session, True) as session:
                unbeaten = (
                    session.query(trials.trial_id)
                    .outerjoin(beats, beats.trial_id == trials.trial_id)
                    .filter(trials.study_id == study_id, trials.state == TrialState.RUNNING)
                    .filter(beats.trial_id.is_(None))
                    .all()
                )
                for (trial_id,) in unbeaten:
                    session.add(beats(trial_id=trial_id))

    return HeartbeatTolerantStorage


def _immediate_transactions(engine: Any) -> None:
    """Make every SQLite transaction of ``engine`` take the write lock when it begins.

    SQLite ignores SELECT ... FOR UPDATE, so two workers that pop the same queued
    trial at the same moment would both read it as WAITING and both run it (Optuna
    checks the state, then writes it, in one deferred transaction). BEGIN IMMEDIATE
    serialises such transactions; in WAL mode readers elsewhere are not blocked.
    This is SQLAlchemy's documented recipe for the pysqlite driver.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver begins nothing; the event below does

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners are dropped


MIN_IDLE_TRANSACTION_S = 10
"""The shortest time the server lets a session sit in a transaction. With a grace period of a second or two,
a healthy worker descheduled for that long on a loaded machine had its session ended mid-call; a lock held
10 s longer only makes the reaper wait 10 s longer."""


def _bounded_idle_transactions(engine: Any, seconds: int) -> None:
    """Have the server end a session of ``engine`` that sits in a transaction for ``seconds``
    (the grace period, at least :data:`MIN_IDLE_TRANSACTION_S`).

    A worker paused or cut off in the middle of a transaction (a beat, a report)
    holds its trial's row lock, and the worker that fails its trial as stale
    would wait on that lock until the dead connection's TCP times out (hours).
    The server ends such a session after the grace period (or 10 s) instead, which frees
    the lock when the trial becomes stale. A healthy worker's transactions last
    milliseconds; should one be ended, its next statement meets an outage and
    is retried. PostgreSQL: ``idle_in_transaction_session_timeout``; MariaDB:
    ``idle_transaction_timeout``. MySQL has no such setting: there the lock is
    held until the server notices the connection is gone.
    """
    from sqlalchemy import event

    if engine.dialect.name == "postgresql":
        statement = f"SET idle_in_transaction_session_timeout = {int(seconds) * 1000}"
    elif engine.dialect.name == "mysql":
        statement = f"SET SESSION idle_transaction_timeout = {int(seconds)}"
    else:
        return

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        except Exception:  # MySQL: no such variable; the server's defaults stay
            dbapi_connection.rollback()
        finally:
            cursor.close()
        dbapi_connection.commit()

    engine.dispose()  # connections made before the listener are dropped


def storage_error(url: str, exc: BaseException) -> SweepError:
    """One line for a storage that cannot be used: a user error if it is not an Optuna storage."""
    cause = exc.__cause__ or exc
    reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    reason = scrub(reason, url)
    if any(s in reason for s in ("no such table", "file is not a database", "doesn't exist", "does not exist")):
        return UserError(f"--storage: {mask(url)} is not an Optuna storage ({reason[:160]})")
    return StorageError(f"cannot open storage {mask(url)}: {reason[:300]}")


def read_engine(url: str) -> Any:
    """A SQLAlchemy engine for reading an existing relational storage (Optuna is not imported).

    Raises:
        UserError: a SQLite file that does not exist.
        StorageError: the URL cannot be used (a missing driver, for example).
    """
    import sqlalchemy as sa

    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None and path.is_dir():
            raise UserError(f"--storage: '{path}' is a folder; allowed: the path of a SQLite file")
        if path is not None and not path.exists():
            raise UserError(f"--storage: SQLite file '{path}' does not exist")
        connect_args["timeout"] = SQLITE_TIMEOUT_S
    engine = _ENGINES.get(url)
    if engine is None:
        try:
            engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=not url.startswith("sqlite"))
        except (sa.exc.SQLAlchemyError, ImportError) as exc:
            raise storage_error(url, exc) from None
        _ENGINES[url] = engine
    return engine


_ENGINES: dict[str, Any] = {}
"""One reading engine per URL per process (a worker refreshes the ranking after its trials)."""


def load_study(name: str, url: str, **storage_kwargs: Any) -> optuna.Study:
    """Load an existing study.

    Raises:
        StudyNotFoundError: no study of that name; the message lists the ones there are.
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    storage = open_storage(url, create=False, **storage_kwargs)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except (SQLAlchemyError, optuna.exceptions.OptunaError) as exc:
        raise storage_error(url, exc) from None
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        listed = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
        raise StudyNotFoundError(
            f"study {name!r} not found in {mask(url)}; studies there: {listed}"
        ) from None


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; None for another storage, an in-memory database or a ``file:`` URI."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except ArgumentError:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _enable_wal(path: Path) -> None:
    """Switch the SQLite file to write-ahead logging so readers never block the writer."""
    try:
        with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UserError(
                f"--storage: cannot write SQLite file '{path}' ({exc}); allowed: a file in a folder you can write"
            ) from None
        raise StorageError(f"cannot open SQLite file '{path}': {exc}") from None


def scrub(text: str, url: str) -> str:
    """``text`` with the password of ``url`` replaced by ``***``."""
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text
