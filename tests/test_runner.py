"""Study creation, resume and the wait for a study on real storages (no training)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweep import records
from sweep.errors import SpecDriftError, StorageError, StudyNotFoundError, UserError
from sweep.runner import create_study, prepare_study, spec_diff
from sweep.space import distributions
from sweep.spec import load_spec
from sweep.storage import default_artifacts, mask
from sweep.waiting import duration_text, wait_for_study
from tests.helpers import free_port, write_study

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


def test_create_study_records_the_target_and_queues_interrupted_configurations_once(
    storage_url: str, tmp_path: Path
) -> None:
    spec = load_spec(write_study(tmp_path))
    made = create_study(spec=spec, storage=storage_url)
    assert (made.study_name, made.created, made.target, made.done) == ("tiny", True, 3, 0)
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    stored = spec.with_artifacts(default_artifacts(storage_url)).to_json_dict()  # as sweep run stores it
    assert study.user_attrs[records.TARGET] == 3 and study.user_attrs[records.SPEC] == stored
    assert study.trials == []
    study.add_trial(create_trial(state=TrialState.FAIL, params=PARAMS,
                                 distributions=distributions(spec.search, family="lstm"),
                                 user_attrs={records.FAIL_REASON: "interrupted"}))
    again = create_study(spec=load_spec(write_study(tmp_path, n_trials=5)), storage=storage_url)
    assert (again.created, again.target, again.spec_changes, again.requeued) == (False, 5, (), (0,))
    assert create_study(spec=spec, storage=storage_url).requeued == ()  # queued once, for the next worker
    waiting = optuna.load_study(study_name="tiny", storage=storage_url).get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["retry_of"] for t in waiting] == [0]


def test_a_waiting_worker_finds_the_study_once_its_creation_finishes(storage_url: str, tmp_path: Path) -> None:
    """Before the study: no SQLite file, or a database without Optuna's tables; then its creation, in a thread."""
    spec = load_spec(write_study(tmp_path))
    lines: list[str] = []
    creating = threading.Timer(1.5, lambda: create_study(spec=spec, storage=storage_url))
    creating.start()
    started = time.monotonic()
    try:
        wait_for_study("tiny", storage_url, wait_s=60, on_wait=lines.append, poll_s=0.2)
    finally:
        creating.join()
    assert 1.5 <= time.monotonic() - started < 30
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"waiting up to 1m for study 'tiny' on {mask(storage_url)} (")
    assert re.fullmatch(r"study 'tiny' found after \d+ s", lines[1]), lines
    assert optuna.load_study(study_name="tiny", storage=storage_url).user_attrs[records.TARGET] == 3


def test_a_study_whose_creation_has_not_finished_is_waited_for(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    spec = load_spec(write_study(tmp_path))
    bare = optuna.create_study(study_name="tiny", storage=url)  # created, no spec stored yet
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^study 'tiny' has no sweep spec") as info:
        wait_for_study("tiny", url, wait_s=1.0, poll_s=0.2)
    assert not isinstance(info.value, StudyNotFoundError)
    assert 1.0 <= time.monotonic() - started < 10
    lines: list[str] = []
    storing = threading.Timer(0.5, lambda: bare.set_user_attr(records.SPEC, spec.to_json_dict()))
    storing.start()
    wait_for_study("tiny", url, wait_s=30, on_wait=lines.append, poll_s=0.2)
    storing.join()
    assert lines[0] == f"waiting up to 30s for study 'tiny' on {url} (it is not ready yet)"
    with pytest.raises(StudyNotFoundError):  # a study that is there at once is not waited for
        wait_for_study("other", url, wait_s=0.5, poll_s=0.2)


def test_without_wait_only_a_storage_that_does_not_answer_is_waited_for(tmp_path: Path) -> None:
    """A worker host that starts while the database restarts waits for it; a missing study is an error at once."""
    url = f"sqlite:///{tmp_path / 'here.db'}"
    optuna.create_study(study_name="other", storage=url)
    started = time.monotonic()
    with pytest.raises(StudyNotFoundError):
        wait_for_study("tiny", url, wait_s=30, poll_s=0.2, missing_ok=False)
    assert time.monotonic() - started < 5
    silent = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(StorageError, match="connection"):
        wait_for_study("tiny", silent, wait_s=1.5, on_wait=lines.append, poll_s=0.2, missing_ok=False)
    assert 1.5 <= time.monotonic() - started < 15
    assert lines == [f"waiting up to 1.5s for study 'tiny' on {mask(silent)} (the storage does not answer)"]


def test_durations_are_shown_as_written() -> None:
    assert [duration_text(s) for s in (20, 90, 600, 1800, 7200, 86400, 2.5)] == [
        "20s", "90s", "10m", "30m", "2h", "1d", "2.5s"
    ]
