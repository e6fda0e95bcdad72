"""6. Many workers: 1, 2 and 4 worker processes on one PostgreSQL study, directly and through the gRPC proxy.

The objective is cheap (no training), so what is measured is the storage: each
worker is a plain Python process that opens the storage with
``sweep.storage.open_storage`` (heartbeats, pooling and retries as ``sweep``
sets them; none through the proxy, which does not carry them), then writes
what a sweep trial writes: the parameters, one intermediate value per epoch
(repeat 0's, as the pruner sees it), the ``curves`` attr and the stability
summary attrs, and asks the pruner after every epoch (sweep's default median
pruner, which reads the study's trials each time). Workers start together (after all have connected) and share a
fixed total of trials. Reported: trials per second of the whole group, and
storage time per trial (a worker's loop time per trial, the objective's own
arithmetic taken out), with ratios against one direct worker measured in the
same round. Rounds rotate the order of the configurations.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BenchmarkError,
    Context,
    Result,
    bench_env,
    median,
    median_ratio,
    postgres_database,
    rotation,
    sqlite_url,
    sweep_proxy,
)

NAME = "many_workers"
TITLE = "6. many workers"
ENV_URL = "SWEEP_BENCH_STORAGE"
EPOCHS = 15


def sweep_like_attrs(epochs: int = EPOCHS, repeats: int = 2) -> tuple[list[float], dict[str, Any]]:
    """Repeat 0's validation curve and the attrs a sweep trial stores (curves and summary)."""
    from sweep import records
    from sweep.objective import curves_attr
    from sweep.stability import summarize
    from sweep.train import Curves, Stop

    val = [[2.3 * 0.8**e + 0.1 + 0.01 * r for e in range(epochs)] for r in range(repeats)]
    train = [[2.2 * 0.78**e + 0.05 for e in range(epochs)] for _ in range(repeats)]
    curves = [
        Curves(loss=tuple(u), val_loss=tuple(v), metric=tuple(0.5 for _ in v), val_metric=tuple(0.5 for _ in v),
               metric_name="accuracy", stop=Stop.COMPLETED, seconds=1.0)
        for v, u in zip(val, train, strict=True)
    ]  # fmt: skip
    summary = summarize(val, train)
    attrs = {records.CURVES: curves_attr(curves), **records.summary_attrs(summary), "train_seconds": 2.0}
    return val[0], attrs


def worker_main(args: argparse.Namespace) -> int:
    """One worker process: connect, wait for the start signal, run its share of trials, print timings."""
    import optuna

    from sweep import records
    from sweep.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = os.environ[ENV_URL]
    if url.startswith("grpc://"):
        storage = open_storage(url)
    else:
        storage = open_storage(url, heartbeat_interval=30, grace_period=120, max_retries=2)
    sampler = optuna.samplers.RandomSampler(seed=args.slot)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)  # sweep's default pruner
    study = optuna.load_study(study_name=args.study, storage=storage, sampler=sampler, pruner=pruner)
    curve, attrs = sweep_like_attrs()
    compute = 0.0

    def objective(trial: optuna.Trial) -> float:
        nonlocal compute
        x = trial.suggest_float("x", -10.0, 10.0)
        y = trial.suggest_int("y", 0, 10)
        c = trial.suggest_categorical("c", ["a", "b", "c"])
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
            trial.should_prune()
        records.set_attrs(trial, attrs)
        start = time.perf_counter()
        result = (x - 2.0) ** 2 + y + (c == "a")
        compute += time.perf_counter() - start
        return result

    Path(args.ready).write_text("ready")
    while not Path(args.go).exists():
        time.sleep(0.002)
    start_wall, start = time.time(), time.perf_counter()
    study.optimize(objective, n_trials=args.trials, gc_after_trial=False)
    loop = time.perf_counter() - start
    print(json.dumps({"trials": args.trials, "loop_s": loop, "compute_s": compute, "start": start_wall,
                      "end": start_wall + loop}))  # fmt: skip
    return 0


def _group(ctx: Context, *, url: str, study: str, workers: int, total: int, folder: Path) -> dict[str, Any]:
    """Start ``workers`` processes on ``study``; once all are connected, let them go; collect their timings."""
    share = [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
    go = folder / f"{study}.go"
    env = bench_env(**{ENV_URL: url})
    procs = []
    for slot in range(workers):
        ready = folder / f"{study}.ready{slot}"
        cmd = [
            sys.executable, "-m", "benchmarks.many_workers", "--worker", "--study", study,
            "--trials", str(share[slot]), "--slot", str(slot), "--ready", str(ready), "--go", str(go),
        ]  # fmt: skip
        procs.append((ready, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    deadline = time.time() + 120
    while not all(ready.exists() for ready, _ in procs):
        if any(p.poll() is not None for _, p in procs) or time.time() > deadline:
            errors = [p.communicate()[1].strip()[-300:] for _, p in procs if p.poll() is not None]
            for _, p in procs:
                p.kill()
            raise BenchmarkError(f"a worker did not start: {errors}")
        time.sleep(0.01)
    go_at = time.time()
    go.write_text("go")
    reports = []
    for _, p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise BenchmarkError(f"a worker exited {p.returncode}: {err.strip()[-300:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = max(r["end"] for r in reports) - go_at
    done = sum(r["trials"] for r in reports)
    storage_per_trial = median((r["loop_s"] - r["compute_s"]) / max(1, r["trials"]) for r in reports)
    return {"trials_per_s": done / elapsed, "storage_s_per_trial": storage_per_trial, "elapsed_s": elapsed,
            "workers": reports}  # fmt: skip


def run(ctx: Context) -> Result:
    import optuna

    from sweep.storage import open_storage

    res = Result(NAME, TITLE)
    counts, total, rounds = ctx.pick(quick=((1, 4), 8, 2), full=((1, 2, 4), 60, 3))
    configs = [(via, k) for via in ("direct", "grpc") for k in counts]
    if ctx.quick:  # the proxy with one worker is left to the full run
        configs.remove(("grpc", 1))
    folder = ctx.folder(NAME)
    found: dict[str, list[dict[str, Any]]] = {f"{via}-{k}": [] for via, k in configs}
    with contextlib.ExitStack() as stack:
        if ctx.postgres_base:
            url = stack.enter_context(postgres_database(ctx.postgres_base))
            backend = "postgresql"
        else:
            url = sqlite_url(folder / "many.db")
            backend = "sqlite"
            res.notes.append("$SWEEP_TEST_POSTGRES_URL is not set: measured on a SQLite file instead of PostgreSQL")
        storage = open_storage(url)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for r in range(rounds):
            names = {}
            for via, k in configs:
                names[(via, k)] = f"many-r{r}-{via}-{k}"
                optuna.create_study(study_name=names[(via, k)], storage=storage)
            with sweep_proxy(url) as proxy_url:
                order = rotation(configs, r)
                ctx.log(f"{NAME}: round {r + 1}/{rounds} on {backend}: {', '.join(f'{v} x{k}' for v, k in order)}")
                for via, k in order:
                    target = proxy_url if via == "grpc" else url
                    found[f"{via}-{k}"].append(
                        _group(ctx, url=target, study=names[(via, k)], workers=k, total=total, folder=folder)
                    )

    def series(key: str, field: str) -> list[float]:
        return [m[field] for m in found[key]]

    base = series("direct-1", "trials_per_s")
    for via, k in configs:
        key = f"{via}-{k}"
        label = f"{backend}{' via gRPC proxy' if via == 'grpc' else ''}, {k} worker{'s' * (k > 1)}"
        tps = series(key, "trials_per_s")
        res.add(
            f"{label}: trials/s relative to 1 direct worker",
            median_ratio(tps, base),
            note=f"{median(tps):.1f} trials/s, "
            f"storage {median(series(key, 'storage_s_per_trial')) * 1000:.0f} ms/trial",
        )
        if via == "grpc":
            res.add(
                f"{label}: storage time per trial, proxy / direct",
                median_ratio(series(key, "storage_s_per_trial"), series(f"direct-{k}", "storage_s_per_trial")),
            )
    res.raw = {
        "backend": backend,
        "total_trials_per_group": total,
        "rounds": rounds,
        "per_trial_writes": f"3 params, {EPOCHS} intermediate values, {len(sweep_like_attrs()[1])} attrs "
        "(user and system)",
        "groups": found,
    }
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.many_workers")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--go", required=True)
    return worker_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
