"""``sweep export``: TensorBoard event files and MLflow runs, read back with each library's own reader.

Most tests export a study of hand-made trials (no training, as tests/test_report.py makes them);
one sweeps a tiny real study through the CLI and exports it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweep import records
from sweep.errors import StudyNotFoundError, UserError
from sweep.export import EVENTS_FILE, export_mlflow, export_tensorboard
from sweep.report import rank
from tests.helpers import cheap_study, run_cli
from tests.test_report import CASES, make_study

# make_study's CASES: trials 0-3 complete, 4 pruned, 5 failed; two repeats of six epochs each. Then
# 6 is running and 7 was pruned before it stored a curve: neither is exported, nor is 5.
EXPORTED = [0, 1, 2, 3, 4]

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # in MLflow's store


@pytest.fixture
def study_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    study, _ = make_study(url, tmp_path, CASES)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    assert [t.state.name for t in study.get_trials()][-2:] == ["RUNNING", "PRUNED"]
    return url


def stored_curves(url: str, study: str) -> dict[int, dict[str, Any]]:
    """Each trial's stored curves, read through Optuna (not through the code under test)."""
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    return {t.number: records.trial_attr(t, records.CURVES) for t in trials if records.trial_attr(t, records.CURVES)}


def tb_run(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, Any], dict[str, str]]:
    """One TensorBoard run as EventAccumulator reads it: scalars by tag, the HParams session's values, texts."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(folder), size_guidance=ea.STORE_EVERYTHING_SIZE_GUIDANCE)
    acc.Reload()
    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: dict[str, str] = {}
    for tag in acc.Tags()["tensors"]:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        events = acc.Tensors(tag)
        if plugin == "scalars":
            scalars[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events]
        elif plugin == "text":
            texts[tag] = tensor_util.make_ndarray(events[-1].tensor_proto).item().decode()
    hparams: dict[str, Any] = {}
    if metadata.SESSION_START_INFO_TAG in acc.summary_metadata:
        content = acc.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    return scalars, hparams, texts


def epochs(curve: list[float | None]) -> list[tuple[int, float]]:
    return [(i + 1, v) for i, v in enumerate(records.expand(curve))]


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_writes_each_repeat_as_a_run_and_each_trial_as_an_hparams_session(
    study_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "tb"
    assert export_tensorboard("ranked", url=study_url, directory=out) == len(EXPORTED)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"trial-{n:04d}" for n in EXPORTED]
    curves = stored_curves(study_url, "ranked")
    ranked = {r.number: r for r in rank("ranked", url=study_url, include_all=True)}
    for n in EXPORTED:
        for r in range(2):
            scalars, _, _ = tb_run(out / f"trial-{n:04d}" / f"repeat-{r}")
            assert set(scalars) == {"loss", "val_loss"}
            for key in ("loss", "val_loss"):
                assert scalars[key] == [(e, pytest.approx(v, rel=1e-6)) for e, v in epochs(curves[n][key][r])]
        scalars, hparams, texts = tb_run(out / f"trial-{n:04d}")
        row = ranked[n]
        assert hparams == {**{k: pytest.approx(v) for k, v in row.params.items()},
                           "diagnosis": row.diagnosis, "state": row.state}  # fmt: skip
        for key in ("score", "tail_mean", "tail_std"):
            assert scalars[key] == [(0, pytest.approx(getattr(row, key), rel=1e-6))]
        assert texts["hint"] == f"**{row.diagnosis}**: {row.hint}"
    assert tb_run(out / "trial-0004")[1]["state"] == "PRUNED"
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    top = ea.EventAccumulator(str(out))
    top.Reload()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        top.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG]
    ).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"score", "tail_mean", "tail_std"}
    assert {h.name for h in experiment.hparam_infos} >= {"learning_rate", "diagnosis", "state"}


def test_tensorboard_export_again_rewrites_each_trial_and_refuses_a_folder_of_something_else(
    study_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "tb"
    export_tensorboard("ranked", url=study_url, directory=out)
    (out / "trial-0000" / "repeat-7").mkdir()
    export_tensorboard("ranked", url=study_url, directory=out)
    assert sorted(p.name for p in (out / "trial-0000").iterdir()) == [EVENTS_FILE, "repeat-0", "repeat-1"]
    assert sorted(p.name for p in (out / "trial-0000" / "repeat-0").iterdir()) == [EVENTS_FILE]
    assert [e for e, _ in tb_run(out / "trial-0000" / "repeat-0")[0]["val_loss"]] == [1, 2, 3, 4, 5, 6]

    (tmp_path / "other").mkdir()
    make_study(study_url, tmp_path / "other", CASES[:1], name="other")
    with pytest.raises(UserError, match=r"holds the export of study 'ranked', not 'other'"):
        export_tensorboard("other", url=study_url, directory=out)
    foreign = tmp_path / "logs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty and holds no sweep export"):
        export_tensorboard("ranked", url=study_url, directory=foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_tensorboard_export_imports_no_tensorflow(study_url: str, tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from sweep.export import export_tensorboard; "
        f"export_tensorboard('ranked', url={study_url!r}, directory=Path({str(tmp_path / 'tb')!r})); "
        "print('tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# --------------------------------------------------------------------------- MLflow


def mlflow_runs(uri: str, experiment: str) -> dict[int, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    numbers = [int(r.data.tags["sweep.trial"]) for r in runs]
    assert len(numbers) == len(set(numbers)), "a trial was logged twice"
    return {int(r.data.tags["sweep.trial"]): r for r in runs}


def history(uri: str, run: Any, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, key))


def test_mlflow_logs_one_run_per_trial_with_curves_scores_tags_and_image_and_never_twice(
    study_url: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert export_mlflow("ranked", url=study_url, tracking_uri=uri) == len(EXPORTED)
    runs = mlflow_runs(uri, "ranked")
    assert sorted(runs) == EXPORTED
    curves = stored_curves(study_url, "ranked")
    ranked = {r.number: r for r in rank("ranked", url=study_url, include_all=True)}
    client = MlflowClient(tracking_uri=uri)
    for n, run in runs.items():
        row = ranked[n]
        assert run.info.run_name == f"trial-{n:04d}"
        assert run.data.params == {k: str(v) for k, v in row.params.items()}
        assert history(uri, run, "val_loss") == epochs(curves[n]["val_loss"][0])
        assert history(uri, run, "repeat_1/val_loss") == epochs(curves[n]["val_loss"][1])
        assert history(uri, run, "repeat_1/loss") == epochs(curves[n]["loss"][1])
        for key in ("score", "tail_mean", "tail_std"):
            assert run.data.metrics[key] == pytest.approx(getattr(row, key))
        tags = run.data.tags
        assert (tags["sweep.study"], tags["sweep.state"]) == ("ranked", row.state)
        assert (tags["sweep.diagnosis"], tags["sweep.hint"]) == (row.diagnosis, row.hint)
        assert run.info.status == ("FINISHED" if row.state == "COMPLETE" else "KILLED")
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"learning-curves-trial-{n:04d}.png"]
    assert (tmp_path / "mlartifacts").is_dir()  # beside the tracking file, not in the current folder

    # Again, after a tag went stale and an export stopped half-way through trial 3 (its run never ended):
    # no new run but trial 3's, no point logged twice, the tag brought up to date.
    client.set_tag(runs[2].info.run_id, "sweep.diagnosis", "stale")
    client.update_run(runs[3].info.run_id, status="RUNNING")
    assert export_mlflow("ranked", url=study_url, tracking_uri=uri) == len(EXPORTED)
    again = mlflow_runs(uri, "ranked")
    same = [n for n in EXPORTED if again[n].info.run_id == runs[n].info.run_id]
    assert same == [0, 1, 2, 4]
    assert again[2].data.tags["sweep.diagnosis"] == ranked[2].diagnosis
    assert (again[3].info.status, history(uri, again[3], "val_loss")) == ("FINISHED", epochs(curves[3]["val_loss"][0]))
    assert history(uri, again[0], "val_loss") == epochs(curves[0]["val_loss"][0])
    assert len(client.list_artifacts(again[2].info.run_id)) == 1

    assert export_mlflow("ranked", url=study_url, tracking_uri=uri, experiment="shared") == len(EXPORTED)
    assert sorted(mlflow_runs(uri, "shared")) == EXPORTED
    assert sorted(mlflow_runs(uri, "ranked")) == EXPORTED


# --------------------------------------------------------------------------- errors and the CLI


@pytest.mark.parametrize(("module", "call"), [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_library_names_the_extra(study_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           module: str, call: str) -> None:  # fmt: skip
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(UserError, match=rf"^--{call} needs the {module} package.*pip install 'sweep\[export\]'$"):
        if call == "mlflow":
            export_mlflow("ranked", url=study_url, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
        else:
            export_tensorboard("ranked", url=study_url, directory=tmp_path / "tb")


def test_a_study_that_does_not_exist(study_url: str, tmp_path: Path) -> None:
    with pytest.raises(StudyNotFoundError):
        export_tensorboard("nope", url=study_url, directory=tmp_path / "tb")
    assert not (tmp_path / "tb").exists()
    result = run_cli("export", "nope", "--storage", study_url, "--tensorboard", str(tmp_path / "tb"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: study 'nope' not found in {study_url}; studies there: ranked"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: export: give --tensorboard DIR, --mlflow URI, or both"),
        (["--tensorboard", "tb", "--experiment", "x"],
         "error: --experiment: names an MLflow experiment; give --mlflow URI too"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("export", "ranked", "--storage", f"sqlite:///{tmp_path / 'x.db'}", *args, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr.strip()) == (2, "", message)


def test_export_has_help() -> None:
    result = run_cli("export", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--tensorboard", "--mlflow", "--experiment", "--storage"):
        assert option in result.stdout


@pytest.mark.slow
def test_a_real_sweep_exported_through_the_cli(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    study = cheap_study(tmp_path, name="real", n_trials=2, epochs=3)  # a dense model on a small table, one repeat
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    ran = run_cli("run", str(study), "--storage", url, "-q")
    assert ran.returncode == 0, ran.stderr
    tb, uri = tmp_path / "tb", f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("export", "real", "--storage", url, "--tensorboard", str(tb), "--mlflow", uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"2 trials of real written to {tb} (view: tensorboard --logdir {tb})",
        f"2 trials of real logged to MLflow experiment 'real' at {uri} (view: mlflow ui --backend-store-uri {uri})",
    ]
    trials = optuna.load_study(study_name="real", storage=url).get_trials()
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    runs = mlflow_runs(uri, "real")
    assert sorted(runs) == [0, 1]
    ranked = {r.number: r for r in rank("real", url=url, include_all=True)}
    for t in trials:
        curves = records.trial_attr(t, records.CURVES)
        assert curves["metric_name"] == "accuracy"
        folder = tb / f"trial-{t.number:04d}"
        repeats = [f"repeat-{r}" for r in range(len(curves["val_loss"]))]
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == repeats
        scalars, _, _ = tb_run(folder / "repeat-0")
        assert scalars["val_loss"] == [(e, pytest.approx(v, rel=1e-6)) for e, v in epochs(curves["val_loss"][0])]
        assert scalars["val_accuracy"] == [(e, pytest.approx(v, rel=1e-6)) for e, v in epochs(curves["val_metric"][0])]
        row = ranked[t.number]
        assert tb_run(folder)[1] == {**{k: pytest.approx(v) for k, v in t.params.items()},
                                     "diagnosis": row.diagnosis, "state": t.state.name}  # fmt: skip
        run = runs[t.number]
        assert run.data.params == {k: str(v) for k, v in t.params.items()}
        assert history(uri, run, "val_loss") == epochs(curves["val_loss"][0])
        assert history(uri, run, "accuracy") == epochs(curves["metric"][0])
        assert (run.data.tags["sweep.diagnosis"], run.data.tags["sweep.hint"]) == (row.diagnosis, row.hint)
        artifacts = MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)
        assert [a.path for a in artifacts] == [f"learning-curves-trial-{t.number:04d}.png"]
        assert artifacts[0].file_size > 10_000
