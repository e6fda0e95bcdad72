"""Reading a sweep back: ``sweep status`` and the stability ranking of ``sweep rank``.

Nothing here imports TensorFlow. The ranking reads the storage with one SQL
query per table (Optuna's ORM loads every field of every trial, which is too
slow for 10,000-trial studies), and falls back to Optuna's API for storages
that are not relational (the gRPC proxy).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sweep import ledger, records
from sweep.calibration import calibrate
from sweep.errors import StudyNotFoundError, UserError
from sweep.spec import PARAM_NAMES, StudySpec
from sweep.stability import (
    Diagnosis,
    judge_spread,
    rediagnose,
    residual_spread,
    split_reference,
    window_words,
)
from sweep.storage import load_study, mask, read_engine, storage_error, stored_spec

NUMERIC_FIELDS: tuple[str, ...] = (
    "score",
    "tail_mean",
    "tail_std",
    "best",
    "degradation",
    "oscillation",
    "gap",
    "repeat_spread",
)
_KEYS = (
    *records.SUMMARY_FIELDS,
    records.FAIL_REASON,
    records.STOPPED,
    ledger.VERIFIES,
    records.FIXES,
    records.REMEDY,
    records.RACED_OUT,
    ledger.EPOCHS_TRAINED,
)
STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}


@dataclass(frozen=True)
class RankedTrial:
    """One row of the ranking."""

    rank: int
    number: int
    state: str
    score: float | None
    tail_mean: float | None
    tail_std: float | None
    best: float | None
    degradation: float | None
    oscillation: float | None
    gap: float | None
    repeat_spread: float | None
    diagnosis: str | None
    hint: str | None
    params: dict[str, Any] = field(default_factory=dict)
    fail_reason: str | None = None
    n_repeats: int | None = None
    stopped: str | None = None
    repeat_means: list[float] | None = None
    """Each repeat's tail mean (the spread a retrain is judged against)."""
    fixes: int | None = None
    """The trial whose diagnosis this configuration remedies (queued by ``sweep fix``)."""
    baseline: float | None = None
    """The loss of a model that learned nothing on the trial's splits."""
    epochs: list[int] | None = None
    """Each repeat's length in epochs, in repeat order."""
    repeat_stds: list[float] | None = None
    """Each repeat's tail standard deviation, in repeat order."""
    epochs_trained: int | None = None
    """Epochs this trial trained itself (repeats a verifying trial copied left out)."""
    raced_out: bool = False
    """Stopped by racing after its first repeat (it ends PRUNED)."""
    remedy: str | None = None
    """What a ``sweep fix`` trial changed (``learning_rate 0.003 -> 0.001``)."""
    evidence: dict[str, Any] | None = None
    """What the diagnosis rules read from the curves (:class:`sweep.stability.Evidence`)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    params: dict[str, Any]
    attrs: dict[str, Any]


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class StudyStatus:
    name: str
    storage: str
    data: str | None
    target: int | None
    counts: dict[str, int]
    done: int
    best: RankedTrial | None
    epochs: int = 0
    """Epochs trained so far, every repeat of every trial (repeats a verifying trial copied counted once)."""
    budget: int | None = None
    """The study's ``study.budget`` in epochs, if it has one."""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["best"] = self.best.as_dict() if self.best else None
        return d

    def lines(self) -> list[str]:
        out = [f"study    {self.name}", f"storage  {self.storage}"]
        if self.data:
            out.append(f"data     {self.data}")
        out.append(f"done     {self.done} of {self.target if self.target is not None else '-'}")
        if self.budget is not None:
            out.append(f"budget   {self.epochs} of {self.budget} epochs trained")
        else:
            out.append(f"epochs   {self.epochs} trained")
        states = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
        out.append("trials   " + ", ".join(f"{self.counts.get(s, 0)} {s.lower()}" for s in states))
        if self.best is None:
            out.append("best     - (no complete trial yet)")
        else:
            b = self.best
            over = f" over {b.n_repeats} repeat{'s' * (b.n_repeats != 1)}" if b.n_repeats else ""
            out.append(f"best     trial {b.number}: score {_fmt(b.score)}{over} ({b.diagnosis})")
            out.append("         " + " ".join(f"{k}={_fmt(v)}" for k, v in b.params.items()))
        return out


def read_trials(study_name: str, *, url: str, keys: Sequence[str]) -> tuple[dict[str, Any], list[TrialRow]]:
    """The study's user attrs, and every trial's number, state, params and the user attrs named in ``keys``.

    On a relational storage this reads with SQL (no Optuna study object, no TensorFlow), which is
    what keeps ``sweep rank`` and ``sweep status`` fast on studies of many thousands of trials.

    Raises:
        StudyNotFoundError: no such study (the message lists those there are).
        StorageError: the storage cannot be read.
    """
    study = _open(study_name, url)
    return study.user_attrs, _read_rows(study, keys=keys)


def study_spec(study_name: str, *, url: str) -> StudySpec:
    """The spec ``sweep run`` stored with the study, read without its trials."""
    return stored_spec(study_name, _open(study_name, url).user_attrs)


def study_status(study_name: str, *, url: str) -> StudyStatus:
    """Counts by state, progress toward the target and the best trial; reads only the storage."""
    study = _open(study_name, url)
    rows = _judge_spreads(_read_rows(study, keys=_KEYS), study)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    done = sum(_counts(r) for r in rows)
    ranked = _rank_rows(rows, by="score", include_all=False)
    attrs = study.user_attrs
    return StudyStatus(
        name=study_name,
        storage=mask(url),
        data=attrs.get(records.DATA),
        target=attrs.get(records.TARGET),
        counts=counts,
        done=done,
        best=ranked[0] if ranked else None,
        epochs=sum(ledger.trained_of(r.attrs.get(ledger.EPOCHS_TRAINED), r.attrs.get("epochs")) for r in rows),
        budget=_budget(study),
    )


def _budget(study: _Study) -> int | None:
    raw = study.user_attrs.get(records.SPEC)
    study_section = raw.get("study") if isinstance(raw, dict) else None
    budget = study_section.get("budget") if isinstance(study_section, dict) else None
    return budget if isinstance(budget, int) else None


def _counts(row: TrialRow) -> bool:
    return records.counts(row.state, row.attrs.get(records.FAIL_REASON))


# --------------------------------------------------------------------------- ranking


def rank(
    study_name: str,
    *,
    url: str,
    top: int | None = None,
    by: str = "score",
    risk: float | None = None,
    tail: int | None = None,
    include_all: bool = False,
) -> list[RankedTrial]:
    """Trials ranked by stability (lower is better); complete ones before any other.

    ``risk`` and ``tail`` re-score every trial from its stored curves without
    retraining. Failed and pruned trials are left out unless ``include_all``.

    Raises:
        UserError: an unknown ``by`` field, or a bad ``risk``/``tail``.
    """
    if by not in NUMERIC_FIELDS:
        raise UserError(f"--by: got {by!r}; allowed: {', '.join(NUMERIC_FIELDS)}")
    if risk is not None and not (math.isfinite(risk) and risk >= 0):
        raise UserError(f"--risk: got {risk!r}; allowed: a number >= 0")
    if tail is not None and tail < 1:
        raise UserError(f"--tail: got {tail!r}; allowed: an integer >= 1")
    if top is not None and top < 1:
        raise UserError(f"--top: got {top!r}; allowed: an integer >= 1")
    study = _open(study_name, url)
    rescore = risk is not None or tail is not None
    keys = _KEYS + ((records.CURVES,) if rescore else ())
    rows = _read_rows(study, keys=keys)
    if rescore:
        spec = stored_spec(study.name, study.user_attrs)
        tail = tail or spec.stability.tail
        rows = [_rescore(r, risk=risk if risk is not None else spec.stability.risk, tail=tail) for r in rows]
    fixes = {r.number: r.attrs[records.FIXES] for r in rows if isinstance(r.attrs.get(records.FIXES), int)}
    rows = _judge_spreads(_latest(rows), study, tail=tail)
    ranked = _rank_rows(rows, by=by, include_all=include_all, fixes=fixes)
    return ranked[:top] if top else ranked


def _latest(rows: list[TrialRow]) -> list[TrialRow]:
    """``rows`` less the trials whose configuration a later trial verified (:func:`sweep.ledger.superseded`)."""

    def n(r: TrialRow) -> int:
        v = r.attrs.get("n_repeats")
        return v if isinstance(v, int) else 0

    gone = ledger.superseded((r.number, r.state, ledger.key_of(r.number, r.attrs), n(r)) for r in rows)
    return [r for r in rows if r.number not in gone]


def _rescore(row: TrialRow, *, risk: float, tail: int) -> TrialRow:
    raw = row.attrs.get(records.CURVES)
    if not isinstance(raw, dict) or not raw.get("val_loss"):
        return row
    attrs = dict(row.attrs)
    baseline = _num(attrs.get("baseline"))
    attrs.update(records.rescore(records.StoredCurves.from_attr(raw), risk=risk, tail=tail, baseline=baseline))
    if row.attrs.get("diagnosis") == Diagnosis.PRUNED.value:  # stopped early: keep why, not training advice
        attrs["diagnosis"], attrs["hint"] = row.attrs["diagnosis"], row.attrs.get("hint")
    return TrialRow(row.number, row.state, row.params, attrs)


def _judge_spreads(rows: list[TrialRow], study: _Study, *, tail: int | None = None) -> list[TrialRow]:
    """Every complete trial's diagnosis judged again with the whole study: its reference and calibration.

    Every trial trains on the same splits, so the median tail mean of the
    complete trials on each split is what that split does to every
    configuration; a trial's ``repeat_spread`` is the spread of its residuals
    against it. Once the study has enough complete trials, every complete
    trial's label is judged again with the study's calibration
    (:func:`sweep.stability.rediagnose`); a pruned trial can only become
    ``diverged`` that way. Before that, only trials stored as ``stable`` or
    ``unstable_across_repeats`` can change label (:func:`sweep.stability.judge_spread`).
    """
    raw_spec = study.user_attrs.get(records.SPEC)
    if not isinstance(raw_spec, dict):
        return rows
    spec = stored_spec(study.name, study.user_attrs)
    repeats, tail = spec.training.repeats, tail or spec.stability.tail
    complete = [r for r in rows if r.state == "COMPLETE" and isinstance(r.attrs.get("repeat_means"), list)]
    reference = split_reference([r.attrs["repeat_means"] for r in complete], n_repeats=repeats)
    rows = _with_evidence(rows, study, tail=tail, risk=spec.stability.risk)
    spreads = {
        r.number: residual_spread(r.attrs["repeat_means"], reference)
        for r in rows
        if r.state == "COMPLETE" and _nums(r.attrs.get("repeat_means"))
    }
    calibration = calibrate(
        {**r.attrs, "repeat_spread": spreads.get(r.number)} for r in rows if r.number in spreads
    )
    judged = {Diagnosis.STABLE.value, Diagnosis.UNSTABLE_ACROSS_REPEATS.value}
    out = []
    for row in rows:
        attrs = dict(row.attrs)
        if row.state == "PRUNED" and calibration is not None:
            again = rediagnose(attrs, calibration=calibration, reference=None, tail=tail)
            if again is not None and again[0] is Diagnosis.DIVERGED:
                attrs.update(diagnosis=again[0].value, hint=again[1])
        if row.number not in spreads:
            out.append(TrialRow(row.number, row.state, row.params, attrs))
            continue
        again = None
        if calibration is not None:
            again = rediagnose(attrs, calibration=calibration, reference=reference, tail=tail)
        if again is None and attrs.get("diagnosis") in judged and _num(attrs.get("tail_mean")) is not None:
            again = judge_spread(
                tail_mean=float(attrs["tail_mean"]),
                tail_std=_num(attrs.get("tail_std")) or 0.0,
                repeat_means=attrs["repeat_means"],
                reference=reference,
                window=window_words(tail, attrs.get("epochs") or [tail]),
                baseline=_num(attrs.get("baseline")),
            )
        if again is not None:
            attrs.update(diagnosis=again[0].value, hint=again[1])
        attrs["repeat_spread"] = spreads[row.number]
        out.append(TrialRow(row.number, row.state, row.params, attrs))
    return out


def _with_evidence(rows: list[TrialRow], study: _Study, *, tail: int, risk: float) -> list[TrialRow]:
    """``rows``, where a finished trial lacks the rules' evidence (written before 2026-12-06), with it.

    The evidence is computed from the trial's stored curves, as the trial's summary was.
    """
    lacking = {
        r.number
        for r in rows
        if r.state in ("COMPLETE", "PRUNED") and _num(r.attrs.get("tail_mean")) is not None
        and not isinstance(r.attrs.get("evidence"), dict)
    }
    if not lacking:
        return rows
    curves = {r.number: r.attrs.get(records.CURVES) for r in _read_rows(study, keys=(records.CURVES,))}
    out = []
    for row in rows:
        raw = curves.get(row.number)
        if row.number in lacking and isinstance(raw, dict) and raw.get("val_loss"):
            stored = records.StoredCurves.from_attr(raw)
            fresh = records.rescore(stored, risk=risk, tail=tail, baseline=_num(row.attrs.get("baseline")))
            row = TrialRow(row.number, row.state, row.params, {**row.attrs, "evidence": fresh.get("evidence")})
        out.append(row)
    return out


def _rank_rows(
    rows: Sequence[TrialRow], *, by: str, include_all: bool, fixes: dict[int, int] | None = None
) -> list[RankedTrial]:
    """The ranking; ``fixes`` maps a fix's trial to the trial it remedies (a verification inherits it)."""
    fixes = fixes or {}
    chosen = [r for r in rows if include_all or r.state == "COMPLETE"]

    def key(r: TrialRow) -> tuple[int, int, float, int]:
        value = r.attrs.get(by)
        if isinstance(value, int | float) and math.isfinite(value):
            return (STATE_ORDER.get(r.state, 9), 0, float(value), r.number)
        return (STATE_ORDER.get(r.state, 9), 1, 0.0, r.number)

    chosen.sort(key=key)
    out = []
    for i, r in enumerate(chosen, start=1):
        a = r.attrs
        out.append(
            RankedTrial(
                rank=i,
                number=r.number,
                state=r.state,
                **{f: _num(a.get(f)) for f in NUMERIC_FIELDS},
                diagnosis=a.get("diagnosis"),
                hint=a.get("hint"),
                params={
                    **{k: r.params[k] for k in (*PARAM_NAMES, "layer_norm") if k in r.params},
                    **r.params,  # and a builder's own parameters ([search.extra])
                },
                fail_reason=a.get(records.FAIL_REASON),
                n_repeats=a.get("n_repeats") if isinstance(a.get("n_repeats"), int) else None,
                stopped=a.get(records.STOPPED),
                repeat_means=_nums(a.get("repeat_means")),
                fixes=fixes.get(r.number, fixes.get(a.get(ledger.VERIFIES, -1))),
                baseline=_num(a.get("baseline")),
                epochs=_ints(a.get("epochs")),
                repeat_stds=_nums(a.get("repeat_stds")),
                epochs_trained=ledger.trained_of(a.get(ledger.EPOCHS_TRAINED), a.get("epochs")),
                raced_out=a.get(records.RACED_OUT) is True,
                remedy=a.get(records.REMEDY) if isinstance(a.get(records.REMEDY), str) else None,
                evidence=a.get("evidence") if isinstance(a.get("evidence"), dict) else None,
            )
        )
    return out


def _nums(values: Any) -> list[float] | None:
    if not isinstance(values, list):
        return None
    numbers = [_num(v) for v in values]
    return None if any(n is None for n in numbers) else [n for n in numbers if n is not None]


def _ints(values: Any) -> list[int] | None:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    return [int(v) for v in values]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- reading


def _tables() -> dict[str, Any]:
    """The columns of Optuna's schema that the reports read (quoted by each SQL dialect)."""
    import sqlalchemy as sa

    def table(name: str, *columns: str) -> Any:
        return sa.table(name, *(sa.column(c) for c in columns))

    return {
        "studies": table("studies", "study_id", "study_name"),
        "study_user_attributes": table("study_user_attributes", "study_id", "key", "value_json"),
        "trials": table("trials", "trial_id", "number", "study_id", "state"),
        "trial_user_attributes": table("trial_user_attributes", "trial_id", "key", "value_json"),
        "trial_system_attributes": table("trial_system_attributes", "trial_id", "key", "value_json"),
        "trial_params": table("trial_params", "trial_id", "param_name", "param_value", "distribution_json"),
    }


class _LazyTables(dict[str, Any]):
    def __missing__(self, name: str) -> Any:
        self.update(_tables())
        return self[name]


_TABLES = _LazyTables()
_ABSENT = object()


def _attr(trial: Any, key: str) -> Any:
    """A trial's attr as :func:`records.trial_attr` reads it, or ``_ABSENT`` when it has none."""
    return records.trial_attr(trial, key, _ABSENT)


@dataclass
class _Study:
    """A study opened for reading: by SQL on a relational storage, else through Optuna."""

    name: str
    user_attrs: dict[str, Any]
    engine: Any = None
    study_id: int | None = None
    optuna_study: Any = None


def _open(study_name: str, url: str) -> _Study:
    """Open ``study_name`` for reading without importing Optuna where SQL can do it.

    Raises:
        StudyNotFoundError: no such study (the message lists those there are).
        StorageError: the storage cannot be read.
    """
    if url.startswith("grpc://"):
        study = load_study(study_name, url)
        return _Study(study_name, dict(study.user_attrs), optuna_study=study)
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    engine = read_engine(url)
    studies, attrs_table = _TABLES["studies"], _TABLES["study_user_attributes"]
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(studies.c.study_id).where(studies.c.study_name == study_name)
            ).first()
            if row is None:
                names = sorted(n for (n,) in conn.execute(sa.select(studies.c.study_name)).all())
                listed = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
                raise StudyNotFoundError(f"study {study_name!r} not found in {mask(url)}; studies there: {listed}")
            attrs = conn.execute(
                sa.select(attrs_table.c.key, attrs_table.c.value_json).where(attrs_table.c.study_id == row[0])
            ).all()
    except SQLAlchemyError as exc:
        raise storage_error(url, exc) from None
    return _Study(study_name, {k: json.loads(v) for k, v in attrs}, engine=engine, study_id=int(row[0]))


def _read_rows(study: _Study, *, keys: Sequence[str]) -> list[TrialRow]:
    """Every trial's number, state, params and the attrs named in ``keys`` (:func:`records.attr`: whole)."""
    if study.engine is None:
        return [
            TrialRow(t.number, t.state.name, dict(t.params), {k: v for k in keys if (v := _attr(t, k)) is not _ABSENT})
            for t in study.optuna_study.get_trials(deepcopy=False)
        ]
    import sqlalchemy as sa

    trials, params = _TABLES["trials"], _TABLES["trial_params"]
    mine = trials.c.study_id == study.study_id
    with study.engine.connect() as conn:
        rows = conn.execute(sa.select(trials.c.trial_id, trials.c.number, trials.c.state).where(mine)).all()
        by_id = {tid: TrialRow(int(num), _state(state), {}, {}) for tid, num, state in rows}
        if not by_id:
            return []
        # User attrs first, then the system attrs that hold some of them whole (records.split_attrs).
        named = {k: k for k in keys}
        moved = {records.system_key(k): k for k in keys}
        for table, wanted in ((_TABLES["trial_user_attributes"], named), (_TABLES["trial_system_attributes"], moved)):
            query = (
                sa.select(table.c.trial_id, table.c.key, table.c.value_json)
                .join(trials, trials.c.trial_id == table.c.trial_id)
                .where(mine, table.c.key.in_(list(wanted)))
            )
            for tid, key, value in conn.execute(query).all():
                by_id[tid].attrs[wanted[key]] = json.loads(value)
        param_query = (
            sa.select(params.c.trial_id, params.c.param_name, params.c.param_value, params.c.distribution_json)
            .join(trials, trials.c.trial_id == params.c.trial_id)
            .where(mine)
        )
        external: dict[tuple[str, float], Any] = {}
        for tid, name, value, dist_json in conn.execute(param_query).all():
            key = (dist_json, value)
            if key not in external:
                external[key] = external_value(dist_json, value)
            by_id[tid].params[name] = external[key]
    return list(by_id.values())


def external_value(distribution_json: str, internal: float) -> Any:
    """A parameter's value as the user sees it, from Optuna's stored form (no Optuna import).

    Optuna stores a categorical choice as its index and numbers as floats;
    ``distribution_json`` is ``{"name": ..., "attributes": {...}}``.
    """
    dist = json.loads(distribution_json)
    name, attributes = dist["name"], dist["attributes"]
    if name == "CategoricalDistribution":
        return attributes["choices"][int(internal)]
    if name in ("IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"):
        return int(internal)
    return float(internal)


def _state(raw: Any) -> str:
    return str(getattr(raw, "name", raw)).rsplit(".", 1)[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
