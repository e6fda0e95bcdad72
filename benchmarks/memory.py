"""4. Worker memory: resident memory of one process across many tiny trials, with and without recycling.

Without recycling: one process (a subprocess of its own) trains tiny digits
LSTMs of varying shape one after another exactly as a worker does
(``Objective.train``: ``sweep.train.fit_repeat`` then ``sweep.train.release``
for every repeat) and reads ``/proc/self/statm`` after each trial. Growth is
the RSS after the last trial minus the RSS after trial 10 (the first trials
warm TensorFlow up).

With recycling: a real ``sweep run --set worker.max_trials=K`` (full run
only; it runs beside the probe, as only memory is measured); the benchmark
samples the RSS of the worker processes (children of ``sweep run``, from
``/proc/PID/statm``) several times a second. Each worker's growth is its
highest RSS minus its RSS once its first trial has finished (the same
baseline the worker itself uses for ``worker.max_memory_growth_mb``); the
figure is the largest growth of any worker. Both runs also give the bound
that the settings imply (growth per trial times ``worker.max_trials``,
capped by ``worker.max_memory_growth_mb``), for the defaults and for K.

Large models: a real ``sweep run`` (full run only) of a stacked-LSTM study on
the Mackey-Glass series (1 to 3 layers of 32 to 128 units, batches down to
16), whose trials grow a worker by very different amounts, with the default
worker settings. It reports the largest growth of any worker at its trials'
ends (what ``worker.max_memory_growth_mb`` bounds) and the largest growth of
one trial.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BenchmarkError,
    Context,
    Goal,
    Result,
    bench_env,
    digits_study,
    ratio,
    sqlite_url,
    sweep_cmd,
    write_study,
)

NAME = "memory"
TITLE = "4. worker memory"
GOAL = Goal("<", 100.0, "< 100 MB")
UNTIMED = True
"""Only memory is measured: the suite may run this beside another untimed benchmark."""
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
TINY_SEARCH: dict[str, Any] = {
    "n_layers": {"low": 1, "high": 2},
    "units": [4, 6, 8],
    "activation": ["tanh", "relu"],
    "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
    "optimizer": ["adam", "rmsprop", "sgd"],
    "batch_size": 256,
    "dropout": {"low": 0.0, "high": 0.2},
    "l2": {"low": 1e-6, "high": 1e-4, "log": True},
    "layer_norm": [False, True],
}


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MB from ``/proc/PID/statm`` (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 1e6
    except (OSError, ValueError, IndexError):
        return None


def growth(samples: list[float], *, start: int = 10) -> float:
    """RSS after the last trial minus RSS after trial ``start`` (1-based), in MB."""
    if len(samples) < start:
        raise ValueError(f"need at least {start} samples, got {len(samples)}")
    return samples[-1] - samples[start - 1]


def tiny_configs(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Tiny configurations of varying shape (a new graph for TensorFlow each time), as a sweep draws them."""
    import random

    rng = random.Random(seed)
    return [
        {
            "n_layers": rng.choice([1, 2]),
            "units": rng.choice([4, 6, 8]),
            "activation": rng.choice(["tanh", "relu"]),
            "learning_rate": 10 ** rng.uniform(-3, -2),
            "optimizer": rng.choice(["adam", "rmsprop", "sgd"]),
            "batch_size": 256,
            "dropout": rng.uniform(0.0, 0.2),
            "l2": 10 ** rng.uniform(-6, -4),
            "layer_norm": rng.choice([False, True]),
        }
        for _ in range(n)
    ]


def probe(study_file: str, *, trials: int, threads: int) -> dict[str, Any]:
    """Inside the probe process: train ``trials`` tiny configurations like a worker; RSS after each."""
    from sweep.train import configure_threads

    configure_threads(threads)
    from sweep.data import data_kwargs, load_dataset
    from sweep.objective import Objective
    from sweep.space import Hyperparams
    from sweep.spec import load_spec

    spec = load_spec(study_file)
    objective = Objective(spec, load_dataset(**data_kwargs(spec.data)))
    before = rss_mb()
    samples: list[float] = []
    seconds: list[float] = []
    for params in tiny_configs(trials):
        start = time.perf_counter()
        objective.train(Hyperparams.from_params(params))
        seconds.append(round(time.perf_counter() - start, 3))
        samples.append(round(rss_mb() or 0.0, 2))
    return {"rss_before_mb": before, "rss_mb": samples, "seconds": seconds}


class ChildSampler:
    """Samples the RSS of every ``sweep.worker`` process below ``root_pid``, and the study's finished trials."""

    def __init__(self, root_pid: int, db_file: Path, *, every: float = 0.2) -> None:
        self.root_pid = root_pid
        self.db_file = db_file
        self.every = every
        self.samples: dict[int, list[tuple[float, float, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ChildSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _finished(self) -> dict[int, int]:
        """Finished trials per worker pid (from the ``worker`` attr, ``host:pid``, each trial carries)."""
        try:
            with sqlite3.connect(f"file:{self.db_file}?mode=ro", uri=True, timeout=1) as conn:
                rows = conn.execute(
                    "SELECT a.value_json, COUNT(*) FROM trials t JOIN trial_user_attributes a "
                    "ON a.trial_id = t.trial_id WHERE a.key = 'worker' "
                    "AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL') GROUP BY a.value_json"
                ).fetchall()
        except sqlite3.Error:
            return {}
        out: dict[int, int] = {}
        for value, count in rows:
            pid = str(json.loads(value)).rsplit(":", 1)[-1]
            if pid.isdigit():
                out[int(pid)] = int(count)
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            finished = self._finished()
            now = time.time()
            for pid in _workers_below(self.root_pid):
                mb = rss_mb(pid)
                if mb is not None:
                    self.samples.setdefault(pid, []).append((now, mb, finished.get(pid, 0)))
            self._stop.wait(self.every)

    def per_worker(self) -> list[dict[str, Any]]:
        """Each worker's peak RSS and its growth from the end of its own first trial (the worker's baseline).

        ``growth_mb`` compares the RSS at the ends of its trials (the first sample after each one
        finished), as the worker itself and the no-recycling probe do; ``peak_growth_mb`` takes
        the highest sample, during training included.
        """
        out = []
        for pid, rows in sorted(self.samples.items(), key=lambda kv: kv[1][0][0]):
            after = [mb for _, mb, count in rows if count >= 1]
            ends = [mb for i, (_, mb, count) in enumerate(rows) if count >= 1 and (i == 0 or rows[i - 1][2] < count)]
            baseline = ends[0] if ends else None
            out.append(
                {
                    "pid": pid,
                    "samples": len(rows),
                    "peak_mb": round(max(mb for _, mb, _ in rows), 1),
                    "baseline_mb": None if baseline is None else round(baseline, 1),
                    "growth_mb": None if baseline is None else round(max(ends) - baseline, 1),
                    "peak_growth_mb": None if baseline is None else round(max(after) - baseline, 1),
                    "trials_seen": rows[-1][2],
                }
            )
        return out


def _workers_below(root: int) -> list[int]:
    """PIDs of ``python -m sweep.worker`` processes descended from ``root`` (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    below: set[int] = set()
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in below:
                below.add(child)
                frontier.append(child)
    workers = []
    for pid in below:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sweep.worker" in f.read():
                    workers.append(pid)
        except OSError:
            continue
    return workers


LARGE_LSTM_SEARCH: dict[str, Any] = {
    "n_layers": {"low": 1, "high": 3},
    "units": [32, 64, 128],
    "activation": ["tanh", "relu"],
    "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
    "optimizer": ["adam", "rmsprop", "nadam"],
    "batch_size": [16, 32, 64],
    "dropout": {"low": 0.0, "high": 0.2},
    "l2": {"low": 1e-6, "high": 1e-4, "log": True},
}


def large_lstm_study(n_trials: int) -> dict[str, dict[str, Any]]:
    """A stacked-LSTM study on the Mackey-Glass series, default worker settings, one thread per worker."""
    return {
        "study": {"name": "memory-lstm", "seed": 3, "n_trials": n_trials},
        "data": {"source": "mackey_glass", "lookback": 24, "horizon": 1},
        "model": {"family": "lstm"},
        "search": LARGE_LSTM_SEARCH,
        "training": {"max_epochs": 2, "patience": 0, "repeats": 1},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "racing": {"enabled": False},
        "dashboard": {"notes": False},
        "worker": {"threads": 1},
    }


def trial_growths(sampler: ChildSampler) -> list[float]:
    """The growth of each trial after a worker's first: its end's RSS minus the previous trial's end's."""
    out: list[float] = []
    for rows in sampler.samples.values():
        ends = [mb for i, (_, mb, count) in enumerate(rows) if count >= 1 and (i == 0 or rows[i - 1][2] < count)]
        out.extend(b - a for a, b in itertools.pairwise(ends))
    return out


def _large_lstm(ctx: Context, res: Result, n_trials: int) -> dict[str, Any]:
    folder = ctx.folder(f"{NAME}-lstm")
    study_file = write_study(folder, large_lstm_study(n_trials))
    db = folder / "lstm.db"
    ctx.log(f"{NAME}: sweep run of {n_trials} stacked-LSTM trials (units up to 128, batch down to 16), 2 workers")
    proc = _recycled_run(study_file, db, "--workers", "2")
    with ChildSampler(proc.pid, db) as sampler:
        _, stderr = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise BenchmarkError(f"sweep run (large LSTM) exited {proc.returncode}: {stderr.strip()[-300:]}")
    workers = sampler.per_worker()
    growths = [w["growth_mb"] for w in workers if w["growth_mb"] is not None]
    per_trial = trial_growths(sampler)
    from sweep.spec import WorkerSection

    cap = WorkerSection().max_memory_growth_mb
    res.add(
        f"RSS growth of any worker at its trials' ends, {n_trials}-trial stacked-LSTM study, default settings",
        max(growths) if growths else None,
        unit="MB",
        goal=Goal("<=", cap, f"<= {cap:g} MB (max_memory_growth_mb)"),
        note=f"{len(workers)} worker processes, {sum(w['trials_seen'] for w in workers)} trials",
    )
    res.add("largest growth of one trial in that study", max(per_trial) if per_trial else None, unit="MB")
    return {"trials": n_trials, "workers": workers, "trial_growths_mb": [round(g, 1) for g in per_trial]}


def _recycled_run(study_file: Path, db: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        sweep_cmd("run", str(study_file), "--storage", sqlite_url(db), "-q", *extra),
        env=bench_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(ctx: Context) -> Result:
    res = Result(NAME, TITLE)
    trials, recycled_trials, max_trials = ctx.pick(quick=(30, 0, 6), full=(200, 40, 6))
    lstm_trials = ctx.pick(quick=0, full=80)
    folder = ctx.folder(NAME)
    sections = digits_study(
        name="memory", n_trials=max(1, recycled_trials), max_epochs=1, repeats=1, search=TINY_SEARCH,
        sampler={"name": "random"}, worker={"max_trials": max_trials, "threads": 1},
    )  # fmt: skip
    study_file = write_study(folder, sections)

    ctx.log(f"{NAME}: {trials} tiny trials in one process, no recycling")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--probe",
        str(study_file),
        "--trials",
        str(trials),
        "--threads",
        "1",
    ]
    probe_proc = subprocess.Popen(cmd, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[dict[str, Any]] = []
    try:
        if recycled_trials:
            # Memory, not time, is measured: the real sweep run goes beside the probe.
            ctx.log(f"{NAME}: beside it, sweep run of {recycled_trials} trials with worker.max_trials={max_trials}")
            db = folder / "memory.db"
            proc = _recycled_run(study_file, db)
            with ChildSampler(proc.pid, db) as sampler:
                _, stderr = proc.communicate(timeout=3600)
            if proc.returncode != 0:
                raise BenchmarkError(f"sweep run exited {proc.returncode}: {stderr.strip()[-300:]}")
            workers = sampler.per_worker()
        out, err = probe_proc.communicate(timeout=3600)
    finally:
        if probe_proc.poll() is None:
            probe_proc.kill()
    if probe_proc.returncode != 0:
        raise BenchmarkError(f"the memory probe exited {probe_proc.returncode}: {err.strip()[-300:]}")
    found = json.loads(out.strip().splitlines()[-1])
    samples = found["rss_mb"]
    without = growth(samples)
    per_trial = without / max(1, len(samples) - 10)
    res.add(f"RSS growth, trial 10 to {len(samples)}, no recycling", without, unit="MB", goal=GOAL)
    from sweep.spec import WorkerSection

    defaults = WorkerSection()
    cap = defaults.max_memory_growth_mb
    # Growth counts from the end of a worker's first trial; a worker leaves before the trial
    # that would take it past the cap (at the growth rate it has seen so far).
    default_bound = min(per_trial * (defaults.max_trials - 1), cap)
    res.add(
        f"RSS growth bound with the defaults (worker.max_trials={defaults.max_trials}, "
        f"max_memory_growth_mb={cap:g})",
        default_bound,
        unit="MB",
        goal=GOAL,
        note=f"{per_trial:.1f} MB/trial x {defaults.max_trials - 1}, capped at {cap:g}",
    )
    bound = min(per_trial * (max_trials - 1), cap)
    with_recycling: float | None
    if workers:
        growths = [w["growth_mb"] for w in workers if w["growth_mb"] is not None]
        with_recycling = max(growths) if growths else None
        res.add(
            f"RSS growth of any worker at its trials' ends, sweep run --set worker.max_trials={max_trials} (measured)",
            with_recycling,
            unit="MB",
            goal=GOAL,
            note=f"{len(workers)} worker processes for {recycled_trials} trials",
        )
        peaks = [w["peak_growth_mb"] for w in workers if w["peak_growth_mb"] is not None]
        res.add(
            "the same, highest RSS during training included",
            max(peaks) if peaks else None,
            unit="MB",
        )
        res.add(
            "peak worker RSS with recycling / peak RSS without",
            ratio(max(w["peak_mb"] for w in workers), max(samples)),
        )
    else:
        with_recycling = None
        res.add(
            f"RSS growth bound with worker.max_trials={max_trials} (implied)",
            bound,
            unit="MB",
            goal=GOAL,
            note="quick run: the real recycled sweep run is in the full run only",
        )
    idle = [w for w in workers if w["trials_seen"] == 0]
    if idle:
        res.notes.append(
            f"{len(idle)} of {len(workers)} worker processes trained nothing: successors started ahead of a "
            "recycle (held until needed) that the end of the study made unnecessary, then killed"
        )
    res.notes.append(
        f"without recycling one process grew {per_trial:.1f} MB per trial after trial 10 "
        f"({samples[9]:.0f} MB to {samples[-1]:.0f} MB over {len(samples)} trials): TensorFlow keeps memory after "
        "Keras clears its global state (a plain model.fit loop grows alike); recycling is what bounds it"
    )
    large = _large_lstm(ctx, res, lstm_trials) if lstm_trials else None
    res.raw = {
        "large_lstm": large,
        "without_recycling": {**found, "trials": trials, "growth_mb": without, "growth_mb_per_trial": per_trial},
        "with_recycling": {
            "trials": recycled_trials,
            "worker_max_trials": max_trials,
            "workers": workers,
            "growth_mb": with_recycling,
            "implied_bound_mb": bound,
            "default_settings_bound_mb": default_bound,
        },
    }
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--probe", metavar="STUDY_FILE", required=True)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.probe, trials=args.trials, threads=args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
