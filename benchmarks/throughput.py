"""2. Throughput: sweep's training path per epoch, and trials per hour with one worker per core.

(a) In one process (a subprocess of its own, so TensorFlow's threads are sized
before it starts): sweep's training path as a worker runs it
(``Objective.train``: ``sweep.train.fit_repeat`` on the Objective's prepared
data with the worker's callbacks, then ``sweep.train.release``) against a
plain ``model.fit`` of the same model (``sweep.model.build_model``) on the
same arrays, same seed, same epochs, then Keras' own reset of its global state;
alternating, after one untimed warm-up of each. The figure is time per
epoch, sweep/plain (model building included on both sides); a third variant,
``fit_repeat`` called alone (without the worker's per-batch interrupt
polling), shows where a difference comes from.

(b) ``sweep run --workers auto`` (one worker per core, one thread each)
against the plain loop in one process using every core's thread, on the same
queued trials: trials per hour, sweep/plain (the inverse ratio of the two
wall times), whole processes timed, in the rounds shared with benchmark 1
(:func:`benchmarks.fixed_trials.measure`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from benchmarks.fixed_trials import measure
from benchmarks.harness import (
    Context,
    Goal,
    Result,
    bench_env,
    digits_study,
    median,
    median_ratio,
    paired_ratios,
    rotation,
    run_timed,
    write_study,
)

NAME = "throughput"
TITLE = "2. throughput"
GOAL_TPH = Goal(">=", 1.4, ">= 1.4")
PROBE_PARAMS = {
    "n_layers": 1,
    "units": 32,
    "activation": "tanh",
    "learning_rate": 0.003,
    "optimizer": "adam",
    "batch_size": 64,
    "dropout": 0.1,
    "l2": 1e-5,
    "layer_norm": False,
}


def run(ctx: Context) -> Result:
    res = Result(NAME, TITLE)
    epoch_raw = _per_epoch(ctx, res)
    tph_raw = _trials_per_hour(ctx, res)
    res.raw = {"per_epoch": epoch_raw, "trials_per_hour": tph_raw}
    return res


# --------------------------------------------------------------------------- (a) per epoch


def _per_epoch(ctx: Context, res: Result) -> dict[str, Any]:
    epochs, rounds = ctx.pick(quick=(4, 2), full=(15, 5))
    threads = ctx.cores
    folder = ctx.folder("epoch")
    study_file = write_study(folder, digits_study(name="epoch", n_trials=1, max_epochs=epochs, patience=0, repeats=1))
    ctx.log(f"{NAME}: per-epoch probe, {rounds} rounds of {epochs} epochs, {threads} threads")
    cmd = [
        sys.executable, "-m", "benchmarks.throughput", "--epoch-probe", str(study_file),
        "--epochs", str(epochs), "--rounds", str(rounds), "--threads", str(threads),
    ]  # fmt: skip
    probe = json.loads(run_timed(cmd, env=bench_env(), keep_stdout=True).stdout.strip().splitlines()[-1])
    sweep_s, plain_s = probe["objective_train"], probe["model_fit"]
    value = median_ratio(sweep_s, plain_s)
    res.add(
        "time per epoch, sweep's training path (Objective.train) / plain model.fit",
        value,
        note=f"{epochs} epochs, {rounds} rounds, {threads} threads; "
        f"plain {median(plain_s) / epochs * 1000:.0f} ms/epoch",
    )
    res.add(
        "time per epoch, fit_repeat alone (no interrupt polling) / plain model.fit",
        median_ratio(probe["fit_repeat_alone"], plain_s),
    )
    return {
        "epochs": epochs,
        "rounds": rounds,
        "threads": threads,
        "params": PROBE_PARAMS,
        "seconds": probe,
        "ratio_per_round": [round(r, 4) for r in paired_ratios(sweep_s, plain_s)],
    }


def epoch_probe(study_file: str, *, epochs: int, rounds: int, threads: int) -> dict[str, Any]:
    """Runs inside the probe process: alternating fit_repeat / plain fit, seconds of each."""
    from sweep.train import configure_threads

    configure_threads(threads)
    import keras

    from sweep.model import build_model
    from sweep.objective import Objective
    from sweep.space import Hyperparams
    from sweep.spec import load_spec
    from sweep.train import fit_repeat, release

    spec = load_spec(study_file)
    from sweep.data import data_kwargs, load_dataset

    objective = Objective(spec, load_dataset(**data_kwargs(spec.data)))
    data, shape = objective.prepared[0], objective.shape
    params = Hyperparams.from_params(PROBE_PARAMS)
    seed = spec.study.seed  # repeat 0's seed, as Objective.train uses

    def sweep_path() -> float:
        start = time.perf_counter()
        outcome = objective.train(params)  # one repeat: fit_repeat as the worker calls it, then release()
        seconds = time.perf_counter() - start
        if [c.epochs for c in outcome.curves] != [epochs]:
            raise RuntimeError(f"expected one repeat of {epochs} epochs, got {[c.epochs for c in outcome.curves]}")
        return seconds

    def fit_repeat_path() -> float:
        start = time.perf_counter()
        fit_repeat(params, family="lstm", shape=shape, data=data, max_epochs=epochs, patience=0, seed=seed)
        release()
        return time.perf_counter() - start

    def plain_path() -> float:
        start = time.perf_counter()
        keras.utils.set_random_seed(seed)
        model = build_model(params, family="lstm", shape=shape)
        model.fit(
            data.x_train,
            data.y_train,
            validation_data=(data.x_valid, data.y_valid),
            epochs=epochs,
            batch_size=params.batch_size,
            shuffle=True,
            verbose=0,
        )
        del model
        keras.backend.clear_session()
        return time.perf_counter() - start

    sweep_path(), plain_path()  # warm-up: first-use costs of TensorFlow fall on neither side
    variants = {"objective_train": sweep_path, "model_fit": plain_path, "fit_repeat_alone": fit_repeat_path}
    out: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(rounds):
        for name in rotation(list(variants), i):
            out[name].append(variants[name]())
    return out


# --------------------------------------------------------------------------- (b) trials per hour


def _trials_per_hour(ctx: Context, res: Result) -> dict[str, Any]:
    m = measure(ctx)
    n, epochs, rounds, cores, times = m["n_trials"], m["epochs"], m["rounds"], m["threads"], m["times"]
    sweep_s, plain_s = times["sweep_workers_auto"], times["plain"]
    res.add(
        f"trials/hour sweep run --workers auto ({cores} workers x 1 thread) / plain loop (1 process x {cores} threads)",
        median_ratio(plain_s, sweep_s),  # the same N trials: the trials/hour ratio is the inverse ratio of wall times
        goal=GOAL_TPH,
        note=f"{n} trials x {epochs} epochs, {rounds} rounds",
    )
    if "sweep_workers_auto_spawn" in times:
        res.add(
            "trials/hour sweep run --workers auto with worker.fork=false (each worker imports TensorFlow) / plain loop",
            median_ratio(plain_s, times["sweep_workers_auto_spawn"]),
        )
    res.add(
        "trials/hour sweep run --workers auto / sweep run --workers 1",
        median_ratio(times["sweep_1_worker"], sweep_s),
    )
    return {
        **m["raw"],
        "trials_per_hour": {k: [round(n / s * 3600, 1) for s in v] for k, v in times.items()},
        "ratio_per_round": [round(p / s, 4) for s, p in zip(sweep_s, plain_s, strict=True)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput")
    parser.add_argument("--epoch-probe", metavar="STUDY_FILE", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    out = epoch_probe(args.epoch_probe, epochs=args.epochs, rounds=args.rounds, threads=args.threads)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
