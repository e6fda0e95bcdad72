"""1. Driver overhead: ``sweep run`` against a hand-written Optuna + Keras loop on the same trials.

The same N configurations (queued with ``enqueue_trial``), the same seeds, one
repeat, no pruner, the same thread count (every core): once through
``sweep run --workers 1 --set worker.threads=CORES``, once through
:mod:`benchmarks.plain_loop` in a subprocess. Both are timed as whole
processes, so each pays its Python and TensorFlow start-up. Rounds rotate
which runs first; the figure is the median of the per-round ratios
sweep/plain. The full run adds ``sweep run`` with the dashboard notes and
learning-curve artifacts turned off, to show what they cost, and (every run)
``sweep run`` with the same LSTM written as a ``[model] builder``, against the
family: a builder should cost nothing more. The rounds are
shared with benchmark 2b (:func:`benchmarks.fixed_trials.measure`).
"""

from __future__ import annotations

from benchmarks.fixed_trials import measure
from benchmarks.harness import Context, Goal, Result, median, median_ratio

NAME = "driver_overhead"
TITLE = "1. driver overhead"
GOAL = Goal("<=", 1.05, "<= 1.05")


def run(ctx: Context) -> Result:
    res = Result(NAME, TITLE)
    m = measure(ctx)
    n, epochs, rounds, threads, times = m["n_trials"], m["epochs"], m["rounds"], m["threads"], m["times"]
    sweep_s, plain_s = times["sweep_1_worker"], times["plain"]
    res.add(
        f"wall time sweep run (1 worker x {threads} threads) / plain loop ({threads} threads)",
        median_ratio(sweep_s, plain_s),
        goal=GOAL,
        note=f"{n} trials x {epochs} epochs, {rounds} rounds",
    )
    if "sweep_1_worker_builder" in times:
        res.add(
            "wall time sweep run with the same model as a [model] builder / with model.family",
            median_ratio(times["sweep_1_worker_builder"], sweep_s),
            note="goal: equal within noise",
        )
    if "sweep_1_worker_no_notes" in times:
        res.add(
            "wall time sweep run with dashboard.notes=false / plain loop",
            median_ratio(times["sweep_1_worker_no_notes"], plain_s),
        )
    if "sweep_1_worker_spawn" in times:
        res.add(
            "wall time sweep run with worker.fork=false (each worker imports TensorFlow) / plain loop",
            median_ratio(times["sweep_1_worker_spawn"], plain_s),
        )
        res.add(
            "wall time sweep run with worker.fork=false / with forked workers (the default)",
            median_ratio(times["sweep_1_worker_spawn"], sweep_s),
        )
    per_trial = [(s - p) / n for s, p in zip(sweep_s, plain_s, strict=True)]
    inside = m["fixed"].trial_seconds
    res.raw = {
        **m["raw"],
        "ratio_per_round": [round(s / p, 4) for s, p in zip(sweep_s, plain_s, strict=True)],
        "extra_seconds_per_trial": [round(v, 3) for v in per_trial],
    }
    same = m["raw"]["max_relative_difference_of_final_val_loss"].get("sweep", float("nan"))
    res.notes.append(
        f"sweep run took a median {median(per_trial):.2f} s more per trial than the plain loop "
        f"({n} trials, both processes' start-up included); the final validation losses differ by at most "
        f"{same:.1e} (relative), so both trained the same models"
    )
    lives = {k: [r["worker_lives"] for r in inside.get(k, [])] for k in ("sweep", "spawn")}
    if lives["sweep"]:
        res.notes.append(f"worker processes per sweep run (1 + recycles), each round: {lives['sweep']} forked, "
                         f"{lives['spawn']} with worker.fork=false")  # fmt: skip
    if inside.get("sweep") and inside.get("plain"):
        sweep_in = median(r["trial_wall"] - r["train"] for r in inside["sweep"]) / n
        plain_in = median(r["trial_wall"] - r["train"] for r in inside["plain"]) / n
        res.notes.append(
            f"inside a trial, outside model.fit: {sweep_in:.2f} s per trial in sweep (building, recording, "
            f"dashboard notes and figures, releasing memory) against {plain_in:.2f} s in the plain loop "
            "(building the model, recording the curves)"
        )
    return res
