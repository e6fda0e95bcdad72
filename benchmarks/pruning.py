"""5. Pruning: the same sweep with sweep's median pruner and without it.

Two ``sweep run`` of digits-lstm with the same seed, the same queued
random start-up configurations (the sampler's own start-up draws now differ
from process to process) and the same budget, one with ``pruner.name = "median"`` and one with ``"none"`` (order
alternating between rounds, a different seed per round). Measured: the
epochs trained (the lengths of every repeat's curve in each trial's stored
``curves`` attr, pruned trials included), the wall time of each whole
``sweep run``, and how the configuration each ranks first holds up when
retrained: ``sweep best STUDY --retrain-seeds 3`` (the two studies' side by
side: nothing of it is timed), the mean tail validation loss of its
fresh-seed runs. Goal: at least 40% fewer epochs (ratio <= 0.6)
at no worse retrained loss (ratio <= 1).
"""

from __future__ import annotations

import json
import statistics
import subprocess
from typing import Any

from benchmarks.harness import (
    BenchmarkError,
    Context,
    Goal,
    Result,
    bench_env,
    digits_study,
    enqueue,
    epochs_of,
    finished_trials,
    median,
    median_ratio,
    random_configs,
    rotation,
    run_timed,
    sqlite_url,
    sweep_cmd,
    write_study,
)
from sweep.runner import prepare_study
from sweep.spec import load_spec

NAME = "pruning"
TITLE = "5. pruning"
GOAL_EPOCHS = Goal("<=", 0.6, "<= 0.6 (40% fewer)")
GOAL_SCORE = Goal("<=", 1.0, "<= 1 (no worse)")
RETRAIN_SEEDS = 3


def _search(ctx: Context, *, pruner: str, seed: int, budget: dict[str, Any]) -> dict[str, Any]:
    """One timed ``sweep run``; returns its measurements and where its study is."""
    folder = ctx.folder(f"{NAME}-{pruner}")
    if pruner == "median":
        pruner_section = {"name": "median", "n_startup_trials": budget["pruner_startup"],
                          "n_warmup_steps": budget["warmup"]}  # fmt: skip
    else:
        pruner_section = {"name": "none"}
    sections = digits_study(
        name="pruning", n_trials=budget["n_trials"], seed=seed, max_epochs=budget["epochs"],
        patience=budget["patience"], repeats=budget["repeats"], pruner=pruner_section,
        sampler={"name": "tpe", "n_startup_trials": budget["sampler_startup"]},
    )  # fmt: skip
    study_file = write_study(folder, sections)
    url = sqlite_url(folder / "pruning.db")
    # The worker's sampler seed mixes in its process id, so the study seed alone no longer repeats the
    # sampler's choices: the random start-up trials are queued here instead, the same for both studies.
    spec = load_spec(study_file)
    study, _ = prepare_study(spec, url=url)
    enqueue(study, random_configs(spec, budget["sampler_startup"], seed=seed))
    timed = run_timed(sweep_cmd("run", str(study_file), "--storage", url, "-q"), env=bench_env())
    trials = finished_trials(url, "pruning")
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "pruner": pruner,
        "seed": seed,
        "run_seconds": timed.seconds,
        "epochs": sum(epochs_of(t) for t in trials),
        "states": states,
        "url": url,
        "folder": folder,
    }


def _retrain(found: list[dict[str, Any]]) -> None:
    """``sweep best --retrain-seeds 3`` on each study, side by side (untimed: only the losses are kept)."""
    procs = []
    for m in found:
        out_dir = m["folder"] / "best"
        cmd = sweep_cmd("best", "pruning", "--storage", m["url"], "--retrain-seeds", str(RETRAIN_SEEDS),
                        "--out", str(out_dir))  # fmt: skip
        procs.append((m, out_dir, subprocess.Popen(cmd, env=bench_env(), stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.PIPE, text=True)))  # fmt: skip
    for m, out_dir, proc in procs:
        _, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise BenchmarkError(f"sweep best exited {proc.returncode}: {err.strip()[-300:]}")
        configs = sorted(out_dir.glob("*.json"))
        if not configs:
            raise BenchmarkError(f"sweep best wrote no JSON into {out_dir}")
        saved = json.loads(configs[0].read_text())
        tails = [float(v) for v in saved["retrained"]["tail_losses"] if v is not None]
        m.update(
            top_trial=saved["trial"],
            top_params=saved["params"],
            predicted_tail_mean=saved["predicted"]["tail_mean"],
            retrained_tail_losses=tails,
            retrained_mean=statistics.fmean(tails) if tails else float("nan"),
        )
        del m["folder"]


def run(ctx: Context) -> Result:
    res = Result(NAME, TITLE)
    budget = ctx.pick(
        quick={"n_trials": 4, "epochs": 3, "patience": 0, "repeats": 1, "rounds": 1,
               "pruner_startup": 2, "warmup": 1, "sampler_startup": 3},
        full={"n_trials": 12, "epochs": 15, "patience": 4, "repeats": 2, "rounds": 2,
              "pruner_startup": 3, "warmup": 4, "sampler_startup": 6},
    )  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {"median": [], "none": []}
    for r in range(budget["rounds"]):
        seed = 42 + r
        for pruner in rotation(["median", "none"], r):
            ctx.log(f"{NAME}: round {r + 1}/{budget['rounds']}: pruner {pruner}, seed {seed}")
            runs[pruner].append(_search(ctx, pruner=pruner, seed=seed, budget=budget))
        ctx.log(f"{NAME}: round {r + 1}: sweep best --retrain-seeds {RETRAIN_SEEDS} on both studies")
        _retrain([runs["median"][-1], runs["none"][-1]])

    def series(pruner: str, key: str) -> list[float]:
        return [float(m[key]) for m in runs[pruner]]

    epochs_ratio = median_ratio(series("median", "epochs"), series("none", "epochs"))
    res.add(
        "epochs trained, median pruner / none",
        epochs_ratio,
        goal=GOAL_EPOCHS,
        note=f"{median(series('median', 'epochs')):.0f} vs {median(series('none', 'epochs')):.0f} epochs, "
        f"{budget['n_trials']} trials x {budget['repeats']} repeats x <= {budget['epochs']} epochs",
    )
    res.add(
        "wall time of sweep run, median pruner / none",
        median_ratio(series("median", "run_seconds"), series("none", "run_seconds")),
    )
    res.add(
        f"retrained tail val loss of the top pick ({RETRAIN_SEEDS} fresh seeds), median pruner / none",
        median_ratio(series("median", "retrained_mean"), series("none", "retrained_mean")),
        goal=GOAL_SCORE,
        note=f"{median(series('median', 'retrained_mean')):.4g} vs {median(series('none', 'retrained_mean')):.4g}",
    )
    res.raw = {"budget": budget, "runs": runs}
    if ctx.quick:
        res.notes.append(
            "quick run: a tiny budget (one round, one repeat); the retrained comparison is noise at this size"
        )
    return res
