"""Your own model (``[model] builder``) and its own parameters (``[search.extra]``), end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweep.errors import SpecError
from sweep.spec import Choice, Fixed, Range, load_spec
from tests.helpers import ROOT, run_cli, trials_of

STUDIES = ROOT / "studies"

# Loads a saved model with plain Keras (no sweep import) and predicts on raw rows.
PLAIN_KERAS = """
import json, sys
import numpy as np
import keras
model = keras.models.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2])["X"]
p = np.asarray(model.predict(x, verbose=0), dtype=np.float64)
print(json.dumps({"shape": list(p.shape), "finite": bool(np.isfinite(p).all()), "p": p[:, 0].tolist()}))
"""

BAD = """
import keras

def raises(params, shape):
    raise ValueError("kernel_size 9 is longer than the window")

def not_a_model(params, shape):
    return "a model"

def wrong_output(params, shape):
    inputs = keras.Input(shape=shape.input_shape)
    return keras.Model(inputs, keras.layers.Dense(shape.n_outputs + 1)(inputs))
"""


def _example(tmp_path: Path, name: str, module: str) -> Path:
    """A copy of an example study and its builder, small enough for the suite."""
    shutil.copy(STUDIES / f"{module}.py", tmp_path / f"{module}.py")
    text = (STUDIES / f"{name}.toml").read_text()
    text = text.replace("n_trials = 20", "n_trials = 2").replace("max_epochs = 40", "max_epochs = 2")
    text = text.replace("repeats = 3", "repeats = 2").replace('path = "data/', f'path = "{STUDIES}/data/')
    study = tmp_path / f"{name}.toml"
    study.write_text(text)
    return study


def _bad_study(tmp_path: Path, function: str) -> Path:
    (tmp_path / "bad.py").write_text(BAD)
    text = (STUDIES / "residual-tabular.toml").read_text().replace("residual_mlp:build", f"bad:{function}")
    study = tmp_path / "bad.toml"
    study.write_text(text.replace('name = "residual-tabular"', 'name = "bad"').replace("max_epochs = 40",
                                                                                      "max_epochs = 2"))
    return study


# --------------------------------------------------------------------------- the study file


def test_extra_parameters_take_the_forms_of_the_eight(tmp_path: Path) -> None:
    spec = load_spec(STUDIES / "conv-lstm-series.toml")
    assert spec.model.builder == "conv_lstm:build" and spec.model.family is None
    assert spec.model.path == str(STUDIES.resolve())  # the builder is looked for beside the study file
    assert spec.search.extra == {"filters": Choice((8, 16, 32)), "kernel_size": Range(2, 6, integer=True)}
    study = tmp_path / "s.toml"
    study.write_text((STUDIES / "conv-lstm-series.toml").read_text().replace(
        "kernel_size = { low = 2, high = 6 }",
        'kernel_size = 3\nrate = { low = 1e-3, high = 1.0, log = true }\nhead = ["mean", "last"]\nbias = true',
    ).replace('path = "data/', f'path = "{STUDIES}/data/'))
    extra = load_spec(study).search.extra
    assert extra["kernel_size"] == Fixed(3) and extra["bias"] == Fixed(True)
    assert extra["rate"] == Range(1e-3, 1.0, integer=False, log=True)
    assert extra["head"] == Choice(("mean", "last"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("conv_lstm:build", "conv_lstm.build"), "model.builder: got 'conv_lstm.build'; allowed: 'module:function'"),
        (('builder = "conv_lstm:build"', 'builder = "conv_lstm:build"\nfamily = "lstm"'),
         "model.builder: give either family (lstm, gru, dense) or builder ('module:function'), not both"),
        (('builder = "conv_lstm:build"', ""), "model.family: give either family"),
        (("filters = [8, 16, 32]", "units = [8, 16]"), "search.extra.units: 'units' is one of the eight"),
        (("filters = [8, 16, 32]", "filters = []"), "search.extra.filters: got an empty list"),
        (("filters = [8, 16, 32]", "filters = { low = 8 }"), "search.extra.filters: got {'low': 8}; a range needs"),
        (("filters = [8, 16, 32]", "filters = { low = 32, high = 8 }"), "low must be <= high"),
        (("filters = [8, 16, 32]", 'filters = { low = "a", high = 8 }'), "a range's low and high are numbers"),
        (("filters = [8, 16, 32]", "filters = [8, 8]"), "choices must be distinct"),
        (("filters = [8, 16, 32]", "filters = [[8]]"), "search.extra.filters: got [8]; allowed: a number"),
    ],
)
def test_a_wrong_builder_or_extra_parameter_is_one_line_and_exit_2(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    study = tmp_path / "s.toml"
    study.write_text((STUDIES / "conv-lstm-series.toml").read_text().replace(*edit))
    with pytest.raises(SpecError) as refused:
        load_spec(study)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    result = run_cli("create", str(study), "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "s.db").exists()  # nothing written


def test_a_builder_that_is_not_there_is_refused_before_the_storage_is_touched(tmp_path: Path) -> None:
    study = tmp_path / "s.toml"
    study.write_text((STUDIES / "residual-tabular.toml").read_text().replace("residual_mlp:build", "nowhere:build"))
    result = run_cli("create", str(study), "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: model.builder: got 'nowhere:build' but no module named 'nowhere' "
        f"(looked in {tmp_path} and the Python path)"
    )
    assert not (tmp_path / "s.db").exists()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "module", "whole"), [("conv-lstm-series", "conv_lstm", True), ("residual-tabular", "residual_mlp", False)]
)
def test_an_example_builder_sweeps_ranks_and_saves_a_model_plain_keras_reads(
    tmp_path: Path, name: str, module: str, whole: bool
) -> None:
    """Both examples sweep and rank; one goes on through copy, best and plain Keras (the path is the same)."""
    study = _example(tmp_path, name, module)
    url = f"sqlite:///{tmp_path / 'b.db'}"
    run = run_cli("run", str(study), "--storage", url, "-q")
    assert run.returncode == 0, run.stderr
    trials = trials_of(url, name)
    extra = {"conv_lstm": {"filters", "kernel_size"}, "residual_mlp": {"width"}}[module]
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(extra <= set(t.params) and "n_layers" in t.params for t in trials)  # the eight and its own
    ranked = json.loads(run_cli("rank", name, "--storage", url, "--format", "json").stdout)
    by_number = {t.number: t for t in trials}
    assert all(r["params"] == by_number[r["number"]].params for r in ranked)  # extras shown with the eight
    if not whole:
        return
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    assert run_cli("copy", "--study", name, "--from", url, "--to", copy).returncode == 0
    copied = trials_of(copy, name)
    assert [(t.params, t.distributions) for t in copied] == [(t.params, t.distributions) for t in trials]
    fingerprints = [optuna.load_study(study_name=name, storage=u).user_attrs["sweep:builder_fingerprint"]
                    for u in (url, copy)]  # fmt: skip
    assert fingerprints[0] == fingerprints[1]

    best = run_cli("best", name, "--storage", url, "--retrain-seeds", "1", "--out", str(tmp_path / "out"),
                   "--format", "json")  # fmt: skip
    assert best.returncode == 0, best.stderr
    result = json.loads(best.stdout)
    config = json.loads(Path(result["config_path"]).read_text())
    assert config["model"]["builder"] == f"{module}:build"
    # Raw rows, as the data come: the scaling is inside the saved model.
    from sweep.data import data_kwargs, load_dataset

    dataset = load_dataset(**data_kwargs(load_spec(study).data))
    raw = tmp_path / "rows.npz"
    import numpy as np

    np.savez(raw, X=dataset.X[:16])
    plain = subprocess.run([sys.executable, "-c", PLAIN_KERAS, result["model_path"], str(raw)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-2000:]
    out = json.loads(plain.stdout.strip().splitlines()[-1])
    assert out["finite"] and out["shape"][0] == 16
    if module == "conv_lstm":  # a forecast in the data's own units (temperatures of about 10-20)
        assert 5 < float(np.median(out["p"])) < 25
    else:  # class probabilities
        assert out["shape"][1] == 2


@pytest.mark.parametrize(
    ("function", "what"),
    [
        ("raises", "raised ValueError: kernel_size 9 is longer than the window"),
        ("not_a_model", "returned str, not a keras.Model"),
        ("wrong_output", "its output has shape (3,); the task needs (2,): 2 class probabilities per sample"),
    ],
)
def test_what_a_broken_builder_did_is_said_in_one_line(tmp_path: Path, function: str, what: str) -> None:
    from sweep.builder import Builder, BuilderError
    from sweep.model import Head, ModelShape

    (tmp_path / "bad.py").write_text(BAD)
    builder = Builder(f"bad:{function}", str(tmp_path))
    with pytest.raises(BuilderError) as refused:
        builder.build({"units": 8, "width": 16}, ModelShape(input_shape=(30,), head=Head.CLASSIFICATION, n_outputs=2))
    message = str(refused.value)
    assert message.startswith(f"model.builder bad:{function}") and what in message, message
    assert message.endswith("(params: units=8, width=16)") and "\n" not in message
    assert ("bad.py" in refused.value.details) == (function == "raises")  # the traceback, kept for the trial


@pytest.mark.slow
def test_a_broken_builder_stops_the_sweep_with_one_line_and_keeps_the_traceback_on_its_trial(tmp_path: Path) -> None:
    study = _bad_study(tmp_path, "raises")
    url = f"sqlite:///{tmp_path / 'b.db'}"
    result = run_cli("run", str(study), "--storage", url, "-q")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: model.builder bad:raises raised ValueError: kernel_size 9") and "width=" in line
    (trial,) = trials_of(url, "bad")  # one trial, FAIL: nothing left RUNNING, no second attempt
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"].startswith("error: model.builder bad:raises")
    assert "Traceback" in trial.system_attrs["sweep:traceback"] and "bad.py" in trial.system_attrs["sweep:traceback"]


@pytest.mark.slow
def test_a_changed_builder_is_spec_drift_and_a_missing_one_stops_a_worker(tmp_path: Path) -> None:
    study = _example(tmp_path, "residual-tabular", "residual_mlp")
    url = f"sqlite:///{tmp_path / 'd.db'}"
    assert run_cli("create", str(study), "--storage", url).returncode == 0
    builder = tmp_path / "residual_mlp.py"
    builder.write_text(builder.read_text().replace('activation="softmax"', 'activation="softmax", use_bias=False'))
    refused = run_cli("create", str(study), "--storage", url)
    assert refused.returncode == 2 and "builder fingerprint" in refused.stderr
    assert "--allow-spec-change" in refused.stderr
    # A worker elsewhere, where the builder's file differs: one line, exit 2, before any trial.
    other = run_cli("worker", "residual-tabular", "--storage", url, "-q", cwd=tmp_path)
    assert other.returncode == 2
    assert "differs from the builder study 'residual-tabular' was created with" in other.stderr, other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    builder.unlink()  # and where it is missing altogether
    missing = run_cli("worker", "residual-tabular", "--storage", url, "-q", cwd=tmp_path)
    assert missing.returncode == 2 and "no module named 'residual_mlp'" in missing.stderr, missing.stderr
    assert trials_of(url, "residual-tabular") == []


def test_a_built_in_family_ignores_extra_parameters_with_one_warning(tmp_path: Path) -> None:
    text = (STUDIES / "residual-tabular.toml").read_text().replace('builder = "residual_mlp:build"', 'family = "dense"')
    study = tmp_path / "s.toml"
    study.write_text(text)
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = run_cli("create", str(study), "--storage", url)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["search.extra: width reach a model.builder only; model.family = 'dense' "
                                          "ignores them"]  # fmt: skip


def test_a_builder_on_variable_length_sequences_is_refused_for_now(tmp_path: Path) -> None:
    rows = "".join(f"g{i // 4},{i * 0.1},{i % 3}\n" for i in range(40))
    (tmp_path / "seq.csv").write_text("id,a,y\n" + rows)
    shutil.copy(STUDIES / "residual_mlp.py", tmp_path / "residual_mlp.py")
    text = (STUDIES / "residual-tabular.toml").read_text().replace(
        'source = "breast_cancer"', 'source = "csv"\npath = "seq.csv"\ntask = "regression"\ntarget = "y"\ngroup = "id"'
    )
    study = tmp_path / "s.toml"
    study.write_text(text)
    result = run_cli("create", str(study), "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert result.returncode == 2 and "a builder takes fixed-length samples for now" in result.stderr
    assert not (tmp_path / "s.db").exists()
