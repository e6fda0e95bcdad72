"""Retraining a study's best configuration with fresh seeds (``sweep best``), through the library."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from sweep.errors import UserError
from sweep.retrain import retrain_best
from tests.helpers import cheap_study, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished two-trial study on a SQLite file (dense models on the breast-cancer table)."""
    folder = tmp_path_factory.mktemp("retrain")
    url = f"sqlite:///{folder / 'r.db'}"
    result = run_cli("run", str(cheap_study(folder, name="kept", n_trials=2, epochs=3)), "--storage", url, "-q")
    assert result.returncode == 0, result.stderr
    return url


def test_the_chosen_trial_is_retrained_and_saved(swept: str, tmp_path: Path) -> None:
    trial = optuna.load_study(study_name="kept", storage=swept).trials[1]
    result = retrain_best("kept", url=swept, seeds=2, out_dir=tmp_path / "out", trial_number=1, threads=1)
    assert result.trial_number == 1 and result.params == trial.params
    assert len(result.tail_losses) == 2 and len(set(result.seeds)) == 2
    assert result.mean == pytest.approx(sum(result.tail_losses) / 2)
    assert result.predicted_tail_mean == pytest.approx(trial.user_attrs["tail_mean"])
    assert Path(result.model_path).is_file()
    config = json.loads(Path(result.config_path).read_text())
    assert config["params"] == trial.params and config["trial"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": 0}, "--retrain-seeds: got 0; allowed: an integer >= 1"),
        ({"seeds": 1, "trial_number": 99}, "--trial: got 99; it is not a complete trial of 'kept'"),
    ],
)
def test_bad_arguments_are_one_line_user_errors(swept: str, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as info:
        retrain_best("kept", url=swept, out_dir=tmp_path / "out", **kwargs)
    assert str(info.value) == message


def test_an_output_path_that_is_a_file_is_refused(swept: str, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    with pytest.raises(UserError, match=r"^--out: cannot use"):
        retrain_best("kept", url=swept, seeds=1, out_dir=taken)
    assert taken.read_text() == "not a folder"
