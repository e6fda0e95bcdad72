"""8. GPUs: time per epoch on a GPU against the CPU, and trials per hour with one worker per GPU.

Skipped, with rows that say so, on a machine where no GPU is found (the same
discovery the workers use: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi``).

(a) In a probe process per device (``CUDA_VISIBLE_DEVICES`` set to the first
GPU, or empty for the CPU): the digits LSTM and the Mackey-Glass GRU of the
shipped studies, one warm-up repeat then timed repeats of ``fit_repeat``,
alternating GPU and CPU processes; the figure is CPU time per epoch / GPU
time per epoch (the GPU's speed-up). The probe reports the devices TensorFlow
saw, so a GPU that TensorFlow cannot use shows as such.

(b) Whole ``sweep run`` processes on the same queued trials: one worker per
GPU (``--gpus auto``) against one worker on one GPU (``--workers 1``, which is
what a single process uses of several GPUs without a distribution strategy):
trials per hour, the inverse ratio of wall times. With one GPU the two are the
same run, and the row says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Context,
    Result,
    bench_env,
    digits_study,
    median,
    median_ratio,
    rotation,
    run_timed,
    sqlite_url,
    sweep_cmd,
    write_study,
)

NAME = "gpu"
TITLE = "8. GPUs"
PROBE_PARAMS: dict[str, Any] = {
    "n_layers": 2, "units": 64, "activation": "tanh", "learning_rate": 3e-3, "optimizer": "adam",
    "batch_size": 64, "dropout": 0.1, "l2": 1e-5, "layer_norm": False,
}  # fmt: skip
MODELS: dict[str, dict[str, Any]] = {
    "digits-lstm": {"data": {"source": "digits"}, "model": {"family": "lstm"}},
    "mackey-glass-gru": {"data": {"source": "mackey_glass", "lookback": 24}, "model": {"family": "gru"}},
}


def run(ctx: Context) -> Result:
    from sweep.devices import discover

    res = Result(NAME, TITLE)
    gpus = discover()
    if not gpus:
        for name in MODELS:
            res.add(f"time per epoch, CPU / GPU, {name}", None, note="no GPU on this machine: skipped")
        res.add("trials per hour, one worker per GPU / one worker", None, note="no GPU on this machine: skipped")
        res.notes.append("no GPU found (CUDA_VISIBLE_DEVICES unset and nvidia-smi lists none): rows skipped")
        res.raw = {"gpus": []}
        return res
    per_epoch = {name: _per_epoch(ctx, res, name, gpus[0]) for name in MODELS}
    res.raw = {"gpus": gpus, "per_epoch": per_epoch, "trials_per_hour": _trials_per_hour(ctx, res, gpus)}
    return res


def _study(ctx: Context, name: str, *, n_trials: int, epochs: int) -> Path:
    sections = digits_study(name=name, n_trials=n_trials, max_epochs=epochs, patience=0, repeats=1)
    sections.update(MODELS.get(name, MODELS["digits-lstm"]))
    sections["racing"] = {"enabled": False}
    return write_study(ctx.folder(name), sections)


def _per_epoch(ctx: Context, res: Result, name: str, gpu: str) -> dict[str, Any]:
    epochs, rounds = ctx.pick(quick=(2, 1), full=(10, 3))
    study_file = _study(ctx, name, n_trials=1, epochs=epochs)
    ctx.log(f"{NAME}: {name}, {rounds} rounds of {epochs} epochs on GPU {gpu} and on the CPU")
    devices = {"gpu": gpu, "cpu": ""}
    seconds: dict[str, list[float]] = {"gpu": [], "cpu": []}
    seen: dict[str, list[str]] = {}
    for i in range(rounds):
        for side in rotation(list(devices), i):
            cmd = [sys.executable, "-m", "benchmarks.gpu", "--probe", str(study_file), "--epochs", str(epochs)]
            env = bench_env(CUDA_VISIBLE_DEVICES=devices[side])
            probe = json.loads(run_timed(cmd, env=env, keep_stdout=True).stdout.strip().splitlines()[-1])
            seconds[side].append(probe["seconds"] / epochs)
            seen[side] = probe["devices"]
    res.add(
        f"time per epoch, CPU / GPU, {name}",
        median_ratio(seconds["cpu"], seconds["gpu"]),
        note=f"GPU {median(seconds['gpu']) * 1000:.0f} ms/epoch (TensorFlow saw {', '.join(seen['gpu']) or 'no GPU'})",
    )
    return {"epochs": epochs, "rounds": rounds, "seconds_per_epoch": seconds, "devices_seen": seen}


def _trials_per_hour(ctx: Context, res: Result, gpus: list[str]) -> dict[str, Any]:
    n_trials, epochs = ctx.pick(quick=(2, 1), full=(12, 5))
    if len(gpus) < 2:
        res.add(
            "trials per hour, one worker per GPU / one worker",
            None,
            note=f"one GPU ({gpus[0]}): one worker per GPU is one worker",
        )
        return {"gpus": gpus, "skipped": "one GPU"}
    walls: dict[str, float] = {}
    for label, extra in (("per_gpu", ["--gpus", "auto"]), ("one", ["--workers", "1", "--gpus", "auto"])):
        study_file = _study(ctx, "digits-lstm", n_trials=n_trials, epochs=epochs)
        db = study_file.parent / "tph.db"
        ctx.log(f"{NAME}: sweep run {' '.join(extra)}, {n_trials} trials")
        walls[label] = run_timed(sweep_cmd("run", str(study_file), "--storage", sqlite_url(db), "-q", *extra)).seconds
    res.add(
        "trials per hour, one worker per GPU / one worker",
        walls["one"] / walls["per_gpu"],
        note=f"{len(gpus)} GPUs, {n_trials} trials of {epochs} epochs",
    )
    return {"gpus": gpus, "n_trials": n_trials, "epochs": epochs, "wall_s": walls}


def probe(study_file: str, *, epochs: int) -> dict[str, Any]:
    """Inside the probe process: one warm-up repeat, then one timed repeat of ``epochs`` epochs."""
    from sweep.train import configure_threads, import_tensorflow, prepare_gpus

    configure_threads(1)
    prepare_gpus()
    tf = import_tensorflow()
    from sweep.data import data_kwargs, load_dataset
    from sweep.objective import Objective
    from sweep.space import Hyperparams
    from sweep.spec import load_spec
    from sweep.train import fit_repeat, release

    spec = load_spec(study_file)
    objective = Objective(spec, load_dataset(**data_kwargs(spec.data)))
    params = Hyperparams.from_params(PROBE_PARAMS)
    family, data, shape = spec.model.family, objective.prepared[0], objective.shape

    def once() -> float:
        start = time.perf_counter()
        fit_repeat(params, family=family, shape=shape, data=data, max_epochs=epochs, patience=0, seed=0)
        release()
        return time.perf_counter() - start

    once()  # warm-up: graph building and first-use costs
    return {"seconds": once(), "devices": [d.name for d in tf.config.list_physical_devices("GPU")]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    parser.add_argument("--probe", metavar="STUDY_FILE", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.probe, epochs=args.epochs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
