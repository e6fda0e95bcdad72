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
  own rows), with its repeats, pruner and allocation (``--budget B``), picking
  ``rank()``'s first complete (verified) trial; once with the default
  allocation (``sweep``) and once with every repeat for every configuration
  (``sweep_full``: ``--set 'allocation.policy="full"'``).

Every tool gets the same budget of B training epochs per (dataset, search
seed), counted as trained (early stopping, pruning and racing spend less),
and starts a trial only while its epochs so far plus that trial's stay within
B: ``max_epochs`` for RandomSearch and TPE, the epochs Hyperband assigns (only
the new ones when it continues a trial); sweep starts each *repeat* under the
same rule (``sweep run --budget B``, :mod:`sweep.allocation`).
Each pick is then retrained on the whole development part with fresh seeds
(no search used them), evaluated on the test block every epoch with
``patience=0`` (the test block never steers training), and scored by the mean
of its last ``tail`` epochs of test loss. Every complete trial of each sweep
study is retrained the same way with the first ``spearman_seeds`` fresh seeds,
to see whether sweep's score orders configurations as their test loss does
(Spearman), beside the lowest validation loss seen (``best``).

**Cells.** The unit of work is a cell: one (budget, dataset, search seed,
tool), two jobs (the tool's search, then the retraining of its pick; one
process and one thread each, two at a time). A cell's result is written to its
own JSON file in a :class:`CellStore` as soon as its retraining ends; a run
with ``--resume FOLDER`` computes only the cells the store lacks, so a large
table can be completed over several runs. :func:`import_results` seeds a store
from the raw results of an earlier run in ``results.json`` (the peers'
searches and retrainings have not changed since 2026-11-30); an imported
cell keeps its origin (date, versions, machine) and the report says which
cells are imported. A cell that is not in the store is reported as missing.

Losses differ in scale between datasets, so tools are compared per
(dataset, search seed) by rank and by their test loss relative to the best
tool's (:func:`summarize_tools`), separately at each budget. Nothing is timed.
The sizes are in :data:`SIZES`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from benchmarks.harness import (
    ROOT,
    BenchmarkError,
    Context,
    Goal,
    Result,
    bench_env,
    epochs_of,
    finished_trials,
    now_iso,
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

PEERS = ("kt_hyperband", "kt_random", "optuna_tpe")
SWEEP_ROWS: dict[str, tuple[str, ...]] = {
    "sweep": (),
    "sweep_full": ('allocation.policy="full"',),
}
"""Each sweep row and the ``--set`` overrides of its ``sweep run``."""
TOOLS = (*PEERS, *SWEEP_ROWS)
"""Every row of the table, in its order."""
FIELD = (*PEERS, "sweep")
"""The four tools the goals compare; another sweep row is compared to the peers in sweep's place."""
LABELS = {
    "kt_hyperband": "Keras Tuner Hyperband",
    "kt_random": "Keras Tuner RandomSearch",
    "optuna_tpe": "Optuna TPE",
    "sweep": "sweep",
    "sweep_full": "sweep, every repeat for every configuration",
}
SHORT = {"kt_hyperband": "Hyperband", "kt_random": "Random", "optuna_tpe": "TPE", "sweep": "sweep",
         "sweep_full": "sweep_full"}  # fmt: skip
STAGES = ("search", "retrain")
"""The jobs of one cell: the tool's search, then the retraining of its pick."""

GOAL_LOSS = Goal("<=", 1.0, "<= 1 (lowest of the four)")
GOAL_RANK = Goal("<=", 1.75)
GOAL_WORST = Goal("<=", 1.5)
GOAL_EPOCHS = Goal("<=", 0.6, "<= 0.6 (40% fewer)")
GOAL_EQUAL_LOSS = Goal("<=", 1.0, "<= 1 (equal or better)")
GOAL_SPEARMAN_GAIN = Goal(">=", 0.0, ">= 0 (score at least best)")
MIN_VERIFIED = 10
"""Verified trials a dataset needs (its studies pooled) before its Spearman goal is judged."""

SPLIT_SEED = 2024
"""The one seed of every dataset's development/test split."""
FRESH_SEED = 10_000
"""Retraining seeds are FRESH_SEED, FRESH_SEED + 1, ...: no search uses them (searches use seed + repeat < 100)."""
STUDY = "quality"
SLOTS = 2
"""Jobs running at once, one thread each."""
JOB_TIMEOUT = 2 * 3600
"""Seconds after which a job is stopped and counted as failed."""

ENV_RESUME = "BENCH_QUALITY_RESUME"
"""``python -m benchmarks`` passes no options to a benchmark: these variables are benchmark 7's.
A store folder: compute only the cells it lacks, and write each new one there."""
ENV_IMPORT = "BENCH_QUALITY_IMPORT"
"""A ``results.json`` whose peers' cells seed the store first (:func:`import_results`)."""
ENV_TOOLS = "BENCH_QUALITY_TOOLS"
"""Rows to compute, separated by commas or spaces (default: every row); the report shows every row."""
ENV_BUDGETS = "BENCH_QUALITY_BUDGETS"
"""Budgets to compute (default: the size's ``budgets``); the report shows every budget of the size."""

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "search_seeds": [0, 1, 2],
        "max_epochs": 10,
        "patience": 3,
        "repeats": 3,  # sweep's training.repeats
        "tail": 5,
        "budgets": [150, 450],
        "hyperband_factor": 3,  # with max_epochs 10: about 120 epochs an iteration
        "fresh_seeds": 5,
        "spearman_seeds": 2,
        "tpe_startup": 5,
        "sampler_startup": 3,  # sweep's sampler
        "pruner_startup": 3,
        "pruner_warmup": 4,
        "test_fraction": 0.2,
    },
    "quick": {
        "search_seeds": [0],
        "max_epochs": 3,
        "patience": 0,
        "repeats": 2,
        "tail": 2,
        "budgets": [12],
        "hyperband_factor": 3,  # with max_epochs 3: 11 epochs an iteration
        "fresh_seeds": 2,
        "spearman_seeds": 1,
        "tpe_startup": 2,
        "sampler_startup": 1,
        "pruner_startup": 1,
        "pruner_warmup": 1,
        "test_fraction": 0.2,
    },
}
"""Every size of the benchmark, per mode; change them here.

``budgets`` are the values of B, the epochs each tool may train per (dataset,
search seed): a tool starts a trial only while its epochs so far plus that
trial's stay within B (a full trial is ``max_epochs``; for sweep, each repeat
is; a Hyperband trial that continues another needs only its new epochs).
"""
CELL_SETTINGS = ("max_epochs", "patience", "repeats", "tail", "hyperband_factor", "fresh_seeds", "spearman_seeds",
                 "tpe_startup", "sampler_startup", "pruner_startup", "pruner_warmup", "test_fraction")  # fmt: skip
"""The settings a cell's result depends on (besides its budget, case and seed): a store holds one set of them."""

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
    worst_relative: float = math.nan
    """The largest test loss / the best tool's test loss over the cells."""
    worst_cell: Any = None
    """The cell (its key) of ``worst_relative``."""


def summarize_tools(
    cells: Mapping[Any, Mapping[str, tuple[float, float]]], tools: Sequence[str]
) -> dict[str, ToolSummary]:
    """Each tool's summary over ``cells``: cell -> tool -> (mean test loss, spread).

    Only cells that hold every tool count. A non-finite loss ranks last and
    makes its tool's means infinite; a best loss of 0 makes that cell's ratios NaN.
    """
    complete = [(key, cell) for key, cell in cells.items() if all(t in cell for t in tools)]
    per: dict[str, dict[str, list[Any]]] = {t: {"loss": [], "spread": [], "rank": [], "rel": [], "rel_spread": [],
                                                "key": []} for t in tools}  # fmt: skip
    for key, cell in complete:
        losses = [float(cell[t][0]) for t in tools]
        best = min(losses)
        for t, loss, rank in zip(tools, losses, average_ranks(losses), strict=True):
            spread = float(cell[t][1])
            per[t]["loss"].append(loss)
            per[t]["spread"].append(spread)
            per[t]["rank"].append(rank)
            per[t]["rel"].append(ratio(loss, best) if math.isfinite(loss) else math.inf)
            per[t]["rel_spread"].append(ratio(spread, best))
            per[t]["key"].append(key)

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else math.nan

    def worst(v: dict[str, list[Any]]) -> tuple[float, Any]:
        pairs = [(r, k) for r, k in zip(v["rel"], v["key"], strict=True) if not math.isnan(r)]
        return max(pairs, key=lambda p: p[0]) if pairs else (math.nan, None)

    return {
        t: ToolSummary(
            mean_loss=mean(v["loss"]),
            mean_spread=mean(v["spread"]),
            mean_rank=mean(v["rank"]),
            mean_relative=mean(v["rel"]),
            mean_relative_spread=mean(v["rel_spread"]),
            cells=len(complete),
            worst_relative=worst(v)[0],
            worst_cell=worst(v)[1],
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


# ------------------------------------------------------------------ one (budget, dataset, search seed): its plan


@dataclass(frozen=True)
class Plan:
    """What every job of one (budget, dataset, search seed) needs; written as JSON, read by the job processes."""

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

    def out(self, tool: str, stage: str) -> Path:
        """Where the ``stage`` job of ``tool`` writes its result."""
        return Path(self.folder) / f"{tool}.{stage}.json"

    def result(self, tool: str, stage: str) -> dict[str, Any]:
        return dict(json.loads(self.out(tool, stage).read_text(encoding="utf-8")))


def study_sections(plan: Plan, dev_data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The study file of sweep's search: the development part, the case's space, the plan's sizes."""
    s = plan.settings
    return {
        "study": {"name": STUDY, "seed": plan.seed, "budget": plan.budget},
        "data": {**dev_data, "validation_fraction": plan.validation_fraction},
        "model": {"family": plan.family},
        "search": dict(plan.search),
        "training": {"max_epochs": s["max_epochs"], "patience": s["patience"], "repeats": s["repeats"]},
        "stability": {"tail": s["tail"]},
        "sampler": {"name": "tpe", "n_startup_trials": s["sampler_startup"]},
        "pruner": {"name": "median", "n_startup_trials": s["pruner_startup"], "n_warmup_steps": s["pruner_warmup"]},
        "worker": {"threads": 1},
    }


def make_plans(
    folder: Path,
    settings: Mapping[str, Any],
    cases: Sequence[Case] = CASES,
    budgets: Sequence[int] | None = None,
) -> list[Plan]:
    """Write each case's data files and each (budget, case, search seed)'s study file and plan.

    Budget-major, then seed-major order; ``budgets`` defaults to the settings'.
    """
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
    for budget in settings["budgets"] if budgets is None else budgets:
        for seed in settings["search_seeds"]:
            for case, data, dev_data in per_case.values():
                seed_folder = Path(folder) / case.name / f"b{budget}" / f"seed{seed}"
                seed_folder.mkdir(parents=True, exist_ok=True)
                plan = Plan(
                    case=case.name, family=case.family, data=data, search=dict(case.search),
                    validation_fraction=case.validation_fraction, gap=case.gap, seed=int(seed), budget=int(budget),
                    settings=dict(settings), folder=str(seed_folder), study_file="",
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


PEER_SEARCHES: dict[str, Callable[[Plan, _Env], dict[str, Any]]] = {
    "kt_hyperband": search_hyperband,
    "kt_random": search_random,
    "optuna_tpe": search_tpe,
}


def search(plan: Plan, tool: str) -> dict[str, Any]:
    """One tool's search of one plan, in this process; ``seconds`` is its own time."""
    if tool in SWEEP_ROWS:
        start = time.perf_counter()
        return {**search_sweep(plan, tool), "seconds": round(time.perf_counter() - start, 1)}
    env = _setup(plan)
    start = time.perf_counter()
    return {**PEER_SEARCHES[tool](plan, env), "seconds": round(time.perf_counter() - start, 1)}


def sweep_url(plan: Plan, tool: str) -> str:
    """The SQLite study of a sweep row in the plan's folder (one file per row)."""
    return sqlite_url(Path(plan.folder) / f"{tool}.db")


def search_sweep(plan: Plan, tool: str = "sweep") -> dict[str, Any]:
    """``sweep run --budget B`` (with the row's ``--set`` overrides) on the development part, in a fresh study."""
    from sweep.report import rank

    budget = plan.budget
    db = Path(plan.folder) / f"{tool}.db"
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)  # a run stopped half-way left it: a cell's search starts afresh
    url = sweep_url(plan, tool)
    overrides = [arg for value in SWEEP_ROWS[tool] for arg in ("--set", value)]
    cmd = sweep_cmd("run", plan.study_file, "--storage", url, "--budget", str(budget), *overrides, "-q")
    source = sweep_source()
    run_timed(cmd, env=bench_env(), timeout=3600)
    used = sum(epochs_of(t) for t in finished_trials(url, STUDY))
    rows = rank(STUDY, url=url, include_all=True)
    complete = [r for r in rows if r.state == "COMPLETE"]
    if not complete:
        raise BenchmarkError(f"sweep completed (verified) no trial within {budget} epochs")
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    pick = complete[0]
    return {
        "params": dict(pick.params), "epochs": used, "trials": len(rows), "runs": 1,
        "stored_trials": len(finished_trials(url, STUDY)), "overrides": list(SWEEP_ROWS[tool]), "sweep_source": source,
        "states": states, "picked_trial": pick.number, "score": pick.score,
        "complete": [{"number": r.number, "score": r.score, "best": r.best, "tail_mean": r.tail_mean,
                      "tail_std": r.tail_std, "diagnosis": r.diagnosis, "n_repeats": r.n_repeats,
                      "params": dict(r.params)} for r in complete],
        "all": [{"number": r.number, "state": r.state, "n_repeats": r.n_repeats, "stopped": r.stopped,
                 "diagnosis": r.diagnosis, "score": r.score} for r in rows],
    }  # fmt: skip


def retrain(plan: Plan, tool: str) -> dict[str, Any]:
    """One tool's pick with every fresh seed and, for a sweep row, each complete trial with the first few.

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

    found = plan.result(tool, "search")
    curves = [test_curve(found["params"], seed) for seed in seeds]
    out: dict[str, Any] = {"seeds": seeds, "tails": [tail_mean(c, tail=tail, epochs=epochs) for c in curves],
                           "curves": curves}  # fmt: skip
    if tool in SWEEP_ROWS:
        trials = []
        for trial in found["complete"]:
            tails = [tail_mean(test_curve(trial["params"], seed), tail=tail, epochs=epochs)
                     for seed in seeds[: s["spearman_seeds"]]]  # fmt: skip
            trials.append({"number": trial["number"], "score": trial["score"], "best": trial["best"],
                           "tail_mean": trial.get("tail_mean"), "tail_std": trial.get("tail_std"), "tails": tails})
        out["trials"] = trials
    return {**out, "epochs": len(cache) * epochs, "fits": len(cache)}


JOBS: dict[str, Callable[[Plan, str], dict[str, Any]]] = {
    "search": search,
    "retrain": retrain,
}


# --------------------------------------------------------------------------- the cell store


class CellKey(NamedTuple):
    """One cell: a tool's search of one dataset with one search seed at one budget."""

    budget: int
    case: str
    seed: int
    tool: str

    def __str__(self) -> str:
        return f"b{self.budget}/{self.case}/seed{self.seed}/{self.tool}"


def cell_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What of ``settings`` a cell's result depends on (:data:`CELL_SETTINGS`)."""
    return {k: settings[k] for k in CELL_SETTINGS}


def case_definition(name: str) -> dict[str, Any]:
    """A case as stored with its cells (JSON-shaped: lists, not tuples)."""
    case = next((c for c in CASES if c.name == name), None)
    if case is None:
        raise BenchmarkError(f"unknown case {name!r}; known: {', '.join(c.name for c in CASES)}")
    return dict(json.loads(json.dumps(asdict(case))))


def sweep_source() -> str:
    """A digest of the ``sweep`` package's source: which code a measured sweep cell ran."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "sweep").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def measured_origin() -> dict[str, Any]:
    """The origin of a cell computed now: the date, the versions, the machine, the sweep source."""
    from benchmarks.harness import machine_info

    info = machine_info()
    return {"kind": "measured", "date": now_iso(), "versions": info["versions"], "cpu": info["machine"]["cpu"],
            "sweep_source": sweep_source()}  # fmt: skip


def make_cell(
    key: CellKey,
    settings: Mapping[str, Any],
    *,
    search: Mapping[str, Any],
    retrained: Mapping[str, Any],
    origin: Mapping[str, Any],
    job_seconds: Mapping[str, float | None],
) -> dict[str, Any]:
    """A cell's record: the tool's search result, its pick's retrained test tails (and, for a sweep row,
    each verified trial's), where it comes from, and what it depends on."""
    return {
        "key": {"budget": key.budget, "case": key.case, "seed": key.seed, "tool": key.tool},
        "origin": dict(origin),
        "settings": cell_settings(settings),
        "case_definition": case_definition(key.case),
        "split_seed": SPLIT_SEED,
        "search": dict(search),
        "retrain": dict(retrained),
        "job_seconds": dict(job_seconds),
    }


class CellStore:
    """One JSON file per cell under ``root/cells``: ``b{budget}/{case}/seed{seed}/{tool}.json``.

    A file is written whole (to a temporary name, then renamed), so a run
    stopped at any moment leaves each cell either complete or absent.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cells_dir = self.root / "cells"

    def path(self, key: CellKey) -> Path:
        return self.cells_dir / f"b{key.budget}" / key.case / f"seed{key.seed}" / f"{key.tool}.json"

    def write(self, cell: Mapping[str, Any]) -> Path:
        k = cell["key"]
        path = self.path(CellKey(k["budget"], k["case"], k["seed"], k["tool"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        part.write_text(json.dumps(_jsonable(cell), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(part, path)
        return path

    def read(self, key: CellKey, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cell, or None when the store lacks it.

        Raises:
            BenchmarkError: the stored cell was made with other settings, another case or split
                (a store holds one size of the benchmark: use another folder).
        """
        path = self.path(key)
        if not path.exists():
            return None
        cell = _unjson(json.loads(path.read_text(encoding="utf-8")))
        if cell.get("settings") != cell_settings(settings):
            raise BenchmarkError(f"{path}: made with other settings ({cell.get('settings')}); this run's are "
                                 f"{cell_settings(settings)}: use another store folder")  # fmt: skip
        if cell.get("case_definition") != case_definition(key.case) or cell.get("split_seed") != SPLIT_SEED:
            raise BenchmarkError(f"{path}: made for another definition or split of {key.case}: use another folder")
        return dict(cell)

    def keys(self) -> list[CellKey]:
        """Every cell in the store."""
        out = []
        for path in sorted(self.cells_dir.glob("b*/*/seed*/*.json")):
            budget, case, seed = path.parts[-4][1:], path.parts[-3], path.parts[-2][4:]
            if budget.isdigit() and seed.isdigit():
                out.append(CellKey(int(budget), case, int(seed), path.stem))
        return out

    def load(self, settings: Mapping[str, Any]) -> dict[CellKey, dict[str, Any]]:
        """Every cell in the store of a known case and tool (each checked as :meth:`read` does)."""
        names = {c.name for c in CASES}
        out = {}
        for key in self.keys():
            if key.case in names and key.tool in TOOLS:
                cell = self.read(key, settings)
                if cell is not None:
                    out[key] = cell
        return out


def wanted_cells(
    settings: Mapping[str, Any], *, tools: Sequence[str], budgets: Sequence[int], cases: Sequence[Case] = CASES
) -> list[CellKey]:
    """The cells of a table, in the order they are computed: budget, then row, then search seed, then dataset."""
    return [CellKey(b, c.name, s, t) for b in budgets for t in tools for s in settings["search_seeds"] for c in cases]


def missing_cells(store: CellStore, keys: Iterable[CellKey], settings: Mapping[str, Any]) -> list[CellKey]:
    """The cells of ``keys`` that the store lacks: what a ``--resume`` run computes."""
    return [k for k in keys if store.read(k, settings) is None]


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings (``"inf"``, ``"nan"``): a cell file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _unjson(value: Any) -> Any:
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _unjson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unjson(v) for v in value]
    return value


def import_results(
    path: Path,
    store: CellStore,
    settings: Mapping[str, Any],
    *,
    tools: Sequence[str] = PEERS,
    budgets: Sequence[int] | None = None,
) -> tuple[list[CellKey], list[str]]:
    """Seed ``store`` with ``tools``' cells from the raw results of benchmark 7 in a ``results.json``.

    Only a run made with the same cell settings, cases, split and fresh seeds
    is read; a cell the store already holds is kept. Each imported cell's
    origin names the file, the date the run started, its versions and processor.

    Returns:
        The cells imported, and why others were not (a failed job in that run).

    Raises:
        BenchmarkError: the file holds no benchmark 7, or one made differently.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entry = next((b for b in data.get("benchmarks", []) if b.get("name") == NAME), None)
    if entry is None or not entry.get("raw", {}).get("runs"):
        raise BenchmarkError(f"{path}: holds no raw results of {NAME}")
    raw = entry["raw"]
    old = raw.get("settings", {})
    differ = [f"{k}: {old.get(k)!r} there, {settings[k]!r} here" for k in CELL_SETTINGS if old.get(k) != settings[k]]
    if differ:
        raise BenchmarkError(f"{path}: made with other settings ({'; '.join(differ)})")
    if raw.get("split_seed") != SPLIT_SEED:
        raise BenchmarkError(f"{path}: split seed {raw.get('split_seed')!r}, here {SPLIT_SEED}")
    fresh = [FRESH_SEED + i for i in range(settings["fresh_seeds"])]
    if raw.get("fresh_seeds") != fresh:
        raise BenchmarkError(f"{path}: fresh seeds {raw.get('fresh_seeds')!r}, here {fresh}")
    for case in raw.get("cases", []):
        if case.get("name") in {c.name for c in CASES} and case != case_definition(case["name"]):
            raise BenchmarkError(f"{path}: another definition of {case['name']} (data, space or split)")
    origin = {"kind": "imported", "date": entry.get("date", ""), "from": str(path),
              "versions": data.get("versions", {}), "cpu": raw.get("cpu")}  # fmt: skip
    imported: list[CellKey] = []
    skipped: list[str] = []
    for run in raw["runs"]:
        if budgets is not None and run["budget"] not in budgets:
            continue
        for tool in tools:
            key = CellKey(run["budget"], run["case"], run["seed"], tool)
            found = _unjson(run.get("tools", {}).get(tool) or {})
            if "tails" not in found or "params" not in found:
                skipped.append(f"{key}: {'; '.join(f'{w}: {e}' for w, e in run.get('errors', {}).items()) or 'absent'}")
                continue
            if store.read(key, settings) is not None:
                continue
            search_result = {k: found[k] for k in ("params", "epochs", "trials", "seconds") if k in found}
            tails = [math.inf if x is None else float(x) for x in found["tails"]]  # results.json writes inf as null
            retrained = {"seeds": fresh, "tails": tails, "curves": found.get("test_curves")}
            store.write(make_cell(key, settings, search=search_result, retrained=retrained, origin=origin,
                                  job_seconds={"search": found.get("seconds"), "retrain": None,
                                               "shared_jobs": run.get("job_seconds")}))  # fmt: skip
            imported.append(key)
    return imported, skipped


# --------------------------------------------------------------------------- running the jobs, two at a time


@dataclass
class Job:
    """One process: one stage (search or retrain) of one cell."""

    plan: Plan
    tool: str
    stage: str
    after: tuple[str, ...] = ()
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started: float = 0.0

    @property
    def cell(self) -> CellKey:
        return CellKey(self.plan.budget, self.plan.case, self.plan.seed, self.tool)

    @property
    def key(self) -> str:
        return f"{self.cell}/{self.stage}"

    @property
    def out(self) -> Path:
        return self.plan.out(self.tool, self.stage)

    @property
    def err(self) -> Path:
        return Path(self.plan.folder) / f"{self.tool}.{self.stage}.stderr"


def plan_jobs(plans: Sequence[Plan], tools: Sequence[str] = TOOLS, *, skip: Iterable[CellKey] = ()) -> list[Job]:
    """Two jobs per cell (its search, then its retraining), budget by budget and row by row, less ``skip``."""
    skipped = set(skip)
    budgets = list(dict.fromkeys(p.budget for p in plans))
    jobs = []
    for budget in budgets:
        for tool in tools:
            for plan in (p for p in plans if p.budget == budget):
                search_job = Job(plan, tool, "search")
                if search_job.cell in skipped:
                    continue
                jobs += [search_job, Job(plan, tool, "retrain", after=(search_job.key,))]
    return jobs


def run_jobs(
    jobs: Sequence[Job],
    *,
    slots: int,
    log: Callable[[str], None],
    on_done: Callable[[Job], None] | None = None,
) -> None:
    """Run ``jobs`` as separate processes, ``slots`` at a time, each once the jobs it waits for succeeded.

    A job whose process fails (or that waits for one that failed) keeps its
    error and no result; the others still run. ``on_done`` is called with each
    job as it ends, failed ones included.
    """
    by_key = {job.key: job for job in jobs}
    pending = list(jobs)
    running: list[Job] = []
    try:
        while pending or running:
            for job in list(pending):
                failed = [k for k in job.after if k in by_key and by_key[k].error is not None]
                if failed:
                    job.error = f"not run: {failed[0]} failed"
                    pending.remove(job)
                    if on_done is not None:
                        on_done(job)
                elif len(running) < slots and all(k in by_key and by_key[k].result is not None for k in job.after):
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
                if on_done is not None:
                    on_done(job)
            if pending and not running and all(
                any(k not in by_key or by_key[k].result is None for k in job.after) for job in pending
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
    job.out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.search_quality", "job", job.stage, job.tool,
           str(Path(job.plan.folder) / "plan.json"), "--result", str(job.out)]  # fmt: skip
    with job.err.open("wb") as err:
        job.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=bench_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )  # fmt: skip
    job.started = time.perf_counter()


def cell_of(
    search_job: Job, retrain_job: Job, settings: Mapping[str, Any], origin: Mapping[str, Any]
) -> dict[str, Any]:
    """The store's record of a cell whose two jobs succeeded."""
    assert search_job.result is not None and retrain_job.result is not None
    seconds = {"search": round(search_job.seconds, 1), "retrain": round(retrain_job.seconds, 1)}
    return make_cell(search_job.cell, settings, search=search_job.result, retrained=retrain_job.result,
                     origin={**origin, "date": now_iso()}, job_seconds=seconds)  # fmt: skip


# --------------------------------------------------------------------------- the report


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    if not all(math.isfinite(v) for v in values):
        return math.inf, math.inf
    return statistics.fmean(values), statistics.pstdev(values)


def _finite_mean(values: Sequence[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-" if value is None or math.isnan(value) else "inf"
    return f"{value:.3g}"


def _field(tool: str) -> tuple[str, ...]:
    """The four tools ``tool`` is ranked among: :data:`FIELD`, or the peers and ``tool`` in sweep's place."""
    return FIELD if tool in FIELD else (*PEERS, tool)


def _origins(cells: Iterable[Mapping[str, Any]]) -> str:
    """``"imported (run of 2026-11-30)"``, ``"measured 2026-12-06"``, or both, with counts when mixed."""
    kinds: dict[str, int] = {}
    for cell in cells:
        o = cell.get("origin", {})
        text = f"imported (run of {o.get('date', '')[:10]})" if o.get("kind") == "imported" else (
            f"measured {o.get('date', '')[:10]}")  # fmt: skip
        kinds[text] = kinds.get(text, 0) + 1
    if len(kinds) <= 1:
        return next(iter(kinds), "-")
    return ", ".join(f"{n} {text}" for text, n in kinds.items())


def _cell_name(cell: Any) -> str:
    return "-" if cell is None else f"{cell[0]} seed {cell[1]}"


def _test_of(trial: Mapping[str, Any]) -> float:
    tails = trial["tails"]
    return _finite_mean(tails) if tails and all(math.isfinite(v) for v in tails) else math.inf


def summarize(
    cells: Mapping[CellKey, Mapping[str, Any]],
    settings: Mapping[str, Any],
    *,
    budgets: Sequence[int],
    cases: Sequence[Case] = CASES,
) -> dict[str, Any]:
    """Everything the report shows, as plain data: per budget, each row's comparison, the sweep studies, the goals.

    Only cells in the store count; a (dataset, seed) is compared only where
    every tool of the comparison has its cell there.
    """
    seeds = list(settings["search_seeds"])
    out: dict[str, Any] = {"budgets": {}, "across": [], "versions": {}}
    for cell in cells.values():
        o = cell.get("origin", {})
        out["versions"][f"{o.get('kind')} {str(o.get('date', ''))[:10]}"] = dict(o.get("versions") or {})
    for b in budgets:
        here = {k: c for k, c in cells.items() if k.budget == b}
        by_cell: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
        for k, c in here.items():
            by_cell.setdefault((k.case, k.seed), {})[k.tool] = _mean_std(c["retrain"]["tails"])
        rows: dict[str, Any] = {}
        for tool in TOOLS:
            mine = {k: c for k, c in here.items() if k.tool == tool}
            s = summarize_tools(by_cell, _field(tool))[tool]
            epochs = [float(c["search"]["epochs"]) for c in mine.values() if c["search"].get("epochs") is not None]
            rows[tool] = {
                "cells": len(mine), "expected": len(cases) * len(seeds),
                "missing": [f"{c.name} seed {s_}" for s_ in seeds for c in cases
                            if CellKey(b, c.name, s_, tool) not in here],
                "compared": s.cells, "field": list(_field(tool)), "mean_relative": s.mean_relative,
                "mean_rank": s.mean_rank, "worst_relative": s.worst_relative, "worst_cell": _cell_name(s.worst_cell),
                "mean_loss": s.mean_loss, "mean_spread": s.mean_spread, "mean_relative_spread": s.mean_relative_spread,
                "epochs_mean": statistics.fmean(epochs) if epochs else math.nan, "epochs_total": sum(epochs),
                "origin": _origins(mine.values()),
            }  # fmt: skip
        per_dataset = {
            c.name: {t: _finite_mean([by_cell[(c.name, s_)][t][0] for s_ in seeds
                                      if t in by_cell.get((c.name, s_), {})]) for t in TOOLS}
            for c in cases
        }  # fmt: skip
        studies: dict[str, Any] = {}
        for row in SWEEP_ROWS:
            for c in cases:
                mine = [(k, here[k]) for k in (CellKey(b, c.name, s_, row) for s_ in seeds) if k in here]
                per_study, pooled = [], []
                for k, cell in mine:
                    trials = [{**t, "test": _test_of(t)} for t in cell["retrain"].get("trials", [])]
                    pooled += trials
                    found = cell["search"]
                    per_study.append({
                        "seed": k.seed, "configurations": found.get("trials"), "verified": len(trials),
                        "states": found.get("states"), "epochs": found.get("epochs"),
                        "score": spearman([t["score"] for t in trials], [t["test"] for t in trials]),
                        "best": spearman([t["best"] for t in trials], [t["test"] for t in trials]),
                    })  # fmt: skip
                studies[f"{row}/{c.name}"] = {
                    "row": row, "case": c.name, "studies": per_study, "verified": len(pooled),
                    "score": spearman([t["score"] for t in pooled], [t["test"] for t in pooled]),
                    "best": spearman([t["best"] for t in pooled], [t["test"] for t in pooled]),
                    "mean_score": _finite_mean([x["score"] for x in per_study]),
                    "mean_best": _finite_mean([x["best"] for x in per_study]),
                }  # fmt: skip
        four = summarize_tools(by_cell, FIELD)
        out["budgets"][str(b)] = {
            "budget": b, "rows": rows, "per_dataset": per_dataset, "studies": studies,
            "sweep_vs_best_other": against_others(four, attribute="mean_relative") if four["sweep"].cells else math.nan,
            "same_budget": _pair(here, here, b, b),
        }  # fmt: skip
    for b1 in budgets:
        for b2 in budgets:
            if b1 < b2:
                out["across"].append(_pair(cells, cells, b1, b2))
    return out


def _pair(
    cells_a: Mapping[CellKey, Mapping[str, Any]], cells_b: Mapping[CellKey, Mapping[str, Any]], b1: int, b2: int
) -> dict[str, Any]:
    """``sweep`` at ``b1`` against ``sweep_full`` at ``b2`` on the (dataset, seed) both have: epochs, test loss."""
    pairs = []
    for k, a in cells_a.items():
        if k.budget == b1 and k.tool == "sweep":
            full = cells_b.get(CellKey(b2, k.case, k.seed, "sweep_full"))
            if full is not None:
                pairs.append((a, full))
    ep_a = sum(float(a["search"].get("epochs") or 0) for a, _ in pairs)
    ep_b = sum(float(f["search"].get("epochs") or 0) for _, f in pairs)
    losses = [ratio(_mean_std(a["retrain"]["tails"])[0], _mean_std(f["retrain"]["tails"])[0]) for a, f in pairs]
    return {"sweep_budget": b1, "full_budget": b2, "cells": len(pairs), "epochs_sweep": ep_a, "epochs_full": ep_b,
            "epochs_ratio": ratio(ep_a, ep_b) if pairs else math.nan,
            "loss_ratio": _finite_mean(losses) if pairs else math.nan,
            "wins": sum(1 for x in losses if x <= 1.0)}  # fmt: skip


def report(res: Result, summary: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """The rows (goals included) and notes of the summary (:func:`summarize`)."""
    for key, per in summary["budgets"].items():
        head = f"B={key}"
        rows = per["rows"]
        for tool in TOOLS:
            r = rows[tool]
            vs = "the best of the four" if tool in FIELD else f"the best of the peers and {tool}"
            note = (f"{r['cells']} of {r['expected']} cells ({r['origin']}); compared on {r['compared']}; "
                    f"mean rank {_fmt(r['mean_rank'])} of 4; worst cell {_fmt(r['worst_relative'])} "
                    f"({r['worst_cell']}); epochs used {_fmt(r['epochs_mean'])} per cell")  # fmt: skip
            if r["missing"]:
                note += f"; missing: {', '.join(r['missing'])}"
            res.add(f"{head}: {LABELS[tool]}: test loss relative to {vs}, mean",
                    r["mean_relative"] if r["compared"] else None, note=note)  # fmt: skip
        s = rows["sweep"]
        compared = s["compared"] > 0
        res.add(f"{head}: sweep's mean relative test loss / the lowest other tool's",
                per["sweep_vs_best_other"] if compared else None, goal=GOAL_LOSS,
                note=f"on {_count(s['compared'], 'cell')}")  # fmt: skip
        res.add(f"{head}: sweep's mean rank among the four", s["mean_rank"] if compared else None, unit="",
                goal=GOAL_RANK)  # fmt: skip
        res.add(f"{head}: sweep's worst cell, test loss / the best tool's", s["worst_relative"] if compared else None,
                goal=GOAL_WORST, note=s["worst_cell"])  # fmt: skip
        same = per["same_budget"]
        res.add(f"{head}: test loss, sweep / sweep_full at the same budget (mean per cell)",
                same["loss_ratio"] if same["cells"] else None,
                note=f"on {_count(same['cells'], 'cell')}, sweep lower or equal on {same['wins']}; epochs "
                     f"{_fmt(same['epochs_sweep'])} / {_fmt(same['epochs_full'])} "
                     f"({_fmt(same['epochs_ratio'])}x)")  # fmt: skip
        for st in per["studies"].values():
            judged = st["verified"] >= MIN_VERIFIED
            gain = st["score"] - st["best"] if math.isfinite(st["score"]) and math.isfinite(st["best"]) else None
            per_study = ", ".join(f"{_fmt(x['score'])}/{_fmt(x['best'])}" for x in st["studies"])
            res.add(
                f"{head} {st['case']}: {st['row']}: Spearman(score, test) - Spearman(best val loss, test), "
                "verified trials of its studies pooled",
                gain if st["studies"] else None, unit="", goal=GOAL_SPEARMAN_GAIN if judged else None,
                note=f"Spearman(score) {_fmt(st['score'])}, Spearman(best) {_fmt(st['best'])} over "
                     f"{_count(st['verified'], 'verified trial')} "
                     f"({'/'.join(str(x['verified']) for x in st['studies'])} per study; "
                     f"per study score/best: {per_study or '-'})"
                     + ("" if judged else f"; fewer than {MIN_VERIFIED}: not judged"),
            )  # fmt: skip
    for pair in summary["across"]:
        head = f"sweep at B={pair['sweep_budget']} / sweep_full at B={pair['full_budget']}"
        have = pair["cells"] > 0
        missing = "" if have else "; not measured: no (dataset, seed) has both cells"
        res.add(f"{head}: epochs used", pair["epochs_ratio"] if have else None, goal=GOAL_EPOCHS,
                note=f"{_fmt(pair['epochs_sweep'])} / {_fmt(pair['epochs_full'])} on "
                     f"{_count(pair['cells'], 'cell')}{missing}")  # fmt: skip
        res.add(f"{head}: test loss (mean per cell)", pair["loss_ratio"] if have else None, goal=GOAL_EQUAL_LOSS,
                note=f"sweep lower or equal on {pair['wins']} of {_count(pair['cells'], 'cell')}{missing}")  # fmt: skip
    if differ := version_differences(summary.get("versions", {})):
        res.notes.append(f"the cells ran with different versions: {differ}")
    res.notes.append(
        f"test loss: each pick retrained on the whole development part with {settings['fresh_seeds']} fresh seeds, "
        f"mean of the last {settings['tail']} epochs of test-block loss. Spearman: every verified (complete) trial of "
        f"each sweep study retrained with {_count(settings['spearman_seeds'], 'fresh seed')}, against its score and "
        f"against its best validation loss; judged where a dataset's studies hold {MIN_VERIFIED} or more."
    )


def markdown(summary: Mapping[str, Any]) -> str:
    """The tables of the summary in Markdown (what ``benchmarks/README.md`` section 7 shows); missing cells say so."""
    lines: list[str] = []
    for key, per in summary["budgets"].items():
        rows = per["rows"]
        if not any(r["cells"] for r in rows.values()):
            lines += [f"**B = {key} epochs:** every cell is missing (none in the store).", ""]
            continue
        lines += [f"**B = {key} epochs.**", "",
                  "| row | cells | test loss / best of the four, mean | mean rank (of 4) | worst cell | "
                  "epochs used per cell | origin |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for tool in TOOLS:
            r = rows[tool]
            label = LABELS[tool] + ("" if tool in FIELD else " (ranked in sweep's place)")
            if not r["compared"]:
                values = ["missing" if not r["cells"] else "- (no cell with all four)"] + ["-"] * 2
            else:
                values = [_fmt(r["mean_relative"]), _fmt(r["mean_rank"]),
                          f"{_fmt(r['worst_relative'])} ({r['worst_cell']})"]  # fmt: skip
            lines.append(f"| {label} | {r['cells']}/{r['expected']} | {' | '.join(values)} | "
                         f"{_fmt(r['epochs_mean'])} | {r['origin'] if r['cells'] else 'missing'} |")  # fmt: skip
        partial = [f"{SHORT[t]}: {', '.join(rows[t]['missing'])}" for t in TOOLS
                   if 0 < rows[t]["cells"] < rows[t]["expected"]]  # fmt: skip
        if partial:
            lines += ["", "Missing cells: " + "; ".join(partial) + "."]
        shown = [t for t in TOOLS if rows[t]["cells"]]
        lines += ["", "Mean test loss per dataset (over the seeds present):", "",
                  "| dataset | " + " | ".join(SHORT[t] for t in shown) + " |",
                  "|---" * (len(shown) + 1) + "|"]  # fmt: skip
        for case, losses in per["per_dataset"].items():
            lines.append(f"| {case} | " + " | ".join(_fmt(losses[t]) for t in shown) + " |")
        studies = [st for st in per["studies"].values() if st["studies"]]
        if studies:
            lines += ["", "| dataset | row | configurations per study | verified per study | epochs per study | "
                      "Spearman(score, test), pooled | Spearman(best, test), pooled | per study, score / best |",
                      "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for st in studies:
            xs = st["studies"]
            few = f" ({st['verified']} trials: not judged)" if st["verified"] < MIN_VERIFIED else ""
            lines.append(
                f"| {st['case']} | {st['row']} | {'/'.join(str(x['configurations']) for x in xs)} | "
                f"{'/'.join(str(x['verified']) for x in xs)} | {'/'.join(_fmt(x['epochs']) for x in xs)} | "
                f"{_fmt(st['score'])} | {_fmt(st['best'])}{few} | "
                f"{', '.join(_fmt(x['score']) + ' / ' + _fmt(x['best']) for x in xs)} |"
            )
        same = per["same_budget"]
        if same["cells"]:
            lines += ["", f"sweep / sweep_full at B = {key}: test loss {_fmt(same['loss_ratio'])}x (mean per cell "
                      f"over {_count(same['cells'], 'cell')}; sweep lower or equal on {same['wins']}), epochs "
                      f"{_fmt(same['epochs_ratio'])}x."]  # fmt: skip
        lines.append("")
    for pair in summary["across"]:
        measured = (f"epochs {_fmt(pair['epochs_ratio'])}x, test loss {_fmt(pair['loss_ratio'])}x on "
                    f"{_count(pair['cells'], 'cell')}.")  # fmt: skip
        lines.append(f"sweep at B = {pair['sweep_budget']} / sweep_full at B = {pair['full_budget']}: "
                     + (measured if pair["cells"] else "not measured (cells missing)."))
    return "\n".join(lines).rstrip() + "\n"


def version_differences(versions: Mapping[str, Mapping[str, Any]]) -> str:
    """The packages whose versions differ between the cells' origins: ``optuna 5.0.0 (imported ...), 5.1.0 (...)``."""
    names = sorted({k for vs in versions.values() for k in vs})
    parts = []
    for name in names:
        seen = {origin: vs.get(name) for origin, vs in versions.items()}
        if len(set(seen.values())) > 1:
            parts.append(f"{name} " + ", ".join(f"{v} ({origin})" for origin, v in seen.items()))
    return "; ".join(parts)


def goal_lines(res: Result) -> list[str]:
    """``measure: value (goal) met`` for each row with a goal."""
    out = []
    for row in res.rows:
        if row.goal is not None:
            verdict = {True: "yes", False: "NO", None: "-"}[row.met]
            out.append(f"{row.measure}: {_fmt(row.value)} (goal {row.goal.describe()}): {verdict}")
    return out


# --------------------------------------------------------------------------- entry points


def _words(text: str | None) -> list[str]:
    return [w for w in (text or "").replace(",", " ").split() if w]


def compute(
    settings: Mapping[str, Any],
    *,
    store: CellStore,
    work: Path,
    tools: Sequence[str],
    budgets: Sequence[int],
    slots: int = SLOTS,
    import_from: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Result:
    """Seed the store (``import_from``), compute the cells of ``tools`` x ``budgets`` it lacks, and report every
    cell of the size's budgets that it holds; each new cell is written to the store as soon as it is done."""
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        raise BenchmarkError(f"unknown rows {unknown}; allowed: {', '.join(TOOLS)}")
    res = Result(NAME, TITLE)
    started = time.perf_counter()
    if import_from is not None:
        imported, skipped = import_results(import_from, store, settings)
        log(f"{NAME}: imported {_count(len(imported), 'cell')} from {import_from}")
        res.notes += [f"not imported: {s}" for s in skipped]
    todo = missing_cells(store, wanted_cells(settings, tools=tools, budgets=budgets), settings)
    if any(k.tool in ("kt_hyperband", "kt_random") for k in todo) and (why := keras_tuner_available()) is not None:
        res.notes.append(f"Keras Tuner cells not computed: keras-tuner is {why}; pip install -e '.[bench]'")
        todo = [k for k in todo if k.tool not in ("kt_hyperband", "kt_random")]
    log(f"{NAME}: {_count(len(todo), 'cell')} to compute ({store.root}), {slots} at a time")
    errors: dict[str, str] = {}
    if todo:
        plans = make_plans(work, settings, budgets=sorted({k.budget for k in todo}))
        wanted = set(todo)
        others = [CellKey(p.budget, p.case, p.seed, t) for p in plans for t in TOOLS]
        jobs = plan_jobs(plans, [t for t in TOOLS if any(k.tool == t for k in todo)],
                         skip=[k for k in others if k not in wanted])  # fmt: skip
        by_key = {job.key: job for job in jobs}
        origin = measured_origin()

        def on_done(job: Job) -> None:
            if job.error is not None:
                errors[str(job.cell)] = f"{job.stage}: {job.error}"
            elif job.stage == "retrain":
                search_job = by_key[job.after[0]]
                path = store.write(cell_of(search_job, job, settings, origin))
                log(f"{NAME}: {job.cell} written to {path}")

        run_jobs(jobs, slots=slots, log=log, on_done=on_done)
    cells = store.load(settings)
    budgets_shown = sorted({*settings["budgets"], *budgets})
    if not cells:
        first = next(iter(errors.values()), "the store is empty")
        raise BenchmarkError(f"no cell to report; {first}")
    summary = summarize(cells, settings, budgets=budgets_shown)
    report(res, summary, settings)
    res.notes += [f"{cell}: not computed: {error}" for cell, error in errors.items()]
    res.raw = {
        "settings": dict(settings),
        "cases": [asdict(c) for c in CASES],
        "split_seed": SPLIT_SEED,
        "fresh_seeds": [FRESH_SEED + i for i in range(settings["fresh_seeds"])],
        "store": str(store.root),
        "computed": [str(k) for k in todo if str(k) not in errors],
        "errors": errors,
        "summary": summary,
        "table": markdown(summary),
        "cells": [{**cell, "retrain": {k: v for k, v in cell["retrain"].items() if k != "curves"}}
                  for cell in cells.values()],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    return res


def run(ctx: Context) -> Result:
    """The suite's entry: ``BENCH_QUALITY_RESUME`` (a store folder), ``BENCH_QUALITY_IMPORT``,
    ``BENCH_QUALITY_TOOLS`` and ``BENCH_QUALITY_BUDGETS`` stand for the options ``python -m benchmarks`` cannot pass."""
    settings = SIZES["quick" if ctx.quick else "full"]
    resume = os.environ.get(ENV_RESUME, "").strip()
    root = Path(resume) if resume else ctx.folder(NAME)
    budgets = [int(b) for b in _words(os.environ.get(ENV_BUDGETS))] or list(settings["budgets"])
    tools = _words(os.environ.get(ENV_TOOLS)) or list(TOOLS)
    source = os.environ.get(ENV_IMPORT, "").strip()
    res = compute(settings, store=CellStore(root), work=root / "work", tools=tools, budgets=budgets,
                  import_from=Path(source) if source else None, log=ctx.log)  # fmt: skip
    if ctx.quick:
        res.notes.append("quick run: tiny budgets and one search seed: a smoke test, not a verdict on search quality")
    return res


def job_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_quality job",
                                     description="One job of benchmark 7 (the runner starts them).")  # fmt: skip
    parser.add_argument("stage", choices=list(JOBS))
    parser.add_argument("tool", choices=list(TOOLS))
    parser.add_argument("plan", type=Path, help="the plan.json of one (budget, dataset, search seed)")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    out = JOBS[args.stage](Plan.load(args.plan), args.tool)
    args.result.write_text(json.dumps(out), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["job"]:
        return job_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.search_quality",
        description="Benchmark 7 cell by cell: compute the cells a store lacks, then report every cell it holds.",
    )
    parser.add_argument("--resume", type=Path, metavar="FOLDER",
                        help="the store: its cells are not computed again (default: a new temporary one)")  # fmt: skip
    parser.add_argument("--import", dest="import_from", type=Path, metavar="RESULTS_JSON",
                        help="first seed the store with the peers' cells of benchmark 7 in this file")  # fmt: skip
    parser.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS), metavar="ROW",
                        help=f"rows to compute: {', '.join(TOOLS)} (default: all)")  # fmt: skip
    parser.add_argument("--budgets", nargs="+", type=int, metavar="B", help="budgets to compute (default: the size's)")
    parser.add_argument("--slots", type=int, default=SLOTS, help=f"jobs at once, one thread each ({SLOTS})")
    parser.add_argument("--quick", action="store_true", help="the quick size (a store holds one size)")
    parser.add_argument("--dry-run", action="store_true", help="import, then list the cells that would be computed")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    settings = SIZES["quick" if args.quick else "full"]
    if args.resume is None:
        import tempfile

        args.resume = Path(tempfile.mkdtemp(prefix=f"{NAME}-"))
    store = CellStore(args.resume)
    budgets = args.budgets or list(settings["budgets"])
    ctx = Context(quick=args.quick, workdir=args.resume, verbose=not args.quiet)
    if args.dry_run:
        if args.import_from is not None:
            imported, _ = import_results(args.import_from, store, settings)
            print(f"imported {_count(len(imported), 'cell')}")
        todo = missing_cells(store, wanted_cells(settings, tools=args.tools, budgets=budgets), settings)
        print(f"{_count(len(todo), 'cell')} to compute in {store.root}:")
        for key in todo:
            print(f"  {key}")
        return 0

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the runner's ``finally`` stops the jobs; finished cells stay in the store

    signal.signal(signal.SIGTERM, interrupted)
    start = time.perf_counter()
    res = compute(settings, store=store, work=args.resume / "work", tools=args.tools, budgets=budgets,
                  slots=args.slots, import_from=args.import_from, log=ctx.log)  # fmt: skip
    res.seconds, res.date = time.perf_counter() - start, now_iso()
    out = args.resume / "result.json"
    out.write_text(json.dumps(res.as_dict(), indent=1) + "\n", encoding="utf-8")
    sys.stdout.write(res.raw["table"] + "\n")
    for line in goal_lines(res):
        print(f"- {line}")
    for note in res.notes:
        print(f"- {note}")
    print(f"{res.seconds:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
