"""``sweep rank`` and ``sweep status`` as they were computed before 2026-12-06: the oracle of tests/test_report.py.

Every trial is read whole (here through Optuna's API, not SQL), every one is
judged with the study, and only then is the ranking sorted and cut: the
straightforward reading that :mod:`sweep.report` now does in less time (a few
attrs of every trial, the whole of only the trials it shows). The study's
calibration leaves each trial out by copying the study's numbers, and each
repeat spread is computed trial by trial, as before. Keep this file as it is
unless what the ranking shows is meant to change.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna

from sweep import ledger, records
from sweep.calibration import FLOOR, MIN_TRIALS, Calibration, Scales, _row, calibrate
from sweep.report import (
    _KEYS,
    NUMERIC_FIELDS,
    STATE_ORDER,
    RankedTrial,
    StudyStatus,
    TrialRow,
    _ints,
    _num,
    _nums,
    _rescore,
)
from sweep.spec import PARAM_NAMES
from sweep.stability import Diagnosis, judge_spread, rediagnose, residual_spread, window_words
from sweep.storage import load_study, mask, stored_spec


def rank_before(
    study_name: str,
    *,
    url: str,
    top: int | None = None,
    by: str = "score",
    risk: float | None = None,
    tail: int | None = None,
    include_all: bool = False,
) -> list[RankedTrial]:
    study = load_study(study_name, url)
    rescore = risk is not None or tail is not None
    rows = _rows(study, _KEYS + ((records.CURVES,) if rescore else ()))
    if rescore:
        spec = stored_spec(study_name, study.user_attrs)
        tail = tail or spec.stability.tail
        rows = [_rescore(r, risk=risk if risk is not None else spec.stability.risk, tail=tail) for r in rows]
    fixes = {r.number: r.attrs[records.FIXES] for r in rows if isinstance(r.attrs.get(records.FIXES), int)}
    rows = _judge_spreads(_latest(rows), study, tail=tail)
    ranked = _rank_rows(rows, by=by, include_all=include_all, fixes=fixes)
    return ranked[:top] if top else ranked


def status_before(study_name: str, *, url: str) -> StudyStatus:
    study = load_study(study_name, url)
    rows = _judge_spreads(_rows(study, _KEYS), study)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    ranked = _rank_rows(rows, by="score", include_all=False)
    attrs = study.user_attrs
    raw = attrs.get(records.SPEC)
    section = raw.get("study") if isinstance(raw, dict) else None
    budget = section.get("budget") if isinstance(section, dict) else None
    return StudyStatus(
        name=study_name,
        storage=mask(url),
        data=attrs.get(records.DATA),
        target=attrs.get(records.TARGET),
        counts=counts,
        done=sum(records.counts(r.state, r.attrs.get(records.FAIL_REASON)) for r in rows),
        best=ranked[0] if ranked else None,
        epochs=sum(ledger.trained_of(r.attrs.get(ledger.EPOCHS_TRAINED), r.attrs.get("epochs")) for r in rows),
        budget=budget if isinstance(budget, int) else None,
    )


_ABSENT = object()


def _rows(study: optuna.Study, keys: Sequence[str]) -> list[TrialRow]:
    return [
        TrialRow(
            t.number,
            t.state.name,
            dict(t.params),
            {k: v for k in keys if (v := records.trial_attr(t, k, _ABSENT)) is not _ABSENT},
        )
        for t in study.get_trials(deepcopy=False)
    ]


def _latest(rows: list[TrialRow]) -> list[TrialRow]:
    def n(r: TrialRow) -> int:
        v = r.attrs.get("n_repeats")
        return v if isinstance(v, int) else 0

    gone = ledger.superseded((r.number, r.state, ledger.key_of(r.number, r.attrs), n(r)) for r in rows)
    return [r for r in rows if r.number not in gone]


def _judge_spreads(rows: list[TrialRow], study: optuna.Study, *, tail: int | None = None) -> list[TrialRow]:
    raw_spec = study.user_attrs.get(records.SPEC)
    if not isinstance(raw_spec, dict):
        return rows
    spec = stored_spec(study.study_name, study.user_attrs)
    repeats, tail = spec.training.repeats, tail or spec.stability.tail
    complete = [r for r in rows if r.state == "COMPLETE" and isinstance(r.attrs.get("repeat_means"), list)]
    reference = _split_reference([r.attrs["repeat_means"] for r in complete], n_repeats=repeats)
    rows = _with_evidence(rows, study, tail=tail, risk=spec.stability.risk)
    spreads = {
        r.number: residual_spread(r.attrs["repeat_means"], reference)
        for r in rows
        if r.state == "COMPLETE" and _nums(r.attrs.get("repeat_means"))
    }
    fresh = calibrate({**r.attrs, "repeat_spread": spreads.get(r.number)} for r in rows if r.number in spreads)
    calibration = None if fresh is None else _CopyingCalibration(**dataclasses.asdict(fresh))
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


def _with_evidence(rows: list[TrialRow], study: optuna.Study, *, tail: int, risk: float) -> list[TrialRow]:
    lacking = {
        r.number
        for r in rows
        if r.state in ("COMPLETE", "PRUNED")
        and _num(r.attrs.get("tail_mean")) is not None
        and not isinstance(r.attrs.get("evidence"), dict)
    }
    if not lacking:
        return rows
    curves = {r.number: r.attrs.get(records.CURVES) for r in _rows(study, (records.CURVES,))}
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
                params={**{k: r.params[k] for k in (*PARAM_NAMES, "layer_norm") if k in r.params}, **r.params},
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


def _split_reference(repeat_means: Sequence[Sequence[float]], *, n_repeats: int) -> tuple[float, ...] | None:
    from sweep.stability import MIN_REFERENCE_TRIALS

    if n_repeats < 2:
        return None
    rows = [
        [float(m) for m in means[:n_repeats]]
        for means in repeat_means
        if len(means) >= n_repeats and all(isinstance(m, int | float) and math.isfinite(m) for m in means[:n_repeats])
    ]
    if len(rows) < MIN_REFERENCE_TRIALS:
        return None
    return tuple(float(x) for x in np.median(np.array(rows, dtype=np.float64), axis=0))


@dataclasses.dataclass(frozen=True)
class _CopyingCalibration(Calibration):
    """:class:`Calibration` whose :meth:`scales` leaves a trial out by copying the study's numbers without it."""

    def scales(self, own: Mapping[str, Any] | None = None) -> Scales | None:
        mine = _row(own) if own is not None else None
        jitters, gains, degradations, falls = self.jitters, self.gains, self.degradations, self.falls
        spreads = self.spreads
        if mine is not None and mine.jitter in jitters:
            jitters, gains = _without(jitters, mine.jitter), _without(gains, mine.gain)
            degradations, falls = _without(degradations, mine.degradation), _without(falls, mine.fall)
            if mine.spread is not None:
                spreads = _without(spreads, mine.spread)
        if len(jitters) < MIN_TRIALS:
            return None
        noise = _median(jitters)
        return Scales(
            trials=len(jitters),
            noise=noise,
            gain=max(_median(gains), noise, FLOOR),
            best_gain=self.best_gain,
            degradation=_median(degradations),
            fall=_median(falls),
            spread=_median(spreads) if len(spreads) >= MIN_TRIALS else None,
        )


def _without(values: tuple[float, ...], value: float) -> tuple[float, ...]:
    i = bisect.bisect_left(values, value)
    if i < len(values) and values[i] == value:
        return values[:i] + values[i + 1 :]
    return values


def _median(values: tuple[float, ...]) -> float:
    n = len(values)
    if n == 0:
        return 0.0
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
