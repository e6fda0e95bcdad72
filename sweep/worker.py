"""A trial-running process: ``python -m sweep.worker STUDY --target N``.

The supervisor (:mod:`sweep.runner`) starts these and replaces each one after
``worker.max_trials`` trials or ``worker.max_memory_growth_mb`` of RSS growth,
because TensorFlow's memory is not returned between trials even after
``clear_session()``. This process reads everything it needs from the storage
(the URL comes in the environment, never on the command line where ``ps``
shows it): the spec, the data fingerprint, the target.

Its exit codes and the lines it prints for the supervisor are in :mod:`sweep.protocol`.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import os
import signal
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweep import ledger, records
from sweep.allocation import Action, Decision
from sweep.builder import BuilderError
from sweep.errors import FatalError, Interrupted, StorageError, SweepError, TrialFailed
from sweep.liveness import Liveness, TakenOver, taken_over
from sweep.outage import OutageTimeout, gave_up, is_outage, one_line, retry
from sweep.protocol import CONNECTED, ENV_URL, RECYCLE_SOON, WorkerExit, parse_go
from sweep.records import FailReason

if TYPE_CHECKING:
    import optuna

    from sweep.spec import StudySpec


MAX_CONSECUTIVE_FAILURES = 3
POLL_S = 2.0
REFRESH_MIN_S = 30.0

log = logging.getLogger("sweep.worker")


class _Surplus(TrialFailed):
    """This trial was started after the study reached its target (a race between workers)."""


@dataclass
class _Signals:
    """First SIGINT/SIGTERM: stop after ending the current trial as FAIL ``interrupted``; second: exit now."""

    signum: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum  # training polls it before every batch (see Objective.interrupt)

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux ``/proc``; 0.0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def run_worker(
    *,
    signals: _Signals,
    study_name: str,
    url: str,
    target: int | None,
    deadline: float | None,
    threads: int,
    slot: int = 0,
    await_go: bool = False,
) -> int:
    """Run trials until the target, the deadline, or a recycle point; return an exit code.

    With ``await_go`` the process imports what it needs (TensorFlow: seconds)
    and then waits for a line ``go`` on stdin before it touches the storage:
    the supervisor starts it while it creates or checks the study itself.
    End of input instead of ``go`` means there is nothing to do.
    """
    from sweep.train import configure_threads

    configure_threads(threads)  # imports TensorFlow, and sizes its pools before it does any work
    from sweep.devices import ENV_DEVICE, describe
    from sweep.train import prepare_gpus, set_mixed_precision

    assigned = os.environ.get(ENV_DEVICE, "cpu")
    device = describe(assigned, prepare_gpus())  # memory growth on, before any work
    if device != assigned:
        log.warning("%s: TensorFlow sees no GPU; training on the CPU", device.split("(", 1)[1].rstrip(")"))
    from sweep.builder import builder_of
    from sweep.dashboard import artifact_store, refresh_study, write_trial
    from sweep.data import check_fingerprint, data_kwargs, load_dataset
    from sweep.objective import Objective
    from sweep.search import make_pruner, make_sampler, sampler_seed
    from sweep.storage import open_sweep

    if await_go:
        _warm_imports()
        go, given = _go(signals)
        if not go:
            return WorkerExit.DONE
        slot = slot if given is None else given
    study, spec = open_sweep(study_name, url)
    print(CONNECTED, flush=True)
    if spec.training.mixed_precision:
        if device.startswith("gpu:"):
            set_mixed_precision(True)
        else:
            log.warning("training.mixed_precision needs a GPU; this worker trains in float32 on the CPU")
    target = target if target is not None else study.user_attrs.get(records.TARGET)
    dataset = load_dataset(**data_kwargs(spec.data))
    recorded = study.user_attrs.get(records.FINGERPRINT)
    check_fingerprint(dataset, recorded, section=spec.data, study_name=study.study_name)
    builder = builder_of(spec.model)
    if builder is not None:  # a builder this machine lacks, or another version of it: one line, exit 2
        builder.check(study.user_attrs.get(records.BUILDER_FINGERPRINT), study_name=study.study_name)
    base_seed = spec.study.seed
    existing = len(study.get_trials(deepcopy=False))
    # Every process needs its own sampler stream, or processes started together (compose
    # replicas, workers on several machines) would propose the same configurations.
    seed = None if base_seed is None else sampler_seed(base_seed, existing=existing, slot=slot)
    study.sampler = make_sampler(spec, seed=seed)
    study.pruner = make_pruner(spec)
    w = spec.worker
    alive = Liveness(study, interval_s=w.heartbeat_interval, grace_s=w.grace_period, max_retries=w.max_retries)

    me = f"{socket.gethostname()}:{os.getpid()}"

    def before_trial(trial: optuna.Trial) -> None:
        trial.set_user_attr(records.WORKER, me)
        trial.set_user_attr(records.DEVICE, device)
        trials = study.get_trials(deepcopy=False)
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None and any(
            t.user_attrs.get("retry_of") == retry_of and t.number < trial.number for t in trials
        ):
            surplus = FailReason.SURPLUS.reason(f"trial {retry_of} was already queued again")
            records.set_attrs(trial, {records.FAIL_REASON: surplus})
            raise _Surplus(f"trial {retry_of} was queued again by two processes at once")
        verifies = trial.user_attrs.get(ledger.VERIFIES)
        if verifies is not None and retry_of is None and (busy := verified_elsewhere(trial.number, verifies, trials)):
            surplus = FailReason.SURPLUS.reason(f"configuration {verifies} is being trained by trial {busy}")
            records.set_attrs(trial, {records.FAIL_REASON: surplus})
            raise _Surplus(f"configuration {verifies} was queued for verification by two processes at once")
        if target is None:
            return
        ahead = sum(
            1
            for t in trials
            if t.number < trial.number and (records.counts_toward_target(t) or t.state.name == "RUNNING")
        )
        if ahead >= target:
            reason = FailReason.SURPLUS.reason("the study had reached its target")
            records.set_attrs(trial, {records.FAIL_REASON: reason})
            raise _Surplus("the study reached its target while this trial was being created")

    notes = (
        functools.partial(write_trial, spec=spec, store=artifact_store(spec.dashboard.artifacts))
        if spec.dashboard.notes
        else None
    )
    objective = Objective(
        spec,
        dataset,
        before_trial=before_trial,
        interrupt=lambda: signals.signum,
        abandoned=alive.lost,
        on_recorded=notes,
    )
    # What exists now (modules, data) lives as long as the process: keep it out of every later
    # collection, which Keras runs after each repeat (clear_session); with TensorFlow, Optuna and
    # SQLAlchemy loaded such a collection otherwise costs about 0.25 s.
    gc.collect()
    gc.freeze()
    failures = 0
    memory = MemoryBound(limit_mb=spec.worker.max_memory_growth_mb)
    warned = False
    done_here = 0
    next_refresh = 0.0
    while _has_room(study, target=target, deadline=deadline, signals=signals, alive=alive):
        step = objective.db(lambda: allocate(study, spec), "allocating the next trial")
        if step.action is Action.STOP:
            # The budget counts the repeats in flight: wait for them, as for a target, since a
            # repeat whose worker is gone gives its share back once it is failed as stale.
            if objective.db(alive.running, "looking for running trials"):
                objective.db(alive.reap, "looking for stale trials")
                time.sleep(POLL_S)
                continue
            log.info("%s", step.reason)
            break
        if step.action is Action.WAIT:  # for a verification in flight: its worker may be gone
            objective.db(alive.reap, "looking for stale trials")
            time.sleep(POLL_S)
            continue
        finished: list[optuna.trial.FrozenTrial] = []
        objective.last = objective.current = None
        if alive.own_beats:  # where Optuna judges heartbeats, it reaps before every trial itself
            objective.db(alive.reap, "looking for stale trials")
        try:
            study.optimize(
                _guarded(objective, signals, alive),
                n_trials=1,
                catch=(TrialFailed,),
                callbacks=[functools.partial(_collect, finished), _log_trial],
                gc_after_trial=False,
            )
        except Exception as exc:
            if is_outage(exc):  # Optuna's own step (ask, tell) met an outage: wait, then finish the trial
                if (timed_out := gave_up(exc)) is not None:
                    raise StorageError(str(timed_out)) from None
                finished += _settle(study, objective.last, timeout_s=spec.worker.outage_timeout)
            elif not _discarded(study, objective, exc):
                raise
        if spec.dashboard.notes and finished and time.monotonic() >= next_refresh:
            # The ranking note costs more as the study grows: refresh it at most twice a minute
            # and at most 1% of the time (it is refreshed once more when the worker ends).
            next_refresh = time.monotonic() + max(REFRESH_MIN_S, 100 * refresh_study(study, url=url))
        signals.check()
        done_here += 1
        trial = finished[-1] if finished else None
        if trial is not None and trial.state.name == "FAIL" and not records.counts_toward_target(trial):
            reason = records.trial_attr(trial, records.FAIL_REASON, "unknown")
            if FailReason.of(reason) is not FailReason.SURPLUS:
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise FatalError(
                        f"{failures} trials in a row failed; the last (trial {trial.number}): {reason}"
                    )
        else:
            failures = 0
        memory.record(rss_mb())
        if not warned and memory.soon(max_trials=spec.worker.max_trials) and work_after_two_more(study, target):
            print(RECYCLE_SOON, flush=True)
            warned = True
        if done_here >= spec.worker.max_trials or memory.over():
            if not _has_room(study, target=target, deadline=deadline, signals=signals, alive=alive, wait=False):
                break  # nothing left to do: no point in a fresh process
            log.info(
                "recycling worker after %d trials (RSS %.0f MB, %+.0f MB)", done_here, memory.ends[-1], memory.growth
            )
            return WorkerExit.RECYCLE
    if spec.dashboard.notes and done_here:
        refresh_study(study, url=url)
    return WorkerExit.DONE


def _warm_imports() -> None:
    """What a default sweep imports at its first trial, imported while the worker waits anyway."""
    import importlib

    for name in ("sklearn.model_selection", "sklearn.datasets", "optuna_dashboard", "matplotlib.figure"):
        try:
            importlib.import_module(name)
        except ImportError:  # only ever a cost moved earlier: a missing one fails where it is used
            continue


def _go(signals: _Signals) -> tuple[bool, int | None]:
    """Wait for ``go [SLOT]`` on stdin: (True, SLOT or None), or (False, None) on end of input.

    Raises Interrupted on SIGINT/SIGTERM.
    """
    import select

    while True:
        signals.check()
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if ready:
            return parse_go(sys.stdin.readline())


def work_after_two_more(study: optuna.Study, target: int | None) -> bool:
    """Whether trials will be left for a successor after every running worker's next two trials.

    A successor started for nothing costs a core seconds of start-up while the others train.
    """
    if target is None:
        return True
    counted = records.tally(study.get_trials(deepcopy=False))
    return target - counted.done - counted.running > 2 * max(1, counted.running)


@dataclass
class MemoryBound:
    """A worker's RSS at the end of each trial, and when it must leave to stay within its bound.

    The baseline is the end of the first trial (TensorFlow has warmed up by
    then). The next trial is expected to grow the process by as much as the
    largest single trial did so far (or the mean rate, if larger): trials of
    different model sizes grow it unevenly, and an average lets one large
    trial overshoot. So no trial's end lies more than ``limit_mb`` above the
    baseline unless one trial grows by more than every trial before it.
    """

    limit_mb: float
    ends: list[float] = field(default_factory=list)

    def record(self, rss: float) -> None:
        self.ends.append(rss)

    @property
    def growth(self) -> float:
        return self.ends[-1] - self.ends[0] if self.ends else 0.0

    @property
    def step(self) -> float:
        """The growth expected of the next trial."""
        if len(self.ends) < 2:
            return 0.0
        steps = [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]
        return max(0.0, max(steps), self.growth / len(steps))

    def over(self) -> bool:
        """Whether the growth is past the limit, or the next trial would likely take it there."""
        return self.growth > self.limit_mb or self.growth + self.step > self.limit_mb

    def soon(self, *, max_trials: int) -> bool:
        """Whether the next two trials will likely reach ``max_trials`` or the limit (a successor may start)."""
        return len(self.ends) + 2 >= max_trials or self.growth + 2 * self.step > self.limit_mb


def _settle(
    study: optuna.Study, last: tuple[int, str, Any] | None, *, timeout_s: float
) -> list[optuna.trial.FrozenTrial]:
    """After an outage inside Optuna's own step: wait for the storage, then tell the trial's result.

    The objective had finished the trial (its curves and summary are stored);
    only its final state was lost. Without a result (the outage came while the
    trial was being created) nothing is told: a trial left RUNNING stops sending
    heartbeats and is failed and retried as for a dead worker.
    """
    import optuna

    try:
        trials = retry(lambda: study.get_trials(deepcopy=False), timeout_s=timeout_s, what="finishing a trial")
    except OutageTimeout as exc:
        raise StorageError(str(exc)) from None
    if last is None:
        return []
    number, state, value = last
    trial = next((t for t in trials if t.number == number), None)
    if trial is None:
        return []
    if trial.state.is_finished():  # not by this worker, whose result was never told: taken over meanwhile
        log.warning("%s", taken_over(study, number))
        return []
    told = retry(
        lambda: study.tell(number, value, state=optuna.trial.TrialState[state], skip_if_finished=True)
        if state == "COMPLETE"
        else study.tell(number, state=optuna.trial.TrialState[state], skip_if_finished=True),
        timeout_s=timeout_s,
        what=f"finishing trial {number}",
    )
    _log_trial(study, told)
    return [told]


def _storage_errors() -> tuple[type[BaseException], ...]:
    """Errors raised by the storage layer (see :func:`is_outage` for which mean it is unreachable)."""
    import grpc  # type: ignore[import-untyped]
    import optuna
    from sqlalchemy.exc import DBAPIError

    return (DBAPIError, optuna.exceptions.StorageInternalError, grpc.RpcError)  # the last: through sweep proxy


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    attrs = trial.user_attrs
    seconds = attrs.get("train_seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, int | float) else ""
    state = trial.state.name
    if state == "COMPLETE":
        detail = f"score {attrs.get('score', float('nan')):.4g}, {attrs.get('diagnosis', '?')}"
    elif state == "PRUNED":
        detail = str(records.trial_attr(trial, records.STOPPED) or f"at epoch {attrs.get('pruned_at_epoch', '?')}")
    else:
        detail = str(records.trial_attr(trial, records.FAIL_REASON, "unknown reason"))
    log.info("trial %d %s: %s%s", trial.number, state.lower(), detail, took)


def _collect(into: list[optuna.trial.FrozenTrial], study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    into.append(trial)


def _failure_note(trial: optuna.Trial, reason: str) -> None:
    from sweep.dashboard import write_failure_note

    write_failure_note(trial, reason)


def _discarded(study: optuna.Study, objective: Any, exc: Exception) -> bool:
    """Whether ``exc`` out of Optuna's step came from a trial taken over by another worker; if so, say so.

    Judged by cause, from the storage: the trial this worker was running is
    finished, and this worker did not finish it (Optuna then raises
    ``UpdateFinishedTrialError`` or ``ValueError: Cannot tell a FAIL trial``).
    A sweep error (an interruption, say) is never one: this worker ended that trial itself.
    """
    number = objective.current
    if number is None or (isinstance(exc, SweepError) and not isinstance(exc, TakenOver)):
        return False
    line = objective.db(lambda: taken_over(study, number), f"reading trial {number}")
    if line is None:
        return False
    log.warning("%s", line)
    return True


def _guarded(objective: Any, signals: _Signals, alive: Liveness) -> Any:
    """Make the objective interruptible and beating, and record the reason of an unexpected error on the trial.

    A write refused because the trial is finished means another worker took it
    over: nothing more is written to it (:class:`TakenOver`).
    """
    import optuna

    def run(trial: optuna.Trial) -> Any:
        with alive.beating(trial):
            return guarded(trial)

    def guarded(trial: optuna.Trial) -> Any:
        try:
            signals.check()
            return objective(trial)
        except (TakenOver, optuna.exceptions.UpdateFinishedTrialError):
            raise TakenOver(trial.number) from None
        except Interrupted:
            records.set_attrs(trial, {records.FAIL_REASON: FailReason.INTERRUPTED.reason()})
            _failure_note(trial, "Interrupted (SIGINT/SIGTERM) while training; its configuration is "
                          "queued again when the study is resumed.")
            raise
        except (TrialFailed, optuna.TrialPruned, OutageTimeout):
            raise
        except BuilderError as exc:  # the user's builder: one line, exit 2, the traceback kept on the trial
            records.set_attrs(trial, {records.FAIL_REASON: FailReason.ERROR.reason(str(exc))[:500]})
            if exc.details:
                trial.storage.set_trial_system_attr(trial._trial_id, records.TRACEBACK, exc.details[-20000:])
            _failure_note(trial, f"Error: {exc}\n\n```\n{exc.details}\n```" if exc.details else f"Error: {exc}")
            raise
        except _storage_errors() as exc:
            if is_outage(exc):
                raise
            detail = f"storage refused a write: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            reason = FailReason.ERROR.reason(detail)[:500]
            records.set_attrs(trial, {records.FAIL_REASON: reason})
            raise TrialFailed(reason) from exc
        except SweepError as exc:
            records.set_attrs(trial, {records.FAIL_REASON: FailReason.ERROR.reason(str(exc))})
            _failure_note(trial, f"Error: {exc}")
            raise TrialFailed(str(exc)) from exc
        except Exception as exc:
            reason = FailReason.ERROR.reason(f"{type(exc).__name__}: {exc}")[:500]
            records.set_attrs(trial, {records.FAIL_REASON: reason})
            _failure_note(trial, reason)
            raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc

    return run


def _has_room(
    study: optuna.Study,
    *,
    target: int | None,
    deadline: float | None,
    signals: _Signals,
    alive: Liveness,
    wait: bool = True,
) -> bool:
    """Wait until a trial may start; False once the target or the deadline is reached.

    While it waits for the running trials, it fails those whose workers are gone (:meth:`Liveness.reap`).
    """
    while True:
        signals.check()
        if deadline is not None and time.time() >= deadline:
            return False
        if target is None:
            return True
        counted = records.tally(study.get_trials(deepcopy=False))
        if counted.done >= target:
            return False
        if counted.done + counted.running < target or not wait:
            return True
        alive.reap()
        time.sleep(POLL_S)


def verified_elsewhere(number: int, key: int, trials: list[optuna.trial.FrozenTrial]) -> int | None:
    """An earlier running trial that trains configuration ``key`` (two workers queued the same repeat), if any."""
    for t in trials:
        if t.number < number and t.state.name == "RUNNING" and ledger.config_key(t) == key:
            return t.number
    return None


def allocate(study: optuna.Study, spec: StudySpec) -> Decision:
    """The allocation's next step for this worker (:func:`sweep.allocation.next_run`), from the storage.

    A repeat of an earlier configuration is queued as a trial with its
    parameters and a ``verifies`` attr, which the next ``optimize`` takes.
    """
    from sweep.allocation import next_run

    seen = ledger.observe(study.get_trials(deepcopy=False), spec=spec)
    step = next_run(seen.configs, ledger.plan_of(spec), used=seen.used)
    if step.action is Action.REPEAT and step.key is not None:
        study.enqueue_trial(dict(seen.records[step.key].params), user_attrs={ledger.VERIFIES: step.key})
        log.info("%s: queued repeat %s of trial %d", step.reason, step.repeat, step.key)
    return step


def _die_with_parent() -> None:
    """Linux: get SIGTERM if the supervisor dies, so no worker outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    signals = _Signals()
    signals.install()
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m sweep.worker")
    parser.add_argument("study")
    parser.add_argument("--target", type=int)
    parser.add_argument("--deadline", type=float)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--await-go", action="store_true", help="import, then wait for 'go' on stdin")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    log.setLevel(logging.INFO)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = os.environ.get(ENV_URL)
    if not url:
        print(f"error: {ENV_URL} is not set", file=sys.stderr)
        return WorkerExit.USER_ERROR
    try:
        return run_worker(
            signals=signals,
            study_name=args.study,
            url=url,
            target=args.target,
            deadline=args.deadline,
            threads=args.threads,
            slot=args.slot,
            await_go=args.await_go,
        )
    except Interrupted as exc:
        return exc.exit_code
    except StorageError as exc:
        print(f"storage unavailable: {exc}", file=sys.stderr)
        return WorkerExit.STORAGE
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except _storage_errors() as exc:
        from sweep.storage import mask, scrub

        reason = scrub(one_line(exc), url)
        if not is_outage(exc):
            print(f"error: the storage {mask(url)} refused an operation: {reason}", file=sys.stderr)
            return WorkerExit.ERROR
        print(f"storage unavailable ({mask(url)}): {reason}", file=sys.stderr)
        return WorkerExit.STORAGE


def exit_now(code: int) -> None:
    """Leave without the interpreter's teardown of TensorFlow (about a second, paid at every recycle).

    Everything worth keeping is already committed to the storage; the output
    streams are flushed here.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
