"""10. Hint efficacy: does a diagnosis's remedy make the configuration better on data no search saw?

Held-out studies: benchmark 7's four datasets (digits with an LSTM,
Mackey-Glass with a GRU, breast cancer and the wine CSV with a dense network)
and one user CSV with a date column (``studies/data/monthly-temperature.csv``,
an LSTM forecast of next month's temperature). Each is split once into a
development part and a test block (benchmark 7's :func:`dev_test_split`), and
``sweep run --budget B`` searches the development part (benchmark 7's study
file and its ``sweep_full`` row: every configuration gets every repeat, so
that most trials end complete; search seeds in :data:`SETTINGS`). The search phase writes one SQLite study
per (dataset, search seed) and needs no labels.

The retrain phase reads each study with ``sweep rank`` (the labels of the
code that runs it, calibrated on the study) and, for every complete trial
whose label is neither ``stable`` nor ``pruned``, retrains with
:data:`FRESH_SEEDS` fresh seeds on the whole development part, validated on
the test block every epoch with ``patience=0`` (as benchmark 7 retrains a
pick):

(a) the configuration;
(b) the configuration with its label's remedy applied
    (:meth:`sweep.remedy.Remedy.apply`, exactly what ``sweep fix`` queues);
(c) a placebo (:func:`placebo`): as many changes as (b) made, each of the same
    size in the search space (the same fraction of the parameter's range, on
    a log scale for log ranges; one step for a list of choices), in parameters
    the remedy does not name, in a direction drawn at random.

A variant's result is the mean over seeds of its test loss over the last
``tail`` epochs. Per label: how often (b) beats (a), how often (c) beats (a),
and the median relative change of each. Nothing is timed.

``python -m benchmarks.hint_efficacy search|retrain|report --folder F``; each
phase resumes what the folder lacks.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, bench_env
from benchmarks.search_quality import CASES, SIZES, Case, Plan, make_plans, search_sweep, tail_mean

TEMPERATURE = Case(
    name="temperature-csv-lstm",
    family="lstm",
    data={
        "source": "csv",
        "path": str(ROOT / "studies" / "data" / "monthly-temperature.csv"),
        "task": "forecast",
        "features": ["temperature"],
        "target": "temperature",
        "lookback": 24,
    },
    search={
        "n_layers": {"low": 1, "high": 2},
        "units": {"low": 8, "high": 64, "log": True},
        "activation": "tanh",
        "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
        "optimizer": ["adam", "rmsprop", "sgd"],
        "batch_size": [16, 32, 64],
        "dropout": {"low": 0.0, "high": 0.3},
        "l2": {"low": 1e-6, "high": 1e-2, "log": True},
    },
    validation_fraction=0.2,
    dev_file="csv",
)
"""The user CSV: a date, a station and a temperature column; the model reads the temperature only."""

ALL_CASES: tuple[Case, ...] = (*CASES, TEMPERATURE)
FRESH_SEEDS = (20_000, 20_001, 20_002)
PLACEBO_SEED = 10
SETTINGS: dict[str, Any] = {**SIZES["full"], "search_seeds": [0, 1], "budgets": [450]}
"""Benchmark 7's full sizes, one budget (450 epochs) and two search seeds."""
SIZES_10: dict[str, dict[str, Any]] = {
    "full": SETTINGS,
    "quick": {**SIZES["quick"], "budgets": [24]},
}
CASE_FILES = {"calibrated": "efficacy.cases.json", "fixed": "efficacy.fixed-cases.json"}
"""Each rule set's cases in a study's folder: the labels of ``sweep rank``, and the fixed rules' for comparison."""
ROW = "sweep_full"
"""Benchmark 7's sweep row with every repeat for every configuration: racing would leave few complete trials."""
SKIPPED = ("stable", "pruned")
"""Labels that ask for no change."""


def placebo(
    params: Mapping[str, Any], remedied: Mapping[str, Any], space: Mapping[str, Any], *, rng: random.Random
) -> dict[str, Any] | None:
    """``params`` with a change of the same size as each change ``remedied`` made, in parameters it left alone.

    The size of a change is the fraction of the parameter's range it moved (on
    a log scale for a log range; for a list of choices, steps over the list's
    length less one). Each placebo change moves another parameter that the
    space lets move and the remedy did not change by that fraction, in a random
    direction (the other direction when the first is clipped to nothing); an
    integer or a list moves at least one step. Parameters are taken in a random
    order; a list of words (activation, optimizer) moves to a neighbouring word.

    Returns:
        The placebo configuration, or ``None`` when too few parameters are left to move.
    """
    from sweep.spec import Fixed

    moved = [name for name in remedied if remedied[name] != params.get(name)]
    free = [
        name
        for name, p in space.items()
        if name not in moved and name in params and not isinstance(p, Fixed) and not isinstance(params[name], bool)
    ]
    rng.shuffle(free)
    out = dict(params)
    for name in moved:
        size = _fraction(space[name], params[name], remedied[name])
        while free:
            other = free.pop()
            new = _moved(space[other], params[other], size, rng)
            if new is not None:
                out[other] = new
                break
        else:
            return None
    return out


def _choices(param: Any) -> list[Any]:
    """A list's values in order: sorted when they are numbers, as written otherwise."""
    values = list(param.values)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return values


def _position(param: Any, value: Any) -> float:
    """Where ``value`` sits in ``param``'s space, 0 to 1."""
    from sweep.spec import Choice

    if isinstance(param, Choice):
        values = _choices(param)
        if value in values:
            index = values.index(value)
        else:
            index = min(range(len(values)), key=lambda i: abs(values[i] - value))
        return index / max(1, len(values) - 1)
    low, high = float(param.low), float(param.high)
    if param.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _fraction(param: Any, before: Any, after: Any) -> float:
    return abs(_position(param, after) - _position(param, before))


def _moved(param: Any, value: Any, size: float, rng: random.Random) -> Any:
    """``value`` moved by ``size`` of ``param``'s space, up or down at random; None if it cannot move."""
    from sweep.remedy import fit
    from sweep.spec import Choice

    here = _position(param, value)
    for sign in rng.sample([1, -1], 2):
        there = min(1.0, max(0.0, here + sign * size))
        if isinstance(param, Choice):
            values = _choices(param)
            step = round(there * (len(values) - 1)) - values.index(value) if value in values else 0
            index = values.index(value) + (step or sign) if value in values else round(there * (len(values) - 1))
            new: Any = values[index] if 0 <= index < len(values) else None
        elif abs(there - here) < 1e-9:
            continue
        else:
            low, high = float(param.low), float(param.high)
            raw = math.exp(math.log(low) + there * (math.log(high) - math.log(low))) if param.log else (
                low + there * (high - low)
            )
            new = fit(raw, float(value), param)
            if param.integer and new == value:
                new = min(max(int(value) + sign, int(param.low)), int(param.high))
        if new is not None and new != value:
            return new
    return None


# --------------------------------------------------------------------------- the phases


def plans(folder: Path, settings: Mapping[str, Any]) -> list[Plan]:
    return make_plans(folder, settings, ALL_CASES)


def search_phase(folder: Path, settings: Mapping[str, Any], *, slots: int = 2) -> None:
    """Every (dataset, search seed)'s sweep study, two at a time; a study already searched is kept."""

    def one(plan: Plan) -> None:
        done = plan.out(ROW, "search")
        if done.exists():
            return
        print(f"search {plan.case} seed {plan.seed}", file=sys.stderr, flush=True)
        result = search_sweep(plan, ROW)
        done.write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"searched {plan.case} seed {plan.seed}: {result['trials']} trials", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=slots) as pool:
        for future in [pool.submit(one, p) for p in plans(folder, settings)]:
            future.result()


def cases_of(plan: Plan, labels: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """The non-stable complete trials of the plan's study, each with its remedy and placebo configuration.

    ``labels`` replaces the calibrated labels ``sweep rank`` gives (by trial number): the fixed rules'.
    """
    from benchmarks.search_quality import sweep_url
    from sweep.remedy import REMEDIES
    from sweep.report import rank
    from sweep.spec import load_spec

    spec = load_spec(Path(plan.study_file))
    space: dict[str, Any] = spec.search.params()
    rows = [r for r in rank("quality", url=sweep_url(plan, ROW)) if r.state == "COMPLETE"]
    out = []
    for r in rows:
        label = str(r.diagnosis) if labels is None else labels[r.number]
        case: dict[str, Any] = {"trial": r.number, "label": label, "params": dict(r.params), "score": r.score}
        if label not in SKIPPED:
            remedied = REMEDIES[label].apply(r.params, space)
            rng = random.Random(f"{plan.case}/{plan.seed}/{r.number}/{PLACEBO_SEED}")
            case["remedy"] = remedied
            case["placebo"] = None if remedied is None else placebo(r.params, remedied, space, rng=rng)
        out.append(case)
    return out


def fixed_rule_labels(plan: Plan) -> dict[int, str]:
    """The labels of the same complete trials under the fixed (uncalibrated) rules, from their stored curves."""
    from benchmarks.search_quality import sweep_url
    from sweep import records
    from sweep.report import read_trials
    from sweep.spec import load_spec
    from sweep.stability import split_reference, summarize

    spec = load_spec(Path(plan.study_file))
    keys = (records.CURVES, "baseline", "repeat_means")
    _, rows = read_trials("quality", url=sweep_url(plan, ROW), keys=keys)
    complete = [r for r in rows if r.state == "COMPLETE" and isinstance(r.attrs.get(records.CURVES), dict)]
    reference = split_reference([r.attrs["repeat_means"] for r in complete], n_repeats=spec.training.repeats)
    labels = {}
    for r in complete:
        curves = records.StoredCurves.from_attr(r.attrs[records.CURVES])
        train = curves.loss if len(curves.loss) == len(curves.val_loss) else None
        baseline = r.attrs.get("baseline")
        summary = summarize(curves.val_loss, train, tail=spec.stability.tail, risk=spec.stability.risk,
                            baseline=baseline if isinstance(baseline, float) else None, reference=reference)
        labels[r.number] = summary.diagnosis.value
    return labels


def retrain_one(plan: Plan) -> None:
    """Train (a), (b) and (c) of every case of one study with every fresh seed; resumes a partial file."""
    from benchmarks.search_quality import _setup
    from sweep.data import prepare
    from sweep.space import Hyperparams
    from sweep.train import fit_repeat, release

    out = Path(plan.folder) / "efficacy.retrain.json"
    done: dict[str, list[float]] = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    cases = [
        case
        for name in CASE_FILES.values()
        for case in json.loads((Path(plan.folder) / name).read_text(encoding="utf-8"))
    ]
    env = _setup(plan)
    data = prepare(env.full, env.split)
    epochs = plan.settings["max_epochs"]
    for case in cases:
        for variant in ("params", "remedy", "placebo"):
            params = case.get(variant)
            if params is None:
                continue
            for seed in FRESH_SEEDS:
                key = config_key(params, seed)
                if key in done:
                    continue
                curves, _ = fit_repeat(Hyperparams.from_params(dict(params)), family=plan.family, shape=env.shape,
                                       data=data, max_epochs=epochs, patience=0, seed=seed)  # fmt: skip
                release()
                done[key] = [float(v) for v in curves.val_loss]
                out.write_text(json.dumps(done), encoding="utf-8")


def config_key(params: Mapping[str, Any], seed: int) -> str:
    return json.dumps({"params": dict(params), "seed": seed}, sort_keys=True)


def retrain_phase(folder: Path, settings: Mapping[str, Any], *, slots: int = 2) -> None:
    """Write every study's cases, then retrain them, one process per study, two at a time."""
    todo = []
    for plan in plans(folder, settings):
        if not plan.out(ROW, "search").exists():
            print(f"{plan.case} seed {plan.seed}: not searched yet", file=sys.stderr)
            continue
        for rules, name in CASE_FILES.items():
            labels = fixed_rule_labels(plan) if rules == "fixed" else None
            (Path(plan.folder) / name).write_text(json.dumps(cases_of(plan, labels), indent=1), encoding="utf-8")
        todo.append(plan)

    def one(plan: Plan) -> None:
        cmd = [sys.executable, "-m", "benchmarks.hint_efficacy", "retrain-one", "--folder", plan.folder]
        print(f"retrain {plan.case} seed {plan.seed}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, cwd=ROOT, env=bench_env(), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=4 * 3600)  # fmt: skip
        if done.returncode:
            print(f"retrain {plan.case} seed {plan.seed} failed: {done.stderr[-2000:]}", file=sys.stderr, flush=True)
        else:
            print(f"retrained {plan.case} seed {plan.seed}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=slots) as pool:
        for future in [pool.submit(one, p) for p in todo]:
            future.result()


# --------------------------------------------------------------------------- the report


def test_loss(curves: Mapping[str, list[float]], params: Mapping[str, Any] | None, *, tail: int, epochs: int) -> float:
    """The mean over fresh seeds of the last ``tail`` epochs of test loss (``nan`` when not trained)."""
    if params is None:
        return math.nan
    tails = []
    for seed in FRESH_SEEDS:
        curve = curves.get(config_key(params, seed))
        if curve is None:
            return math.nan
        tails.append(tail_mean(curve, tail=tail, epochs=epochs))
    return statistics.fmean(tails)


def collect(folder: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Every case with its three test losses, per rule set, and every study's labels under both rule sets."""
    rows: dict[str, list[dict[str, Any]]] = {rules: [] for rules in CASE_FILES}
    studies = []
    for plan in plans(folder, settings):
        base = Path(plan.folder)
        if not all((base / name).exists() for name in CASE_FILES.values()):
            continue
        retrained = base / "efficacy.retrain.json"
        curves = json.loads(retrained.read_text(encoding="utf-8")) if retrained.exists() else {}
        study: dict[str, Any] = {"case": plan.case, "seed": plan.seed}
        for rules, name in CASE_FILES.items():
            cases = json.loads((base / name).read_text(encoding="utf-8"))
            study[rules] = [c["label"] for c in cases]
            for c in cases:
                if c["label"] in SKIPPED:
                    continue
                losses = {v: test_loss(curves, c.get(v), tail=settings["tail"], epochs=settings["max_epochs"])
                          for v in ("params", "remedy", "placebo")}  # fmt: skip
                rows[rules].append({"case": plan.case, "seed": plan.seed, "trial": c["trial"], "label": c["label"],
                                    **losses})  # fmt: skip
        studies.append(study)
    return {"cases": rows, "studies": studies}


def table(cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per label: cases, how often the remedy and the placebo beat the original, and their median change."""
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for row in cases:
        by_label.setdefault(row["label"], []).append(row)
    out = []
    for label, rows in sorted(by_label.items()):
        remedy = [r for r in rows if math.isfinite(r["params"]) and math.isfinite(r["remedy"])]
        placebo_rows = [r for r in rows if math.isfinite(r["params"]) and math.isfinite(r["placebo"])]
        out.append(
            {
                "label": label,
                "cases": len(rows),
                "remedy_cases": len(remedy),
                "remedy_wins": _share([r["remedy"] < r["params"] for r in remedy]),
                "remedy_change": _median_change(remedy, "remedy"),
                "placebo_cases": len(placebo_rows),
                "placebo_wins": _share([r["placebo"] < r["params"] for r in placebo_rows]),
                "placebo_change": _median_change(placebo_rows, "placebo"),
            }
        )
    return out


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else math.nan


def _median_change(rows: Sequence[Mapping[str, Any]], variant: str) -> float:
    changes = [(r[variant] - r["params"]) / abs(r["params"]) for r in rows if r["params"]]
    return statistics.median(changes) if changes else math.nan


def label_shares(collected: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per study: the largest share of its complete trials that one non-stable label names, for both rules."""
    out = []
    for s in collected["studies"]:
        row: dict[str, Any] = {"case": s["case"], "seed": s["seed"], "complete": len(s["calibrated"])}
        for rules in ("calibrated", "fixed"):
            labels = [x for x in s[rules] if x not in SKIPPED]
            top = max(set(labels), key=labels.count) if labels else "-"
            row[rules] = {"top": top, "share": labels.count(top) / len(s[rules]) if labels else 0.0,
                          "counts": {x: s[rules].count(x) for x in sorted(set(s[rules]))}}  # fmt: skip
        out.append(row)
    return out


def report(folder: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    collected = collect(folder, settings)
    tables = {rules: table(cases) for rules, cases in collected["cases"].items()}
    result = {"settings": dict(settings), "tables": tables, "shares": label_shares(collected), **collected}
    (folder / "efficacy.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    for rules, rows in tables.items():
        print(f"{rules} labels         cases  remedy beats (a)  median change  placebo beats (a)  median change")
        for t in rows:
            print(f"{t['label']:<24} {t['cases']:>5}  {t['remedy_wins']:>16.0%}  {t['remedy_change']:>+13.1%}"
                  f"  {t['placebo_wins']:>17.0%}  {t['placebo_change']:>+13.1%}")  # fmt: skip
        print()
    for s in result["shares"]:
        c, f = s["calibrated"], s["fixed"]
        print(f"{s['case']:<22} seed {s['seed']}: {s['complete']:>2} complete; calibrated {c['counts']}; "
              f"fixed rules {f['counts']}")  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hint_efficacy", description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("search", "retrain", "retrain-one", "report"))
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    settings = SIZES_10["quick" if args.quick else "full"]
    args.folder.mkdir(parents=True, exist_ok=True)
    if args.phase == "retrain-one":
        retrain_one(Plan.load(args.folder / "plan.json"))
    elif args.phase == "search":
        search_phase(args.folder, settings)
    elif args.phase == "retrain":
        retrain_phase(args.folder, settings)
    else:
        report(args.folder, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
