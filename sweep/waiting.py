"""Waiting for a study that another machine has not created yet (``sweep worker --wait``).

Workers and the study may start in any order: a worker started before
``sweep create`` waits for the study to appear, one line when the wait starts
and one when it ends, and stops on SIGINT/SIGTERM like any other command.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sweep.errors import Interrupted, SpecError, StorageError, StudyNotFoundError, SweepError, UserError
from sweep.outage import is_outage
from sweep.storage import mask, sqlite_path, storage_error

if TYPE_CHECKING:
    from pathlib import Path


WAIT_POLL_S = 1.0
"""How often :func:`wait_for_study` looks for the study."""


def wait_for_study(
    study_name: str,
    url: str,
    *,
    wait_s: float,
    on_wait: Callable[[str], None] | None = None,
    poll_s: float = WAIT_POLL_S,
    missing_ok: bool = True,
) -> None:
    """Return once ``study_name`` is in the storage with its spec (its creation finished), waiting up to ``wait_s``.

    Until then, each of these means "not there yet", and the study is looked for again
    every ``poll_s`` seconds: no such study; a study whose creation has not finished (no
    spec stored yet); a storage that has not been made yet (a SQLite file that does not
    exist, a database without Optuna's tables); a storage that does not answer (a
    :class:`StorageError`, an outage). ``on_wait`` gets one line when the wait starts and
    one when the study is found; a study there at once gets none. The study is read with
    SQL on one pooled engine (:func:`sweep.report.study_spec`), not opened through Optuna.
    With ``missing_ok=False`` only a storage that does not answer is waited for: a study
    or a storage that is not there is an error at once (a worker started without ``--wait``).

    Raises:
        StudyNotFoundError, UserError, StorageError: the last of those errors, once ``wait_s``
            seconds have passed without the study.
        SpecError: the stored spec cannot be read; at once.
        UserError: a SQLite URL that names a folder; at once.
        Interrupted: SIGINT or SIGTERM (in the main thread) while waiting.
    """
    from sweep.report import study_spec

    path = sqlite_path(url)
    started = time.monotonic()
    waiting = False
    with interruptible(f"waiting for study {study_name!r}") as signals:

        def say(line: str) -> None:
            if on_wait is not None:
                with signals.held():
                    on_wait(line)

        while True:
            try:
                study_spec(study_name, url=url)
            except (Interrupted, SpecError):
                raise
            except (UserError, StorageError) as exc:
                if (path is not None and path.is_dir()) or (isinstance(exc, UserError) and not missing_ok):
                    raise
                last: SweepError = exc
            except Exception as exc:
                if not is_outage(exc):
                    raise
                last = storage_error(url, exc)
            else:
                if waiting:
                    say(f"study {study_name!r} found after {time.monotonic() - started:.0f} s")
                return
            left = wait_s - (time.monotonic() - started)
            if not waiting:
                waiting = True
                say(
                    f"waiting up to {duration_text(wait_s)} for study {study_name!r} on {mask(url)} "
                    f"({_not_there(last, path)})"
                )
            if left <= 0:
                raise last from None
            time.sleep(min(poll_s, left))


def _not_there(exc: SweepError, path: Path | None) -> str:
    if path is not None and not path.exists():
        return "its SQLite file does not exist yet"
    if isinstance(exc, StudyNotFoundError):
        return "it does not exist yet"
    if isinstance(exc, StorageError):
        return "the storage does not answer"
    return "it is not ready yet"


def duration_text(seconds: float) -> str:
    """``600`` as ``10m``, ``7200`` as ``2h``, ``90`` as ``90s``: as a user would write it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class _Interruptible:
    """SIGINT and SIGTERM raise :class:`Interrupted` (``while_`` says what was stopped), except
    inside :meth:`held`, which raises it when the block ends: a line half printed when the
    signal came would be printed again with the error."""

    def __init__(self, while_: str) -> None:
        self.while_ = while_
        self.holding = False
        self.pending: int | None = None

    def stop(self, signum: int, frame: Any) -> None:
        if self.holding:
            self.pending = signum
            return
        raise Interrupted(signum, while_=self.while_)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            raise Interrupted(self.pending, while_=self.while_)


@contextlib.contextmanager
def interruptible(while_: str) -> Iterator[_Interruptible]:
    """Within this block SIGINT and SIGTERM raise :class:`Interrupted` (see :class:`_Interruptible`).

    Only the main thread can install signal handlers; elsewhere nothing changes.
    """
    state = _Interruptible(while_)
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {s: signal.signal(s, state.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
