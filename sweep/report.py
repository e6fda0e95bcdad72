"""Reading a sweep back: ``sweep status`` and the stability ranking of ``sweep rank``.

Nothing here imports TensorFlow. The ranking reads the storage with SQL
(Optuna's ORM loads every field of every trial, which is too slow for large
studies), and falls back to Optuna's API for storages that are not relational
(the gRPC proxy). What it reads grows linearly with the trials, and as little
as the answer needs: to put every trial in its place and judge it against the
study, a few attrs per trial (:data:`_ORDER_KEYS`), one query per table, each
table's values decoded by one call into the JSON parser; the params and the
rest of the attrs only of the trials it shows (``--top``, the table's first
rows, the best trial of ``sweep status``); the per-epoch curves only to
re-score (``--risk``, ``--tail``) or for trials stored before their evidence was.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ParamSpec, TypeVar

from sweep import ledger, records
from sweep.calibration import Calibration, calibrate
from sweep.errors import StudyNotFoundError, UserError
from sweep.spec import PARAM_NAMES, StudySpec
from sweep.stability import (
    Diagnosis,
    judge_spread,
    rediagnose,
    residual_spreads,
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
"""The attrs a row of the ranking shows (:class:`RankedTrial`)."""
_ORDER_KEYS = (
    "tail_mean",
    "baseline",
    "degradation",
    "repeat_means",
    "evidence",
    "n_repeats",
    records.FAIL_REASON,
    ledger.VERIFIES,
    records.FIXES,
)
"""The attrs that place every trial in the ranking: with the sort field, what :func:`_latest` and
:func:`_study_judge` read (the per-split reference, the repeat spreads, the calibration)."""
_STATUS_KEYS = (*_ORDER_KEYS, "score", "epochs", ledger.EPOCHS_TRAINED)
"""What ``sweep status`` reads of every trial: the ranking's order, the counts, the epochs trained."""
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _without_gc(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """``fn`` with Python's cyclic garbage collector paused while it runs.

    A large study's rows are hundreds of thousands of JSON values and rows,
    none in a reference cycle: each pass of the collector walks them all again
    and frees nothing (``sweep rank`` on 100,000 trials: 5.5 s with it, 4.6 s paused).
    """

    @functools.wraps(fn)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused


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
        """:func:`dataclasses.asdict`: its lists and dicts copied; made directly, as ``--format json`` does 100,000."""
        return {name: _copied(getattr(self, name)) for name in _RANKED_FIELDS}


_RANKED_FIELDS = tuple(f.name for f in fields(RankedTrial))


def _copied(value: Any) -> Any:
    """``value`` as :func:`dataclasses.asdict` copies a field: JSON's lists and dicts anew, all else deep-copied."""
    if type(value) is dict:
        return {k: _copied(v) for k, v in value.items()}
    if type(value) is list:
        return [_copied(v) for v in value]
    if value is None or type(value) in (str, int, float, bool):
        return value
    return copy.deepcopy(value)


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


@_without_gc
def study_status(study_name: str, *, url: str) -> StudyStatus:
    """Counts by state, progress toward the target and the best trial; reads only the storage."""
    study = _open(study_name, url)
    whole = study.engine is None
    rows = _read_rows(study, keys=_KEYS if whole else _STATUS_KEYS, params=whole)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    done = sum(_counts(r) for r in rows)
    best, _ = _ranked(study, rows, by="score", include_all=False, top=1, fixes={}, whole=whole)
    attrs = study.user_attrs
    return StudyStatus(
        name=study_name,
        storage=mask(url),
        data=attrs.get(records.DATA),
        target=attrs.get(records.TARGET),
        counts=counts,
        done=done,
        best=best[0] if best else None,
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


@dataclass(frozen=True)
class Ranking:
    """The first trials of a ranking, and how many it holds (:func:`ranking`)."""

    trials: list[RankedTrial]
    total: int
    """How many trials the whole ranking holds (``len(trials)`` unless ``top`` cut it)."""


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
    return ranking(study_name, url=url, top=top, by=by, risk=risk, tail=tail, include_all=include_all).trials


@_without_gc
def ranking(
    study_name: str,
    *,
    url: str,
    top: int | None = None,
    by: str = "score",
    risk: float | None = None,
    tail: int | None = None,
    include_all: bool = False,
) -> Ranking:
    """:func:`rank`'s first ``top`` trials and the size of the whole ranking.

    With ``top``, only those trials are read whole and judged again with the
    study (their params, hint and per-repeat lists); every other trial is read
    only as far as its place in the ranking needs. The trials are those
    :func:`rank` lists first, with the same fields.

    Raises:
        UserError: an unknown ``by`` field, or a bad ``risk``/``tail``/``top``.
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
    whole = rescore or top is None or study.engine is None
    if whole:
        rows = _read_rows(study, keys=_KEYS + ((records.CURVES,) if rescore else ()))
    else:
        rows = _read_rows(study, keys=(*_ORDER_KEYS, by), params=False)
    if rescore:
        spec = stored_spec(study.name, study.user_attrs)
        tail = tail or spec.stability.tail
        rows = [_rescore(r, risk=risk if risk is not None else spec.stability.risk, tail=tail) for r in rows]
    fixes = {r.number: r.attrs[records.FIXES] for r in rows if isinstance(r.attrs.get(records.FIXES), int)}
    trials, total = _ranked(
        study, _latest(rows), by=by, include_all=include_all, top=top, fixes=fixes, whole=whole, tail=tail
    )
    return Ranking(trials, total)


def _ranked(
    study: _Study,
    rows: list[TrialRow],
    *,
    by: str,
    include_all: bool,
    top: int | None,
    fixes: dict[int, int],
    whole: bool,
    tail: int | None = None,
) -> tuple[list[RankedTrial], int]:
    """The first ``top`` rows of the ranking of ``rows``, judged with the study; and how many rows it ranks.

    Every row is placed (:func:`_order`); only the rows returned are judged
    again (:func:`_judge_row`), and, unless ``rows`` are ``whole`` (every attr
    in :data:`_KEYS`, and the params), read whole first (:func:`_filled`).
    """
    rows, judge = _study_judge(rows, study, tail=tail)
    chosen = _order(rows, by=by, include_all=include_all, spreads=judge.spreads if judge else {})
    total = len(chosen)
    if top is not None:
        chosen = chosen[:top]
    if not whole:
        chosen = _filled(study, chosen)
    if judge is not None:
        chosen = [_judge_row(r, judge) for r in chosen]
    return _ranked_trials(chosen, fixes=fixes), total


def _filled(study: _Study, rows: list[TrialRow]) -> list[TrialRow]:
    """``rows`` with their params and every attr in :data:`_KEYS`; what they hold already is kept."""
    whole = {r.number: r for r in _read_rows(study, keys=_KEYS, numbers={r.number for r in rows})}
    out = []
    for row in rows:
        read = whole.get(row.number)
        out.append(row if read is None else TrialRow(row.number, row.state, read.params, {**read.attrs, **row.attrs}))
    return out


def _latest(rows: list[TrialRow]) -> list[TrialRow]:
    """``rows`` less the trials whose configuration a later trial verified (:func:`sweep.ledger.superseded`)."""

    def n(r: TrialRow) -> int:
        v = r.attrs.get("n_repeats")
        return v if isinstance(v, int) else 0

    if not any(ledger.VERIFIES in r.attrs for r in rows):
        return rows  # every trial is its own configuration: none is superseded
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


@dataclass(frozen=True)
class _StudyJudge:
    """What judging one trial again with the whole study needs (:func:`_study_judge`)."""

    reference: tuple[float, ...] | None
    calibration: Calibration | None
    spreads: dict[int, float | None]
    """Each complete trial's repeat spread around the per-split reference."""
    tail: int


def _study_judge(
    rows: list[TrialRow], study: _Study, *, tail: int | None = None
) -> tuple[list[TrialRow], _StudyJudge | None]:
    """``rows`` (with the rules' evidence, :func:`_with_evidence`) and what judges each of them with the study.

    Every trial trains on the same splits, so the median tail mean of the
    complete trials on each split is what that split does to every
    configuration; a trial's ``repeat_spread`` is the spread of its residuals
    against it. Once the study has enough complete trials, every complete
    trial's label is judged again with the study's calibration
    (:func:`sweep.stability.rediagnose`); a pruned trial can only become
    ``diverged`` that way. Before that, only trials stored as ``stable`` or
    ``unstable_across_repeats`` can change label (:func:`sweep.stability.judge_spread`).
    Returns no judge for a study without a stored spec.
    """
    raw_spec = study.user_attrs.get(records.SPEC)
    if not isinstance(raw_spec, dict):
        return rows, None
    spec = stored_spec(study.name, study.user_attrs)
    repeats, tail = spec.training.repeats, tail or spec.stability.tail
    complete = [r for r in rows if r.state == "COMPLETE" and isinstance(r.attrs.get("repeat_means"), list)]
    reference = split_reference([r.attrs["repeat_means"] for r in complete], n_repeats=repeats)
    rows = _with_evidence(rows, study, tail=tail, risk=spec.stability.risk)
    measured = [r for r in rows if r.state == "COMPLETE" and _nums(r.attrs.get("repeat_means"))]
    spreads = dict(
        zip(
            (r.number for r in measured),
            residual_spreads([r.attrs["repeat_means"] for r in measured], reference),
            strict=True,
        )
    )
    calibration = calibrate({**r.attrs, "repeat_spread": spreads[r.number]} for r in measured)
    return rows, _StudyJudge(reference, calibration, spreads, tail)


def _judge_row(row: TrialRow, judge: _StudyJudge) -> TrialRow:
    """``row`` with its diagnosis, hint and repeat spread judged with the whole study (:func:`_study_judge`)."""
    calibration, tail = judge.calibration, judge.tail
    attrs = dict(row.attrs)
    if row.state == "PRUNED" and calibration is not None:
        again = rediagnose(attrs, calibration=calibration, reference=None, tail=tail)
        if again is not None and again[0] is Diagnosis.DIVERGED:
            attrs.update(diagnosis=again[0].value, hint=again[1])
    if row.number not in judge.spreads:
        return TrialRow(row.number, row.state, row.params, attrs)
    again = None
    if calibration is not None:
        again = rediagnose(attrs, calibration=calibration, reference=judge.reference, tail=tail)
    judged = (Diagnosis.STABLE.value, Diagnosis.UNSTABLE_ACROSS_REPEATS.value)
    if again is None and attrs.get("diagnosis") in judged and _num(attrs.get("tail_mean")) is not None:
        again = judge_spread(
            tail_mean=float(attrs["tail_mean"]),
            tail_std=_num(attrs.get("tail_std")) or 0.0,
            repeat_means=attrs["repeat_means"],
            reference=judge.reference,
            window=window_words(tail, attrs.get("epochs") or [tail]),
            baseline=_num(attrs.get("baseline")),
        )
    if again is not None:
        attrs.update(diagnosis=again[0].value, hint=again[1])
    attrs["repeat_spread"] = judge.spreads[row.number]
    return TrialRow(row.number, row.state, row.params, attrs)


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
    read = _read_rows(study, keys=(records.CURVES,), numbers=lacking, params=False)
    curves = {r.number: r.attrs.get(records.CURVES) for r in read}
    out = []
    for row in rows:
        raw = curves.get(row.number)
        if row.number in lacking and isinstance(raw, dict) and raw.get("val_loss"):
            stored = records.StoredCurves.from_attr(raw)
            fresh = records.rescore(stored, risk=risk, tail=tail, baseline=_num(row.attrs.get("baseline")))
            row = TrialRow(row.number, row.state, row.params, {**row.attrs, "evidence": fresh.get("evidence")})
        out.append(row)
    return out


def _order(
    rows: Sequence[TrialRow], *, by: str, include_all: bool, spreads: dict[int, float | None]
) -> list[TrialRow]:
    """The rows the ranking lists, in its order: complete trials (then, ``include_all``, the others by state),
    each state's by ``by`` (lower first; those without it last) and then by number.

    ``spreads`` (:attr:`_StudyJudge.spreads`) replaces the stored ``repeat_spread``, as judging does.
    """
    chosen = [r for r in rows if include_all or r.state == "COMPLETE"]

    def key(r: TrialRow) -> tuple[int, int, float, int]:
        value = spreads[r.number] if by == "repeat_spread" and r.number in spreads else r.attrs.get(by)
        if isinstance(value, int | float) and math.isfinite(value):
            return (STATE_ORDER.get(r.state, 9), 0, float(value), r.number)
        return (STATE_ORDER.get(r.state, 9), 1, 0.0, r.number)

    return sorted(chosen, key=key)


def _ranked_trials(rows: Sequence[TrialRow], *, fixes: dict[int, int]) -> list[RankedTrial]:
    """``rows``, in their order, as the ranking's rows; ``fixes`` maps a fix's trial to the trial it remedies
    (a verification inherits it)."""
    out = []
    for i, r in enumerate(rows, start=1):
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


def _read_rows(
    study: _Study, *, keys: Sequence[str], numbers: Collection[int] | None = None, params: bool = True
) -> list[TrialRow]:
    """Every trial's (or the trials ``numbers``') number, state, params and the attrs named in ``keys``.

    An attr is read whole (:func:`records.attr`). Without ``params``, a row's params are left empty
    (the Optuna API reads them anyway).
    """
    if study.engine is None:
        return [
            TrialRow(t.number, t.state.name, dict(t.params), {k: v for k in keys if (v := _attr(t, k)) is not _ABSENT})
            for t in study.optuna_study.get_trials(deepcopy=False)
            if numbers is None or t.number in numbers
        ]
    import sqlalchemy as sa

    trials = _TABLES["trials"]
    mine = trials.c.study_id == study.study_id
    few = numbers is not None and len(numbers) <= _FEW
    with study.engine.connect() as conn:
        query = sa.select(trials.c.trial_id, trials.c.number, trials.c.state).where(mine)
        if few and numbers is not None:
            query = query.where(trials.c.number.in_(sorted(numbers)))
        found_trials = _fetch(conn, query)
        states: dict[Any, str] = {}
        by_id = {
            tid: TrialRow(int(num), states.get(state) or states.setdefault(state, _state(state)), {}, {})
            for tid, num, state in found_trials
            if numbers is None or num in numbers
        }
        if not by_id:
            return []
        # A study that holds most of the storage's trials reads every row of a table (then filtered here):
        # one pass in storage order, cheaper than finding each trial's rows by its id.
        every = sa.select(sa.func.count()).select_from(trials)
        alone = not few and len(found_trials) >= _ALONE * _fetch(conn, every)[0][0]

        def of_these(table: Any, columns: Sequence[str], *where: Any) -> Any:
            """``trial_id`` and ``columns`` of the rows of ``table`` that belong to the trials read (or more)."""
            query = sa.select(table.c.trial_id, *(table.c[c] for c in columns))
            if few:
                return query.where(table.c.trial_id.in_(list(by_id)), *where)
            if alone:
                return query.where(*where)
            return query.join(trials, trials.c.trial_id == table.c.trial_id).where(mine, *where)

        # User attrs first, then the system attrs that hold some of them whole (records.split_attrs).
        named = {k: k for k in keys}
        moved = {records.system_key(k): k for k in keys}
        for table, wanted in ((_TABLES["trial_user_attributes"], named), (_TABLES["trial_system_attributes"], moved)):
            found = _fetch(conn, of_these(table, ("key", "value_json"), table.c.key.in_(list(wanted))))
            for (tid, key, _), value in zip(found, _loads_all([v for _, _, v in found]), strict=True):
                if (row := by_id.get(tid)) is not None:
                    row.attrs[wanted[key]] = value
        if not params:
            return list(by_id.values())
        distributions: dict[str, dict[str, Any]] = {}
        external: dict[tuple[str, float], Any] = {}
        params_query = of_these(_TABLES["trial_params"], ("param_name", "param_value", "distribution_json"))
        for tid, name, value, dist_json in _fetch(conn, params_query):
            key = (dist_json, value)
            if key not in external:
                if dist_json not in distributions:
                    distributions[dist_json] = json.loads(dist_json)
                external[key] = _external(distributions[dist_json], value)
            if (row := by_id.get(tid)) is not None:
                row.params[name] = external[key]
    return list(by_id.values())


_FEW = 500
"""Up to this many trials are read by their ids; more, with their study's (then filtered)."""
_ALONE = 0.75
"""A study with at least this share of the storage's trials reads whole tables (then filtered)."""


def _fetch(conn: Any, query: Any) -> list[Any]:
    """Every row of ``query`` as the driver returns it.

    The columns of :func:`_tables` have no SQL type, so SQLAlchemy converts
    nothing; the driver's tuples hold what its rows would, without building a
    row object for each of a large study's million attrs.
    """
    result = conn.execute(query)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def _loads_all(texts: list[str]) -> list[Any]:
    """``[json.loads(t) for t in texts]``, parsed as one JSON array: one call into the parser, not one per value.

    Optuna writes each attr with ``json.dumps``, so each text is one JSON value
    and the array holds one element per text; texts that are not (the array's
    length tells) are parsed one by one, which raises as it always did.
    """
    if not texts:
        return []
    try:
        values = json.loads("[" + ",".join(texts) + "]")
    except (TypeError, ValueError):
        values = None
    if not isinstance(values, list) or len(values) != len(texts):
        return [json.loads(t) for t in texts]
    return values


def external_value(distribution_json: str, internal: float) -> Any:
    """A parameter's value as the user sees it, from Optuna's stored form (no Optuna import).

    Optuna stores a categorical choice as its index and numbers as floats;
    ``distribution_json`` is ``{"name": ..., "attributes": {...}}``.
    """
    return _external(json.loads(distribution_json), internal)


def _external(dist: dict[str, Any], internal: float) -> Any:
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
