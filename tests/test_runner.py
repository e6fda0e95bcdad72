"""Study creation and resume on real storages (no training)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweep import records
from sweep.errors import SpecDriftError
from sweep.runner import prepare_study, spec_diff
from sweep.space import distributions
from sweep.spec import load_spec
from tests.helpers import write_study

PARAMS = {"n_layers": 1, "units": 8, "activation": "tanh", "learning_rate": 0.01, "optimizer": "adam",
          "batch_size": 64, "dropout": 0.1, "l2": 1e-4, "layer_norm": False}


def test_create_stores_spec_fingerprint_target_versions(storage_url: str, tmp_path: Path) -> None:
    spec = load_spec(write_study(tmp_path))
    study, created = prepare_study(spec, url=storage_url)
    assert created
    attrs = optuna.load_study(study_name="tiny", storage=storage_url).user_attrs
    assert attrs[records.SPEC] == spec.to_json_dict()
    assert len(attrs[records.FINGERPRINT]) == 64
    assert attrs[records.TARGET] == 3
    assert {"optuna", "tensorflow", "python"} <= set(attrs[records.VERSIONS])
    assert study.metric_names == ["stability_score"]
    again, created_again = prepare_study(spec, url=storage_url)
    assert not created_again and again.study_name == "tiny"


def test_resume_refuses_a_changed_search_space(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    path = write_study(tmp_path)
    prepare_study(load_spec(path), url=url)
    changed = load_spec(path, overrides=["search.units=[4, 8]", "training.max_epochs=9"])
    with pytest.raises(SpecDriftError) as info:
        prepare_study(changed, url=url)
    message = str(info.value)
    assert "search.units" in message and "training.max_epochs (3 -> 9)" in message
    assert "\n" not in message
    # Budget changes are not drift.
    prepare_study(load_spec(path, updates={"study.n_trials": 7}), url=url)
    assert optuna.load_study(study_name="tiny", storage=url).user_attrs[records.TARGET] == 7


def test_interrupted_configurations_are_queued_again_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    spec = load_spec(write_study(tmp_path))
    study, _ = prepare_study(spec, url=url)
    study.add_trial(create_trial(state=TrialState.FAIL, params=PARAMS,
                                 distributions=distributions(spec.search, family="lstm"),
                                 user_attrs={records.FAIL_REASON: "interrupted"}))
    prepare_study(spec, url=url)
    prepare_study(spec, url=url)
    waiting = optuna.load_study(study_name="tiny", storage=url).get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == PARAMS
    assert waiting[0].user_attrs["retry_of"] == 0


def test_spec_diff_lists_nested_paths() -> None:
    assert spec_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == ["a.c (2 -> 3)", "d (null -> 4)"]
