"""The real ``sweep`` command end to end: tiny Keras models, real SQLite files, separate processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep import records
from sweep.stability import repeat_score
from tests.helpers import ROOT, cheap_study, run_cli, wait_for, write_study

EIGHT = {"n_layers", "units", "activation", "learning_rate", "optimizer", "batch_size", "dropout", "l2"}
COMMANDS = ["create", "run", "worker", "status", "rank", "fix", "best", "predict", "copy", "proxy", "dashboard", "init",
            "schema", "export"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command: str | None) -> None:
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    if command is None:
        for name in COMMANDS:
            assert name in result.stdout
    # Each option shows what it takes (a metavar such as DURATION or table|json), never a Python
    # type such as <bool> or <list[str]>; a flag shows nothing.
    options = [line for line in result.stdout.splitlines() if re.search(r"│\s+(\*\s+)?--", line)]
    assert options, result.stdout
    for line in options:
        assert not re.search(r"<(bool|str|int|float|path|list)\b|list\[", line), line
    assert re.search(r"│\s+--help\s{2,}Show this message and exit\.", result.stdout), result.stdout


def _read_study(url: str, name: str) -> dict:
    """Read the study from a separate process with Optuna's own API."""
    code = f"""
import json, optuna
study = optuna.load_study(study_name={name!r}, storage={url!r})
print(json.dumps([
    {{"number": t.number, "state": t.state.name, "params": t.params,
      "attrs": {{**t.user_attrs, **{{k[6:]: v for k, v in t.system_attrs.items() if k.startswith("sweep:")}}}},
      "intermediate": {{str(k): v for k, v in t.intermediate_values.items()}}}}
    for t in study.trials
]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.slow
def test_demo_sweep_runs_resumes_ranks_and_retrains(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    demo = ROOT / "studies" / "digits-lstm.toml"
    common = ["--storage", url, "--set", "training.max_epochs=3", "--set", "worker.max_trials=2"]
    first = run_cli("run", str(demo), "--n-trials", "3", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "3 of 3 trials done" in first.stdout

    trials = _read_study(url, "digits-lstm")
    assert len(trials) == 3
    for t in trials:
        assert t["state"] in ("COMPLETE", "PRUNED")
        assert set(t["params"]) >= EIGHT
        curves = t["attrs"]["curves"]
        assert len(curves["val_loss"]) >= 1 and all(1 <= len(c) <= 3 for c in curves["val_loss"])
        assert len(curves["loss"]) == len(curves["val_loss"])
        if t["state"] == "COMPLETE":
            assert len(curves["val_loss"]) == 2  # two repeats in the demo
            val0 = curves["val_loss"][0]
            if "verifies" in t["attrs"]:
                # it trained repeat 1 of an earlier configuration, whose repeat 0 it copied and did not report
                drew = trials[t["attrs"]["verifies"]]
                assert drew["params"] == t["params"] and drew["attrs"]["curves"]["val_loss"][0] == val0
                assert t["intermediate"] == {} and t["attrs"]["epochs_trained"] == len(curves["val_loss"][1])
                continue
            # repeat 0 reports its running stability score after every epoch
            reported = [t["intermediate"][str(i)] for i in range(len(t["intermediate"]))]
            assert reported == pytest.approx([repeat_score(val0[: i + 1]) for i in range(len(val0))], rel=1e-5)
            assert isinstance(t["attrs"]["score"], float)
            assert t["attrs"]["diagnosis"] in {"stable", "not_learning", "overfitting", "oscillating",
                                               "underfitting", "unstable_across_repeats"}

    listed = subprocess.run(
        [str(Path(sys.executable).with_name("optuna")), "trials", "--study-name", "digits-lstm",
         "--storage", url, "-f", "json"],
        capture_output=True, text=True, check=True,
    )
    rows = json.loads(listed.stdout)
    assert len(rows) == 3 and all(set(r["params"]) >= EIGHT for r in rows)

    again = run_cli("run", str(demo), "--n-trials", "5", *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(_read_study(url, "digits-lstm")) == 5  # 2 more, not 5 more

    status = run_cli("status", "digits-lstm", "--storage", url, "--format", "json")
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["done"] == 5 and st["target"] == 5

    ranked = json.loads(run_cli("rank", "digits-lstm", "--storage", url, "--format", "json").stdout)
    assert ranked and [r["score"] for r in ranked] == sorted(r["score"] for r in ranked)
    assert all(r["hint"] and set(r["params"]) >= EIGHT for r in ranked)

    out_dir = tmp_path / "best"
    best = run_cli("best", "digits-lstm", "--storage", url, "--retrain-seeds", "2", "--out", str(out_dir))
    assert best.returncode == 0, best.stderr
    assert best.stdout.count("tail val loss") == 3  # the prediction and two seeds
    config = json.loads(next(out_dir.glob("*.json")).read_text())
    assert config["trial"] == ranked[0]["number"]
    assert len(config["retrained"]["tail_losses"]) == 2
    assert next(out_dir.glob("*.keras")).stat().st_size > 0


def test_typo_key_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    study = write_study(tmp_path)
    study.write_text(study.read_text().replace("max_epochs", "max_epoch"))
    db = tmp_path / "t.db"
    result = run_cli("run", str(study), "--storage", f"sqlite:///{db}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "training.max_epoch: unknown key 'max_epoch'; did you mean 'max_epochs'?" in lines[0]
    assert "Traceback" not in result.stderr
    assert not db.exists()


def test_bad_data_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,nan,1\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(20)))
    study = write_study(tmp_path, family="dense")
    csv = 'source = "csv"\npath = "d.csv"\ntarget = "y"\ntask = "classification"'
    text = study.read_text().replace('source = "digits"', csv)
    study.write_text(text)
    db = tmp_path / "t.db"
    result = run_cli("run", str(study), "--storage", f"sqlite:///{db}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "column 'b'" in result.stderr and "NaN" in result.stderr
    assert not db.exists()


def test_recurrent_family_on_tabular_data_is_refused(tmp_path: Path) -> None:
    study = write_study(tmp_path)
    study.write_text(study.read_text().replace('source = "digits"', 'source = "breast_cancer"'))
    result = run_cli("run", str(study), "--storage", f"sqlite:///{tmp_path / 't.db'}")
    assert result.returncode == 2
    assert "model.family: got 'lstm' but data 'breast_cancer' is tabular" in result.stderr


@pytest.mark.slow
def test_spec_change_on_resume_is_refused_unless_allowed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    study = write_study(tmp_path, n_trials=1, epochs=2)
    assert run_cli("run", str(study), "--storage", url, "-q").returncode == 0
    changed = run_cli("run", str(study), "--storage", url, "--set", "search.units=[4, 8]")
    assert changed.returncode == 2
    assert "search.units" in changed.stderr and "--allow-spec-change" in changed.stderr
    allowed = run_cli("run", str(study), "--storage", url, "--set", "search.units=[4, 8]", "--allow-spec-change", "-q")
    assert allowed.returncode == 0, allowed.stderr
    import optuna

    attrs = optuna.load_study(study_name="tiny", storage=url).user_attrs
    assert "search.units" in attrs["sweep:spec_changes"][0]["changed"][0]


@pytest.mark.slow
def test_diverging_trial_fails_with_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'div.db'}"
    study = write_study(tmp_path, name="div", n_trials=2, family="dense", epochs=3, extra="")
    text = study.read_text()
    text = text.replace('source = "digits"', 'source = "diabetes"')
    text = text.replace('learning_rate = { low = 1e-3, high = 3e-2, log = true }', "learning_rate = 10.0")
    text = text.replace('optimizer = ["adam", "rmsprop", "nadam", "sgd"]', 'optimizer = "sgd"')
    text = text.replace('activation = ["tanh", "relu"]', 'activation = "elu"')
    text = text.replace("n_layers = { low = 1, high = 2 }", "n_layers = 2")
    text = text.replace("units = { low = 4, high = 12 }", "units = 12")
    text = text.replace("dropout = { low = 0.0, high = 0.3 }", "dropout = 0.0")
    text = text.replace("l2 = { low = 1e-6, high = 1e-3, log = true }", "l2 = 0.0")
    study.write_text(text)
    result = run_cli("run", str(study), "--storage", url)
    assert result.returncode == 0, result.stderr
    trials = _read_study(url, "div")
    assert len(trials) == 2
    for t in trials:
        assert t["state"] == "FAIL"
        assert t["attrs"]["fail_reason"].startswith("diverged: non-finite loss")
        assert t["attrs"]["diagnosis"] == "diverged" and t["attrs"]["score"] is None
    ranked = json.loads(run_cli("rank", "div", "--storage", url, "--all", "--format", "json").stdout)
    assert [r["diagnosis"] for r in ranked] == ["diverged", "diverged"]


@pytest.mark.slow
def test_sigterm_marks_the_running_trial_interrupted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = write_study(tmp_path, name="sig", n_trials=50, epochs=400)
    study.write_text(study.read_text().replace("patience = 3", "patience = 0"))  # the signal lands mid-trial
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("SWEEP_STORAGE", None)
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study), "--storage", url],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import optuna
    from sqlalchemy.exc import OperationalError

    def training() -> bool:  # a trial has reported an epoch: the signal lands mid-trial
        trials = optuna.load_study(study_name="sig", storage=url).trials
        return any(t.state.name == "RUNNING" and t.intermediate_values for t in trials)

    # Until sweep run has created the study (KeyError) or while it holds the new file's lock.
    wait_for(training, timeout=120, what="a trial to train", ignore=(KeyError, OperationalError))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    trials = optuna.load_study(study_name="sig", storage=url).trials
    assert not [t for t in trials if t.state.name == "RUNNING"]
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].state.name == "FAIL"
    assert "Traceback" not in stderr


def test_timeout_stops_starting_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'to.db'}"
    study = write_study(tmp_path, name="timed", n_trials=50, epochs=2)
    started = time.time()
    result = run_cli("run", str(study), "--storage", url, "--timeout", "2s", "-q")
    assert result.returncode == 0, result.stderr
    import optuna

    trials = optuna.load_study(study_name="timed", storage=url).trials
    assert len(trials) < 50
    # No trial starts after the deadline (2 s after sweep run read its arguments; 10 s of slack
    # for the interpreter's start), and the run ends once the trials under way have finished.
    assert all(t.datetime_start is not None and t.datetime_start.timestamp() < started + 12 for t in trials)
    last_end = max((t.datetime_complete.timestamp() for t in trials if t.datetime_complete), default=started)
    assert time.time() - max(last_end, started + 2) < 30
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert "of 50 trials done" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--storage", "sqlite:///:memory:"],
         "error: --storage: got 'sqlite:///:memory:'; an in-memory SQLite database cannot be shared"),
        (["--storage", "sqlite:///{tmp}"], "error: --storage: '{tmp}' is a folder; allowed: the path of a SQLite file"),
        (["--n-trials", "0"], "error: Invalid value for '--n-trials'"),
        (["--set", "training.max_epochs=1e3"], "training.max_epochs: got 1000.0; allowed: an integer"),
        (["--set", "dashboard.notes=off"], "dashboard.notes: got 'off'; allowed: true or false"),
    ],
)  # fmt: skip
def test_a_user_mistake_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    study = write_study(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli("run", str(study), *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert message.replace("{tmp}", str(tmp_path)) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "sweep.db").exists()


def test_a_wrong_type_in_a_study_file_exits_2(tmp_path: Path) -> None:
    study = write_study(tmp_path)
    study.write_text(study.read_text().replace("max_epochs = 3", 'max_epochs = "3"'))
    result = run_cli("run", str(study), "--storage", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("training.max_epochs: got '3'; allowed: an integer")
    assert not (tmp_path / "x.db").exists()


def test_the_eta_counts_from_this_runs_pace() -> None:
    from sweep.cli import eta_seconds

    assert eta_seconds(done=0, elapsed=30.0, remaining=10) is None  # nothing to judge the pace by yet
    assert eta_seconds(done=4, elapsed=40.0, remaining=6) == pytest.approx(60.0)
    assert eta_seconds(done=3, elapsed=30.0, remaining=0) == 0.0


def _stored(url: str, name: str) -> tuple[dict, list[str]]:
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    return study.user_attrs, [t.state.name for t in study.get_trials()]


@pytest.mark.parametrize("command", [["create"], ["run", "--create-only"]], ids=["create", "run-create-only"])
def test_create_records_the_study_without_training_and_refuses_drift(tmp_path: Path, command: list[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    study = cheap_study(tmp_path)
    made = run_cli(*command, str(study), "--storage", url)
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"study cheap created on {url} (target 4 trials); start workers with: sweep worker cheap\n"
    attrs, states = _stored(url, "cheap")
    assert states == [] and attrs[records.TARGET] == 4 and attrs[records.SPEC]["study"]["name"] == "cheap"

    again = run_cli(*command, str(study), "--storage", url, "--n-trials", "6")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"study cheap exists on {url} (0 of 6 done); spec unchanged\n"
    attrs, states = _stored(url, "cheap")
    assert states == [] and attrs[records.TARGET] == 6

    drift = run_cli(*command, str(study), "--storage", url, "--set", "search.units=[4, 8]")
    assert drift.returncode == 2
    assert drift.stderr.count("\n") == 1 and "Traceback" not in drift.stderr, drift.stderr
    assert drift.stderr.startswith("error: study 'cheap' exists with a different spec: search.units (")
    assert "--allow-spec-change" in drift.stderr
    assert _stored(url, "cheap") == (attrs, states)  # nothing written


def test_create_only_takes_no_workers(tmp_path: Path) -> None:
    result = run_cli("run", str(cheap_study(tmp_path)), "--storage", f"sqlite:///{tmp_path / 'c.db'}",
                     "--create-only", "--workers", "2")
    assert result.returncode == 2
    assert result.stderr == "error: --workers: got '2'; --create-only starts no workers, so it takes no --workers\n"
    assert not (tmp_path / "c.db").exists()


def test_create_does_not_import_tensorflow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    code = (
        "import sys; from sweep.cli import main\n"
        f"sys.argv = ['sweep', 'create', {str(cheap_study(tmp_path))!r}, '--storage', {url!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "study cheap created" in done.stdout


def test_a_worker_started_before_the_study_joins_it_once_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"  # no file yet: the worker waits for it too
    study = cheap_study(tmp_path, n_trials=2)
    env = {**os.environ, "COLUMNS": "200", "SWEEP_STORAGE": url}
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "sweep", "worker", "cheap", "--wait", "60s", "-q"],
                                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        waiting = "waiting up to 1m for study 'cheap'"
        wait_for(lambda: waiting in log.read_text(), timeout=30, what="the worker to wait")
        made = run_cli("create", str(study), env={"SWEEP_STORAGE": url})
        assert made.returncode == 0, made.stderr
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = log.read_text().splitlines()
    assert lines[0] == f"waiting up to 1m for study 'cheap' on {url} (its SQLite file does not exist yet)"
    assert re.fullmatch(r"study 'cheap' found after \d+ s", lines[1]), lines
    assert _stored(url, "cheap")[1] == ["COMPLETE", "COMPLETE"]


def test_a_worker_waiting_for_a_missing_study_gives_up_with_the_usual_error(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'm.db'}"
    optuna.create_study(study_name="other", storage=url)
    at_once = run_cli("worker", "cheap", "--storage", url)
    assert at_once.returncode == 2
    assert at_once.stderr == f"error: study 'cheap' not found in {url}; studies there: other\n"
    started = time.monotonic()
    waited = run_cli("worker", "cheap", "--storage", url, "--wait", "2s")
    assert 2 <= time.monotonic() - started < 20
    assert waited.returncode == 2
    assert waited.stderr.splitlines() == [
        f"waiting up to 2s for study 'cheap' on {url} (it does not exist yet)", at_once.stderr.strip()
    ]


@pytest.mark.parametrize("value", ["10x", "0", "1h30m"])
def test_a_bad_wait_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    result = run_cli("worker", "cheap", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--wait", value)
    assert result.returncode == 2
    reason = "a time limit must be > 0" if value == "0" else "allowed: seconds or a duration like '90m', '2h', '1d'"
    assert result.stderr == f"error: --wait: got {value!r}; {reason}\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_wait(tmp_path: Path, signum: int) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("SWEEP_STORAGE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", "worker", "cheap", "--storage", f"sqlite:///{tmp_path / 'n.db'}",
         "--wait", "10m"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("waiting up to 10m for study 'cheap'")
    proc.send_signal(signum)
    _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum
    name = signal.Signals(signum).name
    assert rest == f"interrupted by {name} while waiting for study 'cheap'\n"


def test_dashboard_finds_the_stored_artifact_folder_without_reading_any_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sweep dashboard --storage URL`` starts in seconds on a study of 100,000 trials: it reads the studies only."""
    import optuna

    from sweep.cli import _stored_artifacts
    from sweep.runner import prepare_study
    from sweep.spec import load_spec

    url = f"sqlite:///{tmp_path / 'd.db'}"
    folder = tmp_path / "curves"
    spec = load_spec(write_study(tmp_path, extra=f'\n[dashboard]\nartifacts = "{folder}"\n'))
    study, _ = prepare_study(spec, url=url)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))

    def no_trials(*args: object, **kwargs: object) -> None:
        raise AssertionError("read the trials")

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_trials", no_trials)
    assert _stored_artifacts(url) == str(folder)
