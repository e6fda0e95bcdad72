"""Ranking and status read back from real storages (no training: trials are written directly)."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweep import records
from sweep.errors import StudyNotFoundError, UserError
from sweep.objective import curves_attr
from sweep.report import rank, read_trials, study_status
from sweep.runner import prepare_study
from sweep.space import distributions
from sweep.spec import load_spec
from sweep.stability import summarize
from sweep.storage import open_storage
from sweep.train import Curves, Stop
from tests.helpers import run_cli, write_study

PARAMS = {
    "n_layers": 1,
    "units": 8,
    "activation": "tanh",
    "learning_rate": 0.01,
    "optimizer": "adam",
    "batch_size": 64,
    "dropout": 0.1,
    "l2": 1e-4,
    "layer_norm": False,
}

# Two repeats each: (validation curves, training curves).
STEADY_LOW = ([[1.0, 0.6, 0.41, 0.40, 0.40, 0.40], [1.0, 0.6, 0.42, 0.41, 0.41, 0.41]],
              [[1.0, 0.6, 0.40, 0.39, 0.38, 0.38]] * 2)
LUCKY_DIP = ([[1.0, 0.2, 0.9, 0.5, 0.95, 0.55], [1.0, 0.7, 0.8, 0.6, 0.9, 0.6]],
             [[1.0, 0.5, 0.3, 0.2, 0.1, 0.05]] * 2)
OVERFIT = ([[1.0, 0.5, 0.45, 0.5, 0.6, 0.7], [1.0, 0.5, 0.46, 0.52, 0.62, 0.72]],
           [[1.0, 0.5, 0.3, 0.2, 0.1, 0.05]] * 2)
# Lower tail_mean than STEADY_LOW but a huge spread between repeats: --risk 0 must put it first.
LOW_BUT_WILD = ([[1.0, 0.6, 0.1, 0.1, 0.1, 0.1], [1.0, 0.6, 0.6, 0.6, 0.6, 0.6]],
                [[1.0, 0.6, 0.40, 0.39, 0.38, 0.38]] * 2)


def _curves(val: list[list[float]], train: list[list[float]]) -> list[Curves]:
    return [
        Curves(loss=tuple(u), val_loss=tuple(v), metric_name="", stop=Stop.COMPLETED)
        for v, u in zip(val, train, strict=True)
    ]


def make_study(url: str, tmp_path: Path, cases: list[tuple[str, tuple, TrialState]], name: str = "ranked",
               *, legacy: bool = False):
    """A study of hand-made trials; ``legacy`` keeps the curves where versions before 2026-12 did."""
    spec = load_spec(write_study(tmp_path, name=name))
    study, created = prepare_study(spec, url=url)
    assert created
    dists = distributions(spec.search, family="lstm")
    for _label, (val, train), state in cases:
        summary = summarize(val, train, tail=spec.stability.tail, risk=spec.stability.risk)
        attrs = {records.CURVES: curves_attr(_curves(val, train)), **records.summary_attrs(summary)}
        if state is TrialState.FAIL:
            attrs[records.FAIL_REASON] = "error: something broke"
        study.add_trial(create_trial(
            state=state,
            value=summary.score if state is TrialState.COMPLETE else None,
            params=PARAMS,
            distributions=dists,
            user_attrs=attrs if legacy else records.split_attrs(attrs)[0],
            system_attrs={} if legacy else records.split_attrs(attrs)[1],
            intermediate_values={i: v for i, v in enumerate(val[0])},
        ))
    return study, spec


CASES = [
    ("lucky", LUCKY_DIP, TrialState.COMPLETE),
    ("steady", STEADY_LOW, TrialState.COMPLETE),
    ("overfit", OVERFIT, TrialState.COMPLETE),
    ("wild", LOW_BUT_WILD, TrialState.COMPLETE),
    ("pruned", STEADY_LOW, TrialState.PRUNED),
    ("failed", STEADY_LOW, TrialState.FAIL),
]


def test_rank_orders_by_score_and_keeps_only_complete(storage_url: str, tmp_path: Path) -> None:
    make_study(storage_url, tmp_path, CASES)
    ranked = rank("ranked", url=storage_url)
    scores = [r.score for r in ranked]
    assert scores == sorted(scores)
    assert {r.state for r in ranked} == {"COMPLETE"}
    assert len(ranked) == 4
    steady, lucky = next(r for r in ranked if r.number == 1), next(r for r in ranked if r.number == 0)
    assert lucky.best < steady.best and lucky.score > steady.score
    assert next(r for r in ranked if r.number == 2).diagnosis == "overfitting"
    assert steady.params == PARAMS


def test_rank_all_puts_pruned_and_failed_after_complete(storage_url: str, tmp_path: Path) -> None:
    make_study(storage_url, tmp_path, CASES)
    ranked = rank("ranked", url=storage_url, include_all=True)
    states = [r.state for r in ranked]
    assert states == ["COMPLETE"] * 4 + ["PRUNED", "FAIL"]
    # The pruned trial has the same (good) curves as the best complete one, and still ranks after all of them.
    assert ranked[4].score is not None and ranked[4].score < ranked[3].score
    assert ranked[5].fail_reason == "error: something broke"


EXPLODING = ([[3e12, 3.2e12, 3.5e12, 3.7e12, 3.8e12, 3.9e12]], [[1.0, 0.9, 0.8, 0.7, 0.6, 0.5]])


def test_labels_are_judged_with_the_whole_study_and_an_exploding_raced_out_trial_is_diverged(tmp_path: Path) -> None:
    """Once calibrated, rank judges every label against the other trials; older studies (no evidence) too."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study(url, tmp_path, [*CASES, ("exploding", EXPLODING, TrialState.PRUNED)])
    ranked = {r.number: r for r in rank("ranked", url=url, include_all=True)}
    assert ranked[6].diagnosis == "diverged"
    assert "what the study's median trial gains" in (ranked[6].hint or "")
    assert ranked[0].diagnosis == "oscillating" and "the study's median beyond any trend" in (ranked[0].hint or "")
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    _, _ = make_study(legacy_url, tmp_path, [*CASES, ("exploding", EXPLODING, TrialState.PRUNED)], legacy=True)
    with sqlite3.connect(tmp_path / "legacy.db") as db:  # written before the evidence was stored
        assert db.execute("DELETE FROM trial_user_attributes WHERE key = 'evidence'").rowcount == 7
    old = {r.number: r for r in rank("ranked", url=legacy_url, include_all=True)}
    assert {n: (r.diagnosis, r.hint) for n, r in old.items()} == {n: (r.diagnosis, r.hint) for n, r in ranked.items()}


def test_rank_as_json_carries_every_stored_per_trial_field(tmp_path: Path) -> None:
    """A script that sums the epochs a study spent, or reads the spread of each repeat, needs no SQL."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study(url, tmp_path, CASES)
    done = run_cli("rank", "ranked", "--storage", url, "--format", "json", "--all")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    stored = {*records.SUMMARY_FIELDS, records.STOPPED, records.RACED_OUT, records.FAIL_REASON, records.FIXES,
              records.REMEDY, "epochs_trained"}  # fmt: skip
    assert stored <= set(rows[0]), stored - set(rows[0])
    assert rows[0]["epochs"] == [6, 6] and len(rows[0]["repeat_stds"]) == 2 and rows[0]["raced_out"] is False
    assert sum(r["epochs_trained"] for r in rows) == 12 * len(rows)
    assert set(rows[0]["evidence"]) == {"first", "jitter", "val_slope", "train_slope", "window"}


def test_risk_zero_ranks_by_tail_mean(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study(url, tmp_path, CASES)
    default = rank("ranked", url=url)
    risk0 = rank("ranked", url=url, risk=0.0)
    assert default[0].number == 1  # steady low wins with the spread penalty
    assert risk0[0].number == 3  # the low-but-wild one wins on tail_mean alone
    for r in risk0:
        assert r.score == pytest.approx(r.tail_mean, rel=1e-6)
    assert [r.tail_mean for r in risk0] == sorted(r.tail_mean for r in risk0)


@pytest.mark.parametrize("legacy", [False, True], ids=["system-attr", "user-attr-before-2026-12"])
def test_tail_rescores_from_stored_curves(storage_url: str, tmp_path: Path, legacy: bool) -> None:
    """Re-scoring reads the curves where this version keeps them, and where older versions did."""
    make_study(storage_url, tmp_path, CASES, legacy=legacy)
    one = {r.number: r for r in rank("ranked", url=storage_url, tail=1)}
    val, _ = OVERFIT
    assert one[2].tail_mean == pytest.approx((val[0][-1] + val[1][-1]) / 2, rel=1e-5)
    stored = {r.number: r for r in rank("ranked", url=storage_url)}
    assert stored[2].tail_mean != pytest.approx(one[2].tail_mean)  # re-scored, not the stored summary


def test_by_field_and_top(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study(url, tmp_path, CASES)
    by_best = rank("ranked", url=url, by="best", top=2)
    assert len(by_best) == 2
    assert by_best[0].best <= by_best[1].best
    with pytest.raises(UserError, match="--by: got 'nope'; allowed: score"):
        rank("ranked", url=url, by="nope")
    with pytest.raises(UserError, match="--risk"):
        rank("ranked", url=url, risk=-1.0)


def test_sql_reader_matches_optuna_api(storage_url: str, tmp_path: Path) -> None:
    study, _ = make_study(storage_url, tmp_path, CASES)
    keys = (*records.SUMMARY_FIELDS, records.FAIL_REASON, records.CURVES)
    user_attrs, rows = read_trials("ranked", url=storage_url, keys=keys)
    assert user_attrs == study.user_attrs
    fast = {r.number: r for r in rows}
    for t in study.get_trials():
        row = fast[t.number]
        assert row.state == t.state.name
        assert row.params == t.params
        stored = {k: records.trial_attr(t, k) for k in keys}
        assert row.attrs == {k: v for k, v in stored.items() if k in t.user_attrs or v is not None}


def test_status_counts_and_best(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study(url, tmp_path, CASES)
    st = study_status("ranked", url=url)
    assert st.counts == {"COMPLETE": 4, "PRUNED": 1, "FAIL": 1}
    assert st.done == 5  # a failed trial (not diverged) does not use up the target
    assert st.best is not None and st.best.number == 1
    assert st.target == 3


def test_unknown_study_lists_existing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study(url, tmp_path, CASES)
    with pytest.raises(StudyNotFoundError, match=r"study 'nope' not found .* studies there: ranked"):
        rank("nope", url=url)


def test_rank_cli_formats(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study(url, tmp_path, CASES)
    js = run_cli("rank", "ranked", "--storage", url, "--format", "json")
    assert js.returncode == 0, js.stderr
    rows = json.loads(js.stdout)
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)
    for r in rows:
        assert set(r) >= {"rank", "number", "score", "tail_mean", "tail_std", "best", "degradation",
                          "oscillation", "gap", "repeat_spread", "diagnosis", "hint", "params"}
        assert set(r["params"]) >= {"n_layers", "units", "activation", "learning_rate", "optimizer",
                                    "batch_size", "dropout", "l2"}
        assert isinstance(r["score"], float) and math.isfinite(r["score"])
    csv_out = run_cli("rank", "ranked", "--storage", url, "--format", "csv", "--risk", "0")
    assert csv_out.returncode == 0, csv_out.stderr
    header, first = csv_out.stdout.splitlines()[:2]
    assert header.startswith("rank,number,state,score,tail_mean")
    assert first.startswith("1,3,COMPLETE,")
    table = run_cli("rank", "ranked", "--storage", url)
    assert table.returncode == 0, table.stderr
    assert "overfitting" in table.stdout
    assert "#2 overfitting: validation loss over the last 5 epochs sits" in table.stdout
    bad = run_cli("rank", "ranked", "--storage", url, "--format", "xml")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --format: got 'xml'; allowed: table, json, csv"


def test_rank_does_not_import_tensorflow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study(url, tmp_path, CASES)
    import subprocess
    import sys

    code = (
        "import sys; from sweep.cli import app; from sweep.report import rank;"
        f"rank('ranked', url={url!r});"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_storage_is_reopened_without_creating_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = run_cli("status", "x", "--storage", f"sqlite:///{missing}")
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not missing.exists()
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'new.db'}"), optuna.storages.RDBStorage)


def test_copy_cli_moves_a_study_and_its_ranking(tmp_path: Path) -> None:
    src, dst = f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"
    make_study(src, tmp_path, CASES)
    copied = run_cli("copy", "--from", src, "--to", dst, "--study", "ranked")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.strip() == f"copied ranked (6 trials) from {src} to {dst}"
    assert rank("ranked", url=dst, include_all=True) == rank("ranked", url=src, include_all=True)
    again = run_cli("copy", "--from", src, "--to", dst)
    assert again.returncode == 2
    assert "already has a study named 'ranked'; nothing was copied" in again.stderr


def test_a_split_harder_for_every_trial_makes_none_unstable(tmp_path: Path) -> None:
    """Repeat 1's split is harder for every configuration: that says nothing about any of them."""
    url = f"sqlite:///{tmp_path / 'splits.db'}"
    settle = [1.0, 0.6, 0.45, 0.41, 0.40, 0.40, 0.40, 0.40]
    train = [[1.0, 0.6, 0.40, 0.39, 0.38, 0.38, 0.38, 0.38]] * 2

    def trial(level: float, harder: float) -> tuple[list[list[float]], list[list[float]]]:
        return [[x * level for x in settle], [x * level + harder for x in settle]], train

    # Five configurations at different levels, each 0.3 worse on split 1 than on split 0; trial 5
    # is 0.3 *better* there: its split-to-split spread is its own (residual spread 0.3, or 75%+).
    cases = [(f"t{i}", trial(level, 0.3), TrialState.COMPLETE) for i, level in enumerate((1.0, 0.9, 1.1, 0.95, 1.05))]
    cases.append(("odd", trial(1.0, -0.3), TrialState.COMPLETE))
    make_study(url, tmp_path, cases, name="splits")
    ranked = {r.number: r for r in rank("splits", url=url)}
    assert {n: r.diagnosis for n, r in ranked.items()} == {
        0: "stable", 1: "stable", 2: "stable", 3: "stable", 4: "stable", 5: "unstable_across_repeats",
    }
    assert "per-split medians" in (ranked[5].hint or "")
    # residuals against the per-split medians (about 0.40 on split 0, 0.69 on split 1)
    assert ranked[0].repeat_spread == pytest.approx(0.005, abs=1e-4)
    assert ranked[5].repeat_spread == pytest.approx(0.295, abs=1e-3)
    # the score holds no split-to-split spread: trial 5's score is trial 0's lowered by the mean shift
    assert ranked[5].score == pytest.approx(ranked[0].score - 0.3, rel=1e-9)


@pytest.mark.parametrize("columns", [100, 80])
def test_rank_fits_the_terminal_and_says_what_it_ranked_by(tmp_path: Path, columns: int) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study(url, tmp_path, CASES)
    table = run_cli("rank", "ranked", "--storage", url, "--risk", "0", env={"COLUMNS": str(columns)})
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns, "\n".join(line for line in lines if len(line) > columns)
    words = " ".join(table.stdout.split())  # the title wraps at the table's width
    assert "ranked by score = tail_mean + 0 x tail_std over the last 5 epochs, lower is better" in words
    assert "diagnosis" in table.stdout and "overfitting" in table.stdout
    wide = run_cli("rank", "ranked", "--storage", url, "--wide", env={"COLUMNS": str(columns)})
    assert wide.returncode == 0, wide.stderr
    header = next(line for line in wide.stdout.splitlines() if "trial" in line and "diagnosis" in line)
    assert all(name in header for name in ("degr", "osc", "gap", "spread", "layers", "units", "opt"))


# --------------------------------------------------------------------------- reading at scale: the same answers


def realistic_study(url: str, *, n: int = 150, seed: int = 5, name: str = "reading") -> None:
    """A study as benchmark 3 writes one (:func:`benchmarks.reading.build_study`) and every kind of trial that
    the ranking treats apart: failed (one diverged), verifying an earlier configuration, fixes, written before
    2026-12 (no evidence, every attr a user attr), raced out, and a waiting one."""
    from benchmarks.reading import build_study, fake_trials
    from sweep import ledger
    from sweep.report import study_spec

    study = build_study(url, n, seed=seed, name=name)
    extra = list(fake_trials(study_spec(name, url=url), 30, seed=seed + 1))
    trials = []
    for i, t in enumerate(extra):
        user, system, state = dict(t.user_attrs), dict(t.system_attrs), t.state
        if i < 4:
            user[records.FAIL_REASON] = "diverged: loss became NaN at epoch 3" if i == 0 else "error: it broke"
            state = TrialState.FAIL
        elif i < 8:
            user.update({ledger.VERIFIES: 3 * i, "n_repeats": 5, ledger.EPOCHS_TRAINED: 40})
        elif i < 11:
            user.update({records.FIXES: 7 * i, records.REMEDY: "learning_rate 0.003 -> 0.001"})
        elif i < 16:
            user = {**user, **{k.removeprefix("sweep:"): v for k, v in system.items()}}
            user.pop("evidence", None)
            system = {}
        elif i < 19:
            user.update({records.RACED_OUT: True, records.STOPPED: "raced out after repeat 0: " + "x" * 90})
        trials.append(create_trial(
            state=state, value=t.value if state is TrialState.COMPLETE else None, params=t.params,
            distributions=t.distributions, user_attrs=user, system_attrs=system,
            intermediate_values=t.intermediate_values,
        ))  # fmt: skip
    study.add_trials(trials)
    study.enqueue_trial(dict(extra[0].params))


ORACLE_CASES = [
    {},
    {"top": 25},
    {"top": 1},
    {"include_all": True},
    {"include_all": True, "top": 120},
    {"by": "repeat_spread", "top": 10},
    {"by": "tail_std", "top": 40, "include_all": True},
    {"by": "gap"},
    {"risk": 0.0},
    {"tail": 3, "risk": 2.0, "top": 30, "include_all": True},
]


def _same_as_before(url: str, name: str = "reading") -> None:
    from sweep.report import ranking
    from tests.report_before import rank_before, status_before

    for kwargs in ORACLE_CASES:
        every = rank_before(name, url=url, **{**kwargs, "top": None})
        got = ranking(name, url=url, **kwargs)
        assert json.dumps([r.as_dict() for r in got.trials]) == json.dumps(
            [dataclasses.asdict(r) for r in every[: kwargs.get("top")]]
        ), kwargs
        assert got.total == len(every), kwargs
    assert json.dumps(study_status(name, url=url).as_dict()) == json.dumps(status_before(name, url=url).as_dict())


def test_rank_and_status_are_what_reading_every_trial_whole_gave(storage_url: str) -> None:
    """Read a few attrs of every trial and the whole of those shown: the ranking and status of before, to the bit.

    The study shares its storage with a larger one, so its attrs are found by its trials' ids.
    """
    realistic_study(storage_url, n=20, seed=11, name="other")
    realistic_study(storage_url, n=40)
    _same_as_before(storage_url)


def test_a_study_alone_in_its_storage_reads_whole_tables_with_the_same_answers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'alone.db'}"
    realistic_study(url, n=40)
    _same_as_before(url)


def test_rank_cli_table_counts_what_it_leaves_out(tmp_path: Path) -> None:
    from tests.report_before import rank_before

    url = f"sqlite:///{tmp_path / 'alone.db'}"
    realistic_study(url, n=30)
    every = rank_before("reading", url=url)
    table = run_cli("rank", "reading", "--storage", url)
    assert table.returncode == 0, table.stderr
    assert f"({len(every) - 25} more; --top K shows more, --format json or csv shows all)" in table.stdout
    assert [int(line.split("│")[2]) for line in table.stdout.splitlines() if line.startswith("│")] == [
        r.number for r in every[:25]
    ]
    js = run_cli("rank", "reading", "--storage", url, "--format", "json", "--all")
    assert js.returncode == 0, js.stderr
    assert js.stdout == json.dumps([dataclasses.asdict(r) for r in rank_before("reading", url=url, include_all=True)],
                                   indent=2) + "\n"  # fmt: skip
    top = run_cli("rank", "reading", "--storage", url, "--top", "30")
    assert top.returncode == 0, top.stderr
    assert "more;" not in top.stdout


def test_ranked_trial_as_dict_is_dataclasses_asdict(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    realistic_study(url, n=40)
    rows = rank("reading", url=url, include_all=True)
    assert rows and all(r.as_dict() == dataclasses.asdict(r) for r in rows)
    copied = rows[0].as_dict()
    assert copied["params"] is not rows[0].params and copied["evidence"] is not rows[0].evidence


def test_attr_values_are_decoded_at_once_and_one_by_one_when_they_must() -> None:
    from sweep.report import _loads_all

    texts = ['0.5', 'null', '"a, b"', '[1, 2]', '{"x": [NaN]}', 'Infinity', 'true']
    assert json.dumps(_loads_all(texts)) == json.dumps([json.loads(t) for t in texts])
    assert _loads_all([]) == []
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        _loads_all(["1", "2, 3"])  # one array would hold three values: read one by one, which raises
    with pytest.raises(TypeError):
        _loads_all(["1", None])  # type: ignore[list-item]


def test_reading_pauses_the_garbage_collector_and_gives_it_back_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    import sweep.report

    url = f"sqlite:///{tmp_path / 'r.db'}"
    realistic_study(url, n=20)
    seen: list[bool] = []
    real = sweep.report._read_rows

    def watched(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sweep.report, "_read_rows", watched)
    assert rank("reading", url=url) and gc.isenabled()
    gc.disable()
    try:
        study_status("reading", url=url)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(StudyNotFoundError):
        rank("nothing", url=url)
    assert gc.isenabled()
    assert seen and not any(seen)
