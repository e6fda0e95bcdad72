from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sweep.data import (
    PAD_VALUE,
    Dataset,
    Split,
    Task,
    describe,
    fingerprint,
    load_dataset,
    make_splits,
    prepare,
)
from sweep.errors import DataError, UserError

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def regression_rows(n: int) -> list[str]:
    return [f"{i},{(i * 7) % 5},{2.0 * i + 1.0}" for i in range(n)]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(source="digits")


@pytest.fixture(scope="module")
def mackey() -> Dataset:
    return load_dataset(source="mackey_glass")


# --------------------------------------------------------------------------- built-ins


def test_digits_are_sequences_of_image_rows(digits: Dataset) -> None:
    assert digits.X.shape == (1797, 8, 8) and digits.X.dtype == np.float32
    assert digits.y.shape == (1797,) and digits.y.dtype == np.int64
    assert digits.task is Task.CLASSIFICATION and digits.n_classes == 10
    assert digits.classes == tuple(str(i) for i in range(10))
    assert digits.is_sequence and not digits.padded and not digits.time_ordered
    assert describe(digits) == "digits: 1797 sequences of 8 steps x 8 features, classification, 10 classes"


def test_tabular_builtins() -> None:
    cancer = load_dataset(source="breast_cancer")
    assert cancer.X.shape == (569, 30) and cancer.X.dtype == np.float32
    assert cancer.y.dtype == np.int64 and set(np.unique(cancer.y)) == {0, 1}
    assert cancer.n_classes == 2 and not cancer.is_sequence
    assert describe(cancer) == "breast_cancer: 569 rows x 30 features, classification, 2 classes"

    diabetes = load_dataset(source="diabetes", task="regression")
    assert diabetes.X.shape == (442, 10) and diabetes.y.shape == (442,)
    assert diabetes.y.dtype == np.float32 and diabetes.classes is None and diabetes.n_classes is None
    assert describe(diabetes) == "diabetes: 442 rows x 10 features, regression"


def test_mackey_glass_windows(mackey: Dataset) -> None:
    assert mackey.X.shape == (1500 - 24, 24, 1) and mackey.X.dtype == np.float32
    assert mackey.y.shape == (1476,) and mackey.y.dtype == np.float32
    assert mackey.task is Task.FORECAST and mackey.time_ordered and mackey.lengths is None
    assert describe(mackey) == "mackey_glass: 1476 sequences of 24 steps x 1 feature, forecast"
    assert np.array_equal(mackey.X[1:, -1, 0], mackey.y[:-1])  # horizon 1: the step after the window
    assert np.array_equal(mackey.X[1:, :-1], mackey.X[:-1, 1:])  # windows slide by one step
    assert 0.2 < mackey.X.min() < mackey.X.max() < 1.5 and mackey.X.std() > 0.1  # chaotic, not flat


def test_mackey_glass_horizon_and_length() -> None:
    ds = load_dataset(source="mackey_glass", length=200, lookback=10, horizon=5)
    assert ds.X.shape == (200 - 10 - 5 + 1, 10, 1)
    assert np.array_equal(ds.y[:-5], ds.X[5:, -1, 0])
    longer = load_dataset(source="mackey_glass", length=300, lookback=10, horizon=5)
    assert np.array_equal(longer.X[: len(ds.X)], ds.X)  # one series, just longer


def test_mackey_glass_is_deterministic_across_processes(mackey: Dataset) -> None:
    again = load_dataset(source="mackey_glass")
    assert fingerprint(again) == fingerprint(mackey)
    code = "from sweep.data import load_dataset, fingerprint; print(fingerprint(load_dataset(source='mackey_glass')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fingerprint(mackey)


def test_import_does_not_load_tensorflow_or_keras() -> None:
    code = (
        "import sys, sweep.data\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'sklearn', 'torch'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_changes_with_one_value_and_with_order(tmp_path: Path) -> None:
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.arange(20, dtype=np.float64)
    np.savez(tmp_path / "a.npz", X=x, y=y)
    base = fingerprint(load_dataset(source="npz", path="a.npz", task="regression", base_dir=tmp_path))
    assert len(base) == 64 and int(base, 16) >= 0
    assert fingerprint(load_dataset(source="npz", path=str(tmp_path / "a.npz"), task="regression")) == base

    changed = x.copy()
    changed[7, 1] += 0.5
    np.savez(tmp_path / "b.npz", X=changed, y=y)
    assert fingerprint(load_dataset(source="npz", path="b.npz", task="regression", base_dir=tmp_path)) != base

    np.savez(tmp_path / "c.npz", X=x[::-1], y=y[::-1])
    assert fingerprint(load_dataset(source="npz", path="c.npz", task="regression", base_dir=tmp_path)) != base

    assert fingerprint(load_dataset(source="npz", path="a.npz", task="forecast", base_dir=tmp_path)) != base


# --------------------------------------------------------------------------- splits


def assert_valid_split(split: Split, n: int) -> None:
    for part in (split.train, split.valid):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
        assert part.min() >= 0 and part.max() < n
    assert not set(split.train.tolist()) & set(split.valid.tolist())


def test_time_ordered_holdout_is_the_last_rows(mackey: Dataset) -> None:
    n = len(mackey.X)
    (split,) = make_splits(mackey, n_splits=1, validation_fraction=0.2, seed=3)
    assert_valid_split(split, n)
    assert split.train.max() < split.valid.min()
    assert len(split.valid) == math.ceil(0.2 * n) and split.valid[-1] == n - 1
    assert len(split.train) + len(split.valid) == n


def test_time_ordered_repeats_are_expanding_windows(mackey: Dataset) -> None:
    n = len(mackey.X)
    splits = make_splits(mackey, n_splits=3, validation_fraction=0.2, seed=0)
    block = round(0.2 * n)
    assert len(splits) == 3
    for position, split in enumerate(splits):
        assert_valid_split(split, n)
        assert split.train.max() < split.valid.min()
        assert np.array_equal(split.train, np.arange(split.valid[0]))  # everything before its block
        assert len(split.valid) == block
        if position:
            assert split.valid[-1] + 1 == splits[position - 1].valid[0]  # consecutive blocks, latest first
            assert len(split.train) < len(splits[position - 1].train)  # expanding, read backwards
    assert splits[0].valid[-1] == n - 1  # split 0 validates on the last block


def test_stratified_splits_keep_every_class(digits: Dataset) -> None:
    n = len(digits.X)
    for n_splits in (1, 3):
        splits = make_splits(digits, n_splits=n_splits, validation_fraction=0.2, seed=1)
        assert len(splits) == n_splits
        for split in splits:
            assert_valid_split(split, n)
            assert set(digits.y[split.train].tolist()) == set(range(10))
            assert set(digits.y[split.valid].tolist()) == set(range(10))
            share = np.bincount(digits.y[split.valid], minlength=10) / len(split.valid)
            assert np.allclose(share, np.bincount(digits.y, minlength=10) / n, atol=0.01)
    (holdout,) = make_splits(digits, n_splits=1, validation_fraction=0.2, seed=1)
    assert len(holdout.valid) == math.ceil(0.2 * n) and len(holdout.train) + len(holdout.valid) == n


def test_kfold_repeats_validate_on_different_rows(digits: Dataset) -> None:
    splits = make_splits(digits, n_splits=7, validation_fraction=0.25, seed=0)  # k = 4, then reshuffled
    valid_sets = [frozenset(split.valid.tolist()) for split in splits]
    assert len(set(valid_sets)) == 7
    first_round = valid_sets[:4]
    assert sum(len(v) for v in first_round) == len(digits.X)
    assert frozenset().union(*first_round) == frozenset(range(len(digits.X)))  # a partition
    assert [s.valid.tolist() for s in make_splits(digits, n_splits=7, validation_fraction=0.25, seed=0)] == [
        s.valid.tolist() for s in splits
    ]
    negative = make_splits(digits, n_splits=2, validation_fraction=0.25, seed=-5)  # any integer seed works
    assert len(negative) == 2 and len(negative[0].valid) + len(negative[0].train) == len(digits.X)
    other_seed = make_splits(digits, n_splits=1, validation_fraction=0.25, seed=1)[0]
    assert not np.array_equal(other_seed.valid, make_splits(digits, n_splits=1, validation_fraction=0.25)[0].valid)


def test_regression_splits_are_shuffled_kfold(tmp_path: Path) -> None:
    np.savez(tmp_path / "r.npz", X=np.arange(100.0).reshape(50, 2), y=np.arange(50.0))
    ds = load_dataset(source="npz", path="r.npz", task="regression", base_dir=tmp_path)
    assert not ds.time_ordered
    (holdout,) = make_splits(ds, n_splits=1, validation_fraction=0.2, seed=0)
    assert len(holdout.valid) == 10 and holdout.valid.max() - holdout.valid.min() > 10
    splits = make_splits(ds, n_splits=5, validation_fraction=0.2, seed=0)
    assert sorted(i for split in splits for i in split.valid.tolist()) == list(range(50))
    for split in splits:
        assert_valid_split(split, 50)
        assert len(split.train) + len(split.valid) == 50


# --------------------------------------------------------------------------- prepare


def test_scaler_uses_training_rows_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, (80, 3)), rng.normal(50.0, 9.0, (20, 3))])
    x[:, 2] = 4.0  # constant feature: scale 1
    y = np.concatenate([rng.normal(0.0, 1.0, 80), rng.normal(100.0, 1.0, 20)])
    np.savez(tmp_path / "ts.npz", X=x, y=y)
    ds = load_dataset(source="npz", path="ts.npz", task="forecast", base_dir=tmp_path)
    (split,) = make_splits(ds, n_splits=1, validation_fraction=0.2)
    prepared = prepare(ds, split)

    train = ds.X[split.train].astype(np.float64)
    assert np.allclose(prepared.x_mean, train.mean(axis=0), atol=1e-5)
    assert np.allclose(prepared.x_scale[:2], train.std(axis=0)[:2], rtol=1e-5)
    assert prepared.x_scale[2] == 1.0
    assert not np.allclose(prepared.x_mean[:2], ds.X.mean(axis=0)[:2], atol=1.0)  # all-rows mean differs
    assert np.allclose(prepared.x_train[:, :2].mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(prepared.x_train[:, :2].std(axis=0), 1.0, atol=1e-4)
    assert prepared.x_valid[:, 0].mean() > 10  # valid rows scaled with the training statistics
    assert np.all(prepared.x_train[:, 2] == 0.0)

    assert prepared.y_mean is not None and prepared.y_scale is not None
    assert prepared.y_mean == pytest.approx(ds.y[split.train].mean(), abs=1e-5)
    assert abs(float(prepared.y_mean) - float(ds.y.mean())) > 5
    assert np.allclose(prepared.y_train * prepared.y_scale + prepared.y_mean, ds.y[split.train], atol=1e-4)
    for array in (prepared.x_train, prepared.x_valid, prepared.y_train, prepared.y_valid):
        assert array.dtype == np.float32


def test_prepare_classification_sequences(digits: Dataset) -> None:
    (split,) = make_splits(digits, n_splits=1)
    prepared = prepare(digits, split)
    assert prepared.x_train.shape == (len(split.train), 8, 8) and prepared.x_valid.dtype == np.float32
    assert prepared.y_train.dtype == np.int64 and np.array_equal(prepared.y_valid, digits.y[split.valid])
    assert prepared.y_mean is None and prepared.y_scale is None
    steps = digits.X[split.train].reshape(-1, 8).astype(np.float64)
    assert np.allclose(prepared.x_mean, steps.mean(axis=0), atol=1e-4)
    assert prepared.x_mean.shape == (8,) and prepared.x_scale.shape == (8,)


# --------------------------------------------------------------------------- csv


def test_csv_regression_and_multi_target(tmp_path: Path) -> None:
    write_csv(tmp_path / "r.csv", "a,b,y", regression_rows(30))
    ds = load_dataset(source="csv", path="r.csv", target="y", task="regression", base_dir=tmp_path)
    assert ds.X.shape == (30, 2) and ds.y.shape == (30,) and not ds.time_ordered and ds.name == "r.csv"
    assert ds.y[3] == 7.0 and ds.X[3].tolist() == [3.0, 1.0]

    picked = load_dataset(source="csv", path="r.csv", target=["a", "y"], features=["b"], task="regression",
                          base_dir=tmp_path)
    assert picked.X.shape == (30, 1) and picked.y.shape == (30, 2) and picked.y.dtype == np.float32
    assert describe(picked) == "r.csv: 30 rows x 1 feature, regression, 2 targets"
    prepared = prepare(picked, make_splits(picked, n_splits=1)[0])
    assert prepared.y_mean is not None and prepared.y_mean.shape == (2,)


def test_csv_classification_labels(tmp_path: Path) -> None:
    labels = ["cat", "dog", "ant"] * 4
    write_csv(tmp_path / "s.csv", "x1,x2,label", [f"{i},{i % 3},{label}" for i, label in enumerate(labels)])
    ds = load_dataset(source="csv", path="s.csv", target="label", task="classification", base_dir=tmp_path)
    assert ds.classes == ("ant", "cat", "dog") and ds.y[:3].tolist() == [1, 2, 0] and ds.y.dtype == np.int64

    numbers = [9, 10, 2] * 4
    write_csv(tmp_path / "n.csv", "x,label", [f"{i},{n}" for i, n in enumerate(numbers)])
    ds = load_dataset(source="csv", path="n.csv", target="label", task="classification", base_dir=tmp_path)
    assert ds.classes == ("2", "9", "10") and ds.y[:3].tolist() == [1, 2, 0]  # numeric order


def test_csv_lookback_windows_a_series(tmp_path: Path) -> None:
    write_csv(tmp_path / "series.csv", "temp,load", [f"{i},{10 * i}" for i in range(20)])
    ds = load_dataset(source="csv", path="series.csv", target="load", lookback=5, horizon=2,
                      task="regression", base_dir=tmp_path)
    assert ds.X.shape == (20 - 5 - 2 + 1, 5, 2) and ds.time_ordered  # past target values are inputs
    assert ds.X[0, :, 0].tolist() == [0, 1, 2, 3, 4] and ds.y[0] == 10 * (4 + 2)
    only = load_dataset(source="csv", path="series.csv", target="load", features=["temp"], lookback=5,
                        task="forecast", base_dir=tmp_path)
    assert only.X.shape == (15, 5, 1) and only.y[0] == 50.0 and only.task is Task.FORECAST


def test_csv_groups_are_padded_sequences(tmp_path: Path) -> None:
    rows = [
        "s1,1,10,a", "s2,100,0,b", "s1,3,30,a", "s1,5,50,b", "s3,7,70,a",
        "s2,200,0,a", "s4,2,20,b", "s4,4,40,b", "s5,6,60,a", "s6,8,80,b",
        "s6,9,90,b", "s7,1,1,a", "s8,2,2,b", "s8,3,3,b",
    ]
    write_csv(tmp_path / "g.csv", "id,f1,f2,label", rows)
    ds = load_dataset(source="csv", path="g.csv", target="label", group="id", task="classification",
                      base_dir=tmp_path)
    assert ds.padded and ds.is_sequence and ds.X.shape == (8, 3, 2)
    assert ds.lengths is not None and ds.lengths.tolist() == [3, 2, 1, 2, 1, 2, 1, 2]
    assert ds.X[0].tolist() == [[1, 10], [3, 30], [5, 50]]
    assert ds.X[1].tolist() == [[100, 0], [200, 0], [PAD_VALUE, PAD_VALUE]]
    assert ds.y.tolist() == [1, 0, 0, 1, 0, 1, 0, 1]  # the last row's label
    assert describe(ds) == "g.csv: 8 sequences of up to 3 steps x 2 features, classification, 2 classes"

    split = Split(train=np.array([0, 1, 2, 3], dtype=np.int64), valid=np.array([4, 5, 6, 7], dtype=np.int64))
    prepared = prepare(ds, split)
    valid_steps = np.concatenate([ds.X[i, : ds.lengths[i]] for i in split.train]).astype(np.float64)
    assert np.allclose(prepared.x_mean, valid_steps.mean(axis=0), atol=1e-5)  # padding ignored
    assert np.allclose(prepared.x_scale, valid_steps.std(axis=0), rtol=1e-5)
    for x, rows in ((prepared.x_train, split.train), (prepared.x_valid, split.valid)):
        for out, row in enumerate(rows):
            assert np.all(x[out, ds.lengths[row]:] == PAD_VALUE)
            assert not np.any(np.all(x[out, : ds.lengths[row]] == PAD_VALUE, axis=-1))
    assert make_splits(ds, n_splits=1, validation_fraction=0.5)[0].valid.size == 4


# --------------------------------------------------------------------------- npz


def test_npz_two_and_three_dimensional(tmp_path: Path) -> None:
    np.savez(tmp_path / "t.npz", X=np.ones((12, 4), dtype=np.int32), y=np.array([3, 5] * 6))
    ds = load_dataset(source="npz", path="t.npz", task="classification", base_dir=tmp_path)
    assert ds.X.dtype == np.float32 and ds.X.shape == (12, 4) and ds.classes == ("3", "5")
    assert ds.y.tolist() == [0, 1] * 6 and not ds.time_ordered

    np.savez(tmp_path / "s.npz", X=np.zeros((10, 6, 2)), y=np.zeros((10, 3)))
    ds = load_dataset(source="npz", path="s.npz", task="forecast", base_dir=tmp_path)
    assert ds.X.shape == (10, 6, 2) and ds.y.shape == (10, 3) and ds.time_ordered and not ds.padded


def test_npz_lengths_ignore_and_clear_padding(tmp_path: Path) -> None:
    x = np.full((6, 4, 2), np.nan)
    lengths = np.array([4, 1, 2, 3, 4, 2])
    for row, length in enumerate(lengths):
        x[row, :length] = row + 1
    np.savez(tmp_path / "l.npz", X=x, y=np.arange(6.0), lengths=lengths)
    ds = load_dataset(source="npz", path="l.npz", task="regression", base_dir=tmp_path)
    assert ds.lengths is not None and ds.lengths.dtype == np.int64 and ds.lengths.tolist() == lengths.tolist()
    assert np.isfinite(ds.X).all() and ds.X[1, 1:].tolist() == [[PAD_VALUE, PAD_VALUE]] * 3
    assert describe(ds) == "l.npz: 6 sequences of up to 4 steps x 2 features, regression"


# --------------------------------------------------------------------------- errors


Build = Callable[[Path], Any]


def _csv(name: str, header: str, rows: list[str]) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        write_csv(tmp / name, header, rows)
        return name

    return make


def _npz(name: str, **arrays: Any) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        np.savez(tmp / name, **arrays)
        return name

    return make


def _load(make: Callable[[Path], str] | None = None, **kwargs: Any) -> Build:
    def run(tmp: Path) -> Any:
        if make is not None:
            kwargs.setdefault("path", make(tmp))
        return load_dataset(base_dir=tmp, **kwargs)

    return run


GOOD = _csv("x.csv", "a,b,c", regression_rows(20))
NAN_ROWS = regression_rows(20)
NAN_ROWS[10] = "10,nan,21"
INF_ROWS = regression_rows(20)
INF_ROWS[3] = "3,1,-inf"
TEXT_ROWS = regression_rows(20)
TEXT_ROWS[4] = "4,high,9"
EMPTY_ROWS = regression_rows(20)
EMPTY_ROWS[0] = ",1,1"

ERRORS: list[tuple[str, Build, str]] = [
    ("unknown source", _load(source="kaggle"),
     "data.source: 'kaggle' is not a source; allowed: digits, mackey_glass, breast_cancer, diabetes, csv, npz"),
    ("missing path", _load(source="csv", task="regression", target="c"),
     "data.path: required for source 'csv' (the file to read)"),
    ("missing file", _load(source="csv", path="missing.csv", task="regression", target="c"),
     "data.path: file 'missing.csv' not found"),
    ("missing task", _load(GOOD, source="csv", target="c"),
     "data.task: required for source 'csv'; allowed: classification, regression, forecast"),
    ("invalid task", _load(GOOD, source="npz", task="ranking"),
     "data.task: 'ranking' is not a task; allowed: classification, regression, forecast"),
    ("task of a built-in", _load(source="digits", task="regression"),
     "data.task: 'regression' does not fit source 'digits', which is 'classification'"),
    ("missing target", _load(GOOD, source="csv", task="regression"),
     "data.target: required for source 'csv'; name the column of 'x.csv' to predict"),
    ("unknown target", _load(GOOD, source="csv", task="regression", target="price"),
     "data.target: column 'price' is not in 'x.csv'; its columns are: a, b, c"),
    ("unknown feature", _load(GOOD, source="csv", task="regression", target="c", features=["a", "foo"]),
     "data.features: column 'foo' is not in 'x.csv'; its columns are: a, b, c"),
    ("target as feature", _load(GOOD, source="csv", task="regression", target="c", features=["a", "c"]),
     "data.features: column 'c' is the target; it cannot also be a feature (only with data.lookback, "
     "where past values are inputs)"),
    ("no header", _load(_csv("h.csv", "1,2,3", regression_rows(5)), source="csv", task="regression", target="c"),
     "data.target: column 'c' is not in 'h.csv'; its columns are: 1, 2, 3 "
     "(the first line looks like data: the file needs a header row)"),
    ("empty file", _load(_csv("e.csv", "", []), source="csv", task="regression", target="c"),
     "data.path: 'e.csv' is empty; it needs a header row naming the columns"),
    ("ragged row", _load(_csv("r.csv", "a,b,c", ["1,2,3", "4,5"]), source="csv", task="regression", target="c"),
     "data.path: 'r.csv' line 3 has 2 fields but the header has 3; every row must have one value per column"),
    ("non-numeric feature", _load(_csv("t.csv", "a,b,c", TEXT_ROWS), source="csv", task="regression", target="c"),
     "data.path: 't.csv' column 'b' row 6 is 'high', not a number; feature values must be numbers "
     "(encode the column as numbers or leave it out of data.features)"),
    ("NaN", _load(_csv("n.csv", "a,b,c", NAN_ROWS), source="csv", task="regression", target="c"),
     "data.path: 'n.csv' column 'b' row 12 is NaN; the data must be finite numbers (clean or impute it)"),
    ("inf target", _load(_csv("i.csv", "a,b,c", INF_ROWS), source="csv", task="regression", target="c"),
     "data.path: 'i.csv' column 'c' row 5 is -inf; the data must be finite numbers (clean or impute it)"),
    ("empty cell", _load(_csv("m.csv", "a,b,c", EMPTY_ROWS), source="csv", task="regression", target="c"),
     "data.path: 'm.csv' column 'a' row 2 is empty; the data must be finite numbers (clean or impute it)"),
    ("one class", _load(_csv("o.csv", "a,y", ["1,x", "2,x", "3,x"]), source="csv", task="classification",
                        target="y"),
     "data.target: column 'y' of 'o.csv' has only 1 class ('x'); classification needs at least 2"),
    ("lookback too long", _load(GOOD, source="csv", task="forecast", target="c", lookback=17),
     "data.lookback: 17 with horizon 1 leaves 3 windows from the 20 rows of 'x.csv'; need at least 4 "
     "(a shorter lookback or horizon, or more rows)"),
    ("lookback zero", _load(GOOD, source="csv", task="forecast", target="c", lookback=0),
     "data.lookback: 0 is not allowed; it must be an integer >= 1"),
    ("lookback for classification", _load(GOOD, source="csv", task="classification", target="c", lookback=3),
     "data.task: 'classification' cannot be used with data.lookback; allowed: regression, forecast"),
    ("lookback for digits", _load(source="digits", lookback=4),
     "data.lookback: not used by source 'digits'; only by csv and mackey_glass"),
    ("mackey_glass too short", _load(source="mackey_glass", length=26),
     "data.length: 26 points with lookback 24 and horizon 1 leave 2 windows; need at least 4 (length >= 28)"),
    ("horizon zero", _load(source="mackey_glass", horizon=0),
     "data.horizon: 0 is not allowed; it must be an integer >= 1"),
    ("mismatched npz", _load(_npz("x.npz", X=np.zeros((100, 3)), y=np.zeros(90)), source="npz", task="regression"),
     "data.path: 'x.npz' has 100 rows in 'X' but 90 in 'y'; they must match"),
    ("object npz", _load(_npz("o.npz", X=np.array([[1, "a"], [2, None]], dtype=object), y=np.zeros(2)),
                         source="npz", task="regression"),
     "data.path: 'o.npz' array 'X' holds Python objects (dtype object), which are not loaded for safety; "
     "save it as a numeric array"),
    ("string X npz", _load(_npz("s.npz", X=np.array([["a", "b"]]), y=np.zeros(1)), source="npz", task="regression"),
     "data.path: 's.npz' array 'X' has dtype <U1; it must be numeric (integers or floats)"),
    ("NaN npz", _load(_npz("n.npz", X=np.array([[1.0, 2.0], [np.nan, 3.0]]), y=np.zeros(2)), source="npz",
                      task="regression"),
     "data.path: 'n.npz' array 'X' is NaN at index (1, 0); the data must be finite numbers (clean or impute it)"),
    ("missing y", _load(_npz("k.npz", X=np.zeros((3, 2)), labels=np.zeros(3)), source="npz", task="regression"),
     "data.path: 'k.npz' has no array 'y'; it has: X, labels (it needs 'X', 'y' and optionally 'lengths')"),
    ("bad lengths", _load(_npz("l.npz", X=np.zeros((3, 4, 2)), y=np.zeros(3), lengths=np.array([1, 5, 2])),
                          source="npz", task="regression"),
     "data.path: 'l.npz' array 'lengths' is 5 at index 1; each length must be from 1 to 4 (the steps of 'X')"),
    ("not an npz", _load(GOOD, source="npz", task="regression"),
     "data.path: 'x.csv' is not a .npz file (a zip of arrays 'X' and 'y', as numpy.savez writes)"),
]


@pytest.mark.parametrize("build,expected", [pytest.param(b, m, id=i) for i, b, m in ERRORS])
def test_bad_input_raises_one_line_data_error(tmp_path: Path, build: Build, expected: str) -> None:
    with pytest.raises(DataError) as info:
        build(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected), message
    assert isinstance(info.value, UserError) and info.value.exit_code == 2


def _small(tmp: Path, n: int, *, task: str = "regression") -> Dataset:
    labels = [i % 2 for i in range(n)]
    np.savez(tmp / "small.npz", X=np.arange(2.0 * n).reshape(n, 2), y=np.array(labels))
    return load_dataset(source="npz", path="small.npz", task=task, base_dir=tmp)


SPLIT_ERRORS: list[tuple[str, int, str, dict[str, Any], str]] = [
    ("holdout too small", 3, "regression", {"n_splits": 1},
     "data: 3 rows are too few for a 0.2 validation split; need at least 2 training and 2 validation rows "
     "(per class for classification)"),
    ("forecast holdout too small", 3, "forecast", {"n_splits": 1, "validation_fraction": 0.5},
     "data: 3 rows are too few for a 0.5 validation split; need at least 2 training and 2 validation rows"),
    ("kfold too small", 9, "regression", {"n_splits": 3},
     "data: 9 rows are too few for 5-fold splits (validation_fraction 0.2); need at least 10 rows so that "
     "each fold has 2 validation rows"),
    ("stratified too small", 4, "classification", {"n_splits": 1, "validation_fraction": 0.2},
     "data: 4 rows are too few for a 0.2 validation split; need at least 2 training and 2 validation rows"),
    ("time series too short", 20, "forecast", {"n_splits": 5, "validation_fraction": 0.2},
     "data: 20 rows are too few for 5 time-ordered splits with validation blocks of 4 rows (0.2 of the rows) "
     "and at least 2 training rows; need at least 22 rows"),
    ("fraction one", 20, "regression", {"n_splits": 1, "validation_fraction": 1.0},
     "data.validation_fraction: 1.0 is not allowed; it must be a number between 0 and 1"),
    ("n_splits zero", 20, "regression", {"n_splits": 0},
     "n_splits: 0 is not allowed; it must be an integer >= 1"),
    ("seed not an integer", 20, "regression", {"n_splits": 1, "seed": 1.5},
     "seed: 1.5 is not allowed; it must be an integer"),
]


@pytest.mark.parametrize("n,task,kwargs,expected", [pytest.param(*case[1:], id=case[0]) for case in SPLIT_ERRORS])
def test_bad_splits_raise_data_error(tmp_path: Path, n: int, task: str, kwargs: dict[str, Any], expected: str) -> None:
    ds = _small(tmp_path, n, task=task)
    with pytest.raises(DataError) as info:
        make_splits(ds, **kwargs)
    assert "\n" not in str(info.value) and str(info.value).startswith(expected), str(info.value)


def test_rare_class_is_rejected_for_stratified_splits(tmp_path: Path) -> None:
    write_csv(tmp_path / "c.csv", "a,y", [f"{i},{'rare' if i == 0 else i % 2}" for i in range(20)])
    ds = load_dataset(source="csv", path="c.csv", target="y", task="classification", base_dir=tmp_path)
    assert ds.classes == ("0", "1", "rare")
    with pytest.raises(DataError, match=r"^data: class 'rare' has 1 row; every class needs at least 2 "):
        make_splits(ds, n_splits=1)


def test_holdout_needs_a_validation_row_per_class(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", X=np.arange(24.0).reshape(12, 2), y=np.array([0, 1, 2] * 4))
    ds = load_dataset(source="npz", path="k.npz", task="classification", base_dir=tmp_path)
    with pytest.raises(DataError) as info:
        make_splits(ds, n_splits=1, validation_fraction=0.1)
    assert str(info.value) == (
        "data: 12 rows are too few for a 0.1 validation split of 3 classes; it gives 10 training and 2 "
        "validation rows, and each part needs at least one row per class"
    )
    (split,) = make_splits(ds, n_splits=1, validation_fraction=0.25)
    assert set(ds.y[split.valid].tolist()) == {0, 1, 2}


def test_a_forecast_must_beat_the_last_value_as_well_as_the_mean(tmp_path: Path) -> None:
    """On a random walk the last value forecasts far better than the mean: it is the baseline to beat."""
    from sweep.data import baseline_loss, load_dataset, make_splits, prepare
    from sweep.stability import Diagnosis, summarize

    walk = np.cumsum(np.random.default_rng(5).normal(size=300)) + 50
    rows = "".join(f"2000-01-{i % 28 + 1:02d},{v:.4f},{i % 7}\n" for i, v in enumerate(walk))
    (tmp_path / "walk.csv").write_text("date,level,weekday\n" + rows)
    ds = load_dataset(source="csv", path=str(tmp_path / "walk.csv"), task="forecast", target="level",
                      features=["level"], lookback=5)  # fmt: skip
    assert ds.target_feature == 0
    (split,) = make_splits(ds, n_splits=1, validation_fraction=0.2)
    data = prepare(ds, split)
    # The two forecasts that learned nothing, computed here from the raw rows, in the trained-on units.
    target, last = ds.y[split.valid].astype(np.float64), ds.X[split.valid, -1, 0].astype(np.float64)
    scale, mean = float(data.y_scale), float(data.y_mean)  # type: ignore[arg-type]
    persistence = float((((target - last) / scale) ** 2).mean())
    train_mean = float((((target - ds.y[split.train].mean()) / scale) ** 2).mean())
    assert persistence < train_mean / 10
    assert baseline_loss(data) == pytest.approx(persistence, rel=1e-4)
    # A trial that ends no better than the last value has learned nothing, however far below the mean.
    flat = [persistence * 2, persistence * 1.2, *[persistence * 0.95] * 8]
    assert summarize([flat], baseline=baseline_loss(data)).diagnosis is Diagnosis.NOT_LEARNING
    assert summarize([flat], baseline=train_mean).diagnosis is not Diagnosis.NOT_LEARNING
    assert mean == pytest.approx(float(ds.y[split.train].mean()), rel=1e-5)
    # Without the target among the inputs there is no last value: the mean is the baseline.
    blind = load_dataset(source="csv", path=str(tmp_path / "walk.csv"), task="forecast", target="level",
                         features=["weekday"], lookback=5)  # fmt: skip
    assert blind.target_feature is None
    assert baseline_loss(prepare(blind, split)) == pytest.approx(train_mean, rel=1e-4)
