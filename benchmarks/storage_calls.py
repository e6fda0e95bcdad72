"""12. Storage calls: what one trial of sweep's worker asks of the storage, by kind.

Each storage call is a transaction on the database, or a round trip through
``sweep proxy`` (Optuna's gRPC storage proxy), so their number per trial is
what many workers on one storage pay for. The probe runs the real worker
(:func:`sweep.worker.run_worker`, target 1) on a fresh study in a process of its own,
with everything a trial does to the storage as a worker does it: the objective,
the records, the heartbeats (:mod:`sweep.liveness`), the dashboard notes. Only
training is replaced, at the one module that imports TensorFlow
(:mod:`sweep.train`): a deterministic stand-in gives each repeat a curve of
``max_epochs`` epochs, calling the epoch hook after every epoch as Keras would.

The storage the worker opens is counted where it meets the database: every
method of Optuna's ``BaseStorage`` (and the heartbeat's) called on the
``RDBStorage`` under Optuna's cache, or on the gRPC client, with its time.
The cache calls private methods of ``RDBStorage`` for three of them; they are
counted under the public name (``_get_trials`` as ``get_all_trials``,
``_create_new_trial`` as ``create_new_trial``, ``_set_trial_param`` as
``set_trial_param``). The calls of ``study.optimize`` (the trial: ask,
objective, tell, and the beats while it runs) are the trial's; what the worker
does around it (opening the study, waiting for room, the allocation, the
study's ranking note) is counted apart. Beats come every
``worker.heartbeat_interval`` seconds (30 by default), so a real trial adds
about 4 calls per 30 s of training (Optuna's beat, sweep's beat, the reaper's
two reads); the stand-in trial takes well under a second, so it has the beats
every trial has at its start only.

``python -m benchmarks.storage_calls`` prints the table (on
``$SWEEP_TEST_POSTGRES_URL`` when set, else a SQLite file; ``--proxy`` also
through ``sweep proxy``); :data:`BEFORE` holds the counts measured before the
write path was batched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BenchmarkError,
    Context,
    Goal,
    Result,
    bench_env,
    digits_study,
    postgres_base,
    postgres_database,
    sqlite_url,
    sweep_proxy,
    write_study,
)

NAME = "storage_calls"
TITLE = "12. storage calls"
UNTIMED = True  # counts, not times: it may run beside the others
REPEATS = 5
EPOCHS = 20
GOAL = Goal("<=", 0.25, "<= 0.25 (a quarter)")

BEFORE: dict[str, int] = {
    "get_all_trials": 28,
    "set_trial_user_attr": 22,
    "set_trial_intermediate_value": 20,
    "set_trial_system_attr": 12,
    "set_trial_param": 9,
    "get_trial": 3,
    "_get_stale_trial_ids": 2,
    "get_study_system_attrs": 2,
    "set_study_system_attr": 2,
    "create_new_trial": 1,
    "record_heartbeat": 1,
    "set_trial_state_values": 1,
}
"""The trial's calls by kind before its writes were held (:mod:`sweep.batch`): 103 transactions.

Measured on 2026-12-06 with this module on the committed tree before the change
(``git archive ed8d53c``, this file copied in), PostgreSQL 15 on this machine:
``python -m benchmarks.storage_calls --proxy --json``. The trial completed all 5
repeats of 20 epochs, as it does now, and stored the same rows.
"""
BEFORE_PROXY: dict[str, int] = {
    "get_all_trials": 28,
    "set_trial_user_attr": 22,
    "set_trial_intermediate_value": 20,
    "set_trial_system_attr": 12,
    "set_trial_param": 9,
    "get_trial": 3,
    "get_study_system_attrs": 2,
    "set_study_system_attr": 2,
    "create_new_trial": 1,
    "set_trial_state_values": 1,
}
"""The same trial through ``sweep proxy`` before the change: 100 round trips."""

COUNTED = (
    # BaseStorage
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
    "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial", "get_all_trials", "get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs",
    "get_trial_system_attrs", "remove_session", "check_trial_is_updatable",
    # BaseHeartbeat
    "record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval", "get_heartbeat_stale_trial_callback",
    # what Optuna's cache calls on an RDBStorage in place of the public methods
    "_get_trials", "_create_new_trial", "_set_trial_param", "_get_best_trial_id",
    # sweep's held writes (sweep.batch)
    "write_held",
)  # fmt: skip
PUBLIC = {"_get_trials": "get_all_trials", "_create_new_trial": "create_new_trial",
          "_set_trial_param": "set_trial_param", "_get_best_trial_id": "get_best_trial"}  # fmt: skip
LOCAL_ONLY = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "remove_session",
              "check_trial_is_updatable"}  # fmt: skip
"""Methods that answer without the database (settings, a check on a state already read): not counted."""


# --------------------------------------------------------------------------- counting


class CallCounter:
    """Counts what storages are asked, by kind (the storage method) and phase (``trial`` or ``worker``).

    On a relational storage a call is a transaction on the database: each one
    that begins is counted under the storage method that began it (the
    outermost one of its thread), so a method that writes nothing to the
    database (a write held by :mod:`sweep.batch`) counts nothing, and one that
    runs two transactions counts two. On any other storage (the gRPC client) a
    call is a call of a method: a round trip. Times are those of the methods.

    :meth:`watch` wraps the methods of one storage object in place, so that the object stays what
    it was for every ``isinstance`` check (Optuna's cache wraps an ``RDBStorage``, the heartbeat
    is found by type) and every call still goes to it.
    """

    def __init__(self) -> None:
        self.phase = "worker"
        self.calls: dict[str, dict[str, int]] = {}
        self.methods: dict[str, dict[str, int]] = {}
        self.seconds: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def watch(self, storage: Any) -> Any:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            from sqlalchemy import event

            event.listen(engine, "begin", lambda conn: self._add(self.calls, self._current() or "(other)", 1))
        for name in COUNTED:
            if name in LOCAL_ONLY:
                continue
            method = getattr(storage, name, None)
            if callable(method):
                setattr(storage, name, self._counted(PUBLIC.get(name, name), method, transactions=engine is not None))
        return storage

    def _current(self) -> str | None:
        return getattr(self._local, "kind", None)

    def _add(self, into: dict[str, dict[str, Any]], kind: str, amount: float) -> None:
        with self._lock:
            by_kind = into.setdefault(self.phase, {})
            by_kind[kind] = by_kind.get(kind, 0) + amount

    def _counted(self, kind: str, method: Callable[..., Any], *, transactions: bool) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._current() is not None:  # called by another counted method: its calls are that one's
                return method(*args, **kwargs)
            self._local.kind = kind
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._local.kind = None
                self._add(self.seconds, kind, time.perf_counter() - start)
                self._add(self.methods, kind, 1)
                if not transactions:
                    self._add(self.calls, kind, 1)

        return call

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator[None]:
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before


# --------------------------------------------------------------------------- the stand-in for training


def stand_in_curves(seed: int, params: Any, max_epochs: int) -> tuple[list[float], list[float]]:
    """A repeat's (loss, val_loss): smooth, decreasing, the same for the same seed and parameters."""
    lr = float(getattr(params, "learning_rate", 0.01))
    rate = 0.75 + 0.2 * min(1.0, abs(math.log10(lr)) / 5)
    offset = 0.01 * (seed % 7)
    val = [0.3 + offset + 2.0 * rate**e for e in range(max_epochs)]
    train = [0.2 + offset + 2.0 * rate ** (e + 1) for e in range(max_epochs)]
    return train, val


Curve = Callable[[int, Any, int], tuple[list[float], list[float]]]
"""(seed, hyperparameters, max_epochs) -> a repeat's (loss, val_loss)."""


@contextlib.contextmanager
def cheap_training(curves: Curve = stand_in_curves, *, epoch_work: Callable[[], None] | None = None) -> Iterator[None]:
    """Replace TensorFlow in :mod:`sweep.train` by a stand-in for the block; nothing else changes.

    The stand-in ``fit_repeat`` trains for ``max_epochs`` epochs along ``curves``
    and ends as the real one does: it polls ``should_stop`` before each epoch
    (interrupted), stops at the first non-finite loss (diverged, the hook not
    called), calls the epoch hook after every other epoch (pruned when it says
    so). ``release`` and the thread and GPU set-up do nothing. ``epoch_work``,
    when given, is each epoch's training (called before its hook): a sleep, a count.
    """
    import sweep.train as train
    from sweep.train import Curves, Stop

    def fit_repeat(params: Any, *, max_epochs: int, seed: int, on_epoch: Any = None, should_stop: Any = None,
                   keep_model: bool = False, **_: Any) -> tuple[Any, Any]:  # fmt: skip
        train_loss, val_loss = curves(seed, params, max_epochs)
        stop = Stop.COMPLETED
        epochs = 0
        for epoch in range(max_epochs):
            if should_stop is not None and should_stop():
                stop = Stop.INTERRUPTED
                break
            epochs += 1
            if epoch_work is not None:
                epoch_work()
            if not (math.isfinite(val_loss[epoch]) and math.isfinite(train_loss[epoch])):
                stop = Stop.DIVERGED
                break
            if on_epoch is not None and on_epoch(epoch, val_loss[epoch]):
                stop = Stop.PRUNED
                break
        accuracy = tuple(0.5 for _ in range(epochs))
        result = Curves(loss=tuple(train_loss[:epochs]), val_loss=tuple(val_loss[:epochs]), metric=accuracy,
                        val_metric=accuracy, metric_name="accuracy", stop=stop, seconds=0.001 * epochs)  # fmt: skip
        return result, None

    saved = {name: getattr(train, name) for name in
             ("fit_repeat", "release", "configure_threads", "prepare_gpus", "set_mixed_precision")}  # fmt: skip
    train.fit_repeat = fit_repeat  # type: ignore[assignment]
    train.release = lambda: None
    train.configure_threads = lambda threads: None
    train.prepare_gpus = lambda: 0
    train.set_mixed_precision = lambda enabled: None
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(train, name, value)


# --------------------------------------------------------------------------- the probe (a process of its own)


def probe(study_name: str, url: str) -> dict[str, Any]:
    """Run one worker to one trial on ``study_name`` at ``url``; the calls it made, by phase and kind."""
    import logging
    import warnings

    import optuna

    import sweep.storage as storage_module
    from sweep.worker import _Signals, run_worker

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    counter = CallCounter()
    real_open = storage_module.open_storage
    real_optimize = optuna.study.Study.optimize

    def open_storage(*args: Any, **kwargs: Any) -> Any:
        return counter.watch(real_open(*args, **kwargs))

    def optimize(self: Any, *args: Any, **kwargs: Any) -> Any:
        with counter.during("trial"):
            return real_optimize(self, *args, **kwargs)

    storage_module.open_storage = open_storage  # type: ignore[assignment]
    optuna.study.Study.optimize = optimize  # type: ignore[method-assign]
    start = time.perf_counter()
    try:
        with cheap_training():
            code = run_worker(signals=_Signals(), study_name=study_name, url=url, target=1, deadline=None, threads=1)
    finally:
        storage_module.open_storage = real_open  # type: ignore[assignment]
        optuna.study.Study.optimize = real_optimize  # type: ignore[method-assign]
    if code != 0:
        raise BenchmarkError(f"the worker exited {code}")
    trial = storage_module.load_study(study_name, url).get_trials()[0]
    return {
        "calls": counter.calls,
        "method_calls": counter.methods,
        "seconds": {p: {k: round(v, 4) for k, v in t.items()} for p, t in counter.seconds.items()},
        "wall_s": round(time.perf_counter() - start, 3),
        "trial": {
            "state": trial.state.name,
            "epochs": [len(c) for c in _val_loss(trial)],
            "intermediate_values": len(trial.intermediate_values),
        },
    }


def _val_loss(trial: Any) -> list[list[Any]]:
    from sweep import records

    raw = records.trial_attr(trial, records.CURVES) or {}
    return list(raw.get("val_loss", []))


def study_sections(name: str, *, repeats: int = REPEATS, epochs: int = EPOCHS) -> dict[str, dict[str, Any]]:
    """The measured study: digits, ``repeats`` repeats of ``epochs`` epochs, the median pruner (sweep's default)."""
    return digits_study(
        name=name,
        n_trials=1,
        max_epochs=epochs,
        patience=5,
        repeats=repeats,
        pruner={"name": "median", "n_startup_trials": 5, "n_warmup_steps": 5},
    )


def measure(url: str, folder: Path, *, name: str = "calls", via: str | None = None,
            repeats: int = REPEATS, epochs: int = EPOCHS) -> dict[str, Any]:  # fmt: skip
    """Create the study at ``url``, run the probe on it (at ``via``, a ``grpc://`` URL, when given); its report."""
    from sweep.runner import prepare_study
    from sweep.spec import load_spec

    spec = load_spec(write_study(folder, study_sections(name, repeats=repeats, epochs=epochs)))
    prepare_study(spec, url=url)
    cmd = [sys.executable, "-m", "benchmarks.storage_calls", "--probe", name, "--storage", via or url]
    done = subprocess.run(cmd, env=bench_env(), capture_output=True, text=True, timeout=600, cwd=folder)
    if done.returncode != 0:
        raise BenchmarkError(f"the probe exited {done.returncode}: {done.stderr.strip()[-800:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


# --------------------------------------------------------------------------- tables


def total(calls: dict[str, int]) -> int:
    return sum(calls.values())


def table(columns: dict[str, dict[str, int]]) -> str:
    """Calls by kind, one column per measurement, the kinds by the first column's count."""
    names = list(columns)
    kinds = sorted(
        {k for c in columns.values() for k in c}, key=lambda k: (-max(c.get(k, 0) for c in columns.values()), k)
    )
    rows = [["kind", *names]] + [[k, *(str(columns[n].get(k, 0)) for n in names)] for k in kinds]
    rows.append(["total", *(str(total(columns[n])) for n in names)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        lines.append("  ".join(cells))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the suite and the command


def run(ctx: Context) -> Result:
    res = Result(NAME, TITLE)
    folder = ctx.folder(NAME)
    with contextlib.ExitStack() as stack:
        if ctx.postgres_base:
            url, backend = stack.enter_context(postgres_database(ctx.postgres_base)), "postgresql"
        else:
            url, backend = sqlite_url(folder / "calls.db"), "sqlite"
            res.notes.append("$SWEEP_TEST_POSTGRES_URL is not set: counted on a SQLite file instead of PostgreSQL")
        direct = measure(url, folder, name="calls")
        grpc_url = stack.enter_context(sweep_proxy(url))
        through = measure(url, folder, name="calls-grpc", via=grpc_url)
    now = direct["calls"].get("trial", {})
    res.add(
        f"storage calls of one trial ({REPEATS} x {EPOCHS} epochs), {backend}, now / before",
        total(now) / total(BEFORE),
        goal=GOAL,
        note=f"{total(now)} transactions, {total(BEFORE)} before",
    )
    via = through["calls"].get("trial", {})
    res.add("storage calls of one trial through sweep proxy, now / before", total(via) / total(BEFORE_PROXY),
            note=f"{total(via)} round trips, {total(BEFORE_PROXY)} before")  # fmt: skip
    res.raw = {"backend": backend, "repeats": REPEATS, "epochs": EPOCHS, "before": BEFORE,
               "before_proxy": BEFORE_PROXY, "direct": direct, "grpc": through}  # fmt: skip
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.storage_calls",
        description="Count the storage calls of one sweep trial by kind, and print them beside the counts before.",
    )
    parser.add_argument("--storage", help="a storage URL (default: $SWEEP_TEST_POSTGRES_URL, else a SQLite file)")
    parser.add_argument("--proxy", action="store_true", help="also count through sweep proxy (gRPC)")
    parser.add_argument("--json", action="store_true", help="print the raw report as JSON")
    parser.add_argument("--probe", metavar="STUDY", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.storage)))
        return 0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sweep-calls-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        base = args.storage or postgres_base()
        if base is None:
            url = sqlite_url(folder / "calls.db")
        elif args.storage:
            url = base
        else:
            url = stack.enter_context(postgres_database(base))
        report = {"direct": measure(url, folder, name="calls")}
        if args.proxy:
            report["grpc"] = measure(url, folder, name="calls-grpc", via=stack.enter_context(sweep_proxy(url)))
    if args.json:
        print(json.dumps(report))
        return 0
    columns = {"before": BEFORE, "now": report["direct"]["calls"].get("trial", {})}
    if "grpc" in report:
        columns["before, via proxy"] = BEFORE_PROXY
        columns["now, via proxy"] = report["grpc"]["calls"].get("trial", {})
    print(f"Storage calls of one trial ({REPEATS} repeats x {EPOCHS} epochs, median pruner), by kind")
    print("(transactions on the database; round trips through the proxy):\n")
    print(table(columns))
    now, before = total(columns["now"]), total(BEFORE)
    print(f"now / before: {now} / {before} = {now / before:.3f}\n")
    around = {k: report[k]["calls"].get("worker", {}) for k in report}
    print("Around the trial (opening the study, the allocation, the ranking note), per worker run:\n")
    print(table(around))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
