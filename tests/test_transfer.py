"""Copying studies between real storages: a SQLite file to SQLite, PostgreSQL and MariaDB (no training)."""

from __future__ import annotations

import datetime
import math
import re
import sqlite3
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweep import records
from sweep.errors import StorageError, StudyNotFoundError, UserError
from sweep.objective import curves_attr
from sweep.report import rank, study_status
from sweep.runner import prepare_study
from sweep.space import distributions
from sweep.spec import load_spec
from sweep.stability import summarize
from sweep.storage import load_study, open_storage
from sweep.train import Curves, Stop
from sweep.transfer import CopyResult, copy_studies
from tests.helpers import write_study

PASSWORD = "pw-secret-987"
PARAMS = {
    "n_layers": 2,
    "units": 8,
    "activation": "relu",
    "learning_rate": 0.0123456789,
    "optimizer": "adam",
    "batch_size": 64,
    "dropout": 0.1,
    "l2": 1e-4,
    "layer_norm": False,
}
STEADY = ([[1.0, 0.6, 0.41, 0.40, 0.40, 0.40], [1.0, 0.6, 0.42, 0.41, 0.41, 0.41]],
          [[1.0, 0.6, 0.40, 0.39, 0.38, 0.38]] * 2)
LUCKY = ([[1.0, 0.2, 0.9, 0.5, 0.95, 0.55], [1.0, 0.7, 0.8, 0.6, 0.9, 0.6]],
         [[1.0, 0.5, 0.3, 0.2, 0.1, 0.05]] * 2)
OVERFIT = ([[1.0, 0.5, 0.45, 0.5, 0.6, 0.7], [1.0, 0.5, 0.46, 0.52, 0.62, 0.72]],
           [[1.0, 0.5, 0.3, 0.2, 0.1, 0.05]] * 2)
DIVERGED = ([[1.0, 3.0, math.inf, math.nan], [1.0, 2.0, 9.0, math.nan]],
            [[1.0, 2.0, 5.0, math.nan]] * 2)
STARTED = datetime.datetime(2026, 3, 1, 12, 30, 15, 123456)


def _curves(val: list[list[float]], train: list[list[float]]) -> list[Curves]:
    return [
        Curves(loss=tuple(u), val_loss=tuple(v), metric_name="", stop=Stop.COMPLETED)
        for v, u in zip(val, train, strict=True)
    ]


def make_source(url: str, tmp_path: Path, name: str = "alpha", *, pareto: bool = False) -> optuna.Study:
    """A real sweep study with trials in every state; the RUNNING one has a heartbeat."""
    folder = tmp_path / name
    folder.mkdir()
    path = write_study(folder, name=name)
    if pareto:
        path.write_text(path.read_text().replace("n_trials = 3", 'n_trials = 3\nobjective = "pareto"'))
    spec = load_spec(path)
    study, created = prepare_study(spec, url=url)
    assert created
    dists = distributions(spec.search, family="lstm")
    cases = [
        ("lucky", LUCKY, TrialState.COMPLETE, None),
        ("steady", STEADY, TrialState.COMPLETE, None),
        ("overfit", OVERFIT, TrialState.COMPLETE, None),
        ("pruned", STEADY, TrialState.PRUNED, None),
        ("failed", STEADY, TrialState.FAIL, "error: something broke"),
        ("diverged", DIVERGED, TrialState.FAIL, "diverged: validation loss is NaN at epoch 3"),
        ("running", STEADY, TrialState.RUNNING, None),
    ]
    for i, (label, (val, train), state, reason) in enumerate(cases):
        summary = summarize(val, train, tail=spec.stability.tail, risk=spec.stability.risk)
        attrs: dict[str, Any] = {records.CURVES: curves_attr(_curves(val, train)), **records.summary_attrs(summary)}
        if reason is not None:
            attrs[records.FAIL_REASON] = reason
        values = None
        if state is TrialState.COMPLETE:
            values = [summary.tail_mean, summary.tail_std] if pareto else [summary.score]
        finished = state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        start = STARTED + datetime.timedelta(minutes=i, microseconds=i * 1111)
        study.add_trial(create_trial(
            state=state,
            values=values,
            params={**PARAMS, "units": 4 + i},
            distributions=dists,
            user_attrs=records.split_attrs(attrs)[0],
            system_attrs={"label": label, "retry_history": [i], **records.split_attrs(attrs)[1]},
            intermediate_values={e: v for e, v in enumerate(val[0])},
        ))
        trial_id = study.get_trials(deepcopy=False)[-1]._trial_id
        _set_datetimes(study, trial_id, start, start + datetime.timedelta(seconds=42.5) if finished else None)
    study.enqueue_trial({**PARAMS, "units": 12})
    study._storage.set_study_system_attr(study._study_id, "sweep:test", {"nested": [1, 2.5, None]})
    storage = open_storage(url, heartbeat_interval=30, grace_period=60)
    running = next(t for t in study.get_trials() if t.state is TrialState.RUNNING)
    storage.record_heartbeat(running._trial_id)
    with storage.engine.begin() as conn:  # the worker died an hour ago
        conn.execute(sa.text("UPDATE trial_heartbeats SET heartbeat = :h WHERE trial_id = :t"),
                     {"h": datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(hours=1),
                      "t": running._trial_id})
    storage.engine.dispose()
    return optuna.load_study(study_name=name, storage=url)


def _set_datetimes(study: optuna.Study, trial_id: int, start: datetime.datetime,
                   complete: datetime.datetime | None) -> None:
    """Give a trial fixed datetimes with microseconds (stored as naive UTC, as Optuna does)."""
    engine = study._storage._backend.engine

    def utc(d: datetime.datetime | None) -> datetime.datetime | None:
        return None if d is None else d.astimezone(datetime.UTC).replace(tzinfo=None)

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE trials SET datetime_start = :s, datetime_complete = :c WHERE trial_id = :t"),
                     {"s": utc(start), "c": utc(complete), "t": trial_id})


def _plain(value: Any) -> Any:
    """NaN made comparable (NaN != NaN), containers walked."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _fields(t: FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state,
        "values": t.values,
        "params": t.params,
        "distributions": t.distributions,
        "user_attrs": t.user_attrs,
        "system_attrs": t.system_attrs,
        "intermediate_values": _plain(t.intermediate_values),
    }


def _study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    return study._storage.get_study_system_attrs(study._study_id)


def _heartbeats(url: str, study_name: str) -> dict[int, datetime.datetime]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT t.number, h.heartbeat FROM trial_heartbeats h JOIN trials t ON t.trial_id = h.trial_id "
                "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :n"
            ), {"n": study_name}).all()
    finally:
        engine.dispose()
    return {n: h if isinstance(h, datetime.datetime) else datetime.datetime.fromisoformat(h) for n, h in rows}


def _close_enough(a: datetime.datetime | None, b: datetime.datetime | None, *, whole_seconds: bool) -> bool:
    """Equal, or (MySQL/MariaDB keep no fractions of a second) less than a second apart."""
    if a is None or b is None:
        return a is b
    return a == b or (whole_seconds and abs(a - b) < datetime.timedelta(seconds=1))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with two sweep studies, built once: 'alpha' (one objective) and 'beta' (pareto)."""
    folder = tmp_path_factory.mktemp("template")
    url = f"sqlite:///{folder / 'template.db'}"
    make_source(url, folder, "alpha")
    make_source(url, folder, "beta", pareto=True)
    return folder / "template.db"


@pytest.fixture
def source(template: Path, tmp_path: Path) -> tuple[str, optuna.Study]:
    """A fresh copy of the template file (made with SQLite's backup, which reads through the WAL)."""
    path = tmp_path / "source.db"
    with sqlite3.connect(template) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    url = f"sqlite:///{path}"
    return url, optuna.load_study(study_name="alpha", storage=url)


def test_round_trip_keeps_every_trial_and_study_field(source: tuple[str, optuna.Study], storage_url: str) -> None:
    url, original = source
    results = copy_studies(from_url=url, to_url=storage_url, study="alpha")
    assert results == [CopyResult(study_name="alpha", trials=8, source=url, destination=storage_url)]

    copied = load_study("alpha", storage_url)
    whole_seconds = storage_url.startswith("mysql")
    before, after = original.get_trials(), copied.get_trials()
    assert [t.state for t in after] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED] + [TrialState.FAIL] * 2 + [
        TrialState.RUNNING, TrialState.WAITING]
    assert len(after) == len(before)
    for a, b in zip(before, after, strict=True):
        assert _fields(b) == _fields(a), f"trial {a.number}"
        assert _close_enough(b.datetime_start, a.datetime_start, whole_seconds=whole_seconds), a.number
        assert _close_enough(b.datetime_complete, a.datetime_complete, whole_seconds=whole_seconds), a.number
    lucky, failed, diverged = after[0], after[4], after[5]
    assert lucky.params["units"] == 4 and lucky.params["learning_rate"] == 0.0123456789
    assert all(records.trial_attr(lucky, k, "missing") != "missing" for k in records.SUMMARY_FIELDS)
    assert records.trial_attr(lucky, records.CURVES) == records.trial_attr(before[0], records.CURVES) is not None
    assert lucky.user_attrs["hint"] and lucky.user_attrs["diagnosis"]
    assert failed.user_attrs[records.FAIL_REASON] == "error: something broke"
    assert diverged.user_attrs[records.FAIL_REASON].startswith("diverged")
    assert math.isinf(diverged.intermediate_values[2]) and math.isnan(diverged.intermediate_values[3])
    assert after[0].datetime_start is not None and after[0].datetime_start.year == 2026
    assert after[7].system_attrs["fixed_params"]["units"] == 12

    assert copied.user_attrs == original.user_attrs
    for key in (records.SPEC, records.FINGERPRINT, records.TARGET, records.DATA, records.VERSIONS):
        assert copied.user_attrs[key] == original.user_attrs[key]
    assert _study_system_attrs(copied) == _study_system_attrs(original)
    assert _study_system_attrs(copied)["sweep:test"] == {"nested": [1, 2.5, None]}
    assert copied.directions == original.directions
    assert copied.metric_names == original.metric_names == ["stability_score"]

    src_beats, dst_beats = _heartbeats(url, "alpha"), _heartbeats(storage_url, "alpha")
    assert set(dst_beats) == set(src_beats) == {6}
    assert _close_enough(dst_beats[6], src_beats[6], whole_seconds=whole_seconds)


def test_ranking_and_status_are_identical_after_copy(source: tuple[str, optuna.Study], storage_url: str) -> None:
    url, _ = source
    copy_studies(from_url=url, to_url=storage_url)
    assert rank("alpha", url=storage_url) == rank("alpha", url=url)
    assert rank("alpha", url=storage_url, include_all=True) == rank("alpha", url=url, include_all=True)
    assert rank("alpha", url=storage_url, risk=0.0, tail=2) == rank("alpha", url=url, risk=0.0, tail=2)
    before, after = study_status("alpha", url=url).as_dict(), study_status("alpha", url=storage_url).as_dict()
    assert before.pop("storage") != after.pop("storage")
    assert after == before
    assert after["counts"] == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 2, "RUNNING": 1, "WAITING": 1}


def test_running_trial_of_a_dead_worker_is_still_found_stale(source: tuple[str, optuna.Study], tmp_path: Path) -> None:
    url, _ = source
    dest = f"sqlite:///{tmp_path / 'dest.db'}"
    copy_studies(from_url=url, to_url=dest, study="alpha")
    study = load_study("alpha", dest, heartbeat_interval=30, grace_period=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[6].state is TrialState.FAIL


def test_copy_all_studies_copies_each(source: tuple[str, optuna.Study], tmp_path: Path) -> None:
    url, _ = source
    dest = f"sqlite:///{tmp_path / 'dest.db'}"
    results = copy_studies(from_url=url, to_url=dest)
    assert [(r.study_name, r.trials) for r in results] == [("alpha", 8), ("beta", 8)]
    assert {r.source for r in results} == {url} and {r.destination for r in results} == {dest}
    for name in ("alpha", "beta"):
        a, b = load_study(name, url), load_study(name, dest)
        assert [_fields(t) for t in b.get_trials()] == [_fields(t) for t in a.get_trials()]
        assert b.user_attrs == a.user_attrs and b.directions == a.directions and b.metric_names == a.metric_names
    assert len(load_study("beta", dest).directions) == 2
    assert load_study("beta", dest).metric_names == ["tail_mean", "tail_std"]


def test_unknown_source_study_lists_the_ones_there(source: tuple[str, optuna.Study], tmp_path: Path) -> None:
    url, _ = source
    dest = tmp_path / "dest.db"
    with pytest.raises(StudyNotFoundError) as info:
        copy_studies(from_url=url, to_url=f"sqlite:///{dest}", study="nope")
    assert str(info.value) == f"study 'nope' not found in {url}; studies there: alpha, beta"
    assert not dest.exists()


def test_existing_destination_study_stops_everything(source: tuple[str, optuna.Study], tmp_path: Path) -> None:
    url, _ = source
    dest = f"sqlite:///{tmp_path / 'dest.db'}"
    optuna.create_study(study_name="beta", storage=open_storage(dest))
    with pytest.raises(UserError) as info:
        copy_studies(from_url=url, to_url=dest)
    assert str(info.value) == (
        f"destination {dest} already has a study named 'beta'; nothing was copied "
        "(delete it there or copy into another storage)"
    )
    assert optuna.get_all_study_names(open_storage(dest)) == ["beta"]
    assert load_study("beta", dest).get_trials() == []
    with pytest.raises(UserError, match="already has a study named 'beta'; nothing was copied"):
        copy_studies(from_url=url, to_url=dest, study="beta")
    assert copy_studies(from_url=url, to_url=dest, study="alpha")[0].trials == 8


def test_same_source_and_destination_is_refused(source: tuple[str, optuna.Study], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = source
    monkeypatch.chdir(tmp_path)
    for other in (url, "sqlite:///source.db", f"sqlite:///{tmp_path}/./source.db"):
        with pytest.raises(UserError) as info:
            copy_studies(from_url=url, to_url=other)
        assert str(info.value) == f"source and destination are the same storage ({url}); nothing to copy"
    assert [t.number for t in load_study("alpha", url).get_trials()] == list(range(8))


def test_server_urls_naming_one_database_are_the_same(postgres_url: str) -> None:
    with_password = sa.engine.make_url(postgres_url).set(password=PASSWORD, host="localhost")
    with pytest.raises(UserError, match=r"^source and destination are the same storage") as info:
        copy_studies(from_url=postgres_url, to_url=with_password.render_as_string(hide_password=False))
    assert PASSWORD not in str(info.value)


def test_source_without_studies_is_refused(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(empty).engine.dispose()
    dest = tmp_path / "dest.db"
    with pytest.raises(UserError) as info:
        copy_studies(from_url=empty, to_url=f"sqlite:///{dest}")
    assert str(info.value) == f"source storage {empty} has no studies; nothing to copy"
    assert not dest.exists()


def test_missing_sqlite_source_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(UserError) as info:
        copy_studies(from_url=f"sqlite:///{missing}", to_url=f"sqlite:///{tmp_path / 'dest.db'}")
    assert str(info.value) == f"source storage sqlite:///{missing}: SQLite file '{missing}' does not exist"
    assert not missing.exists() and not (tmp_path / "dest.db").exists()
    with pytest.raises(UserError, match=r"^destination storage: got an empty URL; allowed: sqlite:///FILE"):
        copy_studies(from_url=f"sqlite:///{missing}", to_url=" ")


def _fail_on_trial(monkeypatch: pytest.MonkeyPatch, *, dest_url: str, after: int, message: str) -> None:
    """Make the destination's trial writes fail after ``after`` trials (the source is never written to)."""
    real = optuna.storages.RDBStorage._create_new_trial
    made = {"n": 0}
    target = sa.engine.make_url(dest_url)

    def flaky(self: optuna.storages.RDBStorage, study_id: int, template_trial: Any = None) -> Any:
        if self.engine.url.database == target.database and self.engine.url.drivername == target.drivername:
            made["n"] += 1
            if made["n"] > after:
                raise optuna.exceptions.StorageInternalError(message)
        return real(self, study_id, template_trial)

    monkeypatch.setattr(optuna.storages.RDBStorage, "_create_new_trial", flaky)


def test_failure_mid_copy_leaves_no_half_study(source: tuple[str, optuna.Study], storage_url: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = source
    _fail_on_trial(monkeypatch, dest_url=storage_url, after=8 + 3, message="connection reset by peer")
    with pytest.raises(StorageError) as info:
        copy_studies(from_url=url, to_url=storage_url)
    assert str(info.value) == (
        f"copying study 'beta' to {storage_url} failed: connection reset by peer; "
        "the partial copy was deleted from the destination; already copied and kept: alpha"
    )
    monkeypatch.undo()
    assert optuna.get_all_study_names(open_storage(storage_url)) == ["alpha"]
    assert len(load_study("alpha", storage_url).get_trials()) == 8
    assert [r.study_name for r in copy_studies(from_url=url, to_url=storage_url, study="beta")] == ["beta"]


def test_database_error_mid_copy_is_reported_and_undone(source: tuple[str, optuna.Study], postgres_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real refusal half way: PostgreSQL keeps attr keys to 512 characters, SQLite does not."""
    url, study = source
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"k" * 600: 1}))
    # Optuna retries a failed trial write five times with pauses of up to 2 s; skip the pauses.
    monkeypatch.setattr(optuna.storages._rdb.storage, "time", SimpleNamespace(sleep=lambda seconds: None))
    with pytest.raises(StorageError) as info:
        copy_studies(from_url=url, to_url=postgres_url, study="alpha")
    message = str(info.value)
    assert message.startswith(f"copying study 'alpha' to {postgres_url} failed: ")
    assert "value too long for type character varying(512)" in message
    assert message.endswith("; the partial copy was deleted from the destination")
    assert "\n" not in message
    assert optuna.get_all_study_names(open_storage(postgres_url)) == []


def test_password_never_appears(source: tuple[str, optuna.Study], postgres_url: str,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = source
    dest = sa.engine.make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    assert dest.startswith(f"postgresql+psycopg://postgres:{PASSWORD}@")
    masked = dest.replace(PASSWORD, "***")

    results = copy_studies(from_url=url, to_url=dest)
    assert results[0].destination == masked
    assert PASSWORD not in repr(results)

    messages = []
    for kwargs in ({"from_url": url, "to_url": dest},  # the study is there now
                   {"from_url": dest, "to_url": dest},
                   {"from_url": dest, "to_url": url},  # 'alpha' is in the SQLite file
                   {"from_url": dest, "to_url": url, "study": "nope"}):
        with pytest.raises(UserError) as info:
            copy_studies(**kwargs)
        messages.append(str(info.value))

    for name in ("alpha", "beta"):
        optuna.delete_study(study_name=name, storage=open_storage(dest))
    _fail_on_trial(monkeypatch, dest_url=dest, after=2, message=f"could not reach {dest}")
    with pytest.raises(StorageError) as failure:
        copy_studies(from_url=url, to_url=dest)
    messages.append(str(failure.value))
    monkeypatch.undo()

    for message in messages:
        assert PASSWORD not in message, message
    for message in (messages[0], messages[1], messages[3], messages[4]):
        assert re.search(r"postgresql\+psycopg://postgres:\*\*\*@", message), message
    assert messages[-1].startswith(f"copying study 'alpha' to {masked} failed: could not reach {masked};")
    assert optuna.get_all_study_names(open_storage(dest)) == []
