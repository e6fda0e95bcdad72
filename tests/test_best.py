"""What a user takes home from ``sweep best``: a model of the raw inputs, a verdict, and ``sweep predict``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sweep.retrain import verdict
from tests.helpers import run_cli, write_study

# Loads the model with plain Keras (no sweep import, no custom objects) and scores raw inputs.
PLAIN_KERAS = """
import json, sys
import numpy as np
import keras
model = keras.models.load_model(sys.argv[1], compile=False)
arrays = np.load(sys.argv[2])
p = np.asarray(model.predict(arrays["X"], verbose=0), dtype=np.float64)
y = arrays["y"]
loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0))))
print(json.dumps({"loss": loss, "accuracy": float(np.mean(p.argmax(axis=1) == y))}))
"""


def test_verdict_rule() -> None:
    assert verdict(1.0, 1.05, 0.1) == "held up"
    assert verdict(1.0, 0.9, 0.1) == "held up"  # the boundary holds up
    assert verdict(1.0, 1.2, 0.1) == "worse than predicted"
    assert verdict(1.0, 0.8, 0.1) == "better than predicted"
    assert verdict(None, 0.8, 0.1) == "no prediction"
    assert verdict(1.0, float("nan"), 0.1) == "no prediction"


@pytest.mark.slow
def test_the_saved_winner_works_on_raw_data_in_plain_keras_and_through_sweep_predict(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    study = write_study(tmp_path, name="winner", n_trials=2, epochs=3)
    assert run_cli("run", str(study), "--storage", url, "-q").returncode == 0
    best = run_cli("best", "winner", "--storage", url, "--retrain-seeds", "2", "--out", str(tmp_path / "out"),
                   "--format", "json")  # fmt: skip
    assert best.returncode == 0, best.stderr
    result = json.loads(best.stdout)
    assert result["verdict"] in ("held up", "worse than predicted", "better than predicted")
    config = json.loads(Path(result["config_path"]).read_text())
    assert config["verdict"]["verdict"] == result["verdict"]
    reported = config["saved_model"]["valid"]  # the trained model on the scaled validation rows

    # The raw validation rows of the split the model was trained on, unscaled.
    from sweep.data import load_dataset, make_splits

    digits = load_dataset(source="digits")
    split = config["saved_model"]["split"]
    (s,) = make_splits(digits, n_splits=1, validation_fraction=split["validation_fraction"], seed=split["seed"])
    raw = tmp_path / "valid.npz"
    np.savez(raw, X=digits.X[s.valid], y=digits.y[s.valid])
    assert float(np.abs(digits.X[s.valid]).max()) > 10  # raw pixel counts (0..16), not standardised

    plain = subprocess.run([sys.executable, "-c", PLAIN_KERAS, result["model_path"], str(raw)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    scored = json.loads(plain.stdout.strip().splitlines()[-1])
    assert scored["loss"] == pytest.approx(reported["loss"], rel=0.01)
    assert scored["accuracy"] == pytest.approx(reported["accuracy"], rel=0.01)

    predicted = run_cli("predict", result["model_path"], "--data", str(raw), "--out", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.strip() == f"{len(s.valid)} predictions written to {tmp_path / 'p.csv'}"
    with (tmp_path / "p.csv").open() as f:
        rows = list(csv.DictReader(f))
    labels = [str(c) for c in digits.classes or ()]
    hits = sum(row["prediction"] == labels[int(y)] for row, y in zip(rows, digits.y[s.valid], strict=True))
    assert hits / len(rows) == pytest.approx(reported["accuracy"], rel=0.01)


@pytest.mark.slow
def test_an_exported_regression_model_takes_raw_padded_sequences_and_answers_in_raw_units() -> None:
    from sweep.data import Dataset, Split, Task, prepare
    from sweep.model import Head, ModelShape, build_model, export_model
    from sweep.space import Hyperparams
    from sweep.train import import_tensorflow

    import_tensorflow()
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(40, 6, 2)) * 50 + 300).astype(np.float32)
    lengths = rng.integers(2, 7, size=40).astype(np.int64)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0  # post-padded with PAD_VALUE
    y = (x[:, 0, 0] * 3 + 1000).astype(np.float32)
    ds = Dataset(name="t", task=Task.REGRESSION, X=x, y=y, lengths=lengths, classes=None, time_ordered=False)
    data = prepare(ds, Split(train=np.arange(30), valid=np.arange(30, 40)))
    shape = ModelShape(input_shape=(6, 2), head=Head.REGRESSION, n_outputs=1, masked=True)
    params = Hyperparams.from_params({"n_layers": 1, "units": 4, "activation": "tanh", "learning_rate": 1e-2,
                                      "optimizer": "adam", "batch_size": 8, "dropout": 0.0, "l2": 1e-6})  # fmt: skip
    trained = build_model(params, family="lstm", shape=shape)
    trained.fit(data.x_train, data.y_train, epochs=1, verbose=0)
    exported = export_model(trained, shape=shape, prepared=data)
    expected = trained.predict(data.x_valid, verbose=0).reshape(-1) * data.y_scale + data.y_mean
    got = exported.predict(x[30:], verbose=0).reshape(-1)
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-2), (got, expected)
    assert abs(float(np.mean(got)) - 1900) < 1000  # raw units (about 1,900), not standardised ones


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "--data: cannot read {f} as .npz: "),  # an empty file
        (b"not a zip archive", "--data: cannot read {f} as .npz: "),
    ],
)
def test_unreadable_inputs_are_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    from sweep.errors import UserError
    from sweep.predict import read_inputs

    f = tmp_path / "x.npz"
    f.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_inputs(f, {}, (8, 8))
    assert str(info.value).startswith(message.format(f=f)) and "\n" not in str(info.value)


def test_csv_columns_that_do_not_fit_the_model_are_one_line(tmp_path: Path) -> None:
    from sweep.errors import UserError
    from sweep.predict import read_inputs

    f = tmp_path / "x.csv"
    f.write_text("a,b,y\n1,2,0\n3,4,1\n")
    config = {"data": {"source": "csv", "target": "y"}}
    with pytest.raises(UserError, match=r"has shape \[2, 2\]; the model takes \[rows, 3\]"):
        read_inputs(f, config, (3,))
    assert read_inputs(f, config, (2,)).tolist() == [[1.0, 2.0], [3.0, 4.0]]
