"""13. Load: many workers on one PostgreSQL, directly and through ``sweep proxy``.

Two steps. **Record**: the real worker (:func:`sweep.worker.run_worker`, one
trial of 5 repeats of 20 epochs, the median pruner; training replaced by the
stand-in of :mod:`benchmarks.storage_calls`, which sleeps each epoch) runs in a
process of its own, and every call its code makes on the storage its study
holds (Optuna's cache over sweep's storage, or the gRPC client) is written
down in order: the method, its arguments (the study's and the trial's ids as
placeholders) and when it came, as the share of the trial's epochs trained by
then. The writes that :mod:`sweep.batch` holds are recorded where the
objective holds, writes and releases them (``hold``, ``write_held``,
``release`` on sweep's storage); the beats as the points where Optuna's
heartbeat thread and sweep's beat (:class:`sweep.liveness.Liveness`) start and
stop. The recording's heartbeat interval is half its training time, as 30 s
beats (the default) are in a 60 s trial.

**Replay**: N simulated workers, threads in a few processes (the work is
waiting on the database), each with its own storage opened as a worker opens
it (:func:`sweep.storage.open_storage` and ``optuna.load_study``: the same
cache, the same held writes, so the same transactions; or the gRPC client of
``sweep proxy``). Each loops: replay the recorded calls of one trial, the
time between two calls being the training between them scaled to
``--trial-seconds``; a slow call delays the rest of the trial, as it delays a
worker's training. The beats run as the worker runs them, by Optuna's and
sweep's own code, every ``trial_seconds / 2`` seconds. Workers start spread
over one trial length; a worker's first trial warms it up; the trials that
start once every worker has started are measured, until each worker has
``--trials`` of them.

Reported per path and N: trials/s (each worker's rate, one over its mean trial
time, summed) against the ideal N / trial_seconds, the storage time per trial
(the sum of the trial's own call latencies; the beats' apart), p50 and p99 of
each call kind, the peak of the benchmark database's connections
(``pg_stat_activity``), the CPU of the generator, the proxy, the database's
backends and the whole machine (when it is busy, the figures are a lower
bound), and that the replay is faithful: each measured trial's calls, and on
PostgreSQL its transactions, by kind, against the recording's.

The benchmark database is owned by a role of its own with a connection limit
(the server's ``max_connections`` less a reserve), so that a run of many
workers cannot take the connections of others on a shared server; a worker
refused a connection waits it out as a worker does (:func:`sweep.outage.retry`).
``sweep proxy`` is served by the command's own code with each call timed in the
proxy (:func:`serve_proxy`); the path ``proxy-before`` serves the ``sweep`` of
commit :data:`BEFORE`, for a before/after in the same run.

``python -m benchmarks.load --workers 1 16 64 128 --trial-seconds 30``; see ``--help`` and section 13 of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    ROOT,
    BenchmarkError,
    Context,
    Goal,
    Result,
    bench_env,
    interrupt,
    median,
    median_ratio,
    now_iso,
    postgres_base,
    rotation,
    sweep_proxy_process,
    write_study,
)
from benchmarks.storage_calls import COUNTED, EPOCHS, LOCAL_ONLY, PUBLIC, REPEATS, cheap_training, study_sections

NAME = "load"
TITLE = "13. load"
PATHS = ("direct", "proxy")
BEFORE = "9d542aac7a83b2a1fb9a14379ca06dfc7d4533cd"
"""The commit before ``sweep proxy`` shared its reads: the path ``proxy-before`` runs its ``sweep proxy``."""
RECORD_HEARTBEAT_S = 2
RECORD_EPOCH_S = 0.04
"""The recording trains 100 epochs of 0.04 s: 4 s, two heartbeat intervals of 2 s (a 60 s trial, 30 s beats)."""
GRACE_BEATS = 4
"""The grace period in heartbeat intervals (120 s over 30 s by default)."""
GOAL_DIRECT = Goal("<=", 2.0, "<= 2x")
GOAL_PROXY = Goal(">=", 0.8, ">= 0.8x")
WORKERS_PER_PROCESS = 32
OPEN_TIMEOUT_S = 60.0
"""How long a simulated worker tries to open its storage (connections refused) before its configuration fails."""
FULL_TRIAL_S = 30.0
"""The trial length of the full run: twice the load of 60 s trials, so that it fits in about 25 minutes."""
RESERVE_CONNECTIONS = 10
"""Connections of the server left to others while the benchmark runs."""

TAPPED = tuple(n for n in COUNTED if n not in LOCAL_ONLY and n not in PUBLIC and n != "write_held")
"""The storage methods recorded and replayed: Optuna's ``BaseStorage`` and heartbeat methods."""
HELD = ("hold", "write_held", "release")
"""sweep's held writes (:class:`sweep.batch.HeldWrites`), called on sweep's storage under Optuna's cache."""
LOCAL = ("hold", "release")
"""Calls that never reach the database: counted, but no latency."""


# --------------------------------------------------------------------------- tapping a storage


@dataclass
class Call:
    """One call of a storage method by a worker's code (not the calls it makes itself)."""

    kind: str
    thread: threading.Thread
    start: float
    end: float
    transactions: int
    arguments: dict[str, Any]
    result: Any = None
    error: BaseException | None = None


class Tap:
    """Wraps the methods of a study's storage in place, and reports each outermost call with its transactions.

    The object stays what it was (every ``isinstance`` check of Optuna and
    sweep still holds); a call made by another tapped call (Optuna's cache
    calling itself) is that call's. On a relational storage each transaction
    that begins is counted to the call of its thread.
    """

    def __init__(self, on_call: Callable[[Call], None]) -> None:
        self.on_call = on_call
        self._local = threading.local()

    def watch(self, storage: Any) -> Any:
        if storage.__dict__.get("_load_tapped"):
            return storage
        storage._load_tapped = True
        backend = getattr(storage, "_backend", storage)
        engine = getattr(backend, "engine", None)
        if engine is not None and not getattr(engine, "_load_tapped", False):
            from sqlalchemy import event

            engine._load_tapped = True
            event.listen(engine, "begin", self._begin)
        for name in TAPPED:
            method = getattr(storage, name, None)
            if callable(method):
                setattr(storage, name, self._wrap(name, method))
        from sweep.batch import HeldWrites

        if isinstance(backend, HeldWrites) and backend is not storage:
            for name in HELD:
                setattr(backend, name, self._wrap(name, getattr(backend, name)))
        return storage

    def _begin(self, connection: Any) -> None:
        frame = getattr(self._local, "frame", None)
        if frame is not None:
            frame[0] += 1

    def _wrap(self, kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "frame", None) is not None:
                return method(*args, **kwargs)
            frame = [0]
            self._local.frame = frame
            result: Any = None
            error: BaseException | None = None
            start = time.perf_counter()
            try:
                result = method(*args, **kwargs)
                return result
            except BaseException as exc:
                error = exc
                raise
            finally:
                end = time.perf_counter()
                self._local.frame = None
                arguments = dict(signature.bind(*args, **kwargs).arguments)
                self.on_call(Call(kind, threading.current_thread(), start, end, frame[0], arguments, result, error))

        return call


# --------------------------------------------------------------------------- arguments as placeholders


class Ids:
    """The study's and the trial's ids of a recording, and their placeholders."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, int], str] = {}

    def encode(self, kind: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        from optuna.distributions import BaseDistribution, distribution_to_json
        from optuna.trial import TrialState

        out: dict[str, Any] = {}
        for name, value in arguments.items():
            if name in ("study_id", "trial_id"):
                out[name] = {"$id": self._name(name, int(value))}
            elif isinstance(value, BaseDistribution):
                out[name] = {"$distribution": distribution_to_json(value)}
            elif isinstance(value, TrialState):
                out[name] = {"$state": value.name}
            elif name == "states" and value is not None:
                out[name] = {"$states": [s.name for s in value]}
            elif name == "key" and isinstance(value, str) and self._trial_id() is not None:
                out[name] = value.replace(f":{self._trial_id()}:", ":{trial}:")
            elif name == "template_trial" and value is not None:
                raise BenchmarkError("the recorded trial was made from a template (a queued trial): not replayable")
            else:
                json.dumps(value)  # raises on what a script cannot hold
                out[name] = value
        return out

    def learn(self, kind: str, result: Any) -> None:
        if kind == "create_new_trial":
            if self._trial_id() is not None:
                raise BenchmarkError("the recording holds two trials; it must hold one")
            self.names[("trial_id", int(result))] = "trial"

    def _trial_id(self) -> int | None:
        return next((i for (name, i), _ in self.names.items() if name == "trial_id"), None)

    def _name(self, name: str, value: int) -> str:
        known = self.names.get((name, value))
        if known is not None:
            return known
        if name == "study_id" and not any(n == "study_id" for n, _ in self.names):
            self.names[(name, value)] = "study"
            return "study"
        raise BenchmarkError(f"the recorded trial names {name} {value}, neither its study nor itself")


def decode(arguments: Mapping[str, Any], ids: Mapping[str, int]) -> dict[str, Any]:
    """The arguments of a recorded call for this worker's study and trial."""
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState

    out: dict[str, Any] = {}
    for name, value in arguments.items():
        if isinstance(value, dict) and len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$id":
                out[name] = ids[inner]
                continue
            if tag == "$distribution":
                out[name] = json_to_distribution(inner)
                continue
            if tag == "$state":
                out[name] = TrialState[inner]
                continue
            if tag == "$states":
                out[name] = tuple(TrialState[s] for s in inner)
                continue
        if name == "key" and isinstance(value, str) and "{trial}" in value:
            value = value.replace("{trial}", str(ids["trial"]))
        out[name] = value
    return out


# --------------------------------------------------------------------------- recording (a process of its own)


class Recorder:
    """What the probe's storages are asked, in order, by thread and phase."""

    def __init__(self, *, epoch_seconds: float) -> None:
        self.phase = "open"
        self.epochs = 0
        self.epoch_seconds = epoch_seconds
        self.t0 = 0.0
        self.ids = Ids()
        self.main: list[dict[str, Any]] = []
        self.beats: list[dict[str, Any]] = []
        self.around: dict[str, Counter[str]] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def train_epoch(self) -> None:
        time.sleep(self.epoch_seconds)
        self.epochs += 1

    def on_call(self, call: Call) -> None:
        thread = _thread_label(call.thread)
        with self._lock:
            if self.phase not in ("loop", "trial"):
                self.around.setdefault(self.phase, Counter())[call.kind] += 1
                return
            entry: dict[str, Any] = {"t": round(call.start - self.t0, 4), "kind": call.kind}
            if call.transactions:
                entry["tx"] = call.transactions
            if thread != "main":
                self.beats.append({"thread": thread, **entry})
                return
            if call.error is not None:  # a replay would not meet it: the recording is no trial to replay
                raise BenchmarkError(f"a recorded call failed: {call.kind}: {call.error!r}")
            entry["epochs"] = self.epochs
            entry["args"] = self.ids.encode(call.kind, call.arguments)
            self.ids.learn(call.kind, call.result)
            if getattr(self._local, "by", None):
                entry["by"] = self._local.by
            self.main.append(entry)

    def marker(self, beats: str, event: str) -> None:
        with self._lock:
            self.main.append({"t": round(time.perf_counter() - self.t0, 4), "epochs": self.epochs,
                              "beats": beats, "event": event})  # fmt: skip

    @contextlib.contextmanager
    def made_by(self, who: str) -> Iterator[None]:
        self._local.by = who
        try:
            yield
        finally:
            self._local.by = None

    def script(self) -> list[dict[str, Any]]:
        """The main thread's calls with ``at``: the share of the trial's epochs trained when each came."""
        total = max(1, self.epochs)
        out = []
        for entry in self.main:
            entry = dict(entry)
            entry["at"] = round(entry.pop("epochs") / total, 6)
            out.append(entry)
        return out


def _thread_label(thread: threading.Thread) -> str:
    if thread is threading.main_thread():
        return "main"
    if thread.name.startswith("sweep-beat"):
        return "sweep-beat"
    if "_record_heartbeat" in thread.name:
        return "optuna-beat"
    return thread.name


def probe(study_name: str, url: str, *, epoch_seconds: float) -> dict[str, Any]:
    """Run one worker to one trial on ``study_name`` at ``url`` and record its storage calls."""
    import logging
    import warnings

    import optuna
    from optuna.study import _optimize

    import sweep.liveness as liveness
    import sweep.worker as worker
    from sweep.storage import load_study

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    recorder = Recorder(epoch_seconds=epoch_seconds)
    tap = Tap(recorder.on_call)
    targets = [(optuna.storages, "get_storage"), (worker, "_has_room"), (optuna.study.Study, "optimize"),
               (_optimize, "get_heartbeat_thread"), (liveness.Liveness, "beating")]  # fmt: skip
    saved: dict[tuple[Any, str], Any] = {(owner, name): getattr(owner, name) for owner, name in targets}
    real_get_storage, real_has_room, real_optimize, real_heartbeat, real_beating = saved.values()

    def get_storage(storage: Any) -> Any:
        return tap.watch(real_get_storage(storage))

    def has_room(*args: Any, **kwargs: Any) -> Any:
        if recorder.phase == "open":
            recorder.phase, recorder.t0 = "loop", time.perf_counter()
        return real_has_room(*args, **kwargs)

    def optimize(self: Any, *args: Any, **kwargs: Any) -> Any:
        recorder.phase = "trial"
        try:
            return real_optimize(self, *args, **kwargs)
        finally:
            recorder.phase = "after"

    class Marked:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __enter__(self) -> Any:
            recorder.marker("optuna", "start")
            return self.inner.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            out = self.inner.__exit__(*exc)
            recorder.marker("optuna", "stop")
            return out

    def heartbeat_thread(trial_id: int, storage: Any) -> Any:
        return Marked(real_heartbeat(trial_id, storage))

    @contextlib.contextmanager
    def beating(self: Any, trial: Any) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            recorder.marker("sweep", "start")
            stack.callback(recorder.marker, "sweep", "stop")
            with recorder.made_by("liveness"):  # its first beat: the replay's Liveness writes it itself
                stack.enter_context(real_beating(self, trial))
            yield

    patches = {
        (optuna.storages, "get_storage"): get_storage,
        (worker, "_has_room"): has_room,
        (optuna.study.Study, "optimize"): optimize,
        (_optimize, "get_heartbeat_thread"): heartbeat_thread,
        (liveness.Liveness, "beating"): beating,
    }
    for (owner, name), value in patches.items():
        setattr(owner, name, value)
    start = time.perf_counter()
    try:
        with cheap_training(epoch_work=recorder.train_epoch):
            code = worker.run_worker(signals=worker._Signals(), study_name=study_name, url=url, target=1,
                                     deadline=None, threads=1)  # fmt: skip
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)
    if code != 0:
        raise BenchmarkError(f"the recorded worker exited {code}")
    trial = load_study(study_name, url).get_trials()[0]
    return {
        "script": recorder.script(),
        "beats": recorder.beats,
        "around": {phase: dict(c) for phase, c in recorder.around.items()},
        "epochs_trained": recorder.epochs,
        "wall_s": round(time.perf_counter() - start, 3),
        "trial": {"state": trial.state.name, "intermediate_values": len(trial.intermediate_values)},
    }


def record(
    url: str,
    folder: Path,
    *,
    name: str,
    via: str | None = None,
    repeats: int = REPEATS,
    epochs: int = EPOCHS,
    epoch_seconds: float = RECORD_EPOCH_S,
) -> dict[str, Any]:
    """Record one trial on a fresh study at ``url`` (through ``via``, a ``grpc://`` URL, when given)."""
    from sweep.runner import prepare_study
    from sweep.spec import load_spec

    heartbeat = max(1, round(repeats * epochs * epoch_seconds / 2))
    sections = study_sections(name, repeats=repeats, epochs=epochs)
    sections["worker"] = {"heartbeat_interval": heartbeat, "grace_period": GRACE_BEATS * heartbeat}
    spec = load_spec(write_study(folder, sections))
    study, _ = prepare_study(spec, url=url)
    _dispose(study)
    cmd = [sys.executable, "-m", "benchmarks.load", "--probe", name, "--storage", via or url,
           "--epoch-seconds", str(epoch_seconds)]  # fmt: skip
    done = subprocess.run(cmd, env=bench_env(), capture_output=True, text=True, timeout=600, cwd=folder)
    if done.returncode != 0:
        raise BenchmarkError(f"the recording exited {done.returncode}: {done.stderr.strip()[-800:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if report["trial"]["state"] != "COMPLETE" or report["epochs_trained"] != repeats * epochs:
        raise BenchmarkError(f"the recorded trial did not train all {repeats} x {epochs} epochs: {report['trial']}")
    report.update(repeats=repeats, epochs=epochs, epoch_seconds=epoch_seconds, heartbeat_s=heartbeat,
                  train_s=round(repeats * epochs * epoch_seconds, 3))  # fmt: skip
    return report


def record_script(url: str, folder: Path, *, repeats: int = REPEATS, epochs: int = EPOCHS,
                  epoch_seconds: float = RECORD_EPOCH_S) -> dict[str, Any]:  # fmt: skip
    """The replayable script of one trial, recorded directly and through ``sweep proxy``."""

    def one(name: str, via: str | None = None) -> dict[str, Any]:
        return record(url, folder, name=name, via=via, repeats=repeats, epochs=epochs, epoch_seconds=epoch_seconds)

    with sweep_proxy_process(url) as (grpc_url, _), ThreadPoolExecutor(max_workers=2) as pool:
        direct, proxy = pool.submit(one, "record-direct"), pool.submit(one, "record-proxy", grpc_url)
        paths = {"direct": direct.result(), "proxy": proxy.result()}
    return {"recorded": now_iso(), "repeats": repeats, "epochs": epochs, "paths": paths}


def expected(recording: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """What one trial of a recording asks of the storage: calls and transactions by kind (its own thread)."""
    calls: Counter[str] = Counter()
    tx: Counter[str] = Counter()
    for entry in recording["script"]:
        if "kind" in entry:
            calls[entry["kind"]] += 1
            if entry.get("tx"):
                tx[entry["kind"]] += entry["tx"]
    return {"calls": dict(calls), "transactions": dict(tx)}


def _dispose(study: Any) -> None:
    """Close the pooled connections of a study's storage (they would count as the workers')."""
    backend = getattr(study._storage, "_backend", study._storage)
    engine = getattr(backend, "engine", None)
    if engine is not None:
        engine.dispose()


# --------------------------------------------------------------------------- replay (a process of many workers)


class _Stopped(Exception):
    """The run was stopped while a worker waited."""


@dataclass
class TrialRecord:
    worker: int
    start: float
    measured: bool
    end: float = 0.0
    ok: bool = False
    stopped: bool = False
    error: str | None = None
    outages: int = 0
    storage_s: float = 0.0
    beat_s: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    transactions: Counter[str] = field(default_factory=Counter)
    beat_calls: Counter[str] = field(default_factory=Counter)
    beat_transactions: Counter[str] = field(default_factory=Counter)


class Worker:
    """One simulated worker: its own storage and study, replaying the script trial after trial."""

    def __init__(self, index: int, settings: Mapping[str, Any], script: list[dict[str, Any]],
                 stop: threading.Event, report: Callable[[TrialRecord], None]) -> None:  # fmt: skip
        self.index = index
        self.settings = settings
        self.script = script
        self.stop = stop
        self.report = report
        self.trial_s = float(settings["trial_seconds"])
        self.latencies: dict[str, list[float]] = {}
        self.current: TrialRecord | None = None
        self.thread = threading.Thread(target=self.run, name=f"load-worker-{index}", daemon=True)

    def open(self) -> None:
        import optuna

        from sweep.errors import StorageError
        from sweep.liveness import Liveness
        from sweep.outage import BACKOFF_S, is_outage
        from sweep.storage import open_storage

        s = self.settings
        url = s["url"]
        self.open_waits = 0
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:  # a worker refused a connection (the server's or the role's limit) tries again, as one restarted
            try:
                if url.startswith("grpc://"):
                    storage = open_storage(url)
                else:  # as a worker opens it (sweep.storage.open_sweep)
                    storage = open_storage(url, heartbeat_interval=s["heartbeat_s"], grace_period=s["grace_s"],
                                           create=False)  # fmt: skip
                self.study = optuna.load_study(study_name=s["study"], storage=storage)
                break
            except Exception as exc:
                if not (isinstance(exc, StorageError) or is_outage(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(BACKOFF_S[min(self.open_waits, len(BACKOFF_S) - 1)])
                self.open_waits += 1
        self.release: Callable[[], None] | None = getattr(storage, "release", None)  # not tapped: not the trial's
        self.storage = Tap(self.on_call).watch(self.study._storage)
        self.backend = getattr(self.storage, "_backend", self.storage)
        self.alive = Liveness(self.study, interval_s=s["heartbeat_s"], grace_s=s["grace_s"], max_retries=0)

    def on_call(self, call: Call) -> None:
        rec = self.current
        if rec is None:
            return
        seconds = call.end - call.start
        if call.thread is self.thread:
            rec.calls[call.kind] += 1
            rec.transactions[call.kind] += call.transactions
            if call.kind not in LOCAL:
                rec.storage_s += seconds
        else:
            rec.beat_calls[call.kind] += 1
            rec.beat_transactions[call.kind] += call.transactions
            rec.beat_s += seconds
        if rec.measured and call.kind not in LOCAL:
            kind = call.kind if call.thread is self.thread else f"{call.kind} (beat)"
            self.latencies.setdefault(kind, []).append(seconds)

    def run(self) -> None:
        s = self.settings
        if self.stop.wait(max(0.0, s["t0"] + self.index * self.trial_s / s["n"] - time.time())):
            return
        first = True
        while not self.stop.is_set():
            start = time.time()
            rec = TrialRecord(self.index, start, measured=not first and start >= s["ramp_end"])
            first = False
            self.current = rec
            self.trial(rec)
            rec.end = time.time()
            self.current = None
            self.report(rec)

    def trial(self, rec: TrialRecord) -> None:
        from optuna.storages._heartbeat import get_heartbeat_thread

        from sweep.outage import one_line

        ids = {"study": self.study._study_id}
        beats: dict[str, Any] = {}
        at = 0.0
        try:
            for entry in self.script:
                gap = (entry["at"] - at) * self.trial_s
                at = entry["at"]
                if gap > 0 and self.stop.wait(gap):
                    raise _Stopped
                if "beats" in entry:
                    if entry["event"] == "start":
                        trial = types.SimpleNamespace(_trial_id=ids["trial"], number=ids["trial"], storage=self.storage)
                        beats[entry["beats"]] = (
                            get_heartbeat_thread(ids["trial"], self.storage)
                            if entry["beats"] == "optuna"
                            else self.alive.beating(trial)  # type: ignore[arg-type]
                        )
                        beats[entry["beats"]].__enter__()
                    else:
                        beats.pop(entry["beats"]).__exit__(None, None, None)
                    continue
                if entry.get("by"):
                    continue  # made by the beats started just before (sweep's first beat)
                result = self.call(entry, ids, rec)
                if entry["kind"] == "create_new_trial":
                    ids["trial"] = int(result)
            rec.ok = True
        except _Stopped:
            rec.stopped = True
        except Exception as exc:
            rec.error = f"{type(exc).__name__}: {one_line(exc)[:160]}"
        finally:
            for cm in reversed(list(beats.values())):
                cm.__exit__(None, None, None)
            if self.release is not None and not rec.ok:
                self.release()  # a trial ended early holds nothing into the next

    def call(self, entry: Mapping[str, Any], ids: Mapping[str, int], rec: TrialRecord) -> Any:
        from sweep.outage import retry

        kwargs = decode(entry["args"], ids)
        target = self.backend if entry["kind"] in HELD else self.storage
        method = getattr(target, entry["kind"])

        def wait(seconds: float) -> None:
            rec.outages += 1
            if self.stop.wait(seconds):
                raise _Stopped

        return retry(lambda: method(**kwargs), timeout_s=float(self.settings["outage_timeout"]),
                     what=entry["kind"], sleep=wait)  # fmt: skip


def _cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def replay_main(settings: dict[str, Any]) -> int:
    """One generator process: its workers open their storages, say ``ready``, wait for ``go T0``, replay until
    ``stop``; one ``done W`` line per measured trial, then the report as one JSON line."""
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.basicConfig(level=logging.CRITICAL)
    script = json.loads(Path(settings["script"]).read_text(encoding="utf-8"))["paths"][settings["recording"]]["script"]
    stop = threading.Event()
    out_lock = threading.Lock()
    trials: list[TrialRecord] = []

    def report(rec: TrialRecord) -> None:
        with out_lock:
            trials.append(rec)
            if rec.measured and not rec.stopped:
                print(f"done {rec.worker}", flush=True)

    opened = time.perf_counter()
    workers = [Worker(i, settings, script, stop, report) for i in settings["indices"]]
    with ThreadPoolExecutor(max_workers=max(1, len(workers))) as pool:  # at once: a refused one waits alone
        list(pool.map(lambda w: w.open(), workers))
    open_s = time.perf_counter() - opened
    with out_lock:
        print("ready", flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        return 0
    t0 = float(line[1])
    settings = {**settings, "t0": t0, "ramp_end": t0 + (settings["n"] - 1) * settings["trial_seconds"] / settings["n"]}
    for w in workers:
        w.settings = settings
        w.thread.start()
    cpu_at_ramp: list[float] = []
    ramp = threading.Timer(max(0.0, settings["ramp_end"] - time.time()), lambda: cpu_at_ramp.append(_cpu_s()))
    ramp.daemon = True
    ramp.start()
    sys.stdin.readline()  # "stop", or the end of input
    stopped_at = time.time()
    cpu_end = _cpu_s()
    stop.set()
    ramp.cancel()
    for w in workers:
        w.thread.join(timeout=30)
    latencies: dict[str, list[float]] = {}
    for w in workers:
        for kind, values in w.latencies.items():
            latencies.setdefault(kind, []).extend(values)
    window = max(0.0, stopped_at - settings["ramp_end"])
    with out_lock:
        print(json.dumps({
            "open_s": round(open_s, 3),
            "open_waits": sum(w.open_waits for w in workers),
            "cpu_window_s": round(cpu_end - cpu_at_ramp[0], 3) if cpu_at_ramp else None,
            "window_s": round(window, 3),
            "trials": [_trial_dict(t) for t in trials],
            "latencies": {k: [round(v, 6) for v in vs] for k, vs in latencies.items()},
        }), flush=True)  # fmt: skip
    return 0


def _trial_dict(rec: TrialRecord) -> dict[str, Any]:
    out = asdict(rec)
    for key in ("calls", "transactions", "beat_calls", "beat_transactions"):
        out[key] = {k: v for k, v in getattr(rec, key).items() if v}
    return out


# --------------------------------------------------------------------------- the machine while it runs


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux), None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, Linux)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Watch:
    """Samples the benchmark database's connections while a configuration runs; CPU snapshots on demand."""

    def __init__(self, admin: Any, database: str, *, every_s: float = 0.25) -> None:
        self.admin = admin
        self.database = database
        self.every_s = every_s
        self.peak = 0
        self.peak_active = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-watch", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import sqlalchemy as sa

        query = sa.text("SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
                        "WHERE datname = :d")  # fmt: skip
        with self.admin.connect() as conn:
            while not self._stop.wait(self.every_s):
                total, active = conn.execute(query, {"d": self.database}).one()
                self.peak = max(self.peak, int(total))
                self.peak_active = max(self.peak_active, int(active))
                self.samples += 1

    def backends(self) -> dict[int, float]:
        """CPU seconds so far of each server process of the benchmark database."""
        import sqlalchemy as sa

        with self.admin.connect() as conn:
            pids = [int(p) for (p,) in conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d"),
                                                    {"d": self.database})]  # fmt: skip
        return {pid: cpu for pid in pids if (cpu := _proc_cpu_s(pid)) is not None}


@dataclass
class Snapshot:
    at: float
    machine_s: float
    proxy_s: float | None
    backends: dict[int, float]


def _snapshot(watch: Watch, proxy: subprocess.Popen[str] | None) -> Snapshot:
    return Snapshot(time.time(), _machine_busy_s(), _proc_cpu_s(proxy.pid) if proxy is not None else None,
                    watch.backends())  # fmt: skip


# --------------------------------------------------------------------------- one configuration


@dataclass(frozen=True)
class Plan:
    """What every configuration of a run shares."""

    script: Path
    trial_seconds: float
    trials: int
    outage_timeout: float = 600.0
    processes: int | None = None
    heartbeat_s: int = 0

    def heartbeat(self, recording: Mapping[str, Any]) -> int:
        """The beat interval, scaled with the trial as recorded (half the trial by default)."""
        if self.heartbeat_s:
            return self.heartbeat_s
        return max(1, round(float(self.trial_seconds) * float(recording["heartbeat_s"]) / float(recording["train_s"])))


def run_config(*, path: str, n: int, url: str, admin: Any, database: str, plan: Plan, folder: Path,
               log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:  # fmt: skip
    """N workers on a fresh study, directly (``path`` "direct") or through a ``sweep proxy`` of their own."""
    import optuna

    from sweep.storage import open_storage

    recording = json.loads(plan.script.read_text(encoding="utf-8"))["paths"]["direct" if path == "direct" else "proxy"]
    study_name = f"load-{path}-{n}-{uuid.uuid4().hex[:6]}"
    storage = open_storage(url)
    optuna.create_study(study_name=study_name, storage=storage, direction="minimize")
    storage.engine.dispose()  # type: ignore[attr-defined]
    heartbeat = plan.heartbeat(recording)
    processes = plan.processes or max(1, math.ceil(n / WORKERS_PER_PROCESS))
    processes = min(processes, n)
    stats: Path | None = None
    with contextlib.ExitStack() as stack:
        proxy = None
        target = url
        if path != "direct":
            tree = _before_tree(folder) if path == "proxy-before" else None
            target, proxy, stats = stack.enter_context(timed_proxy(url, folder, tree=tree))
        watch = stack.enter_context(Watch(admin, database))
        settings = {
            "script": str(plan.script), "recording": "direct" if path == "direct" else "proxy", "url": target,
            "study": study_name, "n": n, "trial_seconds": plan.trial_seconds, "heartbeat_s": heartbeat,
            "grace_s": GRACE_BEATS * heartbeat, "outage_timeout": plan.outage_timeout,
        }  # fmt: skip
        procs, logs = [], []
        for p in range(processes):
            mine = {**settings, "indices": list(range(p, n, processes))}
            cmd = [sys.executable, "-m", "benchmarks.load", "--replay", json.dumps(mine)]
            logs.append(folder / f"{study_name}-{p}.log")
            with logs[-1].open("w") as err:
                procs.append(subprocess.Popen(cmd, env=bench_env(), cwd=ROOT, stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=err, text=True))  # fmt: skip
        stack.callback(_end, procs)
        lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        for i, proc in enumerate(procs):
            threading.Thread(target=_pump, args=(i, proc, lines), daemon=True).start()
        finals: dict[int, dict[str, Any]] = {}
        ready = 0
        deadline = time.time() + OPEN_TIMEOUT_S + 120
        while ready < processes:
            i, line = _next_line(lines, deadline)
            if line is None:
                raise BenchmarkError(f"generator process {i} exited before it was ready: {_tail(logs[i])}")
            ready += line == "ready"
        t0 = time.time() + 1.0
        ramp_end = t0 + (n - 1) * plan.trial_seconds / n
        for proc in procs:
            _send(proc, f"go {t0}")
        log(f"{NAME}: {path} x{n}: {processes} process(es), trials of {plan.trial_seconds:g} s, "
            f"beats every {heartbeat} s")  # fmt: skip
        done: Counter[int] = Counter()
        start_snap: Snapshot | None = None
        deadline = ramp_end + (plan.trials + 1) * plan.trial_seconds * 2.5 + 30  # trials 2.5 times too long: stop
        timed_out = False
        while min(done[w] for w in range(n)) < plan.trials:
            now = time.time()
            if start_snap is None and now >= ramp_end:
                start_snap = _snapshot(watch, proxy)
            if now >= deadline:
                timed_out = True
                break
            try:
                i, line = lines.get(timeout=0.25)
            except queue.Empty:
                continue
            if line is None:
                raise BenchmarkError(f"generator process {i} exited during the run: {_tail(logs[i])}")
            if line.startswith("done "):
                done[int(line.split()[1])] += 1
        if start_snap is None:
            start_snap = _snapshot(watch, proxy)
        end_snap = _snapshot(watch, proxy)
        for proc in procs:
            _send(proc, "stop")
        deadline = time.time() + 60
        while len(finals) < processes:
            i, line = _next_line(lines, deadline)
            if line is None:
                if i not in finals:
                    raise BenchmarkError(f"generator process {i} exited without its report: {_tail(logs[i])}")
                continue
            if line.startswith("{"):
                finals[i] = json.loads(line)
        peak, peak_active = watch.peak, watch.peak_active
    summary = summarise(path=path, n=n, plan=plan, heartbeat=heartbeat, processes=processes,
                        finals=list(finals.values()), start=start_snap, end=end_snap, peak=peak,
                        peak_active=peak_active, timed_out=timed_out, recording=recording)  # fmt: skip
    if stats is not None and stats.exists():
        served = json.loads(stats.read_text(encoding="utf-8"))
        queued = served.pop("queued")
        summary["proxy"] = {**served, "queued_mean": round(sum(queued) / max(1, len(queued)), 1),
                            "queued_max": max(queued, default=0)}  # fmt: skip
    return summary


# --------------------------------------------------------------------------- the proxy, timed


def serve_proxy(url: str, *, port: int, stats: Path) -> int:
    """``sweep proxy``'s server, as the command starts it (:func:`sweep.storage.open_storage`,
    :func:`sweep.proxy.make_server`), with every call timed (its wall time, and its thread's CPU time) and the
    queue of its thread pool sampled; the figures go to ``stats`` when it is stopped (SIGINT or SIGTERM)."""
    import logging
    import signal

    import grpc  # type: ignore[import-untyped]
    import optuna

    import sweep.proxy as module
    from sweep.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    threads = getattr(module, "THREADS", None)  # the commit before: no such setting, SQLAlchemy's pool
    storage = open_storage(url) if threads is None else open_storage(url, pool_size=threads)
    calls: dict[str, list[tuple[float, float]]] = {}
    lock = threading.Lock()

    class Timing(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)
            if handler is None or handler.unary_unary is None:
                return handler
            inner, name = handler.unary_unary, details.method.rsplit("/", 1)[-1]

            def call(request: Any, context: Any) -> Any:
                wall, cpu = time.perf_counter(), time.thread_time()
                try:
                    return inner(request, context)
                finally:
                    with lock:
                        calls.setdefault(name, []).append((time.perf_counter() - wall, time.thread_time() - cpu))

            return grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
            )

    pools: list[Any] = []
    real_server = grpc.server

    def server(pool: Any, *args: Any, interceptors: Sequence[Any] = (), **kwargs: Any) -> Any:
        pools.append(pool)
        return real_server(pool, *args, interceptors=[Timing(), *interceptors], **kwargs)

    grpc.server = server
    proxy = module.make_server(storage, url=url, host="127.0.0.1", port=port)
    proxy.start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    queued: list[int] = []
    while not stop.wait(0.1):
        queued.append(pools[0]._work_queue.qsize())
    proxy.stop(grace=2)
    with lock:
        by_method = {
            name: {
                "n": len(v),
                "wall_s": round(sum(w for w, _ in v), 3),
                "cpu_s": round(sum(c for _, c in v), 3),
                "p50_ms": round(percentile([w for w, _ in v], 0.5) * 1000, 2),
                "p99_ms": round(percentile([w for w, _ in v], 0.99) * 1000, 2),
            }
            for name, v in sorted(calls.items())
        }
    stats.write_text(json.dumps({"threads": pools[0]._max_workers, "methods": by_method, "queued": queued}))
    return 0


@contextlib.contextmanager
def timed_proxy(
    url: str, folder: Path, *, tree: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """:func:`serve_proxy` in a process of its own for the block (``tree``: a folder holding another ``sweep``
    to serve with, an older commit's); its ``grpc://`` URL, the process, and where its figures will be."""

    from benchmarks.harness import free_port, wait_for_port

    port = free_port()
    stats = folder / f"proxy-{port}.json"
    log = folder / f"proxy-{port}.log"
    env = bench_env() if tree is None else bench_env(PYTHONPATH=os.pathsep.join([str(tree), str(ROOT)]))
    cmd = [sys.executable, "-m", "benchmarks.load", "--serve-proxy", url, "--port", str(port), "--stats", str(stats)]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=tree or ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        try:
            wait_for_port(port, proc=proc)
        except BenchmarkError as exc:
            raise BenchmarkError(f"{exc}: {_tail(log)}") from None
        yield f"grpc://127.0.0.1:{port}", proc, stats
    finally:
        interrupt(proc)


def _before_tree(folder: Path) -> Path:
    """The ``sweep`` package of commit :data:`BEFORE`, extracted under ``folder`` once."""
    tree = folder / "before"
    if not (tree / "sweep" / "proxy.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", BEFORE, "sweep"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def _tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-4:])
    except OSError:
        return "(no log)"


def _pump(i: int, proc: subprocess.Popen[str], lines: queue.Queue[tuple[int, str | None]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put((i, line.strip()))
    lines.put((i, None))


def _next_line(lines: queue.Queue[tuple[int, str | None]], deadline: float) -> tuple[int, str | None]:
    try:
        return lines.get(timeout=max(0.1, deadline - time.time()))
    except queue.Empty:
        raise BenchmarkError("a generator process did not answer in time") from None


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, OSError):
        proc.stdin.write(line + "\n")
        proc.stdin.flush()


def _end(procs: Sequence[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            _send(proc, "stop")
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN when there is none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarise(*, path: str, n: int, plan: Plan, heartbeat: int, processes: int, finals: list[dict[str, Any]],
              start: Snapshot, end: Snapshot, peak: int, peak_active: int, timed_out: bool,
              recording: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One configuration's figures from its generator processes' reports and the machine's snapshots."""
    trials = [t for f in finals for t in f["trials"]]
    measured = [t for t in trials if t["measured"] and t["ok"]]
    throughput, upper_bounds = 0.0, 0
    for w in range(n):
        mine = [t for t in trials if t["worker"] == w and t["measured"]]
        ended = [t for t in mine if not t["stopped"]]
        if ended:  # trials it ended (a failed one is time spent for nothing) over the time they took
            throughput += sum(t["ok"] for t in ended) / sum(t["end"] - t["start"] for t in ended)
        elif mine:  # stopped in its first measured trial: at most one trial in the time it had run
            throughput += 1.0 / max(1e-9, mine[0]["end"] - mine[0]["start"])
            upper_bounds += 1
    ideal = n / plan.trial_seconds
    want = expected(recording)
    matching = sum(t["calls"] == want["calls"] and (path != "direct" or t["transactions"] == want["transactions"])
                   for t in measured)  # fmt: skip
    latencies: dict[str, list[float]] = {}
    for f in finals:
        for kind, values in f["latencies"].items():
            latencies.setdefault(kind, []).extend(values)
    window = max(1e-9, end.at - start.at)
    backends = sum(max(0.0, cpu - start.backends.get(pid, 0.0)) for pid, cpu in end.backends.items())
    generator = [f["cpu_window_s"] / f["window_s"] for f in finals if f.get("cpu_window_s") and f["window_s"] > 0]
    cores = os.cpu_count() or 1
    machine = (end.machine_s - start.machine_s) / window
    proxy = (end.proxy_s - start.proxy_s) / window if end.proxy_s is not None and start.proxy_s is not None else None
    own = sum(f["cpu_window_s"] for f in finals if f.get("cpu_window_s")) / window + (proxy or 0.0) + backends / window

    def mean_of(key: str) -> float:
        return sum(t[key] for t in measured) / len(measured) if measured else math.nan

    def per_trial(key: str) -> dict[str, float]:
        total: Counter[str] = Counter()
        for t in measured:
            total.update(t[key])
        return {k: round(v / len(measured), 2) for k, v in sorted(total.items())} if measured else {}

    errors = Counter(t["error"] for t in trials if t["error"])
    return {
        "path": path,
        "workers": n,
        "processes": processes,
        "trial_seconds": plan.trial_seconds,
        "heartbeat_s": heartbeat,
        "measured_trials": len(measured),
        "workers_measured": len({t["worker"] for t in measured}),
        "workers_upper_bound": upper_bounds,
        "trials_started": len(trials),
        "failed_trials": sum(1 for t in trials if t["error"]),
        "errors": dict(errors.most_common(5)),
        "outage_waits": sum(t["outages"] for t in trials),
        "timed_out": timed_out,
        "trials_per_s": throughput,
        "ideal_trials_per_s": ideal,
        "of_ideal": throughput / ideal if ideal else math.nan,
        "trial_s": mean_of("end") - mean_of("start") if measured else math.nan,
        "storage_s_per_trial": mean_of("storage_s"),
        "beat_storage_s_per_trial": mean_of("beat_s"),
        "calls_per_trial": per_trial("calls"),
        "transactions_per_trial": per_trial("transactions"),
        "beat_calls_per_trial": per_trial("beat_calls"),
        "beat_transactions_per_trial": per_trial("beat_transactions"),
        "faithful_trials": matching,
        "latency_ms": {
            k: {"n": len(v), "p50": round(percentile(v, 0.5) * 1000, 2), "p99": round(percentile(v, 0.99) * 1000, 2)}
            for k, v in sorted(latencies.items())
        },
        "connections_peak": peak,
        "connections_peak_active": peak_active,
        "cpu": {
            "window_s": round(window, 2),
            "generator_cores": round(sum(f["cpu_window_s"] for f in finals if f.get("cpu_window_s")) / window, 3),
            "generator_process_max": round(max(generator), 3) if generator else None,
            "proxy_cores": round(proxy, 3) if proxy is not None else None,
            "database_cores": round(backends / window, 3),
            "machine_cores": round(machine, 3),
            "cores": cores,
        },
        # The generator saturates when one of its processes uses a whole core (its threads share one), or
        # when what the run itself uses (generator, proxy, database) comes near the machine's cores.
        "saturated": (bool(generator) and max(generator) >= 0.85)
        or (proxy is not None and proxy >= 0.85)
        or own >= 0.9 * cores,
        "machine_busy": machine >= 0.9 * cores,
        "open_s": max((f["open_s"] for f in finals), default=math.nan),
        "open_waits": sum(f.get("open_waits", 0) for f in finals),
    }


# --------------------------------------------------------------------------- the database


@contextlib.contextmanager
def load_database(base_url: str, *, reserve: int = RESERVE_CONNECTIONS) -> Iterator[tuple[str, str, int, Any]]:
    """A fresh database owned by a fresh role whose connections are capped at ``max_connections - reserve``.

    Yields (its URL, its name, the cap, an administrator's engine on the server). Both are dropped afterwards.
    """
    import sqlalchemy as sa

    name = f"sweep_load_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        limit = int(conn.execute(sa.text("SHOW max_connections")).scalar_one()) - reserve
        conn.execute(sa.text(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT {limit}"))
        conn.execute(sa.text(f"CREATE DATABASE {name} OWNER {name}"))
    url = sa.engine.make_url(base_url).set(username=name, password=None, database=name)
    try:
        yield url.render_as_string(hide_password=False), name, limit, admin
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": name})  # fmt: skip
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {name}"))
        admin.dispose()


# --------------------------------------------------------------------------- a whole run


def measure(*, base_url: str, folder: Path, workers: Sequence[int], paths: Sequence[str], plan: Plan | None = None,
            rounds: int = 1, trial_seconds: float = 60.0, trials: int = 2, script: Path | None = None,
            skip: Sequence[tuple[str, int]] = (), partial: Path | None = None,
            log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:  # fmt: skip
    """Record the script (unless given), then run every (path, N) but those in ``skip`` ``rounds`` times, in
    rotating order. ``partial``: a file that holds the figures so far after each configuration."""
    configs = {_key(path, n): (path, n) for n in workers for path in paths if (path, n) not in skip}
    found: dict[str, list[dict[str, Any]]] = {key: [] for key in configs}
    with load_database(base_url) as (url, database, limit, admin):
        if script is None:
            log(f"{NAME}: recording one trial of {REPEATS} x {EPOCHS} epochs, directly and through sweep proxy")
            script = folder / "load-script.json"
            script.write_text(json.dumps(record_script(url, folder)) + "\n", encoding="utf-8")
        plan = replace(plan, script=script) if plan else Plan(script=script, trial_seconds=trial_seconds, trials=trials)
        for r in range(rounds):
            order = rotation(list(configs), r)
            log(f"{NAME}: round {r + 1}/{rounds}: {', '.join(order)}")
            for key in order:
                path, n = configs[key]
                try:
                    found[key].append(run_config(path=path, n=n, url=url, admin=admin, database=database,
                                                 plan=plan, folder=folder, log=log))  # fmt: skip
                except BenchmarkError as exc:  # one configuration that broke loses no other's figures
                    log(f"{NAME}: {key}: {exc}")
                    found[key].append({"path": path, "workers": n, "error": str(exc)[-600:]})
                if partial is not None:
                    partial.write_text(json.dumps({"partial": True, "configs": found}, default=str) + "\n")
    recorded = json.loads(script.read_text(encoding="utf-8"))
    return {
        "date": now_iso(),
        "cores": os.cpu_count(),
        "connection_limit": limit,
        "rounds": rounds,
        "trial_seconds": plan.trial_seconds,
        "trials_per_worker": plan.trials,
        "workers": list(workers),
        "paths": list(paths),
        "expected": {p: expected(rec) for p, rec in recorded["paths"].items()},
        "beats_recorded": {p: rec["beats"] for p, rec in recorded["paths"].items()},
        "configs": found,
    }


def _key(path: str, n: int) -> str:
    return f"{path}-{n}"


def ratios(report: Mapping[str, Any]) -> dict[str, Any]:
    """The two goals' ratios, per round and their medians: direct storage time at N (64, else the largest) over
    N = 1, and trials/s through the proxy at N over direct at N."""
    configs = report["configs"]
    many = 64 if 64 in report["workers"] else max(report["workers"])
    out: dict[str, Any] = {"n": many}

    def series(key: str, name: str) -> list[float]:
        return [c.get(name, math.nan) for c in configs.get(key, [])]  # a configuration that broke: no figure

    if _key("direct", 1) in configs and _key("direct", many) in configs:
        num, den = series(_key("direct", many), "storage_s_per_trial"), series(_key("direct", 1), "storage_s_per_trial")
        out["direct_storage"] = {"per_round": [a / b if b else math.nan for a, b in zip(num, den, strict=True)],
                                 "median": median_ratio(num, den)}  # fmt: skip
    for path in report["paths"]:
        if path != "direct" and _key(path, many) in configs and _key("direct", many) in configs:
            num, den = series(_key(path, many), "trials_per_s"), series(_key("direct", many), "trials_per_s")
            out[f"{path}_throughput"] = {"per_round": [a / b if b else math.nan for a, b in zip(num, den, strict=True)],
                                         "median": median_ratio(num, den)}  # fmt: skip
    return out


def table(report: Mapping[str, Any]) -> str:
    """The measured table (markdown): one row per path and N, medians over rounds."""
    lines = [
        "| path | N | trials/s (ideal) | of ideal | storage s/trial | beats s/trial | peak connections "
        "| slowest p99 (ms) | CPU: generator / proxy / database / machine (cores) | faithful | failed / outage waits |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, every in report["configs"].items():
        runs = [r for r in every if "error" not in r]
        if not runs:
            lines.append(f"| {key} | error: {every[0]['error'][:200] if every else 'not run'} |")
            continue
        first = runs[0]

        def med(name: str, runs: list[dict[str, Any]] = runs) -> float:
            return median(r[name] for r in runs)

        def cpu(name: str, runs: list[dict[str, Any]] = runs) -> str:
            value = median(r["cpu"][name] for r in runs if r["cpu"][name] is not None)
            return "-" if math.isnan(value) else f"{value:.2f}"

        slow = max(first["latency_ms"].items(), key=lambda kv: kv[1]["p99"], default=("-", {"p99": math.nan}))
        faithful = sum(r["faithful_trials"] for r in runs)
        bound = any(r["workers_upper_bound"] for r in runs)  # some workers never ended a measured trial
        total = sum(r["measured_trials"] for r in runs)
        lines.append(
            f"| {first['path']} | {first['workers']} | {'<= ' if bound else ''}{med('trials_per_s'):.3g} "
            f"({first['ideal_trials_per_s']:.3g}) "
            f"| {med('of_ideal'):.2f} | {med('storage_s_per_trial'):.3f} | {med('beat_storage_s_per_trial'):.3f} "
            f"| {max(r['connections_peak'] for r in runs)} | {slow[0]} {slow[1]['p99']:.0f} "
            f"| {cpu('generator_cores')} / {cpu('proxy_cores')} / {cpu('database_cores')} / {cpu('machine_cores')}"
            f"{' (saturated)' if any(r['saturated'] for r in runs) else ''}"
            f"{' (machine busy)' if any(r.get('machine_busy') for r in runs) else ''} "
            f"| {faithful}/{total} | {sum(r['failed_trials'] for r in runs)} / {sum(r['outage_waits'] for r in runs)} |"
        )
    return "\n".join(lines) + "\n"


def latency_table(report: Mapping[str, Any]) -> str:
    """p50 / p99 (ms) of each call kind, one column per configuration (its first round)."""
    configs = {k: ok[0] for k, v in report["configs"].items() if (ok := [r for r in v if "error" not in r])}
    kinds = sorted({k for c in configs.values() for k in c["latency_ms"]})
    lines = ["| kind | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    for kind in kinds:
        cells = []
        for c in configs.values():
            lat = c["latency_ms"].get(kind)
            cells.append(f"{lat['p50']:.1f} / {lat['p99']:.0f}" if lat else "-")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the suite and the command


def run(ctx: Context) -> Result:
    res = Result(NAME, TITLE)
    if not ctx.postgres_base:
        res.notes.append("$SWEEP_TEST_POSTGRES_URL is not set: skipped (this benchmark loads a PostgreSQL server)")
        return res
    # The run of README section 13 (about 25 minutes on 2 cores); --quick: 1 and 4 workers, 4 s trials.
    workers, trial_s = ctx.pick(quick=((1, 4), 4.0), full=((1, 16, 64, 128), FULL_TRIAL_S))
    before_at = () if ctx.quick else (64,)  # the commit before, beside the goal's N only
    skip = [("proxy-before", n) for n in workers if n not in before_at]
    report = measure(base_url=ctx.postgres_base, folder=ctx.folder(NAME), workers=workers,
                     paths=(*PATHS, "proxy-before"), skip=skip, trial_seconds=trial_s, trials=1,
                     log=ctx.log)  # fmt: skip
    add_rows(res, report)
    res.raw = report
    return res


def add_rows(res: Result, report: Mapping[str, Any]) -> None:
    found = ratios(report)
    many = found["n"]
    if "direct_storage" in found:
        res.add(f"direct storage time per trial, {many} workers / 1", found["direct_storage"]["median"],
                goal=GOAL_DIRECT if many == 64 else None)  # fmt: skip
    for path in report["paths"]:
        if f"{path}_throughput" in found:
            res.add(f"trials/s through {path}, {many} workers / direct", found[f"{path}_throughput"]["median"],
                    goal=GOAL_PROXY if many == 64 and path == "proxy" else None)  # fmt: skip
    for key, every in report["configs"].items():
        runs = [r for r in every if "error" not in r]
        if len(runs) < len(every):
            res.notes.append(f"{key}: {every[0].get('error', '')[:300]}")
        if runs:
            res.add(f"{key}: trials/s of the ideal", median(r["of_ideal"] for r in runs),
                    note=f"{median(r['trials_per_s'] for r in runs):.3g} trials/s, storage "
                    f"{median(r['storage_s_per_trial'] for r in runs):.3f} s/trial, "
                    f"{max(r['connections_peak'] for r in runs)} connections")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="Record one sweep trial's storage calls, then replay them as N workers on one PostgreSQL, "
        "directly and through sweep proxy.",
    )
    parser.add_argument("--storage", help="a PostgreSQL server URL (default: $SWEEP_TEST_POSTGRES_URL); a database "
                        "and a role are created there and dropped afterwards")  # fmt: skip
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 16, 64, 128], metavar="N")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=[*PATHS, "proxy-before"], metavar="PATH",
                        help="direct, proxy, proxy-before (the sweep proxy of the commit before its reads were "
                        f"shared, {BEFORE[:7]})")  # fmt: skip
    parser.add_argument("--skip", nargs="+", default=[], metavar="PATH-N",
                        help="configurations not to run, for example proxy-before-1")  # fmt: skip
    parser.add_argument("--trial-seconds", type=float, default=60.0, help="length of a trial's training (60)")
    parser.add_argument("--trials", type=int, default=2, help="measured trials per worker (2)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each running every configuration (1)")
    parser.add_argument("--processes", type=int, help=f"generator processes (default: one per {WORKERS_PER_PROCESS})")
    parser.add_argument("--script", type=Path, help="replay this recorded script instead of recording one")
    parser.add_argument("--record-only", type=Path, metavar="FILE", help="record the script into FILE and stop")
    parser.add_argument("--out", type=Path, help="write the raw results here (JSON)")
    parser.add_argument("--quick", action="store_true", help="N = 1 and 4, 10 s trials, 1 measured trial each")
    parser.add_argument("--probe", metavar="STUDY", help=argparse.SUPPRESS)
    parser.add_argument("--epoch-seconds", type=float, default=RECORD_EPOCH_S, help=argparse.SUPPRESS)
    parser.add_argument("--replay", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--serve-proxy", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.storage, epoch_seconds=args.epoch_seconds)))
        return 0
    if args.replay:
        return replay_main(json.loads(args.replay))
    if args.serve_proxy:
        return serve_proxy(args.serve_proxy, port=args.port, stats=args.stats)
    base = args.storage or postgres_base()
    if not base:
        parser.error("give --storage or set $SWEEP_TEST_POSTGRES_URL (a PostgreSQL server)")
    import tempfile

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="sweep-load-") as tmp:
        folder = Path(tmp)
        if args.record_only:
            with load_database(base) as (url, _, _, _):
                args.record_only.write_text(json.dumps(record_script(url, folder), indent=1) + "\n", encoding="utf-8")
            return 0
        workers, trial_s, trials = ((1, 4), 10.0, 1) if args.quick else (args.workers, args.trial_seconds, args.trials)
        plan = Plan(script=args.script or folder / "load-script.json", trial_seconds=trial_s, trials=trials,
                    processes=args.processes)  # fmt: skip
        report = measure(base_url=base, folder=folder, workers=workers, paths=args.paths, plan=plan,
                         rounds=args.rounds, script=args.script, log=log, partial=args.out,
                         skip=[(k.rsplit("-", 1)[0], int(k.rsplit("-", 1)[1])) for k in args.skip])  # fmt: skip
    report["command"] = "python -m benchmarks.load " + " ".join(sys.argv[1:] if argv is None else argv)
    report["ratios"] = ratios(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print(table(report))
    print(latency_table(report))
    print(json.dumps(report["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
