"""Validation-loss stability: the score that ranks trials, and why a trial is unstable.

A trial is trained up to ``R`` times (repeats). Repeat ``r`` trains on split
``r`` with seed ``base + r``, the same split and seed for every trial of a
study, and yields a validation-loss curve ``v_r`` and, optionally, a
training-loss curve ``u_r``: one float per epoch. Curves may differ in length
(early stopping, pruning). The *tail* of a curve is its last
``w_r = min(tail, len(v_r))`` points, with mean ``m_r`` and population variance
``s_r**2``. :func:`summarize` returns a frozen :class:`Summary`::

    tail_mean = mean over repeats of m_r          (a cross-validated estimate)
    tail_std  = sqrt(mean over repeats of s_r**2) (how much each run still moves at its end)
    score     = tail_mean + risk * tail_std       (lower is better)

The splits differ in difficulty for every configuration alike: a harder split
raises every trial's ``m_r`` by about the same amount. The score therefore
holds no spread *between* repeats: ``tail_mean`` moves by the same amount for
every trial that ran the same repeats, and ``tail_std`` is measured within each
run (oscillation and rise at the end of training). What the configuration
itself adds to the split-to-split spread is :attr:`Summary.repeat_spread`: the
spread of the residuals ``m_r - ref_r`` against the study's per-split reference
``ref_r`` (the median ``m_r`` of the study's complete trials, see
:func:`split_reference`), and only that can make a trial
``unstable_across_repeats``.

A one-repeat summary's score is exactly :func:`repeat_score` of that curve:
that is the value the first repeat reports to the pruner every epoch, so a
pruned trial's Optuna value and its ranked score are one number.

Non-finite input (NaN, +inf or -inf anywhere in a validation or training curve)
gives ``score == math.inf`` and :attr:`Diagnosis.DIVERGED`; every tail
statistic (``tail_mean``, ``tail_std``, ``degradation``, ``oscillation``, and
``gap`` when training curves are given) is then ``math.inf`` too, so a
:class:`Summary` never holds NaN. ``best`` stays the lowest finite validation
loss seen (``math.inf`` if there is none). The same applies when finite losses
are so large that a statistic or the score overflows.

Each trial gets one :class:`Diagnosis`, the first of :data:`RULES` that holds.
Once the study has :data:`sweep.calibration.MIN_TRIALS` other complete
trials, the thresholds are calibrated on them (:data:`CALIBRATED_RULES`,
:mod:`sweep.calibration`): a trial is named for what sets it apart from the
study, in loss differences, so a constant added to every curve of a split
changes no label. Before that, the fixed rules below apply: thresholds
relative to the loss level, so they mean the same for a cross-entropy near 2
and a mean squared error near 1e-4. The quantities the fixed rules use:

* ``level = max(|tail_mean|, 1e-8)``;
* ``first``: the mean over repeats of the first-epoch validation loss;
* ``baseline``: the loss of a model that learned nothing (the training-class
  prior, or the training mean), averaged over the repeats' splits; given by
  the caller, or ``None`` when unknown;
* ``jitter``: the part of ``oscillation`` that a steady trend does not explain,
  ``(sum of |epoch-to-epoch changes| - sum of |last - first| per tail) / number
  of changes``, pooled over the repeats' tails; 0 for tails that only fall or
  only rise;
* ``val_slope``: the least-squares slope of each validation tail against the
  epoch number, averaged over the repeats whose tail has at least two points
  (0 if none), divided by ``level``: the relative change per epoch;
* ``train_slope``: the same for the training tails, divided by
  ``train_level = max(|train tail mean|, |lowest train loss|, 1e-8)``;
* ``val_rose``: ``degradation > 0.1 * level`` and ``val_slope >= -0.01``: the
  end of training sits above the lowest loss it had reached and is not still
  falling.

This module imports numpy only: read-only commands such as ``sweep rank`` use it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sweep.calibration import BASELINE_TOLERANCE, DIVERGENCE_RISE, Calibration, Scales, calibrate
from sweep.remedy import REMEDIES

__all__ = [
    "BASELINE_TOLERANCE",
    "CALIBRATED_RULES",
    "DEGRADATION_TOLERANCE",
    "DIVERGENCE_RISE",
    "HINTS",
    "LEVEL_FLOOR",
    "MIN_REFERENCE_TRIALS",
    "OSCILLATION_TOLERANCE",
    "RULES",
    "SLOPE_TOLERANCE",
    "SPREAD_TOLERANCE",
    "Calibration",
    "Diagnosis",
    "Evidence",
    "Summary",
    "calibrate",
    "judge_spread",
    "rediagnose",
    "repeat_score",
    "residual_spread",
    "split_reference",
    "summarize",
    "window_words",
]

LEVEL_FLOOR = 1e-8
"""Smallest loss level that relative thresholds are measured against."""


SPREAD_TOLERANCE = 0.10
"""Unstable across repeats when ``repeat_spread > SPREAD_TOLERANCE * level``."""

OSCILLATION_TOLERANCE = 0.05
"""Oscillating when ``jitter > OSCILLATION_TOLERANCE * level``."""

DEGRADATION_TOLERANCE = 0.10
"""Validation loss rose when ``degradation > DEGRADATION_TOLERANCE * level`` and is not falling."""

SLOPE_TOLERANCE = 0.01
"""Falling: relative slope per epoch ``< -SLOPE_TOLERANCE``; rising: ``> +SLOPE_TOLERANCE``."""

MIN_REFERENCE_TRIALS = 3
"""Fewest complete trials with every repeat that make a per-split reference."""

FloatArray = npt.NDArray[np.float64]
LossCurve = Sequence[float] | npt.NDArray[np.floating[Any]]
"""One repeat's per-epoch losses: a list of floats or a 1-D array."""
LossCurves = Sequence[LossCurve] | npt.NDArray[np.floating[Any]]
"""One curve per repeat: a list of curves or a 2-D array (equal lengths)."""


class Diagnosis(str, enum.Enum):
    """Why a trial's validation loss is (un)stable; the value is the lowercase name."""

    STABLE = "stable"
    NOT_LEARNING = "not_learning"
    OVERFITTING = "overfitting"
    OSCILLATING = "oscillating"
    DIVERGED = "diverged"
    UNDERFITTING = "underfitting"
    UNSTABLE_ACROSS_REPEATS = "unstable_across_repeats"
    PRUNED = "pruned"
    """Stopped before its last repeat ended (pruner or racing): set by the objective, not by a rule."""

    def __str__(self) -> str:
        return self.value


HINTS: dict[Diagnosis, str] = {d: REMEDIES[d.value].hint() for d in Diagnosis}
"""The remedy for each diagnosis (:data:`sweep.remedy.REMEDIES`); :attr:`Summary.hint` ends with it."""

RULES: tuple[tuple[Diagnosis, str], ...] = (
    (
        Diagnosis.DIVERGED,
        "any validation or training loss is NaN, +inf or -inf; or "
        f"`tail_mean - first > {DIVERGENCE_RISE:g} * max(|first|, {LEVEL_FLOOR:g})` "
        f"(for positive losses: `tail_mean > {DIVERGENCE_RISE + 1:g} * first`).",
    ),
    (
        Diagnosis.NOT_LEARNING,
        f"a baseline is known and `tail_mean >= {1 - BASELINE_TOLERANCE:g} * baseline` "
        f"(the trial ends within {BASELINE_TOLERANCE:.0%} of a model that learned nothing, or above it).",
    ),
    (
        Diagnosis.OSCILLATING,
        f"`jitter > {OSCILLATION_TOLERANCE:g} * level`; or `val_rose` and, with training "
        f"curves, `train_slope > +{SLOPE_TOLERANCE:g}` (training loss rose along with the "
        "validation loss: the optimiser overshoots, the model does not overfit).",
    ),
    (
        Diagnosis.OVERFITTING,
        "`val_rose` (the end of training sits above the lowest loss it had reached and is not still falling, "
        f"while training loss, when given, kept falling or stayed flat: "
        f"`train_slope <= +{SLOPE_TOLERANCE:g}`).",
    ),
    (
        Diagnosis.UNDERFITTING,
        f"`val_slope < -{SLOPE_TOLERANCE:g}` and, when training curves are given, "
        f"`train_slope < -{SLOPE_TOLERANCE:g}` (both still falling by more than "
        f"{SLOPE_TOLERANCE:.0%} of their level per epoch).",
    ),
    (
        Diagnosis.UNSTABLE_ACROSS_REPEATS,
        f"`R >= 2`, a per-split reference exists and `repeat_spread > {SPREAD_TOLERANCE:g} * level` "
        "(the repeats disagree beyond what the splits cause for every configuration).",
    ),
    (Diagnosis.STABLE, "none of the above."),
)
"""The fixed diagnosis rules in precedence order (a study not yet calibrated): the first that holds names the trial."""

CALIBRATED_RULES: tuple[tuple[Diagnosis, str], ...] = (
    (
        Diagnosis.DIVERGED,
        "any loss is NaN, +inf or -inf; or `tail_mean - start > "
        f"{DIVERGENCE_RISE:g} * gain` (`start`: the higher of the first epoch's loss and the baseline).",
    ),
    (
        Diagnosis.NOT_LEARNING,
        f"a baseline is known and `baseline - tail_mean < max({BASELINE_TOLERANCE:g} * best_gain, noise)` "
        f"(the trial ends less than {BASELINE_TOLERANCE:.0%} as far below the baseline as the study's best).",
    ),
    (
        Diagnosis.OSCILLATING,
        "`jitter > max(2 * median jitter, 0.05 * gain)`; or the rise below and `train_slope > +0.01` "
        "(training loss rose with the validation loss, by 1% of its fall per epoch).",
    ),
    (
        Diagnosis.OVERFITTING,
        "`degradation > max(2 * median degradation, material)` and not still falling, "
        "while training loss did not rise.",
    ),
    (
        Diagnosis.UNDERFITTING,
        "`-val_slope > max(2 * median fall, material / window)` (still falling per epoch) and, with training "
        "curves, `train_slope < -0.01`.",
    ),
    (
        Diagnosis.UNSTABLE_ACROSS_REPEATS,
        "a per-split reference exists and `repeat_spread > max(2 * median repeat_spread, material)`.",
    ),
    (Diagnosis.STABLE, "none of the above."),
)
"""The calibrated rules: medians are over the study's other complete trials, `material = max(0.05 * gain, noise)`.

See :mod:`sweep.calibration` for ``noise``, ``gain`` and ``best_gain``.
"""


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What the calibrated rules read from a trial's curves, in loss differences (see :mod:`sweep.calibration`).

    Attributes:
        first: Mean over repeats of the first epoch's validation loss.
        jitter: The tails' epoch-to-epoch movement that no trend explains, per change (pooled).
        val_slope: Mean least-squares slope of the validation tails, in loss per epoch.
        train_slope: Mean slope of the training tails per epoch, as a fraction of how far the
            training loss fell (its first epoch minus its lowest); ``None`` without training curves.
        window: The longest tail, in epochs.
    """

    first: float
    jitter: float
    val_slope: float
    train_slope: float | None
    window: int

    def to_attr(self) -> dict[str, float | int | None]:
        return {
            "first": _sig(self.first),
            "jitter": _sig(self.jitter),
            "val_slope": _sig(self.val_slope),
            "train_slope": None if self.train_slope is None else _sig(self.train_slope),
            "window": int(self.window),
        }

    @classmethod
    def from_attr(cls, raw: Any) -> Evidence | None:
        """The stored form read back; ``None`` when absent (trials written before 2026-12-06) or damaged."""
        if not isinstance(raw, dict):
            return None
        first, jitter, slope = (_number(raw.get(k)) for k in ("first", "jitter", "val_slope"))
        train, window = raw.get("train_slope"), raw.get("window")
        if first is None or jitter is None or slope is None or (train is not None and _number(train) is None):
            return None
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            return None
        return cls(first, jitter, slope, _number(train), window)


@dataclasses.dataclass(frozen=True)
class Summary:
    """The stability of one trial over its repeats.

    Attributes:
        score: ``tail_mean + risk * tail_std``; ``math.inf`` when any loss is non-finite.
        tail_mean: Mean over repeats of each repeat's tail mean ``m_r``.
        tail_std: ``sqrt(mean over repeats of s_r**2)``: the spread within each run's tail.
        best: Lowest validation loss seen in any repeat.
        degradation: Mean over the tail of (each epoch's loss - the lowest loss up to that
            epoch), averaged over repeats: how far the end of training sits above the best it
            had reached; 0.0 for a curve that only fell.
        oscillation: Mean absolute epoch-to-epoch change within the tails, pooled;
            0.0 when every tail has one point.
        gap: Tail validation mean minus tail training mean (each averaged over repeats);
            ``None`` without training curves.
        repeat_spread: Population standard deviation of ``m_r - ref_r`` over the repeats,
            against the per-split reference; ``None`` for one repeat or without a reference.
        baseline: The loss of a model that learned nothing, as given; ``None`` if unknown.
        diagnosis: The first rule of :data:`RULES` that holds.
        hint: One line: what was seen, with numbers, then :data:`HINTS` for the diagnosis.
        n_repeats: Number of repeats.
        epochs: Length of each repeat's validation curve, in repeat order.
        repeat_means: Each repeat's tail mean ``m_r``, in repeat order.
        repeat_stds: Each repeat's tail standard deviation ``s_r``, in repeat order.
        evidence: What the calibrated rules read (:class:`Evidence`); ``None`` when a loss is non-finite.
    """

    score: float
    tail_mean: float
    tail_std: float
    best: float
    degradation: float
    oscillation: float
    gap: float | None
    repeat_spread: float | None
    baseline: float | None
    diagnosis: Diagnosis
    hint: str
    n_repeats: int
    epochs: tuple[int, ...]
    repeat_means: tuple[float, ...]
    repeat_stds: tuple[float, ...]
    evidence: Evidence | None = None

    def to_attrs(self) -> dict[str, Any]:
        """Plain JSON-safe values (``inf`` stays a float) for an Optuna user attribute."""
        return {
            "score": float(self.score),
            "tail_mean": float(self.tail_mean),
            "tail_std": float(self.tail_std),
            "best": float(self.best),
            "degradation": float(self.degradation),
            "oscillation": float(self.oscillation),
            "gap": None if self.gap is None else float(self.gap),
            "repeat_spread": None if self.repeat_spread is None else float(self.repeat_spread),
            "baseline": None if self.baseline is None else float(self.baseline),
            "diagnosis": self.diagnosis.value,
            "hint": self.hint,
            "n_repeats": int(self.n_repeats),
            "epochs": [int(n) for n in self.epochs],
            "repeat_means": [float(m) for m in self.repeat_means],
            "repeat_stds": [float(s) for s in self.repeat_stds],
            "evidence": None if self.evidence is None else self.evidence.to_attr(),
        }


def repeat_score(curve: LossCurve, *, tail: int = 5, risk: float = 1.0) -> float:
    """The score of one repeat's curve so far: ``m + risk * s`` over its last ``tail`` points.

    Equal, bit for bit, to ``summarize([curve], tail=tail, risk=risk).score``;
    ``math.inf`` when the curve holds a non-finite value or the score overflows.
    This is what the first repeat reports to the pruner after every epoch.
    """
    tail = _check_tail(tail)
    risk = _check_risk(risk)
    (v,) = _as_curves([curve], "curve")
    if not np.isfinite(v).all():
        return math.inf
    with np.errstate(all="ignore"):
        mean, var = _tail_moments(v[-tail:])
        score = _combine(np.array([mean]), np.array([var]), risk)
    return score if math.isfinite(score) else math.inf


def summarize(
    val_curves: LossCurves,
    train_curves: LossCurves | None = None,
    *,
    tail: int = 5,
    risk: float = 1.0,
    baseline: float | None = None,
    reference: Sequence[float] | None = None,
    calibration: Calibration | None = None,
) -> Summary:
    """Score and diagnose one trial from its per-repeat loss curves.

    Args:
        val_curves: One validation-loss curve per repeat (lists or 1-D arrays),
            each at least one epoch long, in repeat order; lengths may differ.
        train_curves: One training-loss curve per repeat, in the same order, or
            ``None``. A training curve may differ in length from its validation curve.
        tail: How many final epochs of each curve make its tail (fewer if a curve is shorter).
        risk: Weight of ``tail_std`` in the score; finite and >= 0.
        baseline: The validation loss of a model that learned nothing on these
            splits (see :data:`RULES`), or ``None``.
        reference: The per-split reference tail means (:func:`split_reference`),
            at least one per repeat, or ``None``: without it ``repeat_spread`` is
            ``None`` and no trial is ``unstable_across_repeats``.
        calibration: The study's scales (:func:`sweep.calibration.calibrate`), or
            ``None``: without them the rules use fixed fractions of the loss level.

    Returns:
        A :class:`Summary` that never holds NaN. Its score depends only on the
        set of (split, curve) pairs, not on what other trials saw.

    Raises:
        ValueError: No repeats, an empty or non-1-D curve, a non-numeric value,
            ``train_curves`` with a different number of repeats, ``tail < 1``,
            ``risk`` negative or non-finite, a non-finite ``baseline`` or
            ``reference``, or a ``reference`` shorter than the repeats.
    """
    tail = _check_tail(tail)
    risk = _check_risk(risk)
    vals = _as_curves(val_curves, "val_curves")
    trains = None if train_curves is None else _as_curves(train_curves, "train_curves")
    if trains is not None and len(trains) != len(vals):
        raise ValueError(
            "The 'train_curves' parameter of summarize must hold one curve per repeat "
            f"({len(vals)}, as val_curves). Got {len(trains)} instead."
        )
    if baseline is not None and (isinstance(baseline, bool) or not math.isfinite(float(baseline))):
        raise ValueError(
            f"The 'baseline' parameter of summarize must be a finite number or None. Got {baseline!r} instead."
        )
    ref = _check_reference(reference, len(vals))
    epochs = tuple(len(v) for v in vals)
    base = None if baseline is None else float(baseline)

    broken = sum(
        1
        for r, v in enumerate(vals)
        if not np.isfinite(v).all() or (trains is not None and not np.isfinite(trains[r]).all())
    )
    if broken:
        return _diverged(
            vals,
            trains,
            base,
            f"the loss became NaN or infinite in {broken} of {len(vals)} repeat(s)",
        )

    with np.errstate(all="ignore"):
        stats = _Stats.compute(vals, trains, tail, risk, ref)
    if not (stats.finite() and math.isfinite(stats.score)):
        return _diverged(vals, trains, base, "the loss grew too large to summarise")

    evidence = stats.evidence()
    window = window_words(tail, epochs)
    if calibration is None:
        diagnosis, hint = _diagnose(stats, base, ref, window)
    else:
        scales = calibration.scales()
        if scales is None:
            diagnosis, hint = _diagnose(stats, base, ref, window)
        else:
            diagnosis, hint, _ = _judge_calibrated(stats.facts(), base, ref, window, scales)
    return Summary(
        score=stats.score,
        tail_mean=stats.tail_mean,
        tail_std=stats.tail_std,
        best=stats.best,
        degradation=stats.degradation,
        oscillation=stats.oscillation,
        gap=stats.gap,
        repeat_spread=stats.repeat_spread,
        baseline=base,
        diagnosis=diagnosis,
        hint=hint,
        n_repeats=len(vals),
        epochs=epochs,
        repeat_means=stats.repeat_means,
        repeat_stds=stats.repeat_stds,
        evidence=evidence,
    )


def rediagnose(
    attrs: Mapping[str, Any],
    *,
    calibration: Calibration,
    reference: Sequence[float] | None,
    tail: int,
) -> tuple[Diagnosis, str, float | None] | None:
    """A stored trial's diagnosis judged again with the study's calibration, from its stored summary.

    ``sweep rank`` calls this for every complete trial once the study is
    calibrated, so the labels it prints are those of the whole study.

    Args:
        attrs: The trial's summary attrs (:meth:`Summary.to_attrs`, non-finite numbers as ``None``).
        reference: The study's per-split reference now (:func:`split_reference`), or ``None``.
        tail: The tail the summary used.

    Returns:
        The diagnosis, its hint and the repeat spread; ``None`` when ``attrs`` lack what the
        rules read (a non-finite summary, or a trial written before the evidence was stored).
    """
    evidence = Evidence.from_attr(attrs.get("evidence"))
    scales = calibration.scales(attrs)
    tail_mean, tail_std, degradation, oscillation = (
        _number(attrs.get(k)) for k in ("tail_mean", "tail_std", "degradation", "oscillation")
    )
    raw_means = attrs.get("repeat_means")
    means = [_number(m) for m in raw_means] if isinstance(raw_means, list) else []
    if evidence is None or scales is None:
        return None
    if tail_mean is None or tail_std is None or degradation is None or oscillation is None:
        return None
    if not means or any(m is None for m in means):
        return None
    facts = _Facts(
        tail_mean=tail_mean,
        tail_std=tail_std,
        degradation=degradation,
        oscillation=oscillation,
        repeat_means=tuple(m for m in means if m is not None),
        evidence=evidence,
    )
    base = _number(attrs.get("baseline"))
    epochs = attrs.get("epochs")
    window = window_words(tail, epochs if isinstance(epochs, list) and epochs else [tail])
    return _judge_calibrated(facts, base, reference, window, scales)


def split_reference(repeat_means: Sequence[Sequence[float]], *, n_repeats: int) -> tuple[float, ...] | None:
    """The per-split reference: for each split, the median tail mean of the study's trials.

    Args:
        repeat_means: Each trial's :attr:`Summary.repeat_means`. Only trials with
            at least ``n_repeats`` finite values count.
        n_repeats: How many splits the reference covers.

    Returns:
        ``n_repeats`` medians, or ``None`` when fewer than :data:`MIN_REFERENCE_TRIALS`
        trials count (or ``n_repeats < 2``: one split has no spread to judge).
    """
    if n_repeats < 2:
        return None
    rows = [
        list(map(float, head))
        for means in repeat_means
        if len(head := means[:n_repeats]) == n_repeats and _all_finite(head)
    ]
    if len(rows) < MIN_REFERENCE_TRIALS:
        return None
    return tuple(float(x) for x in np.median(np.array(rows, dtype=np.float64), axis=0))


def _all_finite(values: Sequence[Any]) -> bool:
    """Every one of ``values`` a finite number (``isinstance(v, int | float)``, so ``bool`` too)."""
    if set(map(type, values)) <= {float, int}:  # stored numbers: no Python call per value
        return all(map(math.isfinite, values))
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def residual_spread(repeat_means: Sequence[float], reference: Sequence[float] | None) -> float | None:
    """Population std of ``repeat_means[r] - reference[r]``; ``None`` for one repeat or no reference."""
    if reference is None or len(repeat_means) < 2 or len(reference) < len(repeat_means):
        return None
    residuals = np.array(repeat_means, dtype=np.float64) - np.array(reference[: len(repeat_means)], dtype=np.float64)
    spread = float(residuals.std())
    return spread if math.isfinite(spread) else None


def residual_spreads(
    many: Sequence[Sequence[float]], reference: Sequence[float] | None
) -> list[float | None]:
    """:func:`residual_spread` of each of ``many``: the same numbers, bit for bit, for a study at once.

    The trials with the same number of repeats are one array, and numpy takes
    each row's standard deviation as it takes that of a single trial's
    residuals (the same pairwise sums in the same order); one array operation
    per group instead of a few per trial is what keeps ``sweep rank`` linear
    and fast on a study of 100,000 trials.
    """
    out: list[float | None] = [None] * len(many)
    if reference is None:
        return out
    groups: dict[int, list[int]] = {}
    for i, means in enumerate(many):
        if 2 <= len(means) <= len(reference):
            groups.setdefault(len(means), []).append(i)
    for n, members in groups.items():
        residuals = np.array([many[i] for i in members], dtype=np.float64) - np.array(reference[:n], dtype=np.float64)
        for i, spread in zip(members, residuals.std(axis=1).tolist(), strict=True):
            out[i] = spread if math.isfinite(spread) else None
    return out


def judge_spread(
    *,
    tail_mean: float,
    tail_std: float,
    repeat_means: Sequence[float],
    reference: Sequence[float] | None,
    window: str,
    baseline: float | None = None,
) -> tuple[Diagnosis, str, float | None]:
    """The last two rules: unstable across repeats, else stable.

    :func:`summarize` applies them when no earlier rule holds; ``sweep rank``
    applies them again with the study's final reference to the trials stored
    as ``stable`` or ``unstable_across_repeats`` (the only labels a reference
    can change, since this rule comes last).

    Args:
        window: The tail window in words (:func:`window_words`).

    Returns:
        The diagnosis, its hint, and the residual spread (``None`` without a reference).
    """
    spread = residual_spread(repeat_means, reference)
    level = max(abs(tail_mean), LEVEL_FLOOR)
    if spread is not None and spread > SPREAD_TOLERANCE * level:
        seen = (
            f"the {len(repeat_means)} repeats disagree beyond what the splits cause for every "
            f"configuration: their tail means spread ±{spread:.3g} ({spread / level:.0%} of the loss "
            "level) around the study's per-split medians"
        )
        return Diagnosis.UNSTABLE_ACROSS_REPEATS, f"{seen}: {HINTS[Diagnosis.UNSTABLE_ACROSS_REPEATS]}", spread
    seen = f"validation loss settled at {tail_mean:.3g} ± {tail_std:.2g} over {window}"
    if baseline is not None and baseline > 0:
        seen += f", {(baseline - tail_mean) / baseline:.0%} below the baseline {baseline:.3g}"
    if spread is not None:
        seen += f"; the repeats lie within ±{spread:.2g} of the study's per-split medians"
    return Diagnosis.STABLE, f"{seen}: {HINTS[Diagnosis.STABLE]}", spread


def window_words(tail: int, epochs: Sequence[int]) -> str:
    """The tail window as the summary used it, in words: ``the last 5 epochs``."""
    used = sorted({min(tail, int(e)) for e in epochs}) or [tail]
    if len(used) == 1:
        return f"the last {used[0]} epoch{'s' if used[0] != 1 else ''}"
    return f"the last {used[-1]} epochs ({used[0]} where a repeat was shorter)"


@dataclasses.dataclass(frozen=True)
class _Stats:
    n_repeats: int
    score: float
    tail_mean: float
    tail_std: float
    best: float
    degradation: float
    oscillation: float
    gap: float | None
    repeat_spread: float | None
    repeat_means: tuple[float, ...]
    repeat_stds: tuple[float, ...]
    level: float
    first: float
    jitter: float
    val_slope: float
    train_slope: float | None
    raw_val_slope: float
    train_gain_slope: float | None
    window: int

    def evidence(self) -> Evidence:
        return Evidence(
            first=self.first,
            jitter=self.jitter,
            val_slope=self.raw_val_slope,
            train_slope=self.train_gain_slope,
            window=self.window,
        )

    def facts(self) -> _Facts:
        return _Facts(
            tail_mean=self.tail_mean,
            tail_std=self.tail_std,
            degradation=self.degradation,
            oscillation=self.oscillation,
            repeat_means=self.repeat_means,
            evidence=self.evidence(),
        )

    @classmethod
    def compute(
        cls,
        vals: list[FloatArray],
        trains: list[FloatArray] | None,
        tail: int,
        risk: float,
        reference: tuple[float, ...] | None,
    ) -> _Stats:
        tails = [v[-tail:] for v in vals]
        moments = [_tail_moments(t) for t in tails]
        means = np.array([m for m, _ in moments])
        variances = np.array([var for _, var in moments])
        tail_mean = float(means.mean())
        best = float(min(v.min() for v in vals))
        degradation = float(np.mean([_excess(v)[-t.size :].mean() for v, t in zip(vals, tails, strict=True)]))
        n_changes = sum(t.size - 1 for t in tails)
        total_change = float(sum(np.abs(np.diff(t)).sum() for t in tails))
        net_change = float(sum(abs(t[-1] - t[0]) for t in tails))
        oscillation = total_change / n_changes if n_changes else 0.0
        jitter = max(0.0, total_change - net_change) / n_changes if n_changes else 0.0
        level = max(abs(tail_mean), LEVEL_FLOOR)

        gap: float | None = None
        train_slope: float | None = None
        train_gain_slope: float | None = None
        if trains is not None:
            train_tails = [u[-tail:] for u in trains]
            train_mean = float(np.mean([t.mean() for t in train_tails]))
            train_best = float(min(u.min() for u in trains))
            gap = tail_mean - train_mean
            train_level = max(abs(train_mean), abs(train_best), LEVEL_FLOOR)
            raw_train_slope = _mean_slope(train_tails)
            train_slope = raw_train_slope / train_level
            train_fell = float(np.mean([u[0] - u.min() for u in trains]))
            train_gain_slope = raw_train_slope / max(train_fell, LEVEL_FLOOR * train_level)

        repeat_means = tuple(float(m) for m in means)
        return cls(
            n_repeats=len(vals),
            score=_combine(means, variances, risk),
            tail_mean=tail_mean,
            tail_std=float(np.sqrt(variances.mean())),
            best=best,
            degradation=max(0.0, degradation),
            oscillation=oscillation,
            gap=gap,
            repeat_spread=residual_spread(repeat_means, reference),
            repeat_means=repeat_means,
            repeat_stds=tuple(float(np.sqrt(v)) for v in variances),
            level=level,
            first=float(np.mean([v[0] for v in vals])),
            jitter=jitter,
            val_slope=_mean_slope(tails) / level,
            train_slope=train_slope,
            raw_val_slope=_mean_slope(tails),
            train_gain_slope=train_gain_slope,
            window=max(t.size for t in tails),
        )

    def finite(self) -> bool:
        values = [
            self.tail_mean,
            self.tail_std,
            self.degradation,
            self.oscillation,
            self.level,
            self.first,
            self.jitter,
            self.val_slope,
            self.raw_val_slope,
            *self.repeat_means,
        ]
        for optional in (self.gap, self.train_slope, self.train_gain_slope, self.repeat_spread):
            if optional is not None:
                values.append(optional)
        return all(math.isfinite(x) for x in values)


def _tail_moments(tail: FloatArray) -> tuple[float, float]:
    return float(tail.mean()), float(tail.var())


def _combine(means: FloatArray, variances: FloatArray, risk: float) -> float:
    """``mean(means) + risk * sqrt(mean(variances))``: the one formula of the score."""
    return float(means.mean()) + risk * float(np.sqrt(variances.mean()))


def _excess(curve: FloatArray) -> FloatArray:
    """Each epoch's loss minus the lowest loss up to that epoch (0 wherever the curve is at a new low)."""
    return curve - np.minimum.accumulate(curve)


def _diagnose(
    s: _Stats, baseline: float | None, reference: tuple[float, ...] | None, window: str
) -> tuple[Diagnosis, str]:
    """Apply :data:`RULES` in order; return the label and its hint (what was seen, then the remedy)."""
    named = _named_by_training(s, baseline, window)
    if named is not None:
        return named[0], f"{named[1]}: {HINTS[named[0]]}"
    diagnosis, hint, _ = judge_spread(
        tail_mean=s.tail_mean,
        tail_std=s.tail_std,
        repeat_means=s.repeat_means,
        reference=reference,
        window=window,
        baseline=baseline,
    )
    return diagnosis, hint


def _named_by_training(s: _Stats, baseline: float | None, window: str) -> tuple[Diagnosis, str] | None:
    """The rules before the spread's: the label and what was seen, or ``None``."""
    first_scale = max(abs(s.first), LEVEL_FLOOR)
    if s.tail_mean - s.first > DIVERGENCE_RISE * first_scale:
        return Diagnosis.DIVERGED, (
            f"validation loss rose from {s.first:.3g} in the first epoch "
            f"to {s.tail_mean:.3g} over {window}"
        )
    if baseline is not None and s.tail_mean >= (1 - BASELINE_TOLERANCE) * baseline:
        if s.tail_mean >= baseline:
            where = f"at or above the baseline {baseline:.3g}"
        else:
            where = f"only {(baseline - s.tail_mean) / abs(baseline):.0%} below the baseline {baseline:.3g}"
        return Diagnosis.NOT_LEARNING, (
            f"validation loss ended at {s.tail_mean:.3g} over {window}, {where} "
            "(a model that predicts the training-class prior or the training mean)"
        )
    if s.jitter > OSCILLATION_TOLERANCE * s.level:
        return Diagnosis.OSCILLATING, (
            f"validation loss jumps {s.oscillation:.3g} per epoch over {window} "
            f"({s.jitter / s.level:.0%} of the loss level beyond any trend)"
        )
    val_rose = s.degradation > DEGRADATION_TOLERANCE * s.level and s.val_slope >= -SLOPE_TOLERANCE
    rose = (
        f"validation loss over {window} sits {s.degradation:.3g} ({s.degradation / s.level:.0%}) "
        "above the lowest it had reached"
    )
    if val_rose and s.train_slope is not None and s.train_slope > SLOPE_TOLERANCE:
        return Diagnosis.OSCILLATING, f"{rose} and training loss rose too ({s.train_slope:+.1%} per epoch)"
    if val_rose:
        if s.train_slope is None:
            return Diagnosis.OVERFITTING, rose
        return Diagnosis.OVERFITTING, f"{rose} while training loss kept falling"
    if s.val_slope < -SLOPE_TOLERANCE and (s.train_slope is None or s.train_slope < -SLOPE_TOLERANCE):
        still = f"validation loss is still falling ({s.val_slope:+.1%} per epoch"
        if s.train_slope is not None:
            still += f", training loss {s.train_slope:+.1%}"
        return Diagnosis.UNDERFITTING, f"{still}) over {window}"
    return None


@dataclasses.dataclass(frozen=True)
class _Facts:
    """What the calibrated rules read: from fresh curves (:class:`_Stats`) or a stored summary."""

    tail_mean: float
    tail_std: float
    degradation: float
    oscillation: float
    repeat_means: tuple[float, ...]
    evidence: Evidence


def _judge_calibrated(
    f: _Facts, baseline: float | None, reference: Sequence[float] | None, window: str, cal: Scales
) -> tuple[Diagnosis, str, float | None]:
    """:data:`RULES` with the study's calibration: the label, its hint, and the repeat spread."""
    spread = residual_spread(f.repeat_means, reference)
    named = _named_calibrated(f, baseline, window, cal)
    if named is not None:
        return named[0], f"{named[1]}: {HINTS[named[0]]}", spread
    if spread is not None and spread > cal.spread_limit:
        seen = (
            f"the {len(f.repeat_means)} repeats disagree beyond what the splits cause for every "
            f"configuration: their tail means spread ±{spread:.3g} around the study's per-split medians, "
            f"{_times(spread, cal.spread)} the study's median spread"
        )
        return Diagnosis.UNSTABLE_ACROSS_REPEATS, f"{seen}: {HINTS[Diagnosis.UNSTABLE_ACROSS_REPEATS]}", spread
    seen = f"validation loss settled at {f.tail_mean:.3g} ± {f.tail_std:.2g} over {window}"
    if baseline is not None:
        seen += f", {baseline - f.tail_mean:.3g} below the baseline {baseline:.3g}"
    if spread is not None:
        seen += f"; the repeats lie within ±{spread:.2g} of the study's per-split medians"
    return Diagnosis.STABLE, f"{seen}: {HINTS[Diagnosis.STABLE]}", spread


def _named_calibrated(
    f: _Facts, baseline: float | None, window: str, cal: Scales
) -> tuple[Diagnosis, str] | None:
    """The calibrated rules before the spread's (see :mod:`sweep.calibration`): the label and what was seen."""
    e = f.evidence
    start, began = e.first, "its first epoch"
    if baseline is not None and baseline > e.first:
        start, began = baseline, "the baseline"
    rise = f.tail_mean - start
    if rise > cal.diverge_limit and rise > STORED_PRECISION * max(abs(start), abs(f.tail_mean)):
        return Diagnosis.DIVERGED, (
            f"validation loss ended {f.tail_mean - start:.3g} above {began} ({start:.3g}) over {window}, "
            f"more than {DIVERGENCE_RISE:g}x what the study's median trial gains ({cal.gain:.3g})"
        )
    margin = cal.learn_margin
    if baseline is not None and margin is not None and baseline - f.tail_mean < margin:
        below = baseline - f.tail_mean
        where = f"only {below:.3g} below the baseline {baseline:.3g}"
        if below <= 0:
            where = f"at or above the baseline {baseline:.3g}"
        return Diagnosis.NOT_LEARNING, (
            f"validation loss ended at {f.tail_mean:.3g} over {window}, {where}, where the study's best "
            f"ends {cal.best_gain:.3g} below it"
        )
    if e.jitter > cal.jitter_limit:
        return Diagnosis.OSCILLATING, (
            f"validation loss jumps {f.oscillation:.3g} per epoch over {window}, "
            f"{_times(e.jitter, cal.noise)} the study's median beyond any trend ({cal.noise:.2g})"
        )
    fall = -e.val_slope
    falling = fall > cal.fall_limit(e.window)
    val_rose = f.degradation > cal.rise_limit and not falling
    rose = (
        f"validation loss over {window} sits {f.degradation:.3g} above the lowest it had reached, "
        f"{_times(f.degradation, cal.degradation)} the study's median"
    )
    if val_rose and e.train_slope is not None and e.train_slope > SLOPE_TOLERANCE:
        return Diagnosis.OSCILLATING, f"{rose}, and training loss rose too"
    if val_rose:
        return Diagnosis.OVERFITTING, rose if e.train_slope is None else f"{rose}, while training loss did not rise"
    if falling and (e.train_slope is None or e.train_slope < -SLOPE_TOLERANCE):
        return Diagnosis.UNDERFITTING, (
            f"validation loss is still falling {fall:.3g} per epoch over {window}, "
            f"{_times(fall, cal.fall)} the study's median"
        )
    return None


def _times(amount: float, median: float | None) -> str:
    """``3.1x`` (amount over the study's median), or ``above`` where the median is 0."""
    if median is None or median <= 0:
        return "above"
    return f"{amount / median:.1f}x"


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


STORED_PRECISION = 1e-5
"""The evidence is stored to 6 significant digits (:func:`_sig`): two numbers closer than this share of
their size may differ by that rounding alone, which a shift of every loss changes (0.2509765625 is stored
as 0.250977, 0.251953125 as 0.251953), so such a difference is not a rise."""


def _sig(value: float) -> float:
    return float(f"{value:.6g}")


def _diverged(vals: list[FloatArray], trains: list[FloatArray] | None, baseline: float | None, seen: str) -> Summary:
    finite = [float(v[np.isfinite(v)].min()) for v in vals if np.isfinite(v).any()]
    return Summary(
        score=math.inf,
        tail_mean=math.inf,
        tail_std=math.inf,
        best=min(finite, default=math.inf),
        degradation=math.inf,
        oscillation=math.inf,
        gap=None if trains is None else math.inf,
        repeat_spread=None,
        baseline=baseline,
        diagnosis=Diagnosis.DIVERGED,
        hint=f"{seen}: {HINTS[Diagnosis.DIVERGED]}",
        n_repeats=len(vals),
        epochs=tuple(len(v) for v in vals),
        repeat_means=tuple(math.inf for _ in vals),
        repeat_stds=tuple(math.inf for _ in vals),
    )


def _mean_slope(tails: list[FloatArray]) -> float:
    """Mean least-squares slope per epoch over the tails with at least two points."""
    slopes = []
    for t in tails:
        if t.size < 2:
            continue
        x = np.arange(t.size, dtype=np.float64)
        x -= x.mean()
        slopes.append(float(np.dot(x, t - t.mean()) / np.dot(x, x)))
    return float(np.mean(slopes)) if slopes else 0.0


def _check_tail(tail: int) -> int:
    if isinstance(tail, bool) or not isinstance(tail, int | np.integer) or tail < 1:
        raise ValueError(
            f"The 'tail' parameter of summarize must be an integer >= 1. Got {tail!r} instead."
        )
    return int(tail)


def _check_risk(risk: float) -> float:
    try:
        value = float(risk)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(risk, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"The 'risk' parameter of summarize must be a finite number >= 0. Got {risk!r} instead."
        )
    return value


def _check_reference(reference: Sequence[float] | None, n_repeats: int) -> tuple[float, ...] | None:
    if reference is None:
        return None
    values = tuple(float(x) for x in reference)
    if len(values) < n_repeats or not all(math.isfinite(x) for x in values):
        raise ValueError(
            "The 'reference' parameter of summarize must hold a finite value for each of the "
            f"{n_repeats} repeat(s). Got {reference!r} instead."
        )
    return values


def _as_curves(curves: LossCurves, name: str) -> list[FloatArray]:
    given: object = curves  # callers outside typed code may pass anything
    if isinstance(given, str | bytes):
        raise ValueError(
            f"The '{name}' parameter of summarize must be a sequence of loss curves. "
            f"Got {curves!r} instead."
        )
    out: list[FloatArray] = []
    for r, curve in enumerate(curves):
        try:
            array = np.asarray(curve, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"The '{name}' parameter of summarize must hold curves of numbers. "
                f"Got a non-numeric value in {name}[{r}] instead."
            ) from e
        if array.ndim != 1:
            raise ValueError(
                f"The '{name}' parameter of summarize must hold 1-D curves. "
                f"Got shape {array.shape} for {name}[{r}] instead."
            )
        if array.size == 0:
            raise ValueError(
                f"The '{name}' parameter of summarize must hold curves of at least one epoch. "
                f"Got an empty curve for {name}[{r}] instead."
            )
        # -0.0 + 0.0 is +0.0: a zero's sign must not depend on how the curve was written.
        out.append(array + 0.0)
    if not out:
        raise ValueError(
            f"The '{name}' parameter of summarize must hold at least one repeat. "
            "Got no repeats instead."
        )
    return out
