"""The same fixed trials run several ways: by ``sweep run`` (the real CLI) and by the plain loop.

Every run starts from a fresh SQLite file holding a study with the same
configurations queued (``enqueue_trial``), so every way trains exactly the
same models with the same seeds; each measurement is the wall time of the
whole process (Python and TensorFlow start-up included) from start to exit.

Benchmarks 1 (driver overhead) and 2b (trials per hour) compare different
ways against the same baseline, so :func:`measure` runs all the ways in the
same rotating rounds, once per suite run, and both read their ratios from it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BenchmarkError,
    Context,
    alternate,
    bench_env,
    digits_study,
    enqueue,
    finished_trials,
    fixed_configs,
    run_timed,
    space_json,
    sqlite_url,
    sweep_cmd,
    write_study,
)
from sweep import records

STUDY = "fixed"
SEED = 42

FAMILY_AS_BUILDER = '''
"""The built-in lstm family written as a builder: the same layers, created in the same order."""
import keras
from keras import layers


def build(params, shape):
    regularizer = keras.regularizers.L2(params["l2"]) if params["l2"] > 0 else None
    inputs = keras.Input(shape=shape.input_shape)
    x = inputs
    for i in range(params["n_layers"]):
        last = i == params["n_layers"] - 1
        x = layers.LSTM(params["units"], activation=params["activation"], return_sequences=not last,
                        kernel_regularizer=regularizer, dropout=params["dropout"])(x)
        if params["layer_norm"] and not last:
            x = layers.LayerNormalization()(x)
    if params["dropout"] > 0:
        x = layers.Dropout(params["dropout"])(x)
    outputs = layers.Dense(shape.n_outputs, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)
'''
"""Benchmark 1's builder variant: what a user would write for the model sweep's family builds."""


@dataclass
class FixedTrials:
    """N queued configurations of the digits LSTM, ``epochs`` epochs each, one repeat, no pruning."""

    ctx: Context
    n_trials: int
    epochs: int
    config_seed: int = 1
    folder: Path = field(init=False)
    study_file: Path = field(init=False)
    space_file: Path = field(init=False)
    configs: list[dict[str, Any]] = field(init=False)
    final_losses: dict[str, list[list[float]]] = field(default_factory=dict)
    trial_seconds: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from sweep.spec import load_spec

        self.folder = self.ctx.folder("fixed")
        self.configs = fixed_configs(self.n_trials, seed=self.config_seed)
        sections = digits_study(
            name=STUDY, n_trials=self.n_trials, seed=SEED, max_epochs=self.epochs, patience=0, repeats=1
        )
        self.study_file = write_study(self.folder, sections)
        self.spec = load_spec(self.study_file)
        builder_folder = self.ctx.folder("fixed-builder-study")
        (builder_folder / "family_lstm.py").write_text(FAMILY_AS_BUILDER, encoding="utf-8")
        self.builder_file = builder_folder / self.study_file.name
        text = self.study_file.read_text(encoding="utf-8")
        self.builder_file.write_text(text.replace('family = "lstm"', 'builder = "family_lstm:build"'), encoding="utf-8")
        self.builder_spec = load_spec(self.builder_file)
        if self.builder_spec.model.builder is None:
            raise BenchmarkError(f"{self.study_file}: no model.family = 'lstm' line to turn into a builder")
        self.space_file = self.folder / "space.json"
        self.space_file.write_text(json.dumps(space_json(self.spec)), encoding="utf-8")

    # ---------------------------------------------------------------- sweep

    def sweep(self, label: str, *extra: str, builder: bool = False) -> float:
        """Seconds of one ``sweep run STUDY --n-trials N`` on a fresh storage with the configurations queued.

        ``builder``: the same model through ``[model] builder`` instead of ``family``.
        """
        from sweep.runner import prepare_study

        folder = self.ctx.folder(f"fixed-{label}")
        url = sqlite_url(folder / "sweep.db")
        spec, file = (self.builder_spec, self.builder_file) if builder else (self.spec, self.study_file)
        study, created = prepare_study(spec, url=url)
        if not created:
            raise BenchmarkError(f"{url}: expected a fresh storage")
        enqueue(study, self.configs)
        timed = run_timed(
            sweep_cmd("run", str(file), "--storage", url, "--n-trials", str(self.n_trials), "-q", *extra),
            env=bench_env(),
        )
        self._check(label, url)
        return timed.seconds

    # ---------------------------------------------------------------- plain

    def plain(self, label: str, *, threads: int) -> float:
        """Seconds of one plain-loop process running the same queued configurations with ``threads`` threads."""
        import optuna

        folder = self.ctx.folder(f"fixed-{label}")
        url = sqlite_url(folder / "plain.db")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=STUDY, storage=url)
        enqueue(study, self.configs)
        cmd = [
            sys.executable, "-m", "benchmarks.plain_loop",
            "--storage", url, "--study", STUDY, "--n-trials", str(self.n_trials),
            "--space", str(self.space_file), "--epochs", str(self.epochs),
            "--seed", str(SEED), "--threads", str(threads),
        ]  # fmt: skip
        timed = run_timed(cmd, env=bench_env())
        self._check(label, url)
        return timed.seconds

    # ---------------------------------------------------------------- checks

    def _check(self, label: str, url: str) -> None:
        """Both ways must have run exactly the queued configurations, every epoch of them."""
        trials = sorted(finished_trials(url, STUDY), key=lambda t: t.number)
        done = [t for t in trials if t.state.name == "COMPLETE"]
        if len(done) != self.n_trials:
            states = [t.state.name for t in trials]
            raise BenchmarkError(f"{label}: expected {self.n_trials} complete trials, got {states}")
        for t, params in zip(done, self.configs, strict=True):
            got = {k: t.params.get(k) for k in params}
            if got != params:
                raise BenchmarkError(f"{label}: trial {t.number} ran {got}, not the queued {params}")
            epochs = [len(c) for c in (records.trial_attr(t, records.CURVES) or {}).get("val_loss", [])]
            if epochs[:1] != [self.epochs]:
                raise BenchmarkError(f"{label}: trial {t.number} trained {epochs} epochs, not {self.epochs}")
        kind = label.split("-")[0]
        losses = [_last(records.trial_attr(t, records.CURVES)["val_loss"][0]) for t in done]
        self.final_losses.setdefault(kind, []).append(losses)
        self.trial_seconds.setdefault(kind, []).append(
            {
                "trial_wall": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done),
                "train": sum(float(t.user_attrs.get("train_seconds") or 0.0) for t in done),
                "worker_lives": len({t.user_attrs.get("worker") for t in done}),  # host:pid, one per process
            }
        )

    def same_work(self, a: str, b: str) -> float:
        """The largest relative difference between the final validation losses of the two ways (0: identical)."""
        diffs: list[float] = []
        for run_a, run_b in zip(self.final_losses.get(a, []), self.final_losses.get(b, []), strict=False):
            for x, y in zip(run_a, run_b, strict=True):
                diffs.append(abs(x - y) / max(abs(y), 1e-12))
        return max(diffs) if diffs else math.nan


def measure(ctx: Context) -> dict[str, Any]:
    """The shared rounds: sweep with 1 worker, sweep with one worker per core, and the plain loop.

    ``sweep run --workers 1 --set worker.threads=CORES`` and the plain loop with
    CORES threads (benchmark 1); ``sweep run --workers auto`` (one worker per
    core, one thread each) against the same plain loop (benchmark 2b). The full
    run adds ``sweep run --workers 1`` with ``dashboard.notes=false``, and both sweep runs
    with ``worker.fork=false`` (every worker imports TensorFlow itself).
    """
    if "fixed_trials" in ctx.shared:
        return ctx.shared["fixed_trials"]
    n, epochs, rounds = ctx.pick(quick=(2, 2, 2), full=(10, 5, 4))
    threads = ctx.cores
    fixed = FixedTrials(ctx, n_trials=n, epochs=epochs)
    one = ("--workers", "1", "--set", f"worker.threads={threads}")
    variants: dict[str, Any] = {
        "sweep_1_worker": lambda: fixed.sweep("sweep", *one),
        "plain": lambda: fixed.plain("plain", threads=threads),
        "sweep_workers_auto": lambda: fixed.sweep("sweepauto", "--workers", "auto"),
    }
    variants["sweep_1_worker_builder"] = lambda: fixed.sweep("builder", *one, builder=True)
    if not ctx.quick:
        variants["sweep_1_worker_no_notes"] = lambda: fixed.sweep("nonotes", *one, "--set", "dashboard.notes=false")
        # Every worker a fresh process that imports TensorFlow itself (as GPU workers are started):
        # what forking the workers from one process that imported it once saves.
        spawn = ("--set", "worker.fork=false")
        variants["sweep_1_worker_spawn"] = lambda: fixed.sweep("spawn", *one, *spawn)
        variants["sweep_workers_auto_spawn"] = lambda: fixed.sweep("autospawn", "--workers", "auto", *spawn)
    times = alternate(
        variants,
        rounds=rounds,
        on_round=lambda i, order: ctx.log(f"fixed trials: round {i + 1}/{rounds}: {', '.join(order)}"),
    )
    shared = {
        "n_trials": n,
        "epochs": epochs,
        "rounds": rounds,
        "threads": threads,
        "times": times,
        "fixed": fixed,
        "raw": {
            "n_trials": n,
            "epochs": epochs,
            "rounds": rounds,
            "threads": threads,
            "configs": fixed.configs,
            "seconds": {k: per_round(v) for k, v in times.items()},
            "trial_and_train_seconds": fixed.trial_seconds,
            "final_val_loss": fixed.final_losses,
            "max_relative_difference_of_final_val_loss": {
                k: fixed.same_work(k, "plain")
                for k in ("sweep", "sweepauto", "nonotes", "builder", "spawn", "autospawn")
                if k in fixed.final_losses
            },
        },
    }
    ctx.shared["fixed_trials"] = shared
    return shared


def _last(curve: Sequence[float | None]) -> float:
    value = curve[-1] if curve else None
    return math.nan if value is None else float(value)


def per_round(series: Sequence[float]) -> list[float]:
    return [round(v, 3) for v in series]
