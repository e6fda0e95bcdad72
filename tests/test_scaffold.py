"""Study files guessed from data files: real CSV and NPZ files, loaded by the real spec and data code."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from sweep.data import Dataset, Task, data_kwargs, load_dataset, make_splits, prepare, repeat_seed
from sweep.errors import UserError
from sweep.model import Family, check_family, model_shape
from sweep.scaffold import Proposal, propose, render, write_study
from sweep.spec import StudySpec, load_spec
from tests.helpers import ROOT, run_cli

TEMPERATURE = ROOT / "studies" / "data" / "monthly-temperature.csv"
GUESSED_KEYS = ("target", "task", "features", "order_by", "lookback", "family")


def loaded(study: Path) -> tuple[StudySpec, Dataset]:
    """The spec and the data a run reads from ``study``, checked against the family and split as a run splits."""
    spec = load_spec(study)
    dataset = load_dataset(**data_kwargs(spec.data))
    assert spec.model.family is not None
    check_family(spec.model.family, model_shape(dataset), data_name=str(spec.data.path))
    splits = make_splits(
        dataset,
        n_splits=spec.training.repeats,
        validation_fraction=spec.data.validation_fraction,
        seed=repeat_seed(spec.study.seed, 0),
    )
    prepared = prepare(dataset, splits[0])
    assert np.isfinite(prepared.x_train).all() and np.isfinite(prepared.x_valid).all()
    return spec, dataset


def write_table(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def wine_csv(tmp_path: Path) -> Path:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    rows = [[str(bunch.target_names[t]), *x] for x, t in zip(bunch.data.tolist(), bunch.target.tolist(), strict=True)]
    return write_table(tmp_path / "wine.csv", ["class", *bunch.feature_names], rows)


@pytest.fixture
def diabetes_csv(tmp_path: Path) -> Path:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    rows = [[*x, t] for x, t in zip(bunch.data.tolist(), bunch.target.tolist(), strict=True)]
    return write_table(tmp_path / "diabetes.csv", [*bunch.feature_names, "progression"], rows)


@pytest.fixture
def digits_npz(tmp_path: Path) -> Path:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    path = tmp_path / "digits.npz"
    np.savez(path, X=bunch.images, y=bunch.target)
    return path


# --------------------------------------------------------------------------- guesses


def test_monthly_temperature_is_a_forecast_of_temperature_ordered_by_date(tmp_path: Path) -> None:
    proposal = propose(TEMPERATURE)
    assert proposal.source == "csv" and proposal.n_rows == 480
    assert proposal.target == "temperature" and "last column" in proposal.target_reason
    assert proposal.task is Task.FORECAST and "'date' holds dates" in proposal.task_reason
    assert proposal.order_by == "date"
    assert proposal.features == ("temperature",)
    assert "'station' (text)" in proposal.features_reason
    assert proposal.lookback == 24 and "monthly" in proposal.lookback_reason
    assert proposal.family in (Family.LSTM, Family.GRU)

    study = write_study(TEMPERATURE, out=tmp_path / "temperature.toml")
    spec, dataset = loaded(study)
    assert spec.study.name == "temperature"
    assert spec.data.source == "csv" and Path(str(spec.data.path)) == TEMPERATURE
    assert spec.data.task == "forecast" and spec.data.target == "temperature"
    assert spec.data.order_by == "date" and spec.data.lookback == 24 and spec.data.horizon == 1
    assert spec.data.features == ("temperature",)
    assert dataset.task is Task.FORECAST and dataset.time_ordered
    assert dataset.X.shape == (480 - 24, 24, 1) and dataset.target_feature == 0


def test_every_guess_has_a_comment_above_it(tmp_path: Path) -> None:
    text = render(propose(TEMPERATURE), name="temperature", study_file=tmp_path / "temperature.toml")
    lines = text.splitlines()
    for key in GUESSED_KEYS:
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
        assert lines[at - 1].startswith("# "), key
        comment: list[str] = []
        for line in reversed(lines[:at]):
            if not line.startswith("# "):
                break
            comment.insert(0, line[2:])
        words = " ".join(comment)
        assert words.startswith("Guessed") and ("because" in words or ":" in words), (key, words)
    raw = tomllib.loads(text)
    assert set(raw) == {"study", "data", "model", "search", "training"}
    assert (tmp_path / raw["data"]["path"]).resolve() == TEMPERATURE.resolve()


def test_the_data_path_is_relative_to_the_study_file(tmp_path: Path, wine_csv: Path) -> None:
    (tmp_path / "studies").mkdir()
    study = write_study(wine_csv, out=tmp_path / "studies" / "wine.toml")
    assert tomllib.loads(study.read_text())["data"]["path"] == "../wine.csv"
    assert Path(str(load_spec(study).data.path)) == wine_csv.resolve()


def test_wine_csv_with_a_text_class_is_a_classification(tmp_path: Path, wine_csv: Path) -> None:
    proposal = propose(wine_csv)
    assert proposal.target == "class" and "named like a target" in proposal.target_reason
    assert proposal.task is Task.CLASSIFICATION and "holds text (3 distinct values)" in proposal.task_reason
    assert proposal.features is not None and len(proposal.features) == 13 and "class" not in proposal.features
    assert proposal.order_by is None and proposal.lookback is None
    assert proposal.family is Family.DENSE

    spec, dataset = loaded(write_study(wine_csv, out=tmp_path / "wine.toml"))
    assert spec.data.task == "classification" and spec.model.family == "dense"
    assert dataset.X.shape == (178, 13) and dataset.classes == ("class_0", "class_1", "class_2")


def test_diabetes_csv_is_a_regression_of_its_last_column(tmp_path: Path, diabetes_csv: Path) -> None:
    proposal = propose(diabetes_csv)
    assert proposal.target == "progression" and "last column" in proposal.target_reason
    assert proposal.task is Task.REGRESSION
    assert proposal.features == ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
    assert proposal.family is Family.DENSE

    spec, dataset = loaded(write_study(diabetes_csv, out=tmp_path / "diabetes.toml"))
    assert spec.data.task == "regression" and spec.data.target == "progression"
    assert dataset.task is Task.REGRESSION and dataset.X.shape == (442, 10)


def test_digits_npz_is_a_classification_of_sequences_by_an_lstm(tmp_path: Path, digits_npz: Path) -> None:
    proposal = propose(digits_npz)
    assert proposal.source == "npz" and proposal.n_rows == 1797
    assert proposal.task is Task.CLASSIFICATION and "10 distinct whole numbers" in proposal.task_reason
    assert proposal.family is Family.LSTM and "3-D" in proposal.family_reason
    assert proposal.target is None and proposal.features is None and proposal.lookback is None

    spec, dataset = loaded(write_study(digits_npz, out=tmp_path / "digits.toml"))
    assert spec.data.source == "npz" and spec.model.family == "lstm"
    assert dataset.X.shape == (1797, 8, 8) and dataset.n_classes == 10


def test_one_numeric_column_is_a_series_in_the_files_order(tmp_path: Path) -> None:
    rows: list[list[object]] = [[round(math.sin(i / 5), 4)] for i in range(200)]
    data = write_table(tmp_path / "series.csv", ["level"], rows)
    proposal = propose(data)
    assert proposal.task is Task.FORECAST and "only complete numeric column" in proposal.task_reason
    assert proposal.features == ("level",) and proposal.order_by is None
    assert proposal.lookback == 20 and proposal.family is Family.LSTM
    _, dataset = loaded(write_study(data, out=tmp_path / "series.toml"))
    assert dataset.X.shape == (180, 20, 1)


def test_a_date_column_is_not_read_by_a_classification(tmp_path: Path) -> None:
    rows: list[list[object]] = [[f"2024-01-{1 + i % 28:02d}", i % 7, i * 0.5, "ab"[i % 2]] for i in range(60)]
    data = write_table(tmp_path / "days.csv", ["day", "weekday", "amount", "label"], rows)
    proposal = propose(data)
    assert proposal.task is Task.CLASSIFICATION and proposal.target == "label"
    assert proposal.features == ("weekday", "amount") and proposal.order_by is None
    assert "'day' (it orders the rows)" in proposal.features_reason
    spec, _ = loaded(write_study(data, out=tmp_path / "days.toml"))
    assert spec.data.order_by is None


def test_odd_column_names_are_quoted_for_toml(tmp_path: Path) -> None:
    header = ['size "cm"', "back\\slash", "über\x01", "label"]
    rows: list[list[object]] = [[i * 1.5, i % 3, i % 5, "xy"[i % 2]] for i in range(40)]
    data = write_table(tmp_path / "odd.csv", header, rows)
    spec, dataset = loaded(write_study(data, out=tmp_path / "odd.toml"))
    assert spec.data.features == tuple(header[:3]) and spec.data.target == "label"
    assert dataset.X.shape == (40, 3)


def test_the_proposal_is_frozen() -> None:
    proposal = propose(TEMPERATURE)
    assert isinstance(proposal, Proposal)
    with pytest.raises(AttributeError):
        proposal.task = Task.REGRESSION  # type: ignore[misc]


# --------------------------------------------------------------------------- writing and refusing


def test_default_output_is_the_data_stem_in_the_current_directory(
    tmp_path: Path, wine_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    written = write_study(wine_csv)
    assert written == Path("wine.toml") and (here / "wine.toml").is_file()
    assert tomllib.loads(written.read_text())["data"]["path"] == "../wine.csv"
    assert load_spec(written).study.name == "wine"


def test_refuses_to_overwrite(tmp_path: Path, wine_csv: Path) -> None:
    out = tmp_path / "mine.toml"
    out.write_text("# my own study\n")
    with pytest.raises(UserError) as caught:
        write_study(wine_csv, out=out)
    message = str(caught.value)
    assert message == f"{out}: already exists; not overwritten (write to another path, or remove it first)"
    assert out.read_text() == "# my own study\n"

    fresh = tmp_path / "fresh.toml"
    write_study(wine_csv, out=fresh)
    first = fresh.read_text()
    with pytest.raises(UserError, match="already exists"):
        write_study(wine_csv, out=fresh)
    assert fresh.read_text() == first


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("absent.csv", None, "file not found"),
        ("table.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
        ("noheader.csv", b"1,2\n3,4\n", "needs a header row"),
        ("broken.npz", b"not a zip", "not a .npz file"),
    ],
)
def test_unusable_data_files_are_one_line_user_errors(
    tmp_path: Path, name: str, content: bytes | None, says: str
) -> None:
    data = tmp_path / name
    if content is not None:
        data.write_bytes(content)
    for attempt in (lambda: propose(data), lambda: write_study(data, out=tmp_path / "study.toml")):
        with pytest.raises(UserError) as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"{data}: ") and says in message
        if content is None or name.endswith(".xlsx"):
            assert "allowed: a .csv file" in message and ".npz" in message
    assert not (tmp_path / "study.toml").exists()


def test_a_bad_study_name_is_refused() -> None:
    with pytest.raises(UserError, match=r"^study name '-x': allowed: "):
        render(propose(TEMPERATURE), name="-x")


def test_import_does_not_load_tensorflow_or_keras() -> None:
    code = (
        "import sys, sweep.scaffold\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'sklearn', 'torch')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("data", ["wine", "temperature"])
def test_sweep_init_writes_a_study_that_runs_as_written(tmp_path: Path, wine_csv: Path, data: str) -> None:
    """From a data file to a sweep in two commands: the table with a text class, and the CSV with a date column."""
    source = {"wine": wine_csv, "temperature": TEMPERATURE}[data]
    made = run_cli("init", str(source), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    study = tmp_path / f"{source.stem}.toml"
    assert made.stdout.startswith(f"wrote {study.name}: ") and f"sweep run {study.name}" in made.stdout
    again = run_cli("init", str(source), cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    url = f"sqlite:///{tmp_path / 's.db'}"
    ran = run_cli(
        "run", study.name, "--storage", url, "--n-trials", "1",
        "--set", "training.max_epochs=1", "--set", "training.repeats=1", "-q",
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    status = run_cli("status", source.stem, "--storage", url, "--format", "json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["counts"] == {"COMPLETE": 1} and report["done"] == 1
    if data == "wine":
        assert report["data"] == "wine.csv: 178 rows x 13 features, classification, 3 classes"
