"""Riding out a storage that goes away for a while: recognise an outage by its cause, and wait.

A worker spends almost all its time training, so almost every database
outage lands in the middle of a trial. The trial's writes (its intermediate
values, its results, its final state) are retried with a back-off until the
storage answers again or ``worker.outage_timeout`` passes; the training itself
only pauses at the write. Optuna wraps the driver's errors in its own (and,
when both ``tell`` and the ``get_trial`` after it fail, raises an
``UnboundLocalError``), so an outage is recognised by the driver error in the
exception's chain of causes, never by one exception type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["BACKOFF_S", "OutageTimeout", "gave_up", "is_outage", "one_line", "retry"]

T = TypeVar("T")
BACKOFF_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
log = logging.getLogger("sweep.outage")


class OutageTimeout(Exception):
    """The storage stayed unreachable for longer than the time allowed; ``__cause__`` is the last error."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its chain of causes) says the database cannot be reached.

    A refused write (a constraint, bad data) is no outage: retrying it would not help. Through
    the gRPC proxy, a proxy that does not answer (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``) is one.
    """
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    from sweep.errors import Interrupted

    if isinstance(exc, Interrupted):  # a signal that came while an outage was being handled: the signal
        return False
    seen: BaseException | None = exc
    hops = 0
    while seen is not None and hops < 20:
        if isinstance(seen, OperationalError | InterfaceError):
            return not refused(seen)
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if _grpc_unreachable(seen):
            return True
        seen = seen.__cause__ or seen.__context__
        hops += 1
    return False


_REFUSALS = (
    "password authentication failed",  # PostgreSQL
    "no pg_hba.conf entry",
    "does not exist",  # database "x" does not exist
    "access denied for user",  # MySQL / MariaDB (1045, 1044)
    "unknown database",  # MySQL / MariaDB (1049)
)


def refused(exc: BaseException) -> bool:
    """Whether a connection error says the server answered and refused (credentials, a missing database).

    That is a mistake in the URL or the server's settings, not an outage: waiting would not help.
    """
    text = str(exc).lower()
    return any(s in text for s in _REFUSALS)


def one_line(exc: BaseException) -> str:
    """The first line of what ``exc`` says; a gRPC error's own details (its str() is many lines)."""
    details = getattr(exc, "details", None)
    text = str(details() if callable(details) else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_GRPC_OUTAGES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


def _grpc_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is a gRPC error saying the storage proxy cannot be reached (grpc is not imported)."""
    code = getattr(exc, "code", None)
    if not callable(code) or not type(exc).__module__.startswith("grpc"):
        return False
    try:
        return getattr(code(), "name", "") in _GRPC_OUTAGES
    except Exception:
        return False


def gave_up(exc: BaseException) -> OutageTimeout | None:
    """The :class:`OutageTimeout` in ``exc``'s chain of causes, if a wait already ran out there."""
    seen: BaseException | None = exc
    hops = 0
    while seen is not None and hops < 20:
        if isinstance(seen, OutageTimeout):
            return seen
        seen = seen.__cause__ or seen.__context__
        hops += 1
    return None


def retry(
    action: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``action()``, called again after a back-off while it fails because the storage is unreachable.

    Logs one line when the wait starts and one when the storage answers again.

    Raises:
        OutageTimeout: the storage stayed unreachable for ``timeout_s`` seconds.
        Exception: whatever ``action`` raises that is not an outage, at once.
    """
    started: float | None = None
    tries = 0
    while True:
        try:
            result = action()
        except Exception as exc:
            if not is_outage(exc):
                raise
            now = clock()
            if started is None:
                started = now
                log.warning("storage unreachable while %s; retrying for up to %.0f s", what, timeout_s)
            if now - started >= timeout_s:
                raise OutageTimeout(
                    f"the storage was unreachable for over {timeout_s:.0f} s while {what}"
                ) from exc
            sleep(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
            tries += 1
            continue
        if started is not None:
            log.warning("storage back after %.0f s; %s done", clock() - started, what)
        return result
