"""A chaos soak of distributed mode: ``python -m benchmarks.soak --hosts 3 --workers-per-host 2 --faults-per-kind 20``.

Several hosts (network namespaces on a private bridge, :mod:`tests.netns`)
each run ``sweep worker STUDY --workers W`` on one study in a private
PostgreSQL server (:mod:`tests.pgserver`), directly or through ``sweep proxy``
(``--proxy``); there is no coordinator. While they work, faults of five kinds
are injected one at a time, in a random order at random moments (a seeded
generator; the seed is printed). Each waits for the one before it to recover
(up to ``settle_s``) and then a random gap, so that recovery times stay apart,
but is due, whatever the waits, once its share of the first three quarters of
the target is done, so that every fault comes before the study ends:

``kill-worker``   SIGKILL one worker process that is running a trial;
``stop-worker``   SIGSTOP one such worker for longer than the grace period, then SIGCONT;
``cut-host``      unplug a host that is running trials from the bridge (what it sends is lost
                  without an error) for longer than the grace period, then plug it in again;
``restart-db``    stop PostgreSQL (``pg_ctl stop -m fast`` or ``immediate``), start it again;
``kill-host``     SIGKILL every process of such a host, then start its ``sweep worker`` again.

What is measured, from the moment of the fault, is read from the storage (the
trials' start and end times, written by the workers and the proxy on this one
machine's clock). The trials a fault *hits* are those running on the worker or
host at that moment (for a database restart: every running trial). *Failed
after*: until the last hit trial that ended FAIL was marked so. *Recovery*:

* a killed or stopped worker: until the trial it was running is FAIL and its
  retry (the trial whose system attr ``retry_history`` ends with it) has started,
  or until that trial finished after all (a stopped worker resumed in time);
* a cut or killed host: until every trial it was running has recovered as above
  and the host has started a trial of its own again after the cable was back or
  its restart (one that it finished: a trial only started may still carry the
  ``worker`` attr that a retry inherits);
* a database restart: until the first trial that ends after the server is back.

A fault whose recovery the study's end came before is counted as not recovered.
At the end the database is read directly and the invariants are checked (see
:func:`check`); a violation names the trial and the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.netns import Host, Network
    from tests.pgserver import Server

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.5
HOST_EXIT_WAIT_S = 120.0
"""How long a host may keep running once the study has reached its target."""
SPAN = 0.75
"""The faults are spread over this part of the target: each is due by its share of it (see :meth:`Soak.run_faults`)."""
TRIALS_PER_FAULT = 6.0
"""The default target: this many trials per planned fault (3x2 workers on 2 cores: about a fault every 15 s,
25 trials a minute)."""


class Fault(str, enum.Enum):
    KILL_WORKER = "kill-worker"
    STOP_WORKER = "stop-worker"
    CUT_HOST = "cut-host"
    RESTART_DB = "restart-db"
    KILL_HOST = "kill-host"


@dataclass(frozen=True)
class SoakConfig:
    hosts: int = 3
    workers_per_host: int = 2
    faults_per_kind: int = 20
    n_trials: int | None = None
    """The study's target; default :data:`TRIALS_PER_FAULT` per planned fault."""
    seed: int | None = None
    proxy: bool = False
    kinds: tuple[Fault, ...] = tuple(Fault)
    epochs: int = 2
    heartbeat_interval: int = 1
    grace_period: int = 5
    gap_s: tuple[float, float] = (1.0, 6.0)
    """Seconds between the end of one fault and the next, drawn uniformly."""
    hold_s: tuple[float, float] = (2.0, 4.0)
    """How much longer than the grace period a worker stays stopped, or a host cut off."""
    pause_s: tuple[float, float] = (2.0, 5.0)
    """How long a killed host stays down, and the database (plus its start-up)."""
    settle_s: float = 60.0
    """How long to wait for the faults so far to recover before the next gap (recovery times stay apart)."""
    timeout_s: float = 3600.0
    logs: Path | None = None
    """Keep the hosts' output here (default: a temporary folder, removed)."""
    quiet: bool = False
    """``sweep worker -q``: only errors, outages and takeovers are printed, so a worker's traceback is not
    seen, and the host reads no progress. Off by default, as in the compose and Kubernetes deployments."""

    @property
    def target(self) -> int:
        planned = self.faults_per_kind * len(self.kinds)
        return self.n_trials if self.n_trials is not None else max(20, round(planned * TRIALS_PER_FAULT))

    def study_extra(self) -> str:
        return (
            f"\n[worker]\nheartbeat_interval = {self.heartbeat_interval}\ngrace_period = {self.grace_period}\n"
            "max_retries = 50\noutage_timeout = 120\ncrash_limit = 1000\n"
        )


@dataclass
class Injected:
    kind: Fault
    at: float
    """``time.time()`` when it was injected."""
    host: str = ""
    detail: str = ""
    trials: list[int] = field(default_factory=list)
    """The trials it hit (running on the worker or host at that moment)."""
    back: float | None = None
    """When the host or server was back (cable in, host restarted, server started)."""
    recovered_s: float | None = None
    failed: int = 0
    """How many of ``trials`` ended FAIL (their work discarded, their configuration run again)."""
    failed_s: float | None = None
    """From the fault until the last of those was marked FAIL (the liveness rule's detection time)."""


@dataclass
class Trial:
    trial_id: int
    number: int
    state: str
    start: datetime | None
    complete: datetime | None
    user: dict[str, Any]
    system: dict[str, Any]
    values: list[float] = field(default_factory=list)
    steps: dict[int, float] = field(default_factory=dict)
    params: dict[str, float] = field(default_factory=dict)
    """Optuna's internal representation of each parameter (a choice's index)."""

    @property
    def parent(self) -> int | None:
        """The trial this one retries: Optuna's heartbeat retry, else a requeued interrupted trial."""
        history = self.system.get("retry_history")
        if isinstance(history, list) and history:
            return int(history[-1])
        retry_of = self.user.get("retry_of")
        return int(retry_of) if isinstance(retry_of, int) else None

    @property
    def counted(self) -> bool:
        from sweep.records import counts

        return counts(self.state, self.user.get("fail_reason"))

    @property
    def worker(self) -> tuple[str, int] | None:
        name, _, pid = str(self.user.get("worker", "")).rpartition(":")
        return (name, int(pid)) if name and pid.isdigit() else None

    def describe(self) -> str:
        reason = self.user.get("fail_reason")
        where = self.user.get("worker", "no worker attr")
        return f"trial {self.number} ({self.state}{f': {reason}' if reason else ''}; {where})"


# --------------------------------------------------------------------------- reading the storage

_VALUE = {"FINITE": None, "INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


def _number(value: Any, kind: Any) -> float:
    special = _VALUE.get(str(kind).rsplit(".", 1)[-1])
    return float(value) if special is None else special


def read_trials(engine: Any, study: str, *, full: bool = False) -> dict[int, Trial]:
    """The study's trials by number; ``full`` adds every attr, the values and the intermediate values."""
    import sqlalchemy as sa

    some = "" if full else " AND a.key IN ('worker', 'fail_reason', 'retry_of')"
    some_system = "" if full else " AND a.key IN ('failed_trial', 'retry_history')"
    mine = "t.study_id = (SELECT study_id FROM studies WHERE study_name = :s)"
    # One snapshot for every query: a trial created between two of them would have attrs but no row.
    with engine.connect() as plain, plain.execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        rows = conn.execute(sa.text(f"SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete "
                                    f"FROM trials t WHERE {mine}"), {"s": study}).all()  # fmt: skip
        trials = {r[0]: Trial(r[0], r[1], str(r[2]).rsplit(".", 1)[-1], r[3], r[4], {}, {}) for r in rows}
        for table, into in (("trial_user_attributes", "user"), ("trial_system_attributes", "system")):
            keys = some if into == "user" else some_system
            query = f"SELECT a.trial_id, a.key, a.value_json FROM {table} a JOIN trials t USING (trial_id) WHERE {mine}"
            for tid, key, raw in conn.execute(sa.text(query + keys), {"s": study}):
                getattr(trials[tid], into)[key] = json.loads(raw)
        if full:
            values = "SELECT v.trial_id, v.value, v.value_type FROM trial_values v JOIN trials t USING (trial_id)"
            for tid, value, kind in conn.execute(sa.text(f"{values} WHERE {mine}"), {"s": study}):
                trials[tid].values.append(_number(value, kind))
            steps = ("SELECT v.trial_id, v.step, v.intermediate_value, v.intermediate_value_type "
                     "FROM trial_intermediate_values v JOIN trials t USING (trial_id)")  # fmt: skip
            for tid, step, value, kind in conn.execute(sa.text(f"{steps} WHERE {mine}"), {"s": study}):
                trials[tid].steps[step] = _number(value, kind)
            params = "SELECT p.trial_id, p.param_name, p.param_value FROM trial_params p JOIN trials t USING (trial_id)"
            for tid, name, value in conn.execute(sa.text(f"{params} WHERE {mine}"), {"s": study}):
                trials[tid].params[name] = value
    return {t.number: t for t in trials.values()}


def _children(trials: dict[int, Trial]) -> dict[int, list[Trial]]:
    out: dict[int, list[Trial]] = {}
    for t in trials.values():
        if t.parent is not None:
            out.setdefault(t.parent, []).append(t)
    return out


def settled_at(number: int, trials: dict[int, Trial], children: dict[int, list[Trial]]) -> datetime | None:
    """When trial ``number`` stopped needing its worker: it finished, or it failed and its retry started."""
    t = trials.get(number)
    if t is None or t.state in ("RUNNING", "WAITING"):
        return None
    if t.state != "FAIL" or t.counted:
        return t.complete
    started = [c.start for c in children.get(number, []) if c.state != "WAITING" and c.start is not None]
    return min(started) if started else None


# --------------------------------------------------------------------------- the hosts


@dataclass
class HostRun:
    """One host's ``sweep worker`` and what the soak saw of it."""

    host: Host
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    down: bool = False
    """Killed by a fault; started again by it."""
    exits: list[tuple[float, int]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    workers_seen: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.host.namespace

    def start(self, study: str, workers: int, env: dict[str, str], *, quiet: bool = False) -> None:
        cmd = [sys.executable, "-m", "sweep", "worker", study, "--workers", str(workers), *(["-q"] if quiet else [])]
        with self.log.open("ab") as out:
            out.write(f"--- started at {time.time():.1f}\n".encode())
            self.proc = subprocess.Popen(self.host.command(cmd), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.down = False

    def workers(self) -> list[int]:
        """The live ``sweep.worker`` processes of this host (each one is remembered)."""
        found = []
        for pid in self.host.pids():
            try:
                # A forked worker's title is one string: "python -m sweep.worker STUDY ..."
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
            except OSError:
                continue
            if b"sweep.worker" in argv:
                found.append(pid)
        self.workers_seen.update(found)
        return found

    def tail(self, lines: int = 3) -> str:
        """The last lines of its output, progress bars left out."""
        text = self.log.read_text(errors="replace").strip().splitlines() if self.log.exists() else []
        return " | ".join([x for x in text if "━" not in x][-lines:])

    def why(self) -> str:
        """Why its last ``sweep worker`` ended: its last error line, and its workers' exceptions."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        run = text[text.rfind("--- started at") :]
        errors = [x for x in run.splitlines() if x.startswith("error")]
        raised = list(dict.fromkeys(_exceptions(run)))
        return "; ".join([*errors[-1:], *(f"raised {e}" for e in raised)]) or self.tail()


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------- the soak


class Soak:
    """The running soak: hosts, server, fault injection and the storage as last read."""

    def __init__(self, config: SoakConfig, *, net: Network, server: Server, url: str, study: str, folder: Path,
                 seed: int, log: Callable[[str], None]) -> None:  # fmt: skip
        import sqlalchemy as sa

        self.config, self.net, self.server, self.study, self.log = config, net, server, study, log
        self.rng = random.Random(seed)
        self.engine = sa.create_engine(server.url, pool_pre_ping=True, connect_args={"connect_timeout": 3})
        env = {**os.environ, "SWEEP_STORAGE": url, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
               "COLUMNS": "200"}  # fmt: skip
        self.env = env
        self.hosts = [HostRun(host=h, log=folder / f"{h.namespace}.log") for h in net.hosts]
        self.injected: list[Injected] = []
        self.trials: dict[int, Trial] = {}
        self.started = time.time()
        self.done_at: float | None = None
        self.restart_at: dict[str, float] = {}

    # ----- watching

    def done(self) -> int:
        return sum(t.counted for t in self.trials.values())

    def poll(self) -> None:
        from sqlalchemy.exc import DBAPIError

        with contextlib.suppress(DBAPIError):
            self.trials = read_trials(self.engine, self.study)
        if self.done_at is None and self.done() >= self.config.target:
            self.done_at = time.time()
        now = time.time()
        for h in self.hosts:
            h.workers()
            code = h.proc.poll() if h.proc is not None else None
            if h.proc is not None and code is not None and not h.down:
                h.exits.append((now, code))
                h.proc = None
                if code != 0:
                    h.unexpected.append(f"exited {code} at {now - self.started:.0f} s: {h.why()}")
                    self.log(f"{h.name}: sweep worker exited {code}; starting it again in 2 s")
                    self.restart_at[h.name] = now + 2
            if self.restart_at.get(h.name, math.inf) <= now:
                del self.restart_at[h.name]
                h.start(self.study, self.config.workers_per_host, self.env, quiet=self.config.quiet)
        self._recover()

    def _recover(self) -> None:
        children = _children(self.trials)
        for f in self.injected:
            waits_for_back = f.kind in (Fault.RESTART_DB, Fault.CUT_HOST, Fault.KILL_HOST)
            if f.recovered_s is not None or (waits_for_back and f.back is None):
                continue
            hit = f.trials if f.kind is not Fault.RESTART_DB else []  # the next trial's end is enough there
            moments = [settled_at(n, self.trials, children) for n in hit]
            if any(m is None for m in moments):
                continue
            if f.kind is Fault.RESTART_DB:
                assert f.back is not None
                back = datetime.fromtimestamp(f.back)
                ends = [t.complete for t in self.trials.values() if t.complete is not None and t.complete >= back]
                if not ends:
                    continue
                moments.append(min(ends))
            if f.kind in (Fault.CUT_HOST, Fault.KILL_HOST):
                assert f.back is not None
                back = datetime.fromtimestamp(f.back)
                # A trial it finished: a retry inherits the worker attr of the trial it retries until its
                # own worker writes its own, so a trial only started might not be this host's at all.
                own = [t.start for t in self.trials.values() if t.start is not None and t.start >= back
                       and t.counted and t.worker is not None and t.worker[0] == f.host]  # fmt: skip
                if not own:
                    continue
                moments.append(min(own))
            latest = max(m for m in moments if m is not None) if moments else datetime.fromtimestamp(f.at)
            f.recovered_s = max(0.0, latest.timestamp() - f.at)

    def wait(self, seconds: float, *, until: Callable[[], bool] | None = None) -> None:
        """Watch for ``seconds``, or until ``until()`` holds."""
        end = time.monotonic() + seconds
        while True:
            self.poll()
            left = end - time.monotonic()
            if left <= 0 or (until is not None and until()):
                return
            time.sleep(min(POLL_S, left))

    def finished(self) -> bool:
        return all(h.proc is None and not h.down and h.name not in self.restart_at for h in self.hosts)

    # ----- faults

    def _running(self, h: HostRun) -> list[tuple[int, int]]:
        """(trial number, worker pid) of the trials that live, unstopped workers of ``h`` are running."""
        live = {pid for pid in h.workers() if not _stopped(pid)}
        return [(t.number, t.worker[1]) for t in self.trials.values()
                if t.state == "RUNNING" and t.worker is not None and t.worker[0] == h.name
                and t.worker[1] in live]  # fmt: skip

    def _busy_worker(self, timeout_s: float = 30.0) -> tuple[HostRun, int, int] | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.done_at is None:
            busy = [(h, n, pid) for h in self.hosts if h.proc is not None for n, pid in self._running(h)]
            if busy:
                return self.rng.choice(sorted(busy, key=lambda b: b[1]))
            self.wait(POLL_S)
        return None

    def inject(self, kind: Fault) -> Injected | None:
        """Inject one fault and undo it after its time (the recovery is read later); None if none could be."""
        c = self.config
        self.poll()  # what is running now, not half a second ago
        hold = c.grace_period + self.rng.uniform(*c.hold_s)
        if kind in (Fault.KILL_WORKER, Fault.STOP_WORKER):
            found = self._busy_worker()
            if found is None:
                return None
            h, number, pid = found
            f = Injected(kind, time.time(), host=h.name, detail=f"pid {pid}", trials=[number])
            self.injected.append(f)
            try:
                os.kill(pid, signal.SIGKILL if kind is Fault.KILL_WORKER else signal.SIGSTOP)
            except ProcessLookupError:  # it left (recycled) a moment ago
                self.injected.remove(f)
                return None
            if kind is Fault.KILL_WORKER:
                return f
            f.detail += f", stopped {hold:.1f} s"
            self.wait(hold)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            return f
        if kind is Fault.RESTART_DB:
            mode = self.rng.choice(["fast", "immediate"])
            down = self.rng.uniform(*c.pause_s)
            running = sorted(t.number for t in self.trials.values() if t.state == "RUNNING")
            f = Injected(kind, time.time(), detail=f"-m {mode}, down {down:.1f} s", trials=running)
            self.injected.append(f)
            self.server.stop(mode)
            time.sleep(down)  # polling would only fail
            self.server.start()
            f.back = time.time()
            return f
        found = self._busy_worker()  # a host at work, so that the fault hits trials
        up = [h for h in self.hosts if h.proc is not None]
        if found is None and not up:
            return None
        h = found[0] if found is not None else self.rng.choice(up)
        f = Injected(kind, time.time(), host=h.name, trials=sorted(n for n, _ in self._running(h)))
        self.injected.append(f)
        if kind is Fault.CUT_HOST:
            self.net.cut(h.host)
            f.detail = f"cut {hold:.1f} s"
            self.wait(hold)
            self.net.mend(h.host)
            f.back = time.time()
            return f
        pause = self.rng.uniform(*c.pause_s)
        h.down = True
        killed = h.host.kill_all()
        f.detail = f"{len(killed)} processes, restarted after {pause:.1f} s"
        if h.proc is not None:
            h.exits.append((time.time(), h.proc.wait()))
            h.proc = None
        self.wait(pause)
        h.start(self.study, c.workers_per_host, self.env, quiet=c.quiet)
        f.back = time.time()
        # The restart is over once its sweep worker has read the study and started its workers. Until then
        # the next fault waits: without --wait, a sweep worker that meets an outage while it reads the study
        # exits 1 at once (it does not wait out worker.outage_timeout), which the soak would report each time.
        self.wait(60.0, until=lambda: h.proc is None or bool(h.workers()))
        return f

    def run_faults(self) -> list[Fault]:
        """Inject the planned faults in a random order; the ones left out (nothing to hit, or the study was done)."""
        plan = [k for k in self.config.kinds for _ in range(self.config.faults_per_kind)]
        self.rng.shuffle(plan)
        while not self.trials and time.time() - self.started < self.config.timeout_s:
            self.wait(POLL_S)  # the workers are still starting: nothing to hit yet
        skipped: list[Fault] = []
        span = max(1, round(SPAN * self.config.target))
        for i, kind in enumerate(plan):
            # Fault i is due once i+1 parts in len(plan)+1 of the span are done, whatever the waits: on a
            # fast machine the study would otherwise end before the last faults.
            share = math.ceil(span * (i + 1) / (len(plan) + 1))

            def ahead(share: int = share) -> bool:
                return self.done() >= share

            def settled() -> bool:
                return not self.injected or self.injected[-1].recovered_s is not None

            self.wait(self.config.settle_s, until=lambda: settled() or ahead())
            self.wait(self.rng.uniform(*self.config.gap_s), until=ahead)
            if self.done_at is not None or time.time() - self.started > self.config.timeout_s:
                return skipped + plan[i:]
            f = self.inject(kind)
            if f is None:
                self.log(f"{kind.value}: nothing to hit (no running trial); skipped")
                skipped.append(kind)
                continue
            self.log(
                f"+{f.at - self.started:.0f} s {kind.value} {f.host} {f.detail}: trials {f.trials} "
                f"(done {self.done()} of {self.config.target})"
            )
        return skipped

    def finish(self) -> list[str]:
        """Wait for every host to exit; the hosts that had to be killed (still running past the limits)."""
        hung = []
        while not self.finished():
            over = time.time() - self.started > self.config.timeout_s
            late = self.done_at is not None and time.time() - self.done_at > HOST_EXIT_WAIT_S
            if over or late:
                for h in self.hosts:
                    if h.proc is not None:
                        why = "the soak's time limit" if over else f"{HOST_EXIT_WAIT_S:g} s after the target was met"
                        hung.append(f"{h.name}: still running {why}: {h.tail()}")
                        h.host.kill_all()
                        h.proc.wait()
                        h.proc = None
                self.restart_at.clear()
                break
            self.wait(POLL_S)
        self.wait(0)
        return hung


# --------------------------------------------------------------------------- the invariants

INVARIANTS = (
    "the target is met exactly",
    "no trial is left RUNNING or WAITING",
    "no configuration is lost",
    "no configuration has two results",
    "each result comes from one worker",
    "every host's sweep worker exited 0",
    "no Python traceback in any output",
)


def check(trials: dict[int, Trial], *, target: int, spec: Any, hosts: list[HostRun], hung: list[str],
          logs: list[Path]) -> dict[str, list[str]]:  # fmt: skip
    """Each invariant of :data:`INVARIANTS` with its violations (empty when it holds), from the storage and the logs."""
    from sweep.records import FailReason

    out: dict[str, list[str]] = {name: [] for name in INVARIANTS}
    children = _children(trials)
    done = [t for t in trials.values() if t.counted]
    if len(done) != target:
        out[INVARIANTS[0]].append(f"{len(done)} trials count toward the target of {target}")
        finished = sorted((t for t in done if t.complete is not None), key=lambda t: t.complete or datetime.min)
        out[INVARIANTS[0]] += [f"past the target: {_when(t, trials)}" for t in finished[target:]]
    out[INVARIANTS[1]] = [t.describe() for t in sorted(trials.values(), key=lambda t: t.number)
                          if t.state in ("RUNNING", "WAITING")]  # fmt: skip
    for t in sorted(trials.values(), key=lambda t: t.number):
        if t.state != "FAIL" or t.counted or FailReason.of(t.user.get("fail_reason")) is FailReason.SURPLUS:
            continue
        family = _descendants(t.number, children)
        if not any(d.counted for d in family):
            retries = ", ".join(f"{d.number} {d.state}" for d in family) or "none was queued"
            out[INVARIANTS[2]].append(f"{t.describe()} has no retry with a result (retries: {retries})")
    for t in sorted(trials.values(), key=lambda t: t.number):
        parent = trials.get(t.parent) if t.parent is not None else None
        # A retry takes the parameters its trial had drawn (all of them, unless it died while drawing).
        if parent is not None and any(t.params.get(k, v) != v for k, v in parent.params.items()):
            out[INVARIANTS[2]].append(f"trial {t.number} retries trial {parent.number} with other parameters: "
                                      f"{t.params} instead of {parent.params}")  # fmt: skip
    roots: dict[int, list[Trial]] = {}
    for t in done:
        roots.setdefault(_root(t, trials), []).append(t)
    for root, counted in sorted(roots.items()):
        if len(counted) > 1:
            out[INVARIANTS[3]].append(f"the configuration of trial {root} counts {len(counted)} times: "
                                      + ", ".join(c.describe() for c in counted))  # fmt: skip
    for t in trials.values():
        allowed = {"COMPLETE": (1, 1), "PRUNED": (0, 1)}.get(t.state, (0, 0))
        if not allowed[0] <= len(t.values) <= allowed[1]:
            out[INVARIANTS[3]].append(f"{t.describe()} has {len(t.values)} values")
    seen = {h.name: h.workers_seen for h in hosts}
    for t in sorted(done, key=lambda t: t.number):
        out[INVARIANTS[4]] += _one_worker(t, spec, seen)
    for h in hosts:
        out[INVARIANTS[5]] += [f"{h.name}: {u}" for u in h.unexpected]
        if h.exits and h.exits[-1][1] != 0:
            out[INVARIANTS[5]].append(f"{h.name}: its last sweep worker exited {h.exits[-1][1]}")
    out[INVARIANTS[5]] += hung
    for path in logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        if "Traceback" in text:
            errors = ", ".join(dict.fromkeys(_exceptions(text)))
            out[INVARIANTS[6]].append(f"{path.stem}: {text.count('Traceback')} traceback(s): {errors}")
    return out


def _exceptions(text: str) -> list[str]:
    """The exception line of each traceback in a host's output (worker lines start with ``w<slot> ``)."""
    found, inside = [], False
    for line in text.splitlines():
        body = re.sub(r"^w\d+ ", "", line)
        if body.startswith("Traceback"):
            inside = True
        elif inside and body and not body[0].isspace() and not body.startswith("During handling"):
            found.append(body[:200])
            inside = False
    return found


def _when(t: Trial, trials: dict[int, Trial]) -> str:
    """``t`` with what the storage held when it started: trials counted and running then."""
    if t.start is None:
        return t.describe()
    counted = sum(1 for o in trials.values() if o.counted and o.complete is not None and o.complete <= t.start)
    running = [o.number for o in trials.values() if o is not t and o.start is not None and o.start <= t.start
               and (o.complete is None or o.complete > t.start)]  # fmt: skip
    retry = f", retrying trial {t.parent}" if t.parent is not None else ""
    return f"{t.describe()}{retry}, started when {counted} were counted and {running} running"


def _descendants(number: int, children: dict[int, list[Trial]]) -> list[Trial]:
    found, todo = [], list(children.get(number, []))
    while todo:
        t = todo.pop()
        found.append(t)
        todo += children.get(t.number, [])
    return sorted(found, key=lambda t: t.number)


def _root(t: Trial, trials: dict[int, Trial]) -> int:
    seen = {t.number}
    while t.parent is not None and t.parent in trials and t.parent not in seen:
        t = trials[t.parent]
        seen.add(t.number)
    return t.number


def _one_worker(t: Trial, spec: Any, seen: dict[str, set[int]]) -> list[str]:
    """Why ``t``'s records may not all come from the one worker its ``worker`` attr names (empty: they do)."""
    from sweep.records import attr
    from sweep.stability import repeat_score

    who = t.worker
    if who is None or who[0] not in seen:
        return [f"{t.describe()}: no worker attr naming one of the hosts"]
    if who[1] not in seen[who[0]]:
        return [f"{t.describe()}: pid {who[1]} was never seen as a sweep.worker process of {who[0]}"]
    curves = attr("curves", t.user, t.system)
    if not isinstance(curves, dict) or not curves.get("val_loss"):
        return [f"{t.describe()}: no curves"]
    if t.user.get("verifies") is not None:
        return []  # repeat 0 was copied, not trained: nothing reported
    first = [math.nan if v is None else float(v) for v in curves["val_loss"][0]]
    tail, risk = spec.stability.tail, spec.stability.risk
    expected = {e: repeat_score(first[: e + 1], tail=tail, risk=risk) for e in range(len(first))}
    if t.user.get("raced_out"):
        expected[spec.training.max_epochs] = t.user.get("score", math.nan)
    if set(t.steps) != set(expected):
        return [f"{t.describe()}: reported epochs {sorted(t.steps)}, but its curves have {len(first)} epochs"]
    for step, value in sorted(expected.items()):
        got = t.steps[step]
        if not (_same(got, value, rel=1e-4, abs_=1e-5)):
            return [f"{t.describe()}: reported {got:.6g} at epoch {step}, its curves give {value:.6g}"]
    score = t.user.get("score")
    if t.state == "COMPLETE" and isinstance(score, int | float) and not _same(t.values[0], score):
        return [f"{t.describe()}: value {t.values[0]:.9g} but score attr {score:.9g}"]
    return []


def _same(a: float, b: float, *, rel: float = 1e-9, abs_: float = 0.0) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return not math.isfinite(a) and not math.isfinite(b)
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# --------------------------------------------------------------------------- the run and its report


@dataclass
class SoakReport:
    config: SoakConfig
    seed: int
    wall_s: float
    states: dict[str, int]
    planned: int
    injected: list[Injected]
    left_out: list[Fault]
    invariants: dict[str, list[str]]
    first_trial_s: float | None = None
    """From the hosts' start to the first trial's start (the workers' start-up)."""
    trials_per_min: float | None = None
    """Trials counted toward the target per minute, from the first trial's start to the last one's end."""

    @property
    def ok(self) -> bool:
        return not any(self.invariants.values())

    def table(self) -> str:
        c = self.config
        where = "through sweep proxy" if c.proxy else "direct"
        lines = [f"soak: {c.hosts} hosts x {c.workers_per_host} workers on PostgreSQL ({where}), seed {self.seed}, "
                 f"target {c.target}, {self.wall_s:.0f} s; {len(self.injected)} of {self.planned} faults injected",
                 f"{'':<13}{'':>9}{'trials':>7}{'':>7}{'failed after':>13}{'':>10}{'recovery s':>14}",
                 f"{'fault':<13}{'injected':>9}{'hit':>7}{'failed':>7}{'median s':>13}{'recovered':>10}"
                 f"{'median':>7}{'max':>7}"]  # fmt: skip
        for kind in c.kinds:
            hits = [f for f in self.injected if f.kind is kind]
            times = sorted(f.recovered_s for f in hits if f.recovered_s is not None)
            median = f"{statistics.median(times):.1f}" if times else "-"
            top = f"{times[-1]:.1f}" if times else "-"
            hit, failed = sum(len(f.trials) for f in hits), sum(f.failed for f in hits)
            detected = sorted(f.failed_s for f in hits if f.failed_s is not None)
            found = f"{statistics.median(detected):.1f}" if detected else "-"
            lines.append(f"{kind.value:<13}{len(hits):>9}{hit:>7}{failed:>7}{found:>13}{len(times):>10}{median:>7}"
                         f"{top:>7}")  # fmt: skip
        pace = (f"; first trial after {self.first_trial_s:.0f} s, {self.trials_per_min:.1f} trials/min"
                if self.first_trial_s is not None and self.trials_per_min is not None else "")  # fmt: skip
        lines.append("trials: " + ", ".join(f"{n} {s}" for s, n in sorted(self.states.items())) + pace)
        for name, problems in self.invariants.items():
            lines.append(f"{'ok  ' if not problems else 'FAIL'} {name}" + (f" ({c.target})" if name == INVARIANTS[0]
                                                                            else ""))  # fmt: skip
            lines += [f"       {p}" for p in problems[:20]]
            if len(problems) > 20:
                lines.append(f"       ... and {len(problems) - 20} more")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        config = {**asdict(self.config), "kinds": [k.value for k in self.config.kinds], "target": self.config.target,
                  "logs": str(self.config.logs) if self.config.logs else None}  # fmt: skip
        faults = [{**asdict(f), "kind": f.kind.value} for f in self.injected]
        return {"config": config, "seed": self.seed, "wall_s": round(self.wall_s, 1), "states": self.states,
                "first_trial_s": self.first_trial_s, "trials_per_min": self.trials_per_min,
                "planned": self.planned, "faults": faults, "left_out": [k.value for k in self.left_out],
                "invariants": self.invariants, "ok": self.ok}  # fmt: skip


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def create_study(study_file: Path, url: str) -> None:
    """Create the study without training: ``sweep create`` where it exists, else the library."""
    env = {**os.environ, "SWEEP_STORAGE": url}
    cmd = [sys.executable, "-m", "sweep", "create", str(study_file)]
    if subprocess.run([*cmd[:4], "--help"], cwd=ROOT, env=env, capture_output=True, timeout=120).returncode == 0:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"sweep create exited {done.returncode}: {(done.stdout + done.stderr).strip()[-800:]}")
        return
    from sweep.runner import prepare_study
    from sweep.spec import load_spec

    prepare_study(load_spec(study_file), url=url)


@contextlib.contextmanager
def _proxy(gateway: str, url: str, log: Path) -> Iterator[str]:
    """``sweep proxy`` in the root namespace on the bridge address; its grpc:// URL."""
    with socket.socket() as s:
        s.bind((gateway, 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SWEEP_STORAGE": url, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sweep", "proxy", "--host", gateway, "--port", str(port)],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex((gateway, port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sweep proxy did not start: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.2)
        yield f"grpc://{gateway}:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_soak(config: SoakConfig, *, log: Callable[[str], None] = _say) -> SoakReport:
    """Run the soak (root only); every namespace, process and file it made is gone when it returns or raises."""
    from sweep.spec import load_spec
    from tests import netns, pgserver
    from tests.helpers import cheap_study

    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(1 << 31)
    log(f"seed {seed}")
    for name in [*netns.remove_leftovers(), *pgserver.remove_leftovers()]:
        log(f"removed {name}, left by an earlier run")
    folder = Path(config.logs or tempfile.mkdtemp(prefix="sweep-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            net = stack.enter_context(netns.network(config.hosts))
            server = stack.enter_context(
                pgserver.private_server(host=net.gateway, clients=f"{net.gateway}/24", options="-c max_connections=400")
            )
            study_file = cheap_study(folder, name="soak", n_trials=config.target, epochs=config.epochs,
                                     extra=config.study_extra())  # fmt: skip
            create_study(study_file, server.url)
            url = server.url
            if config.proxy:
                url = stack.enter_context(_proxy(net.gateway, server.url, folder / "proxy.log"))
            soak = Soak(config, net=net, server=server, url=url, study="soak", folder=folder, seed=seed, log=log)
            stack.callback(soak.engine.dispose)
            log(f"{config.hosts} hosts on {net.gateway}/24, study target {config.target}, storage {url}")
            for h in soak.hosts:
                h.start(soak.study, config.workers_per_host, soak.env, quiet=config.quiet)
            left = soak.run_faults()
            hung = soak.finish()
            trials = read_trials(soak.engine, soak.study, full=True)
            for f in soak.injected:
                ends = [t.complete for n in f.trials if (t := trials.get(n)) and t.state == "FAIL" and t.complete]
                f.failed = len(ends)
                f.failed_s = max(e.timestamp() for e in ends) - f.at if ends else None
                if f.kind in (Fault.KILL_WORKER, Fault.STOP_WORKER) and not ends:
                    f.detail += "; its trial ended before the signal landed"
            logs = [h.log for h in soak.hosts] + ([folder / "proxy.log"] if config.proxy else [])
            invariants = check(trials, target=config.target, spec=load_spec(study_file), hosts=soak.hosts,
                               hung=hung, logs=logs)  # fmt: skip
            states: dict[str, int] = {}
            for t in trials.values():
                states[t.state] = states.get(t.state, 0) + 1
            report = SoakReport(config=config, seed=seed, wall_s=time.time() - soak.started, states=states,
                                planned=config.faults_per_kind * len(config.kinds), injected=soak.injected,
                                left_out=left, invariants=invariants)  # fmt: skip
            first = min((t.start.timestamp() for t in trials.values() if t.start is not None), default=None)
            last = max((t.complete.timestamp() for t in trials.values() if t.complete is not None), default=None)
            if first is not None and last is not None and last > first:
                report.first_trial_s = round(first - soak.started, 1)
                counted = sum(t.counted for t in trials.values())
                report.trials_per_min = round(60 * counted / (last - first), 1)
            return report
    finally:
        if config.logs is None:
            shutil.rmtree(folder, ignore_errors=True)


def unavailable() -> str | None:
    """Why the soak cannot run here (not root, no namespaces, no PostgreSQL server programs), or None."""
    from tests import netns, pgserver

    return netns.unavailable() or pgserver.unavailable()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="A chaos soak of distributed mode: hosts in network namespaces share one private PostgreSQL "
        "while workers, hosts and the database are killed, paused and cut off (root only).",
    )
    parser.add_argument("--hosts", type=int, default=3, help="hosts (network namespaces), at least 2")
    parser.add_argument("--workers-per-host", type=int, default=2, help="sweep worker --workers on each host")
    parser.add_argument("--faults-per-kind", type=int, default=20, help="faults of each kind to inject")
    parser.add_argument("--n-trials", type=int, help=f"the study's target (default {TRIALS_PER_FAULT:g} per fault)")
    parser.add_argument("--seed", type=int, help="the seed of the fault schedule (default: drawn, and printed)")
    parser.add_argument("--kinds", default=",".join(k.value for k in Fault),
                        help="the fault kinds, comma-separated (default: all)")  # fmt: skip
    parser.add_argument("--proxy", action="store_true", help="the hosts reach the database through sweep proxy")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the soak gives up")
    parser.add_argument("--logs", type=Path, help="keep every host's output in this folder")
    parser.add_argument("--quiet", action="store_true",
                        help="run sweep worker -q (a worker's traceback is then not seen)")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.hosts < 2 or args.workers_per_host < 1 or args.faults_per_kind < 0:
        parser.error("--hosts must be at least 2, --workers-per-host at least 1, --faults-per-kind at least 0")
    try:
        args.kinds = tuple(Fault(k.strip()) for k in args.kinds.split(",") if k.strip())
    except ValueError:
        parser.error(f"--kinds: got {args.kinds!r}; allowed: {', '.join(k.value for k in Fault)}")
    return args


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = unavailable()
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupted)  # clean up as after Ctrl-C
    config = SoakConfig(hosts=args.hosts, workers_per_host=args.workers_per_host,
                        faults_per_kind=args.faults_per_kind, n_trials=args.n_trials, seed=args.seed,
                        proxy=args.proxy, kinds=args.kinds, timeout_s=args.timeout, logs=args.logs,
                        quiet=args.quiet)  # fmt: skip
    try:
        report = run_soak(config)
    except KeyboardInterrupt:
        print("interrupted; everything the soak made is removed", file=sys.stderr)
        return 130
    print(report.table())
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
