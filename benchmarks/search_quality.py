"""7. Search quality against Keras Tuner, at an equal budget of training epochs.

Four tools search digits-lstm's space (the nine parameters of
``studies/digits-lstm.toml``) for the same stacked LSTM
(``sweep.model.build_model``), with the same maximum epochs and patience:

- Keras Tuner's ``Hyperband`` (objective ``val_loss``; its epochs set the
  budget B that the others get),
- Keras Tuner's ``RandomSearch`` and plain Optuna TPE, both choosing the
  configuration with the lowest validation loss seen, training on the
  canonical holdout split,
- ``sweep run`` (repeats, median pruner) choosing by stability score
  (``sweep rank``'s first row).

Every tool may start another trial while its epochs so far plus one full
trial stay within B (``sweep run`` is resumed with a larger ``--n-trials``
while that holds). Then each tool's choice is retrained with fresh seeds on
the canonical holdout split (``sweep best``'s protocol: ``fit_repeat``, the
study's epochs and patience) and the tail validation loss (mean of the last
``stability.tail`` epochs) of each run is kept. Reported: the mean and the
standard deviation over seeds for each tool, and sweep's against the best of
the others. Nothing here is timed, so independent searches run side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BenchmarkError,
    Context,
    Goal,
    Result,
    bench_env,
    digits_study,
    epochs_of,
    finished_trials,
    ratio,
    run_timed,
    sqlite_url,
    sweep_cmd,
    write_study,
)

NAME = "search_quality"
TITLE = "7. search quality"
UNTIMED = True
"""Only losses are measured: the suite may run this beside another untimed benchmark."""
GOAL_MEAN = Goal("<=", 1.0, "<= 1 (lowest mean)")
GOAL_STD = Goal("<=", 1.0, "<= 1 (lowest spread)")
SEED = 42
FRESH_SEED_OFFSET = 10_000
TOOLS = ("kt_hyperband", "kt_random", "optuna_tpe", "sweep")
LABELS = {
    "kt_hyperband": "Keras Tuner Hyperband",
    "kt_random": "Keras Tuner RandomSearch",
    "optuna_tpe": "Optuna TPE (best val loss)",
    "sweep": "sweep (stability score)",
}
_EPOCHS_SEEN = [0]
"""Epochs trained in this process; a module global, so Keras Tuner's copies of callbacks share it."""


def keras_tuner_available() -> str | None:
    """None when keras-tuner (and the tensorboard it imports) are installed, else what is missing.

    Only looks the packages up: importing keras-tuner would import TensorFlow into the suite's own process.
    """
    from importlib.util import find_spec

    missing = [name for name in ("keras_tuner", "tensorboard") if find_spec(name) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


# --------------------------------------------------------------------------- inside the search processes


def _setup(threads: int) -> dict[str, Any]:
    from sweep.train import configure_threads

    configure_threads(threads)
    from sweep.data import load_dataset, make_splits, prepare
    from sweep.objective import model_shape

    dataset = load_dataset(source="digits")
    (split,) = make_splits(dataset, n_splits=1, validation_fraction=0.2, seed=SEED)
    return {"data": prepare(dataset, split), "shape": model_shape(dataset)}


def _epoch_counter() -> Any:
    import keras

    class EpochCounter(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            _EPOCHS_SEEN[0] += 1

    return EpochCounter()


def _hypermodel(shape: Any) -> Any:
    import keras_tuner as kt

    from sweep.model import build_model
    from sweep.space import Hyperparams

    class DigitsLSTM(kt.HyperModel):  # type: ignore[misc]
        def build(self, hp: Any) -> Any:
            params = Hyperparams(
                n_layers=hp.Int("n_layers", 1, 2),
                units=hp.Int("units", 8, 64, sampling="log"),
                activation=hp.Choice("activation", ["tanh", "relu"]),
                learning_rate=hp.Float("learning_rate", 1e-4, 3e-2, sampling="log"),
                optimizer=hp.Choice("optimizer", ["adam", "rmsprop", "nadam", "sgd"]),
                batch_size=hp.Choice("batch_size", [32, 64, 128]),
                dropout=hp.Float("dropout", 0.0, 0.4),
                l2=hp.Float("l2", 1e-6, 1e-2, sampling="log"),
                layer_norm=hp.Boolean("layer_norm"),
            )
            return build_model(params, family="lstm", shape=shape)

        def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            return model.fit(*args, batch_size=hp.get("batch_size"), shuffle=True, **kwargs)

    return DigitsLSTM()


def _fit_kwargs(data: Any, *, epochs: int, patience: int) -> dict[str, Any]:
    import keras

    callbacks = [_epoch_counter()]
    if patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, mode="min"))
    return {
        "x": data.x_train,
        "y": data.y_train,
        "validation_data": (data.x_valid, data.y_valid),
        "epochs": epochs,
        "callbacks": callbacks,
        "verbose": 0,
    }


def _best_hp(tuner: Any) -> dict[str, Any]:
    values = {k: v for k, v in tuner.get_best_hyperparameters(1)[0].values.items() if not k.startswith("tuner/")}
    values["layer_norm"] = bool(values.get("layer_norm", False))
    return values


def search_hyperband(folder: Path, *, epochs: int, patience: int, iterations: int, threads: int) -> dict[str, Any]:
    import keras_tuner as kt

    env = _setup(threads)
    tuner = kt.Hyperband(
        _hypermodel(env["shape"]), objective="val_loss", max_epochs=epochs, factor=3,
        hyperband_iterations=iterations, seed=SEED, directory=str(folder), project_name="hyperband", overwrite=True,
    )  # fmt: skip
    tuner.search(**_fit_kwargs(env["data"], epochs=epochs, patience=patience))
    return {"params": _best_hp(tuner), "epochs": _EPOCHS_SEEN[0], "trials": len(tuner.oracle.trials)}


def search_random(folder: Path, *, budget: int, epochs: int, patience: int, threads: int) -> dict[str, Any]:
    import keras_tuner as kt

    env = _setup(threads)
    tuner = kt.RandomSearch(
        _hypermodel(env["shape"]), objective="val_loss", max_trials=1, seed=SEED,
        directory=str(folder), project_name="random", overwrite=True,
    )  # fmt: skip
    _EPOCHS_SEEN[0] = 0
    while _EPOCHS_SEEN[0] + epochs <= budget:
        tuner.oracle.max_trials = len(tuner.oracle.trials) + 1
        tuner.search(**_fit_kwargs(env["data"], epochs=epochs, patience=patience))
    return {"params": _best_hp(tuner), "epochs": _EPOCHS_SEEN[0], "trials": len(tuner.oracle.trials)}


def search_tpe(folder: Path, *, budget: int, epochs: int, patience: int, threads: int, space: dict[str, Any],
               n_startup_trials: int) -> dict[str, Any]:  # fmt: skip
    import optuna

    from benchmarks.plain_loop import load_digits_split, suggest_all, train_one

    _setup(threads)
    data = load_digits_split(SEED)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=sqlite_url(folder / "tpe.db"),
        sampler=optuna.samplers.TPESampler(seed=SEED, n_startup_trials=n_startup_trials),
    )
    used = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal used
        params = suggest_all(trial, space)
        log = train_one(params, data, epochs=epochs, seed=SEED, patience=patience)
        used += len(log.val_loss)
        finite = [v for v in log.val_loss if math.isfinite(v)]
        if not finite:
            raise optuna.TrialPruned("no finite validation loss")
        return min(finite)

    while used + epochs <= budget:
        study.optimize(objective, n_trials=1, catch=(Exception,))
    return {"params": dict(study.best_trial.params), "epochs": used, "trials": len(study.trials)}


def retrain(picks: dict[str, dict[str, Any]], *, seeds: int, epochs: int, patience: int, tail: int,
            threads: int) -> dict[str, Any]:  # fmt: skip
    """Each pick trained ``seeds`` times with fresh seeds on the canonical split; tail val loss of each run."""
    from sweep.space import Hyperparams
    from sweep.stability import summarize
    from sweep.train import fit_repeat, release

    env = _setup(threads)
    out: dict[str, Any] = {}
    for tool, params in picks.items():
        tails = []
        for i in range(seeds):
            curves, _ = fit_repeat(
                Hyperparams.from_params(params), family="lstm", shape=env["shape"], data=env["data"],
                max_epochs=epochs, patience=patience, seed=SEED + FRESH_SEED_OFFSET + i,
            )  # fmt: skip
            release()
            tails.append(summarize([curves.val_loss], tail=tail).tail_mean)
        out[tool] = tails
    return out


# --------------------------------------------------------------------------- orchestration


def _spawn(args: list[str], out_file: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "benchmarks.search_quality", *args, "--result", str(out_file)]
    return subprocess.Popen(cmd, env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen[str], out_file: Path, what: str) -> dict[str, Any]:
    _, err = proc.communicate(timeout=3 * 3600)
    if proc.returncode != 0:
        raise BenchmarkError(f"{what} exited {proc.returncode}: {' | '.join(err.strip().splitlines()[-3:])}")
    return json.loads(out_file.read_text())


def _sweep_search(
    ctx: Context, folder: Path, *, budget: int, s: dict[str, Any]
) -> subprocess.Popen[str] | dict[str, Any]:
    """Run sweep within the budget: ``sweep run``, resumed with more trials while a full trial still fits."""
    sections = digits_study(
        name="quality", n_trials=max(1, budget // (s["epochs"] * s["repeats"])), seed=SEED, max_epochs=s["epochs"],
        patience=s["patience"], repeats=s["repeats"],
        sampler={"name": "tpe", "n_startup_trials": s["sampler_startup"]},
        pruner={"name": "median", "n_startup_trials": s["pruner_startup"], "n_warmup_steps": s["warmup"]},
    )  # fmt: skip
    study_file = write_study(folder, sections)
    url = sqlite_url(folder / "quality.db")
    per_trial = s["epochs"] * s["repeats"]
    target = max(1, budget // per_trial)
    used = 0
    for _ in range(1 + s["top_ups"]):
        run_timed(sweep_cmd("run", str(study_file), "--storage", url, "--n-trials", str(target), "-q"), env=bench_env())
        used = sum(epochs_of(t) for t in finished_trials(url, "quality"))
        more = (budget - used) // per_trial
        if more < 1:
            break
        target += more
    from sweep.report import rank

    ranked = rank("quality", url=url)
    if not ranked:
        raise BenchmarkError("sweep found no complete trial to pick")
    return {"params": ranked[0].params, "epochs": used, "trials": len(finished_trials(url, "quality")),
            "picked_trial": ranked[0].number, "score": ranked[0].score}  # fmt: skip


def run(ctx: Context) -> Result:
    res = Result(NAME, TITLE)
    why = keras_tuner_available()
    if why is not None:
        res.notes.append(f"skipped: keras-tuner is {why}; install the bench extra: pip install -e '.[bench]'")
        res.raw = {"skipped": why}
        return res
    s = ctx.pick(
        quick={"epochs": 3, "patience": 0, "repeats": 2, "iterations": 1, "seeds": 3, "top_ups": 0,
               "sampler_startup": 2, "pruner_startup": 1, "warmup": 1, "tpe_startup": 2},
        full={"epochs": 15, "patience": 4, "repeats": 2, "iterations": 3, "seeds": 5, "top_ups": 2,
              "sampler_startup": 6, "pruner_startup": 3, "warmup": 4, "tpe_startup": 6},
    )  # fmt: skip
    folder = ctx.folder(NAME)
    threads = 1  # two searches run side by side on the cores
    common = ["--epochs", str(s["epochs"]), "--patience", str(s["patience"]), "--threads", str(threads)]

    ctx.log(f"{NAME}: Keras Tuner Hyperband (max_epochs {s['epochs']}, {s['iterations']} iteration(s)) sets the budget")
    hb = _wait(
        _spawn(["hyperband", str(folder), *common, "--iterations", str(s["iterations"])], folder / "hb.json"),
        folder / "hb.json",
        "Keras Tuner Hyperband",
    )
    budget = int(hb["epochs"])
    ctx.log(f"{NAME}: budget {budget} epochs; RandomSearch and TPE beside sweep run")
    from benchmarks.harness import space_json
    from sweep.spec import load_spec

    space_spec = load_spec(write_study(folder, digits_study(name="space", n_trials=1)))
    space_file = folder / "space.json"
    space_file.write_text(json.dumps(space_json(space_spec)))
    others = _spawn(
        ["others", str(folder), *common, "--budget", str(budget), "--space", str(space_file),
         "--tpe-startup", str(s["tpe_startup"])],
        folder / "others.json",
    )  # fmt: skip
    try:
        sweep_pick = _sweep_search(ctx, folder, budget=budget, s=s)
    finally:
        other_picks = _wait(others, folder / "others.json", "Keras Tuner RandomSearch / Optuna TPE")
    searches = {"kt_hyperband": hb, **other_picks, "sweep": sweep_pick}

    ctx.log(f"{NAME}: retraining each pick with {s['seeds']} fresh seeds")
    picks = {tool: searches[tool]["params"] for tool in TOOLS}
    unique: dict[str, dict[str, Any]] = {}  # the same configuration retrained with the same seeds gives the same losses
    same_as: dict[str, str] = {}
    for tool, params in picks.items():
        twin = next((t for t, p in unique.items() if p == params), None)
        if twin is None:
            unique[tool] = params
        same_as[tool] = twin or tool
    items = list(unique.items())
    halves = [dict(items[: (len(items) + 1) // 2]), dict(items[(len(items) + 1) // 2 :])]
    procs = []
    for i, half in enumerate(h for h in halves if h):
        picks_file = folder / f"picks{i}.json"
        picks_file.write_text(json.dumps(half))
        out = folder / f"retrain{i}.json"
        procs.append((_spawn(["retrain", str(folder), *common, "--picks", str(picks_file), "--seeds",
                              str(s["seeds"]), "--tail", "5"], out), out))  # fmt: skip
    tails: dict[str, list[float]] = {}
    for proc, out in procs:
        tails.update(_wait(proc, out, "retraining"))
    tails = {tool: tails[same_as[tool]] for tool in TOOLS}

    stats = {
        tool: {"mean": statistics.fmean(v), "std": statistics.pstdev(v) if len(v) > 1 else 0.0, "tails": v}
        for tool, v in tails.items()
    }
    for tool in TOOLS:
        st = stats[tool]
        res.add(
            f"{LABELS[tool]}: retrained tail val loss, mean over {s['seeds']} seeds",
            st["mean"],
            unit="",
            note=f"std {st['std']:.3g}; {searches[tool]['trials']} trials, {searches[tool]['epochs']} epochs",
        )
    rivals = [t for t in TOOLS if t != "sweep"]
    best_mean = min(stats[t]["mean"] for t in rivals)
    best_std = min(stats[t]["std"] for t in rivals)
    res.add("retrained mean, sweep / lowest of the others", ratio(stats["sweep"]["mean"], best_mean), goal=GOAL_MEAN)
    res.add("retrained std, sweep / lowest of the others", ratio(stats["sweep"]["std"], best_std), goal=GOAL_STD)
    res.raw = {
        "settings": s,
        "budget_epochs": budget,
        "searches": searches,
        "retrained": stats,
        "same_pick_as": same_as,
    }
    if ctx.quick:
        res.notes.append(
            f"quick run: a budget of {budget} epochs and {s['seeds']} seeds is a smoke test, "
            "not a verdict on search quality"
        )
    else:
        res.notes.append("one search per tool (searches are minutes each): the ranking can change with the seeds")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_quality")
    parser.add_argument("what", choices=["hyperband", "others", "retrain"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--patience", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--budget", type=int)
    parser.add_argument("--space", type=Path)
    parser.add_argument("--tpe-startup", type=int, default=10)
    parser.add_argument("--picks", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tail", type=int, default=5)
    args = parser.parse_args(argv)
    common = {"epochs": args.epochs, "patience": args.patience, "threads": args.threads}
    if args.what == "hyperband":
        out: dict[str, Any] = search_hyperband(args.folder, iterations=args.iterations, **common)
    elif args.what == "others":
        space = json.loads(args.space.read_text())
        out = {
            "kt_random": search_random(args.folder, budget=args.budget, **common),
            "optuna_tpe": search_tpe(args.folder, budget=args.budget, space=space, n_startup_trials=args.tpe_startup,
                                     **common),
        }  # fmt: skip
    else:
        out = retrain(json.loads(args.picks.read_text()), seeds=args.seeds, tail=args.tail, **common)
    args.result.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
