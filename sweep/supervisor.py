"""What ``sweep run`` does when a worker process exits: a pure function of (event, state).

:func:`decide` holds every rule; :func:`sweep.runner.supervise` only applies its
decisions (start, start later, replace, let go, stop). Nothing here touches a
process, a clock or the storage, so every path is a unit test.

The rules:

* a worker that **recycles** (exit 75) is replaced at once;
* one that is **done** (exit 0) is let go;
* one that **refuses the study** (exit 2) stops the sweep as a user error;
* one that meets an **error another process would meet too** (exit 1) stops the sweep;
* one that finds the **storage unreachable** (exit 69) is started again after a
  back-off (1 s, 2 s, 4 s ... up to 60 s); once the storage has been unreachable for
  ``outage_timeout_s`` (``worker.outage_timeout``) without a worker reaching it, the
  sweep stops. A worker that reaches the storage (its :data:`~sweep.protocol.CONNECTED`
  line), or that recycles or finishes, ends the outage;
* any other end (killed by the kernel's out-of-memory killer, a signal the sweep did
  not send, a crash of the interpreter) is a **crash**: the slot is started again,
  unless it crashed ``crash_limit`` times within ``crash_window_s``. The budget is
  per slot and recovers over time, so a week-long sweep survives one out-of-memory
  kill a day.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from sweep.protocol import WorkerExit

__all__ = ["Connected", "Decision", "Exited", "Kind", "Policy", "State", "decide"]


@dataclass(frozen=True)
class Policy:
    """The supervisor's limits."""

    crash_limit: int = 3
    """Crashes of one slot within ``crash_window_s`` that stop the sweep."""
    crash_window_s: float = 600.0
    outage_timeout_s: float = 600.0
    """How long the storage may stay unreachable before the sweep gives up."""
    backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
    fork_workers: bool = True
    """Fork CPU workers from one process that has imported TensorFlow (:mod:`sweep.zygote`)."""


@dataclass(frozen=True)
class State:
    """What the supervisor remembers between events."""

    crashes: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    """Per slot, the times of its crashes within the window."""
    outage_since: float | None = None
    outage_tries: int = 0


@dataclass(frozen=True)
class Exited:
    """Worker ``slot`` exited with ``code`` at time ``at``; ``error`` is its last ``error:`` line."""

    slot: int
    code: int
    at: float
    error: str = ""


@dataclass(frozen=True)
class Connected:
    """Worker ``slot`` reached the storage at time ``at``."""

    slot: int
    at: float


Event = Exited | Connected


class Kind(enum.Enum):
    START = "start"  # a fresh worker in the slot now
    START_LATER = "start_later"  # a fresh worker after ``delay`` seconds
    REPLACE = "replace"  # recycled: the spare if one is ready, else a fresh worker
    RETIRE = "retire"  # nothing left for this slot
    STOP_USER_ERROR = "stop_user_error"  # stop every worker; exit 2 with ``message``
    STOP_FATAL = "stop_fatal"  # stop every worker; exit 1 with ``message``


@dataclass(frozen=True)
class Decision:
    kind: Kind
    delay: float = 0.0
    message: str = ""
    """For a stop: the one line to print. For a restart: the one line to log, or empty."""


def decide(event: Event, state: State, policy: Policy = Policy()) -> tuple[Decision | None, State]:
    """The supervisor's response to ``event`` and its next state (``None``: nothing to do)."""
    if isinstance(event, Connected):
        return None, replace(state, outage_since=None, outage_tries=0)
    code, slot, at = event.code, event.slot, event.at
    if code in (WorkerExit.RECYCLE, WorkerExit.DONE):
        calm = replace(state, outage_since=None, outage_tries=0)
        return Decision(Kind.REPLACE if code == WorkerExit.RECYCLE else Kind.RETIRE), calm
    if code == WorkerExit.USER_ERROR:
        return Decision(Kind.STOP_USER_ERROR, message=event.error or f"worker {slot} refused the study"), state
    if code == WorkerExit.ERROR:
        return Decision(Kind.STOP_FATAL, message=event.error or f"worker {slot} exited with code 1"), state
    if code == WorkerExit.STORAGE:
        since = at if state.outage_since is None else state.outage_since
        if at - since > policy.outage_timeout_s:
            return Decision(
                Kind.STOP_FATAL,
                message=f"the storage has been unreachable for over {policy.outage_timeout_s:g} s "
                "(worker.outage_timeout); giving up",
            ), replace(state, outage_since=since)
        delay = policy.backoff_s[min(state.outage_tries, len(policy.backoff_s) - 1)]
        line = f"storage unreachable; worker {slot} starts again in {delay:g} s"
        return Decision(Kind.START_LATER, delay=delay, message=line), replace(
            state, outage_since=since, outage_tries=state.outage_tries + 1
        )
    recent = (*(t for t in state.crashes.get(slot, ()) if at - t < policy.crash_window_s), at)
    crashes = {**state.crashes, slot: recent}
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    if len(recent) >= policy.crash_limit:
        minutes = policy.crash_window_s / 60
        last = f"{how}: {event.error}" if event.error else how
        return Decision(
            Kind.STOP_FATAL,
            message=f"worker {slot} crashed {len(recent)} times within {minutes:g} minutes (last: {last}); giving up",
        ), replace(state, crashes=crashes)
    return Decision(Kind.START, message=f"worker {slot} crashed ({how}); starting it again"), replace(
        state, crashes=crashes
    )
