"""The supervisor's decisions, one path at a time: no process, no clock, no storage."""

from __future__ import annotations

import signal

import pytest

from sweep.protocol import WorkerExit, go_line, parse_go
from sweep.supervisor import Connected, Decision, Exited, Kind, Policy, State, decide

POLICY = Policy(crash_limit=3, crash_window_s=600.0, outage_timeout_s=300.0, backoff_s=(1.0, 2.0, 4.0))


def test_success_retires_the_slot() -> None:
    decision, state = decide(Exited(0, WorkerExit.DONE, at=10.0), State(), POLICY)
    assert decision == Decision(Kind.RETIRE)
    assert state == State()


def test_recycle_replaces_the_worker() -> None:
    decision, _ = decide(Exited(1, WorkerExit.RECYCLE, at=10.0), State(), POLICY)
    assert decision == Decision(Kind.REPLACE)


def test_a_refused_study_stops_the_sweep_as_a_user_error() -> None:
    decision, _ = decide(Exited(0, WorkerExit.USER_ERROR, at=1.0, error="data fingerprint differs"), State(), POLICY)
    assert decision == Decision(Kind.STOP_USER_ERROR, message="data fingerprint differs")
    decision, _ = decide(Exited(3, WorkerExit.USER_ERROR, at=1.0), State(), POLICY)
    assert decision == Decision(Kind.STOP_USER_ERROR, message="worker 3 refused the study")


def test_an_error_every_process_would_meet_stops_the_sweep() -> None:
    decision, _ = decide(Exited(0, WorkerExit.ERROR, at=1.0, error="3 trials in a row failed"), State(), POLICY)
    assert decision == Decision(Kind.STOP_FATAL, message="3 trials in a row failed")


def test_a_crash_restarts_the_slot_with_one_line() -> None:
    decision, state = decide(Exited(2, -signal.SIGKILL, at=100.0), State(), POLICY)
    assert decision == Decision(Kind.START, message="worker 2 crashed (killed by signal 9); starting it again")
    assert state.crashes == {2: (100.0,)}


def test_the_crash_budget_is_per_slot_and_stops_at_the_limit() -> None:
    state = State()
    for at in (100.0, 200.0):
        decision, state = decide(Exited(0, -signal.SIGKILL, at=at), state, POLICY)
        assert decision is not None and decision.kind is Kind.START
    decision, state = decide(Exited(1, 139, at=250.0), state, POLICY)  # another slot: its own budget
    assert decision is not None and decision.kind is Kind.START
    decision, state = decide(Exited(0, -signal.SIGKILL, at=300.0), state, POLICY)
    assert decision == Decision(
        Kind.STOP_FATAL,
        message="worker 0 crashed 3 times within 10 minutes (last: killed by signal 9); giving up",
    )


def test_the_crash_budget_recovers_over_time() -> None:
    """One out-of-memory kill a day for a week never stops the sweep."""
    state = State()
    for day in range(7):
        decision, state = decide(Exited(0, -signal.SIGKILL, at=day * 86_400.0), state, POLICY)
        assert decision is not None and decision.kind is Kind.START, day
        assert len(state.crashes[0]) == 1  # older crashes left the window


def test_an_outage_backs_off_then_gives_up_after_the_timeout() -> None:
    state = State()
    delays = []
    for at in (0.0, 5.0, 20.0, 60.0):
        decision, state = decide(Exited(0, WorkerExit.STORAGE, at=at), state, POLICY)
        assert decision is not None and decision.kind is Kind.START_LATER
        delays.append(decision.delay)
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert decision.message == "storage unreachable; worker 0 starts again in 4 s"
    assert state.outage_since == 0.0
    decision, state = decide(Exited(1, WorkerExit.STORAGE, at=301.0), state, POLICY)
    assert decision == Decision(
        Kind.STOP_FATAL,
        message="the storage has been unreachable for over 300 s (worker.outage_timeout); giving up",
    )


def test_a_worker_that_reaches_the_storage_ends_the_outage() -> None:
    _, state = decide(Exited(0, WorkerExit.STORAGE, at=0.0), State(), POLICY)
    _, state = decide(Connected(0, at=250.0), state, POLICY)
    assert state.outage_since is None and state.outage_tries == 0
    decision, state = decide(Exited(0, WorkerExit.STORAGE, at=400.0), state, POLICY)  # a new outage
    assert decision is not None and decision.kind is Kind.START_LATER and decision.delay == 1.0


def test_a_crash_does_not_end_an_outage() -> None:
    """Only a worker that reached the storage says it is back (the old clock reset on any exit)."""
    _, state = decide(Exited(0, WorkerExit.STORAGE, at=0.0), State(), POLICY)
    _, state = decide(Exited(1, -signal.SIGKILL, at=100.0), state, POLICY)
    assert state.outage_since == 0.0
    decision, _ = decide(Exited(0, WorkerExit.STORAGE, at=301.0), state, POLICY)
    assert decision is not None and decision.kind is Kind.STOP_FATAL


def test_a_signal_the_sweep_did_not_send_counts_as_a_crash() -> None:
    decision, _ = decide(Exited(0, WorkerExit.TERMINATED, at=1.0), State(), POLICY)
    assert decision == Decision(Kind.START, message="worker 0 crashed (exit code 143); starting it again")


@pytest.mark.parametrize("slot", [0, 7, 123])
def test_go_lines_round_trip(slot: int) -> None:
    assert parse_go(go_line(slot)) == (True, slot)
    assert parse_go("go\n") == (True, None)
    assert parse_go("") == (False, None)
    assert parse_go("stop 1\n") == (False, None)
