"""What a worker process (:mod:`sweep.worker`) and its supervisor (:mod:`sweep.runner`) say to each other.

Three channels, each in one direction:

* the environment: the storage URL (:data:`ENV_URL`), never the command line
  where ``ps`` shows it;
* the worker's stdin, for a worker started held (``--await-go``): one line,
  :func:`go_line`, or end of input for "nothing to do";
* the worker's stdout, where marker lines (:data:`MARKERS`) stand among its log
  lines; and its exit code (:class:`WorkerExit`).
"""

from __future__ import annotations

import enum

__all__ = ["CONNECTED", "ENV_URL", "MARKERS", "RECYCLE_SOON", "WorkerExit", "go_line", "notice", "parse_go"]

ENV_URL = "SWEEP_WORKER_STORAGE"
"""The environment variable that carries the storage URL to a worker."""

RECYCLE_SOON = "sweep:recycle-soon"
"""Printed (once) when the next trial or two will likely reach a recycle point: the supervisor
then starts the successor, held, so that its start-up overlaps this worker's last trials."""

CONNECTED = "sweep:connected"
"""Printed once the worker has opened the storage and read the study: the storage answers."""

MARKERS = frozenset({RECYCLE_SOON, CONNECTED})


class WorkerExit(enum.IntEnum):
    """A worker's exit codes (a signal's death is ``-signum`` from :mod:`subprocess`)."""

    DONE = 0
    """Nothing left to do: the target, the deadline, or no work for a successor."""
    ERROR = 1
    """An error that another process would meet too (trials keep failing, a refused write)."""
    USER_ERROR = 2
    """The study cannot be worked on as it is (different data, a bad stored spec)."""
    STORAGE = 69
    """The storage could not be reached; try again after a back-off."""
    RECYCLE = 75
    """The worker reached ``worker.max_trials`` or its memory bound: start a fresh one."""
    INTERRUPTED = 130
    """SIGINT: the running trial ended as FAIL ``interrupted``."""
    TERMINATED = 143
    """SIGTERM: the running trial ended as FAIL ``interrupted``."""


def go_line(slot: int) -> str:
    """The line that lets a held worker open the storage as worker ``slot``."""
    return f"go {slot}\n"


def parse_go(line: str) -> tuple[bool, int | None]:
    """``(True, slot)`` for a :func:`go_line` (slot ``None`` if it names none), else ``(False, None)``."""
    words = line.split()
    if not words or words[0] != "go":
        return False, None
    return True, int(words[1]) if len(words) > 1 and words[1].isdigit() else None


_NOTICES = ("was taken over by another worker", "no beat from its worker")


def notice(line: str) -> bool:
    """Whether a worker's line is shown even by ``--quiet``: errors, the storage's comings and goings,
    and trials taken from a worker that was cut off (:mod:`sweep.liveness`)."""
    return line.startswith(("error", "storage")) or any(n in line for n in _NOTICES)
