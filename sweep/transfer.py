"""Copying studies between storages (a SQLite file to PostgreSQL, for example).

A copy keeps everything a sweep and its readers use: every trial in every
state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING) with its number, values,
params and distributions, user and system attrs, intermediate values and
datetimes, the study's user attrs (spec, data fingerprint, target, versions),
system attrs (metric names), and directions. Optuna's ``copy_study`` does that
work; this module adds what it leaves out:

- the heartbeats of the trials, so that a RUNNING trial whose worker died is
  still found stale (and retried) by the workers on the destination instead of
  staying RUNNING for ever;
- all or nothing per study: ``copy_study`` writes one trial at a time, so a
  failure part way would leave a half-copied study behind; such a copy is
  deleted before the error is raised;
- the checks done before anything is written (the source study exists, no
  study of that name is in the destination, the two storages differ).

MySQL/MariaDB store Optuna's datetimes without fractions of a second, so a
copy into them keeps datetimes to the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweep.errors import StorageError, UserError
from sweep.storage import load_study, mask, open_storage, resolve_url, scrub, sqlite_path

if TYPE_CHECKING:

    import optuna

_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class CopyResult:
    """One study copied: its name, how many trials it has at the destination, and the two storages (masked)."""

    study_name: str
    trials: int
    source: str
    destination: str


def copy_studies(*, from_url: str, to_url: str, study: str | None = None) -> list[CopyResult]:
    """Copy one study (``study``), or every study (``None``), from one storage to another.

    Everything is checked before anything is written: when several studies are
    copied, a name clash on any of them stops the copy of all. The source is
    opened without creating anything (a mistyped SQLite path is an error); the
    destination's tables (and SQLite file) are created when missing. A study
    whose copy fails is deleted from the destination; studies copied before it
    are kept (each is complete). Nothing is printed; URLs in messages and in
    the results are masked.

    Returns:
        One :class:`CopyResult` per study copied, in the source's order.

    Raises:
        UserError: an empty URL or one of an unknown kind, source and
            destination are the same storage, the SQLite source file does not
            exist, the source has no studies, or the destination already has a
            study of a name to be copied.
        StudyNotFoundError: ``study`` is not in the source (the message lists
            the studies there).
        StorageError: a storage cannot be opened, or a copy failed part way
            (the partial copy is deleted first).
    """
    import optuna

    from_url, to_url = _checked_url(from_url, "source"), _checked_url(to_url, "destination")
    source, destination = mask(from_url), mask(to_url)
    if _identity(from_url) == _identity(to_url):
        raise UserError(f"source and destination are the same storage ({source}); nothing to copy")
    path = sqlite_path(from_url)
    if path is not None and not path.exists():
        raise UserError(f"source storage {source}: SQLite file '{path}' does not exist")

    src = open_storage(from_url, create=False)
    dst: optuna.storages.BaseStorage | None = None
    try:
        names = optuna.get_all_study_names(storage=src)
        if study is not None:
            if study not in names:
                load_study(study, from_url)  # raises StudyNotFoundError, listing the studies there
            chosen = [study]
        elif not names:
            raise UserError(f"source storage {source} has no studies; nothing to copy")
        else:
            chosen = list(names)

        dst = open_storage(to_url)
        there = set(optuna.get_all_study_names(storage=dst))
        clashes = [name for name in chosen if name in there]
        if clashes:
            listed = ", ".join(repr(name) for name in clashes)
            noun = "a study" if len(clashes) == 1 else "studies"
            raise UserError(
                f"destination {destination} already has {noun} named {listed}; nothing was copied "
                "(delete it there or copy into another storage)"
            )

        results: list[CopyResult] = []
        for name in chosen:
            trials = _copy_one(name, src=src, dst=dst, from_url=from_url, to_url=to_url, done=results)
            results.append(CopyResult(study_name=name, trials=trials, source=source, destination=destination))
        return results
    finally:
        _dispose(src)
        if dst is not None:
            _dispose(dst)


def _copy_one(
    name: str,
    *,
    src: optuna.storages.BaseStorage,
    dst: optuna.storages.BaseStorage,
    from_url: str,
    to_url: str,
    done: list[CopyResult],
) -> int:
    """Copy study ``name`` and its trials' heartbeats; returns its number of trials at the destination."""
    import optuna

    try:
        optuna.copy_study(from_study_name=name, from_storage=src, to_storage=dst, to_study_name=name)
    except optuna.exceptions.DuplicatedStudyError:
        # Created at the destination by someone else after the check: that study is not ours to delete.
        raise UserError(
            f"destination {mask(to_url)} already has a study named {name!r} (created during the copy); "
            f"it was left as it is{_kept(done)}"
        ) from None
    except Exception as exc:
        raise _failed(name, exc, dst=dst, from_url=from_url, to_url=to_url, done=done) from None
    except BaseException:
        _discard(name, dst)
        raise
    try:
        study_id = dst.get_study_id_from_name(name)
        _copy_heartbeats(src, src.get_study_id_from_name(name), dst, study_id)
        return dst.get_n_trials(study_id)
    except Exception as exc:
        raise _failed(name, exc, dst=dst, from_url=from_url, to_url=to_url, done=done) from None
    except BaseException:
        _discard(name, dst)
        raise


def _failed(
    name: str,
    exc: Exception,
    *,
    dst: optuna.storages.BaseStorage,
    from_url: str,
    to_url: str,
    done: list[CopyResult],
) -> StorageError:
    """Delete the partial copy of ``name``; the error to raise, saying what is left at the destination."""
    reason = scrub(scrub(_reason(exc), to_url), from_url)
    problem = _discard(name, dst)
    if problem is None:
        outcome = "the partial copy was deleted from the destination"
    else:
        problem = scrub(scrub(problem, to_url), from_url)
        outcome = f"the partial copy could not be deleted ({problem}): delete study {name!r} there"
    return StorageError(f"copying study {name!r} to {mask(to_url)} failed: {reason}; {outcome}{_kept(done)}")


def _discard(name: str, dst: optuna.storages.BaseStorage) -> str | None:
    """Delete study ``name`` from ``dst`` if it is there; the reason when that fails, else None."""
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=dst)
    except KeyError:
        return None
    except Exception as exc:
        return _reason(exc)
    return None


def _kept(done: list[CopyResult]) -> str:
    if not done:
        return ""
    return "; already copied and kept: " + ", ".join(r.study_name for r in done)


def _copy_heartbeats(
    src: optuna.storages.BaseStorage, src_study_id: int, dst: optuna.storages.BaseStorage, dst_study_id: int
) -> None:
    """Copy the last heartbeat of each trial, matched by trial number (relational storages only)."""
    src_engine, dst_engine = _engine(src), _engine(dst)
    if src_engine is None or dst_engine is None:
        return
    import sqlalchemy as sa

    trials = sa.table("trials", sa.column("trial_id", sa.Integer), sa.column("number", sa.Integer),
                      sa.column("study_id", sa.Integer))
    beats = sa.table("trial_heartbeats", sa.column("trial_id", sa.Integer), sa.column("heartbeat", sa.DateTime))
    with src_engine.connect() as conn:
        rows = conn.execute(
            sa.select(trials.c.number, beats.c.heartbeat)
            .select_from(beats.join(trials, beats.c.trial_id == trials.c.trial_id))
            .where(trials.c.study_id == src_study_id)
        ).all()
    if not rows:
        return
    with dst_engine.begin() as conn:
        ids = dict(
            conn.execute(sa.select(trials.c.number, trials.c.trial_id).where(trials.c.study_id == dst_study_id)).all()
        )
        conn.execute(
            sa.insert(beats),
            [{"trial_id": ids[number], "heartbeat": heartbeat} for number, heartbeat in rows if number in ids],
        )


def _engine(storage: Any) -> Any:
    """The SQLAlchemy engine behind a relational storage (also when Optuna wraps it in a cache); None otherwise."""
    return getattr(getattr(storage, "_backend", storage), "engine", None)


def _dispose(storage: Any) -> None:
    engine = _engine(storage)
    if engine is not None:
        engine.dispose()


def _checked_url(url: str, which: str) -> str:
    if not url or not url.strip():
        raise UserError(f"{which} storage: got an empty URL; allowed: sqlite:///FILE, "
                        "postgresql+psycopg://USER@HOST/DB, mysql+pymysql://USER@HOST/DB")
    return resolve_url(url)


def _identity(url: str) -> tuple[Any, ...]:
    """What names one database: equal for two URLs that reach the same one (passwords and drivers aside)."""
    if url.startswith("grpc://"):
        return ("grpc", url.removeprefix("grpc://").lower())
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        return ("sqlite", str(path.resolve()) if path is not None else object())  # in-memory: never the same
    host = (parsed.host or "").lower()
    return (
        backend,
        "localhost" if host in _LOCAL_HOSTS else host,
        parsed.port or _DEFAULT_PORTS.get(backend),
        parsed.database,
    )


def _reason(exc: BaseException) -> str:
    """The first line of an error, with the first line of its cause (Optuna wraps the database's error)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        first = f"{first.rstrip('. ')}: {str(cause).strip().splitlines()[0]}"
    return first

