"""Whether a trial's worker is alive, one rule on every storage, and what a worker does when it was not.

The rule: a RUNNING trial is *stale* once its worker has not beaten for
``worker.grace_period`` seconds. A stale trial is failed and its configuration
queued again (Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`,
up to ``worker.max_retries`` times) by the next worker that looks.

Who judges the beats:

* On a relational storage (SQLite, PostgreSQL, MySQL) Optuna's own heartbeats,
  written by Optuna's thread and judged against the database's clock
  (:func:`optuna.storages.fail_stale_trials`).
* On any other storage (the gRPC proxy of ``sweep proxy``, which carries no
  heartbeats) sweep's own beat: a counter in the trial's system attr
  :data:`BEAT`, which the worker raises every ``worker.heartbeat_interval``
  seconds. Each observer judges it by its own monotonic clock: a counter that
  has not moved for ``grace_period`` seconds since this observer first saw its
  value is stale. No two machines' clocks are ever compared.

The beat also tells a worker at once when its trial was taken from it. A
worker that was cut off (paused, partitioned, its beats lost) for longer than
the grace period finds its trial failed and re-run elsewhere: every write to it
is refused (:class:`optuna.exceptions.UpdateFinishedTrialError`, or Optuna's
``ValueError: Cannot tell a FAIL trial``). The worker then stops training it,
discards its result with one line (:func:`taken_over`), and goes on.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sweep.errors import TrialFailed
from sweep.outage import is_outage

if TYPE_CHECKING:
    import optuna

BEAT = "sweep:beat"
"""Trial system attr: a counter the worker raises every heartbeat interval (judged where Optuna has no heartbeats)."""

log = logging.getLogger("sweep.liveness")


class TakenOver(TrialFailed):
    """This worker's trial was failed by another worker while this one was cut off; its result is discarded."""

    def __init__(self, number: int) -> None:
        self.number = number
        super().__init__(f"trial {number} was taken over by another worker")


KEPT_ON_RETRY = ("verifies",)
"""User attrs a retry takes from the trial it re-runs (what the trial is, not what it recorded)."""


def retry_callback(max_retries: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Optuna's retry of a stale trial, without the records the stale trial's worker wrote.

    The retry is the same configuration (its params, and :data:`KEPT_ON_RETRY`),
    with Optuna's ``failed_trial`` and ``retry_history``; the stale trial's
    partial records (its worker, beats, per-repeat scores, epochs trained) stay
    on the stale trial, so no record of the retry comes from another worker.
    """
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries)

    def call(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in KEPT_ON_RETRY}
        clean.system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith("sweep:")}
        retry(study, clean)

    return call


def optuna_beats(storage: Any) -> bool:
    """Whether Optuna itself records and judges heartbeats on ``storage`` (a relational storage with them on)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return bool(is_heartbeat_enabled(storage))


class Liveness:
    """One worker's side of the rule: it beats for its own trial and reaps the stale trials of others.

    Args:
        study: the study this worker runs trials of.
        interval_s: seconds between beats (``worker.heartbeat_interval``).
        grace_s: seconds without a beat after which a trial is stale (``worker.grace_period``).
        max_retries: how often a stale trial's configuration is queued again (``worker.max_retries``).
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        study: optuna.Study,
        *,
        interval_s: float,
        grace_s: float,
        max_retries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.study = study
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.max_retries = max_retries
        self.clock = clock
        self.own_beats = not optuna_beats(study._storage)
        self._seen: dict[int, tuple[Any, float]] = {}
        self._lost = threading.Event()
        self._mine: int | None = None
        self._lock = threading.Lock()

    def lost(self) -> bool:
        """Whether the trial this worker is running was found taken over (training polls this)."""
        return self._lost.is_set()

    # ------------------------------------------------------------------ reaping

    def reap(self) -> list[int]:
        """Fail the stale RUNNING trials of the study and queue their configurations again; their numbers.

        Safe to call from several workers at once: the storage lets one of them fail a trial.
        """
        import optuna

        running = self.running()
        if self.own_beats:
            with self._lock:
                stale = self._stale(running)
        else:  # Optuna's heartbeats, judged by the database's clock (what fail_stale_trials reads)
            beats: Any = self.study._storage  # a BaseHeartbeat (optuna_beats said so)
            ids = set(beats._get_stale_trial_ids(self.study._study_id))
            stale = [t for t in running if t._trial_id in ids]
        failed = []
        storage = self.study._storage
        for trial in stale:
            try:
                if not storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it, or it just ended
                continue
            failed.append(trial.number)  # this worker failed it: it alone queues the retry and says so
            if self.max_retries > 0:
                retry_callback(self.max_retries)(self.study, storage.get_trial(trial._trial_id))
            log.warning(
                "trial %d: no beat from its worker for %.0f s; marked FAIL%s",
                trial.number,
                self.grace_s,
                " and its configuration queued again" if self.max_retries > 0 else "",
            )
        return sorted(failed)

    def running(self) -> list[optuna.trial.FrozenTrial]:
        """The study's RUNNING trials."""
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def _stale(self, running: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        """The trials whose beat this observer has seen unchanged for longer than the grace period."""
        now = self.clock()
        stale = []
        alive: dict[int, tuple[Any, float]] = {}
        for t in running:
            beat = t.system_attrs.get(BEAT)
            seen = self._seen.get(t._trial_id)
            if seen is None or seen[0] != beat or t._trial_id == self._mine:
                alive[t._trial_id] = (beat, now)
                continue
            alive[t._trial_id] = seen
            if now - seen[1] > self.grace_s:
                stale.append(t)
        self._seen = alive  # trials that are no longer RUNNING are forgotten
        return stale

    # ------------------------------------------------------------------ beating

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        """Beat for ``trial`` from a thread while the block runs, and watch whether it was taken over.

        The same thread reaps the others' stale trials at every beat, so that a dead worker's trial
        is failed and queued again within about ``grace + interval`` seconds even while every other
        worker is training (Optuna alone reaps only when a worker starts a trial).
        """
        self._lost.clear()
        self._mine = trial._trial_id
        stop = threading.Event()
        thread = threading.Thread(
            target=self._beat_loop, args=(trial, stop), name=f"sweep-beat-{trial.number}", daemon=True
        )
        self._beat(trial, 0)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            self._mine = None

    def _beat_loop(self, trial: optuna.Trial, stop: threading.Event) -> None:
        n = 1
        while not stop.wait(self.interval_s):
            if not self._beat(trial, n):
                return
            n += 1
            try:
                self.reap()
            except Exception as exc:  # the reaper tries again at the next beat; training goes on
                log.debug("reaping skipped: %s", type(exc).__name__)

    def _beat(self, trial: optuna.Trial, n: int) -> bool:
        """Write beat ``n``; False once the trial is found finished (taken over): no more beats."""
        import optuna

        try:
            trial.storage.set_trial_system_attr(trial._trial_id, BEAT, n)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._lost.set()
            return False
        except Exception as exc:
            if not is_outage(exc):
                log.debug("beat of trial %d skipped: %s", trial.number, type(exc).__name__)
        return True


def taken_over(study: optuna.Study, number: int) -> str | None:
    """The line a worker prints when trial ``number`` was finished by another worker; None if it was not.

    Called after a write to the trial failed: if the trial is still RUNNING the
    failure had another cause, and the caller raises it.
    """
    trials = study.get_trials(deepcopy=False)
    trial = next((t for t in trials if t.number == number), None)
    if trial is None or not trial.state.is_finished():
        return None
    retries = [t.number for t in trials if (t.system_attrs.get("retry_history") or [None])[-1] == number]
    then = (
        f"its configuration re-runs as trial {retries[0]}"
        if retries
        else f"it ended {trial.state.name} and no retry was queued (worker.max_retries)"
    )
    return (
        f"trial {number} was taken over by another worker while this one was cut off; "
        f"its result is discarded ({then})"
    )
