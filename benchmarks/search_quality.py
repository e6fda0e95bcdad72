"""7. Search quality: does each tool's pick generalise to data that no tool saw?

Four tools search the same space for the same model (``sweep.model.build_model``),
with the same maximum epochs and patience, on four datasets (:data:`CASES`):
digits with an LSTM, the Mackey-Glass series with a GRU, breast cancer with a
dense network, and scikit-learn's wine table written to a CSV file that sweep
reads as a user's file (``source = "csv"``).

Each dataset is split once (one seed, the same for every tool and search seed)
into a development part and a test block (:func:`dev_test_split`): stratified
for classification; for a series the test block is the last windows in time,
and the ``lookback + horizon - 1`` windows before it are dropped so that no
test window reads a value that a development window predicts. Every tool
searches the development part only, its own way:

- Keras Tuner ``Hyperband`` (objective ``val_loss``) and ``RandomSearch``, and
  Optuna TPE, on one holdout of the development part
  (``make_splits(dev, n_splits=1)``), each picking the configuration with
  the lowest validation loss seen,
- ``sweep run`` on the development part written to a file (NPZ, or the CSV's
  own rows), with its repeats, pruner and racing, picking ``rank()``'s first
  complete trial.

Every tool gets the same budget of B training epochs per (dataset, search
seed), counted as trained (early stopping, pruning and racing spend less),
and starts a trial only while its epochs so far plus that trial's stay within
B: ``max_epochs`` for RandomSearch and TPE, the epochs Hyperband assigns (only
the new ones when it continues a trial), ``max_epochs * repeats`` for sweep,
whose ``sweep run`` is resumed with a larger ``--n-trials`` while that holds.
Each pick is then retrained on the whole development part with fresh seeds
(no search used them), evaluated on the test block every epoch with
``patience=0`` (the test block never steers training), and scored by the mean
of its last ``tail`` epochs of test loss. Every complete trial of each sweep
study is retrained the same way with the first ``spearman_seeds`` fresh seeds,
to see whether sweep's score orders configurations as their test loss does
(Spearman), beside the lowest validation loss seen (``best``).

Losses differ in scale between datasets, so tools are also compared per
(dataset, search seed) by rank and by their test loss relative to the best
tool's (:func:`summarize_tools`). Nothing is timed: two jobs (the peers'
searches, sweep's, or a retraining; one thread each) run side by side. The
sizes are in :data:`SIZES`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import (
    ROOT,
    BenchmarkError,
    Context,
    Goal,
    Result,
    bench_env,
    epochs_of,
    finished_trials,
    ratio,
    run_timed,
    sqlite_url,
    sweep_cmd,
    write_study,
)

if TYPE_CHECKING:
    import numpy as np

    from sweep.data import Dataset, Split

NAME = "search_quality"
TITLE = "7. search quality"
UNTIMED = True
"""Only losses are measured: the suite may run this beside another untimed benchmark."""

TOOLS = ("kt_hyperband", "kt_random", "optuna_tpe", "sweep")
LABELS = {
    "kt_hyperband": "Keras Tuner Hyperband",
    "kt_random": "Keras Tuner RandomSearch",
    "optuna_tpe": "Optuna TPE",
    "sweep": "sweep",
}
SHORT = {"kt_hyperband": "Hyperband", "kt_random": "Random", "optuna_tpe": "TPE", "sweep": "sweep"}
STAGES = ("peers", "sweep", "retrain")
"""The jobs of one (dataset, search seed): the peers' searches and sweep's side by side, then the retraining."""

GOAL_LOSS = Goal("<=", 1.0, "<= 1 (lowest)")
GOAL_SPREAD = Goal("<=", 1.0, "<= 1 (lowest)")
GOAL_SPEARMAN = Goal(">=", 0.9)
GOAL_SPEARMAN_GAIN = Goal(">", 0.0, "> 0 (score beats best)")

SPLIT_SEED = 2024
"""The one seed of every dataset's development/test split."""
FRESH_SEED = 10_000
"""Retraining seeds are FRESH_SEED, FRESH_SEED + 1, ...: no search uses them (searches use seed + repeat < 100)."""
STUDY = "quality"
SLOTS = 2
"""Jobs running at once, one thread each."""
JOB_TIMEOUT = 2 * 3600
"""Seconds after which a job is stopped and counted as failed."""

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "search_seeds": [0, 1, 2],
        "max_epochs": 10,
        "patience": 3,
        "repeats": 3,  # sweep's training.repeats
        "tail": 5,
        "budget": {"digits-lstm": 150, "mackey-glass-gru": 150, "breast-cancer-dense": 150, "wine-csv-dense": 150},
        "hyperband_factor": 3,  # with max_epochs 10: about 120 epochs an iteration
        "fresh_seeds": 5,
        "spearman_seeds": 2,
        "tpe_startup": 5,
        "sampler_startup": 3,  # sweep's sampler
        "pruner_startup": 3,
        "pruner_warmup": 4,
        "max_runs": 6,  # `sweep run` calls per search at most (the first and its resumptions)
        "test_fraction": 0.2,
    },
    "quick": {
        "search_seeds": [0],
        "max_epochs": 3,
        "patience": 0,
        "repeats": 2,
        "tail": 2,
        "budget": {"digits-lstm": 12, "mackey-glass-gru": 12, "breast-cancer-dense": 12, "wine-csv-dense": 12},
        "hyperband_factor": 3,  # with max_epochs 3: 11 epochs an iteration
        "fresh_seeds": 2,
        "spearman_seeds": 1,
        "tpe_startup": 2,
        "sampler_startup": 1,
        "pruner_startup": 1,
        "pruner_warmup": 1,
        "max_runs": 2,
        "test_fraction": 0.2,
    },
}
"""Every size of the benchmark, per mode; change them here.

``budget`` is B, the epochs each tool may train per (dataset, search seed):
a tool starts a trial only while its epochs so far plus that trial's stay
within B (a full trial is ``max_epochs``, ``max_epochs * repeats`` for sweep;
a Hyperband trial that continues another needs only its new epochs).
"""


@dataclass(frozen=True)
class Case:
    """One dataset and the model family and search space every tool uses on it."""

    name: str
    family: str
    data: Mapping[str, Any]
    """``load_dataset`` arguments for the whole dataset (a ``csv`` path is relative to the run's folder)."""
    search: Mapping[str, Any]
    validation_fraction: float
    dev_file: str
    """How sweep gets the development part: ``"npz"`` (arrays) or ``"csv"`` (the file's own rows)."""

    @property
    def gap(self) -> int:
        """Windows dropped between the development part and the test block (windowed series only)."""
        lookback = self.data.get("lookback")
        return 0 if lookback is None else window_gap(int(lookback), int(self.data.get("horizon", 1)))


_DENSE_SEARCH: dict[str, Any] = {
    "n_layers": {"low": 1, "high": 2},
    "units": {"low": 8, "high": 64, "log": True},
    "activation": ["relu", "elu", "tanh"],
    "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
    "optimizer": ["adam", "nadam", "sgd"],
    "batch_size": [16, 32, 64],
    "dropout": {"low": 0.0, "high": 0.5},
    "l2": {"low": 1e-6, "high": 1e-1, "log": True},
}
"""``studies/breast-cancer-dense.toml``'s space, with at most 2 layers of 64 units."""

WINE_CSV = "wine.csv"
WINE_TARGET = "cultivar"

CASES: tuple[Case, ...] = (
    Case(
        name="digits-lstm",
        family="lstm",
        data={"source": "digits"},
        search={
            "n_layers": {"low": 1, "high": 2},
            "units": {"low": 8, "high": 64, "log": True},
            "activation": ["tanh", "relu"],
            "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
            "optimizer": ["adam", "rmsprop", "nadam", "sgd"],
            "batch_size": [64, 128],
            "dropout": {"low": 0.0, "high": 0.4},
            "l2": {"low": 1e-6, "high": 1e-2, "log": True},
            "layer_norm": [False, True],
        },
        validation_fraction=0.2,
        dev_file="npz",
    ),
    Case(
        name="mackey-glass-gru",
        family="gru",
        data={"source": "mackey_glass", "length": 1000, "lookback": 16, "horizon": 1},
        search={
            "n_layers": {"low": 1, "high": 2},
            "units": {"low": 8, "high": 64, "log": True},
            "activation": "tanh",
            "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
            "optimizer": ["adam", "rmsprop", "sgd"],
            "batch_size": [32, 64],
            "dropout": {"low": 0.0, "high": 0.3},
            "l2": 0.0,
            "layer_norm": [False, True],
        },
        validation_fraction=0.15,
        dev_file="npz",
    ),
    Case(
        name="breast-cancer-dense",
        family="dense",
        data={"source": "breast_cancer"},
        search=_DENSE_SEARCH,
        validation_fraction=0.2,
        dev_file="npz",
    ),
    Case(
        name="wine-csv-dense",
        family="dense",
        data={"source": "csv", "path": WINE_CSV, "task": "classification", "target": WINE_TARGET},
        search=_DENSE_SEARCH,
        validation_fraction=0.2,
        dev_file="csv",
    ),
)

_EPOCHS_SEEN = [0]
"""Epochs trained in this process; a module global, so Keras Tuner's copies of callbacks share it."""


def keras_tuner_available() -> str | None:
    """None when keras-tuner (and the tensorboard it imports) are installed, else what is missing.

    Only looks the packages up: importing keras-tuner would import TensorFlow into the suite's own process.
    """
    from importlib.util import find_spec

    missing = [name for name in ("keras_tuner", "tensorboard") if find_spec(name) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


# --------------------------------------------------------------------------- the split and the files sweep reads


def window_gap(lookback: int, horizon: int) -> int:
    """Windows to drop between a development part and a test block of ``lookback``/``horizon`` windows.

    Window ``i`` reads rows ``i .. i + lookback - 1`` and predicts row
    ``i + lookback - 1 + horizon``; after the gap, the first test window reads
    only rows after the last development target.
    """
    return lookback + horizon - 1


def dev_test_split(ds: Dataset, *, test_fraction: float, seed: int, gap: int = 0) -> Split:
    """The development rows (``train``) and the test block (``valid``) of ``ds``; disjoint, sorted.

    The test block has ``ceil(test_fraction * n)`` rows: the last ones for
    time-ordered data (with ``gap`` rows dropped just before it), a stratified
    draw for classification, a shuffled draw otherwise.

    Raises:
        ValueError: a ``test_fraction`` outside (0, 1), a negative ``gap``, or too few rows.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    from sweep.data import Split, Task

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: got {test_fraction!r}; allowed: a number between 0 and 1")
    if gap < 0:
        raise ValueError(f"gap: got {gap!r}; allowed: an integer >= 0")
    n = int(ds.X.shape[0])
    n_test = math.ceil(test_fraction * n - 1e-9)
    if n_test < 2 or n - n_test - gap < 2:
        raise ValueError(f"{n} rows are too few for a test block of {n_test} rows and a gap of {gap}")
    rows = np.arange(n, dtype=np.int64)
    if ds.time_ordered:
        return Split(train=rows[: n - n_test - gap], valid=rows[n - n_test :])
    if gap:
        raise ValueError(f"gap: got {gap}; a gap is only for time-ordered data")
    stratify = ds.y if ds.task is Task.CLASSIFICATION else None
    dev, test = train_test_split(rows, test_size=n_test, random_state=seed % 2**32, shuffle=True, stratify=stratify)
    return Split(train=np.sort(dev), valid=np.sort(test))


def subset(ds: Dataset, rows: np.ndarray) -> Dataset:
    """The rows ``rows`` of ``ds``, in that order, as a dataset of their own."""
    lengths = None if ds.lengths is None else ds.lengths[rows]
    return replace(ds, X=ds.X[rows], y=ds.y[rows], lengths=lengths)


def write_wine_csv(path: Path) -> Path:
    """scikit-learn's wine table as a user's CSV: 13 numeric columns and a text label column."""
    from sklearn.datasets import load_wine

    bunch = load_wine()
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*bunch.feature_names, WINE_TARGET])
        for values, label in zip(bunch.data, bunch.target, strict=True):
            writer.writerow([repr(float(v)) for v in values] + [str(bunch.target_names[label])])
    return Path(path)


def write_dev_file(case: Case, ds: Dataset, dev_rows: np.ndarray, folder: Path) -> dict[str, Any]:
    """Write the development rows where sweep reads them; returns the study's ``[data]`` fields.

    NPZ holds ``X`` and ``y`` (a ``forecast`` NPZ is time-ordered for sweep);
    a CSV case gets the header and the development lines of its own file, so
    sweep parses exactly the text the whole dataset was read from.
    """
    import numpy as np

    folder = Path(folder)
    if case.dev_file == "csv":
        source = Path(str(case.data["path"]))
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        path = folder / f"dev-{source.name}"
        path.write_text(lines[0] + "".join(lines[1 + int(i)] for i in dev_rows), encoding="utf-8")
        fields = {k: v for k, v in case.data.items() if k in ("task", "target", "features", "lookback", "horizon")}
        return {"source": "csv", "path": str(path), **fields}
    dev = subset(ds, dev_rows)
    path = folder / "dev.npz"
    arrays = {"X": dev.X, "y": dev.y}
    if dev.lengths is not None:
        arrays["lengths"] = dev.lengths
    np.savez(path, **arrays)
    return {"source": "npz", "path": str(path), "task": dev.task.value}


# --------------------------------------------------------------------------- scores and their summaries


def tail_mean(curve: Sequence[float], *, tail: int, epochs: int) -> float:
    """The mean of the last ``tail`` losses; ``inf`` when the run diverged or stopped before ``epochs``."""
    if len(curve) < epochs or not all(math.isfinite(v) for v in curve):
        return math.inf
    return statistics.fmean(curve[-tail:])


def average_ranks(values: Sequence[float]) -> list[float]:
    """1 for the lowest value, ties sharing the mean of their ranks; NaN ranks last."""
    import numpy as np
    from scipy.stats import rankdata

    a = np.asarray(values, dtype=np.float64)
    return [float(r) for r in rankdata(np.where(np.isnan(a), np.inf, a), method="average")]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of the pairs where both are finite; NaN below 3 pairs or without spread."""
    import numpy as np

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return math.nan
    ra = np.asarray(average_ranks([x for x, _ in pairs]))
    rb = np.asarray(average_ranks([y for _, y in pairs]))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return math.nan if denominator == 0 else float((ra * rb).sum()) / denominator


@dataclass(frozen=True)
class ToolSummary:
    """One tool over a set of (dataset, search seed) cells."""

    mean_loss: float
    """Mean of the cells' retrained test losses (each the mean over fresh seeds)."""
    mean_spread: float
    """Mean of the cells' spreads (population std over fresh seeds)."""
    mean_rank: float
    """Mean rank among the tools per cell (1 = lowest test loss; ties share)."""
    mean_relative: float
    """Mean of test loss / the best tool's test loss, per cell (1 = the best everywhere)."""
    mean_relative_spread: float
    """Mean of spread / the best tool's test loss, per cell: spreads on one scale across datasets."""
    cells: int


def summarize_tools(
    cells: Mapping[Any, Mapping[str, tuple[float, float]]], tools: Sequence[str]
) -> dict[str, ToolSummary]:
    """Each tool's summary over ``cells``: cell -> tool -> (mean test loss, spread).

    Only cells that hold every tool count. A non-finite loss ranks last and
    makes its tool's means infinite; a best loss of 0 makes that cell's ratios NaN.
    """
    complete = [cell for cell in cells.values() if all(t in cell for t in tools)]
    per: dict[str, dict[str, list[float]]] = {t: {"loss": [], "spread": [], "rank": [], "rel": [], "rel_spread": []}
                                               for t in tools}  # fmt: skip
    for cell in complete:
        losses = [float(cell[t][0]) for t in tools]
        best = min(losses)
        for t, loss, rank in zip(tools, losses, average_ranks(losses), strict=True):
            spread = float(cell[t][1])
            per[t]["loss"].append(loss)
            per[t]["spread"].append(spread)
            per[t]["rank"].append(rank)
            per[t]["rel"].append(ratio(loss, best) if math.isfinite(loss) else math.inf)
            per[t]["rel_spread"].append(ratio(spread, best))

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else math.nan

    return {
        t: ToolSummary(
            mean_loss=mean(v["loss"]),
            mean_spread=mean(v["spread"]),
            mean_rank=mean(v["rank"]),
            mean_relative=mean(v["rel"]),
            mean_relative_spread=mean(v["rel_spread"]),
            cells=len(complete),
        )
        for t, v in per.items()
    }


def against_others(summaries: Mapping[str, ToolSummary], *, attribute: str, tool: str = "sweep") -> float:
    """``tool``'s ``attribute`` over the lowest of the other tools' (NaN when it cannot be said)."""
    others = [getattr(s, attribute) for t, s in summaries.items() if t != tool]
    finite = [v for v in others if math.isfinite(v)]
    if tool not in summaries or not finite:
        return math.nan
    return ratio(getattr(summaries[tool], attribute), min(finite))


# --------------------------------------------------------------------------- one (dataset, search seed): its plan


@dataclass(frozen=True)
class Plan:
    """What every job of one (dataset, search seed) needs; written as JSON, read by the job processes."""

    case: str
    family: str
    data: dict[str, Any]
    search: dict[str, Any]
    validation_fraction: float
    gap: int
    seed: int
    budget: int
    settings: dict[str, Any]
    folder: str
    study_file: str

    def save(self) -> Path:
        path = Path(self.folder) / "plan.json"
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    def result(self, what: str) -> dict[str, Any]:
        return dict(json.loads((Path(self.folder) / f"{what}.json").read_text(encoding="utf-8")))


def study_sections(plan: Plan, dev_data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The study file of sweep's search: the development part, the case's space, the plan's sizes."""
    s = plan.settings
    return {
        "study": {"name": STUDY, "seed": plan.seed, "n_trials": 1},
        "data": {**dev_data, "validation_fraction": plan.validation_fraction},
        "model": {"family": plan.family},
        "search": dict(plan.search),
        "training": {"max_epochs": s["max_epochs"], "patience": s["patience"], "repeats": s["repeats"]},
        "stability": {"tail": s["tail"]},
        "sampler": {"name": "tpe", "n_startup_trials": s["sampler_startup"]},
        "pruner": {"name": "median", "n_startup_trials": s["pruner_startup"], "n_warmup_steps": s["pruner_warmup"]},
        "worker": {"threads": 1},
    }


def make_plans(folder: Path, settings: Mapping[str, Any], cases: Sequence[Case] = CASES) -> list[Plan]:
    """Write each case's data files and each (case, search seed)'s study file and plan; seed-major order."""
    from sweep.data import load_dataset

    per_case: dict[str, tuple[Case, dict[str, Any], dict[str, Any]]] = {}
    for case in cases:
        case_folder = Path(folder) / case.name
        case_folder.mkdir(parents=True, exist_ok=True)
        data = dict(case.data)
        if case.data.get("path") == WINE_CSV:
            data["path"] = str(write_wine_csv(case_folder / WINE_CSV))
            case = replace(case, data=data)
        ds = load_dataset(**data)
        split = dev_test_split(ds, test_fraction=settings["test_fraction"], seed=SPLIT_SEED, gap=case.gap)
        per_case[case.name] = (case, data, write_dev_file(case, ds, split.train, case_folder))
    plans = []
    for seed in settings["search_seeds"]:
        for case, data, dev_data in per_case.values():
            seed_folder = Path(folder) / case.name / f"seed{seed}"
            seed_folder.mkdir(parents=True, exist_ok=True)
            plan = Plan(
                case=case.name, family=case.family, data=data, search=dict(case.search),
                validation_fraction=case.validation_fraction, gap=case.gap, seed=int(seed),
                budget=int(settings["budget"][case.name]), settings=dict(settings), folder=str(seed_folder),
                study_file="",
            )  # fmt: skip
            study_file = write_study(seed_folder, study_sections(plan, dev_data))
            plan = replace(plan, study_file=str(study_file))
            plan.save()
            plans.append(plan)
    return plans


# --------------------------------------------------------------------------- inside the job processes


@dataclass
class _Env:
    full: Any
    split: Any
    dev: Any
    shape: Any
    holdout: Any
    space: dict[str, str]


def _setup(plan: Plan, *, threads: int = 1) -> _Env:
    """Load the dataset, split it as every tool does, and the tools' holdout of the development part."""
    from sweep.train import configure_threads

    configure_threads(threads)
    import keras

    from benchmarks.harness import space_json
    from sweep.data import load_dataset, make_splits, prepare
    from sweep.model import model_shape
    from sweep.spec import load_spec

    keras.utils.set_random_seed(plan.seed)
    full = load_dataset(**plan.data)
    split = dev_test_split(full, test_fraction=plan.settings["test_fraction"], seed=SPLIT_SEED, gap=plan.gap)
    dev = subset(full, split.train)
    (holdout,) = make_splits(dev, n_splits=1, validation_fraction=plan.validation_fraction, seed=plan.seed)
    return _Env(
        full=full, split=split, dev=dev, shape=model_shape(full), holdout=prepare(dev, holdout),
        space=space_json(load_spec(Path(plan.study_file))),
    )  # fmt: skip


def _epoch_counter() -> Any:
    import keras

    class EpochCounter(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            _EPOCHS_SEEN[0] += 1

    return EpochCounter()


def _kt_value(hp: Any, name: str, raw: str) -> Any:
    """One parameter drawn through Keras Tuner from its Optuna distribution (JSON)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution, json_to_distribution

    dist = json_to_distribution(raw)
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        if len(choices) == 1:
            return hp.Fixed(name, choices[0])
        if len(choices) == 2 and all(isinstance(c, bool) for c in choices):
            return hp.Boolean(name)
        return hp.Choice(name, choices)
    sampling = "log" if dist.log else "linear"
    if isinstance(dist, IntDistribution):
        return hp.Int(name, dist.low, dist.high, step=None if dist.log else dist.step, sampling=sampling)
    return hp.Float(name, dist.low, dist.high, step=dist.step, sampling=sampling)


def _hypermodel(env: _Env, family: str) -> Any:
    import keras_tuner as kt

    from sweep.model import build_model
    from sweep.space import Hyperparams

    class SpaceModel(kt.HyperModel):  # type: ignore[misc]
        def build(self, hp: Any) -> Any:
            values = {name: _kt_value(hp, name, raw) for name, raw in env.space.items()}
            return build_model(Hyperparams.from_params(values), family=family, shape=env.shape)

        def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            return model.fit(*args, batch_size=hp.get("batch_size"), shuffle=True, **kwargs)

    return SpaceModel()


def _fit_kwargs(env: _Env, *, epochs: int, patience: int) -> dict[str, Any]:
    import keras

    callbacks = [_epoch_counter()]
    if patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, mode="min"))
    data = env.holdout
    return {
        "x": data.x_train,
        "y": data.y_train,
        "validation_data": (data.x_valid, data.y_valid),
        "epochs": epochs,
        "callbacks": callbacks,
        "verbose": 0,
    }


def _best_hp(tuner: Any) -> dict[str, Any]:
    from sweep.space import Hyperparams

    values = {k: v for k, v in tuner.get_best_hyperparameters(1)[0].values.items() if not k.startswith("tuner/")}
    return Hyperparams.from_params(values).as_dict()


def _within_budget(oracle: Any, *, budget: int, epochs: int) -> None:
    """Make ``oracle`` stop when its next trial's epochs would take this process past ``budget``.

    A Hyperband trial that continues an earlier one needs only its new epochs;
    any other trial may need all ``epochs``.
    """
    populate = oracle.populate_space

    def populate_within_budget(trial_id: str) -> dict[str, Any]:
        response = populate(trial_id)
        if response.get("status") == "RUNNING":
            values = response.get("values") or {}
            need = int(values.get("tuner/epochs", epochs)) - int(values.get("tuner/initial_epoch", 0))
            if _EPOCHS_SEEN[0] + need > budget:
                return {"status": "STOPPED"}
        return dict(response)

    oracle.populate_space = populate_within_budget


def search_hyperband(plan: Plan, env: _Env) -> dict[str, Any]:
    import keras
    import keras_tuner as kt

    s = plan.settings
    keras.utils.set_random_seed(plan.seed)
    tuner = kt.Hyperband(
        _hypermodel(env, plan.family), objective="val_loss", max_epochs=s["max_epochs"], factor=s["hyperband_factor"],
        hyperband_iterations=plan.budget, seed=plan.seed, directory=plan.folder, project_name="kt_hyperband",
        overwrite=True,
    )  # fmt: skip; as many iterations as the budget allows: it stops the search
    _within_budget(tuner.oracle, budget=plan.budget, epochs=s["max_epochs"])
    _EPOCHS_SEEN[0] = 0
    tuner.search(**_fit_kwargs(env, epochs=s["max_epochs"], patience=s["patience"]))
    return {"params": _best_hp(tuner), "epochs": _EPOCHS_SEEN[0], "trials": len(tuner.oracle.trials)}


def search_random(plan: Plan, env: _Env) -> dict[str, Any]:
    import keras
    import keras_tuner as kt

    s = plan.settings
    keras.utils.set_random_seed(plan.seed)
    tuner = kt.RandomSearch(
        _hypermodel(env, plan.family), objective="val_loss", max_trials=plan.budget, seed=plan.seed,
        directory=plan.folder, project_name="kt_random", overwrite=True,
    )  # fmt: skip
    _within_budget(tuner.oracle, budget=plan.budget, epochs=s["max_epochs"])
    _EPOCHS_SEEN[0] = 0
    tuner.search(**_fit_kwargs(env, epochs=s["max_epochs"], patience=s["patience"]))
    return {"params": _best_hp(tuner), "epochs": _EPOCHS_SEEN[0], "trials": len(tuner.oracle.trials)}


def search_tpe(plan: Plan, env: _Env) -> dict[str, Any]:
    import optuna

    from benchmarks.plain_loop import suggest_all
    from sweep.space import Hyperparams
    from sweep.train import fit_repeat, release

    s = plan.settings
    budget, epochs = plan.budget, s["max_epochs"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=s["tpe_startup"]))
    used = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal used
        params = Hyperparams.from_params(suggest_all(trial, env.space))
        curves, _ = fit_repeat(
            params, family=plan.family, shape=env.shape, data=env.holdout, max_epochs=epochs,
            patience=s["patience"], seed=plan.seed,
        )  # fmt: skip
        release()
        used += curves.epochs
        finite = [v for v in curves.val_loss if math.isfinite(v)]
        if not finite:
            raise optuna.TrialPruned("no finite validation loss")
        return min(finite)

    for _ in range(budget):  # each trial trains at least one epoch
        if used + epochs > budget:
            break
        study.optimize(objective, n_trials=1, catch=(Exception,))
    done = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    if not done:
        raise BenchmarkError("Optuna TPE completed no trial")
    best = min(done, key=lambda t: float(t.value))
    return {"params": Hyperparams.from_params(best.params).as_dict(), "epochs": used, "trials": len(study.trials)}


def search_peers(plan: Plan) -> dict[str, Any]:
    """Keras Tuner Hyperband and RandomSearch, then Optuna TPE, one after another in this process."""
    env = _setup(plan)
    out = {}
    for tool, search in (("kt_hyperband", search_hyperband), ("kt_random", search_random),
                         ("optuna_tpe", search_tpe)):  # fmt: skip
        start = time.perf_counter()
        out[tool] = {**search(plan, env), "seconds": round(time.perf_counter() - start, 1)}
    return out


def search_sweep(plan: Plan) -> dict[str, Any]:
    """``sweep run`` on the development part, resumed with more trials while a full trial still fits."""
    from sweep.report import rank

    s = plan.settings
    budget = plan.budget
    per_trial = s["max_epochs"] * s["repeats"]
    url = sqlite_url(Path(plan.folder) / f"{STUDY}.db")
    target = max(1, budget // per_trial)
    used, runs = 0, 0
    while runs < s["max_runs"]:
        cmd = sweep_cmd("run", plan.study_file, "--storage", url, "--n-trials", str(target), "-q")
        run_timed(cmd, env=bench_env(), timeout=3600)
        runs += 1
        used = sum(epochs_of(t) for t in finished_trials(url, STUDY))
        more = (budget - used) // per_trial
        if more < 1:
            break
        target += more
    rows = rank(STUDY, url=url, include_all=True)
    complete = [r for r in rows if r.state == "COMPLETE"]
    if not complete:
        raise BenchmarkError(f"sweep completed no trial within {budget} epochs")
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    pick = complete[0]
    return {
        "params": dict(pick.params), "epochs": used, "trials": len(rows), "runs": runs,
        "states": states, "picked_trial": pick.number, "score": pick.score,
        "complete": [{"number": r.number, "score": r.score, "best": r.best, "tail_mean": r.tail_mean,
                      "tail_std": r.tail_std, "diagnosis": r.diagnosis, "params": dict(r.params)} for r in complete],
        "all": [{"number": r.number, "state": r.state, "n_repeats": r.n_repeats, "stopped": r.stopped,
                 "diagnosis": r.diagnosis} for r in rows],
    }  # fmt: skip


def retrain(plan: Plan) -> dict[str, Any]:
    """Each tool's pick with every fresh seed, and each complete sweep trial with the first few, on the test block.

    Training rows are the whole development part, validation rows the test
    block, scaled with the development rows' statistics; ``patience=0``.
    """
    from sweep.data import prepare
    from sweep.space import Hyperparams
    from sweep.train import fit_repeat, release

    env = _setup(plan)
    s = plan.settings
    data = prepare(env.full, env.split)
    epochs, tail = s["max_epochs"], s["tail"]
    seeds = [FRESH_SEED + i for i in range(s["fresh_seeds"])]
    cache: dict[tuple[str, int], list[float]] = {}

    def test_curve(params: Mapping[str, Any], seed: int) -> list[float]:
        hp = Hyperparams.from_params(dict(params))
        key = (json.dumps(hp.as_dict(), sort_keys=True), seed)
        if key not in cache:
            curves, _ = fit_repeat(hp, family=plan.family, shape=env.shape, data=data, max_epochs=epochs, patience=0,
                                   seed=seed)  # fmt: skip
            release()
            cache[key] = list(curves.val_loss)
        return cache[key]

    picks = {**{tool: found["params"] for tool, found in plan.result("peers").items()},
             "sweep": plan.result("sweep")["params"]}  # fmt: skip
    tools: dict[str, Any] = {}
    for tool in TOOLS:
        curves = [test_curve(picks[tool], seed) for seed in seeds]
        tools[tool] = {"tails": [tail_mean(c, tail=tail, epochs=epochs) for c in curves], "curves": curves}
    trials = []
    for trial in plan.result("sweep")["complete"]:
        curves = [test_curve(trial["params"], seed) for seed in seeds[: s["spearman_seeds"]]]
        tails = [tail_mean(c, tail=tail, epochs=epochs) for c in curves]
        trials.append({"number": trial["number"], "score": trial["score"], "best": trial["best"],
                       "tail_mean": trial.get("tail_mean"), "tail_std": trial.get("tail_std"), "tails": tails})
    return {"seeds": seeds, "tools": tools, "trials": trials, "epochs": len(cache) * epochs, "fits": len(cache)}


JOBS: dict[str, Callable[[Plan], dict[str, Any]]] = {
    "peers": search_peers,
    "sweep": search_sweep,
    "retrain": retrain,
}


# --------------------------------------------------------------------------- running the jobs, two at a time


@dataclass
class Job:
    """One process: one stage of one plan."""

    plan: Plan
    what: str
    after: tuple[str, ...] = ()
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.plan.case}/seed{self.plan.seed}/{self.what}"

    @property
    def out(self) -> Path:
        return Path(self.plan.folder) / f"{self.what}.json"

    @property
    def err(self) -> Path:
        return Path(self.plan.folder) / f"{self.what}.stderr"


def plan_jobs(plans: Sequence[Plan]) -> list[Job]:
    """Every plan's jobs in start order: the peers' searches and sweep's, then the retraining of their picks."""
    jobs = []
    for plan in plans:
        first = f"{plan.case}/seed{plan.seed}/"
        jobs += [Job(plan, "peers"), Job(plan, "sweep"), Job(plan, "retrain", after=(first + "peers", first + "sweep"))]
    return jobs


def run_jobs(jobs: Sequence[Job], *, slots: int, log: Callable[[str], None]) -> None:
    """Run ``jobs`` as separate processes, ``slots`` at a time, each once the jobs it waits for succeeded.

    A job whose process fails (or that waits for one that failed) keeps its
    error and no result; the others still run.
    """
    by_key = {job.key: job for job in jobs}
    pending = list(jobs)
    running: list[Job] = []
    try:
        while pending or running:
            for job in list(pending):
                failed = [k for k in job.after if by_key[k].error is not None]
                if failed:
                    job.error = f"not run: {failed[0]} failed"
                    pending.remove(job)
                elif len(running) < slots and all(by_key[k].result is not None for k in job.after):
                    _start(job)
                    pending.remove(job)
                    running.append(job)
            time.sleep(0.2)
            for job in list(running):
                assert job.proc is not None
                if job.proc.poll() is None:
                    if time.perf_counter() - job.started > JOB_TIMEOUT:
                        _stop(job)
                    continue
                running.remove(job)
                job.seconds = time.perf_counter() - job.started
                if job.proc.returncode == 0:
                    job.result = json.loads(job.out.read_text(encoding="utf-8"))
                    log(f"{NAME}: {job.key} done in {job.seconds:.0f} s")
                else:
                    lines = job.err.read_text(encoding="utf-8", errors="replace").strip().splitlines()
                    job.error = f"exited {job.proc.returncode}: {' | '.join(lines[-3:])}"
                    log(f"{NAME}: {job.key} failed: {job.error}")
            if pending and not running and all(
                any(by_key[k].result is None for k in job.after) for job in pending
            ):  # nothing can start any more: a dependency is missing from the list
                for job in pending:
                    job.error = "not run: a job it waits for is not planned"
                pending.clear()
    finally:
        for job in running:
            _stop(job)


def _stop(job: Job) -> None:
    """End a job's process group (the job, and the ``sweep run`` and workers it started)."""
    assert job.proc is not None
    if job.proc.poll() is not None:
        return
    os.killpg(job.proc.pid, signal.SIGTERM)
    try:
        job.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(job.proc.pid, signal.SIGKILL)
        job.proc.wait()


def _start(job: Job) -> None:
    cmd = [sys.executable, "-m", "benchmarks.search_quality", job.what, str(Path(job.plan.folder) / "plan.json"),
           "--result", str(job.out)]  # fmt: skip
    with job.err.open("wb") as err:
        job.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=bench_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )  # fmt: skip
    job.started = time.perf_counter()


# --------------------------------------------------------------------------- the report


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    if not all(math.isfinite(v) for v in values):
        return math.inf, math.inf
    return statistics.fmean(values), statistics.pstdev(values)


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def collect(plans: Sequence[Plan], jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """One record per plan: its searches, retrained tails, Spearman inputs and any error."""
    by_key = {job.key: job for job in jobs}
    runs = []
    for plan in plans:
        prefix = f"{plan.case}/seed{plan.seed}/"
        mine = {what: by_key[prefix + what] for what in STAGES}
        record: dict[str, Any] = {
            "case": plan.case, "seed": plan.seed,
            "errors": {w: j.error for w, j in mine.items() if j.error is not None},
            "job_seconds": {w: round(j.seconds, 1) for w, j in mine.items()},
            "budget": plan.budget,
            "tools": {}, "spearman": None,
        }  # fmt: skip
        retrained = mine["retrain"].result
        found = {**(mine["peers"].result or {}), "sweep": mine["sweep"].result or {}}
        for tool in TOOLS:
            search = found.get(tool, {})
            entry = {k: search.get(k) for k in ("params", "epochs", "trials", "seconds", "runs", "states",
                                                "picked_trial", "score") if k in search}  # fmt: skip
            if retrained is not None:
                tails = retrained["tools"][tool]["tails"]
                mean, std = _mean_std(tails)
                curves = retrained["tools"][tool]["curves"]
                entry.update({"tails": tails, "mean": mean, "std": std, "test_curves": curves})
            record["tools"][tool] = entry
        if retrained is not None:
            trials = retrained["trials"]
            tests = [_finite_mean(t["tails"]) if all(math.isfinite(v) for v in t["tails"]) else math.inf
                     for t in trials]  # fmt: skip
            scores = [t["score"] for t in trials]
            bests = [t["best"] for t in trials]
            record["spearman"] = {
                "trials": [{**t, "test": x} for t, x in zip(trials, tests, strict=True)],
                "score": spearman(scores, tests),
                "best": spearman(bests, tests),
            }
            record["retrain_epochs"] = retrained["epochs"]
        runs.append(record)
    return runs


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-" if value is None or math.isnan(value) else "inf"
    return f"{value:.3g}"


def report(res: Result, runs: Sequence[dict[str, Any]], settings: Mapping[str, Any]) -> None:
    """Rows per dataset and over all datasets, goals included, and one note per (dataset, seed)."""
    cells = {(r["case"], r["seed"]): {t: (r["tools"][t]["mean"], r["tools"][t]["std"]) for t in TOOLS}
             for r in runs if not r["errors"]}  # fmt: skip
    fresh = settings["fresh_seeds"]
    names = list(dict.fromkeys(r["case"] for r in runs))
    for case in names:
        mine = {k: v for k, v in cells.items() if k[0] == case}
        summaries = summarize_tools(mine, TOOLS)
        losses = "; ".join(
            f"{SHORT[t]} {_fmt(summaries[t].mean_loss)} ± {_fmt(summaries[t].mean_spread)}" for t in TOOLS
        )
        res.add(
            f"{case}: test loss, sweep / best other (relative to the best tool per seed)",
            against_others(summaries, attribute="mean_relative") if mine else None,
            goal=GOAL_LOSS,
            note=f"{_count(len(mine), 'search seed')} x {_count(fresh, 'fresh seed')}; mean ± spread: {losses}",
        )
        res.add(
            f"{case}: spread over fresh seeds, sweep / lowest other",
            against_others(summaries, attribute="mean_relative_spread") if mine else None,
            goal=GOAL_SPREAD,
            note="mean rank: " + ", ".join(f"{SHORT[t]} {_fmt(summaries[t].mean_rank)}" for t in TOOLS),
        )
        studies = [r["spearman"] for r in runs if r["case"] == case and r["spearman"] is not None]
        rho_score = _finite_mean([x["score"] for x in studies])
        rho_best = _finite_mean([x["best"] for x in studies])
        pooled = [t for x in studies for t in x["trials"]]
        res.add(
            f"{case}: Spearman(sweep score, test loss), mean over studies",
            rho_score,
            unit="",
            goal=GOAL_SPEARMAN,
            note=f"per study: {', '.join(_fmt(x['score']) for x in studies)}; "
            f"{'/'.join(str(len(x['trials'])) for x in studies)} complete trials; pooled "
            f"{_fmt(spearman([t['score'] for t in pooled], [t['test'] for t in pooled]))}",
        )
        res.add(
            f"{case}: Spearman(score) - Spearman(best val loss)",
            rho_score - rho_best if math.isfinite(rho_score) and math.isfinite(rho_best) else None,
            unit="",
            goal=GOAL_SPEARMAN_GAIN,
            note=f"Spearman(best, test) {_fmt(rho_best)}; per study: {', '.join(_fmt(x['best']) for x in studies)}",
        )
    summaries = summarize_tools(cells, TOOLS)
    for tool in TOOLS:
        s = summaries[tool]
        res.add(
            f"all datasets: {LABELS[tool]}, test loss relative to the best tool",
            s.mean_relative,
            note=f"mean rank {_fmt(s.mean_rank)} of {len(TOOLS)}; mean test loss {_fmt(s.mean_loss)}, "
            f"mean spread {_fmt(s.mean_spread)}; {s.cells} (dataset, seed) cells",
        )
    res.add("all datasets: test loss, sweep / best other (relative scale)",
            against_others(summaries, attribute="mean_relative"), goal=GOAL_LOSS)  # fmt: skip
    res.add("all datasets: spread, sweep / lowest other (relative scale)",
            against_others(summaries, attribute="mean_relative_spread"), goal=GOAL_SPREAD)  # fmt: skip
    for r in runs:
        head = f"{r['case']} seed {r['seed']}"
        if r["errors"]:
            res.notes.append(f"{head}: left out: " + "; ".join(f"{w}: {e}" for w, e in r["errors"].items()))
            continue
        parts = []
        for tool in TOOLS:
            t = r["tools"][tool]
            parts.append(f"{SHORT[tool]} {_fmt(t['mean'])} ± {_fmt(t['std'])} ({t['trials']} trials, {t['epochs']} ep)")
        res.notes.append(f"{head}: budget {r['budget']} epochs; test loss " + "; ".join(parts))


def run(ctx: Context) -> Result:
    res = Result(NAME, TITLE)
    why = keras_tuner_available()
    if why is not None:
        res.notes.append(f"skipped: keras-tuner is {why}; install the bench extra: pip install -e '.[bench]'")
        res.raw = {"skipped": why}
        return res
    settings = SIZES["quick" if ctx.quick else "full"]
    folder = ctx.folder(NAME)
    plans = make_plans(folder, settings)
    jobs = plan_jobs(plans)
    ctx.log(f"{NAME}: {_count(len(CASES), 'dataset')} x {_count(len(settings['search_seeds']), 'search seed')}, "
            f"{len(jobs)} jobs, {SLOTS} at a time")  # fmt: skip
    started = time.perf_counter()
    run_jobs(jobs, slots=SLOTS, log=ctx.log)
    runs = collect(plans, jobs)
    if all(r["errors"] for r in runs):
        first = next(iter(runs[0]["errors"].values()))
        raise BenchmarkError(f"every (dataset, seed) failed; the first: {first}")
    report(res, runs, settings)
    epochs = {
        case.name: sum((r["tools"][t].get("epochs") or 0) for r in runs if r["case"] == case.name for t in TOOLS)
        + sum(r.get("retrain_epochs", 0) for r in runs if r["case"] == case.name)
        for case in CASES
    }
    seconds = {case.name: sum(sum(r["job_seconds"].values()) for r in runs if r["case"] == case.name) for case in CASES}
    res.raw = {
        "settings": settings,
        "cases": [asdict(c) for c in CASES],
        "split_seed": SPLIT_SEED,
        "fresh_seeds": [FRESH_SEED + i for i in range(settings["fresh_seeds"])],
        "runs": runs,
        "epochs_trained": epochs,
        "job_seconds": seconds,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    res.notes.append(
        f"test loss: each pick retrained on the whole development part with {settings['fresh_seeds']} fresh seeds, "
        f"mean of the last {settings['tail']} epochs of test-block loss; spread: population std over those seeds. "
        f"Spearman: every complete sweep trial retrained with {_count(settings['spearman_seeds'], 'fresh seed')} "
        "(to bound the cost), against its score and against its best validation loss."
    )
    if ctx.quick:
        res.notes.append("quick run: tiny budgets and one search seed: a smoke test, not a verdict on search quality")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_quality",
                                     description="One job of benchmark 7 (the suite starts them).")  # fmt: skip
    parser.add_argument("what", choices=list(JOBS))
    parser.add_argument("plan", type=Path, help="the plan.json of one (dataset, search seed)")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    out = JOBS[args.what](Plan.load(args.plan))
    args.result.write_text(json.dumps(out), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
