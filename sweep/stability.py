"""Validation-loss stability: the score that ranks trials, and why a trial is unstable.

A trial is trained ``R`` times (repeats). Repeat ``r`` yields a validation-loss
curve ``v_r`` and, optionally, a training-loss curve ``u_r``: one float per
epoch. Curves may differ in length (early stopping, pruning). The *tail* of a
curve is its last ``min(tail, len)`` points. :func:`summarize` pools the tails of
all repeats and returns a frozen :class:`Summary`::

    score = tail_mean + risk * tail_std        (lower is better)

``tail_std`` is the population standard deviation of the pooled tail points, so
it grows with oscillation at the end of training, with a rise after the best
epoch, and with disagreement between repeats: a configuration that once dipped
low but ends high and noisy scores worse than one that ends steadily low.

Non-finite input (NaN, +inf or -inf anywhere in a validation or training curve)
gives ``score == math.inf`` and :attr:`Diagnosis.DIVERGED`; every tail
statistic (``tail_mean``, ``tail_std``, ``degradation``, ``oscillation``,
``repeat_spread``, and ``gap`` when training curves are given) is then
``math.inf`` too, so a :class:`Summary` never holds NaN. ``best`` stays the
lowest finite validation loss seen (``math.inf`` if there is none). The same
applies when finite losses are so large that a statistic or the score overflows.

Each trial gets one :class:`Diagnosis`, the first of :data:`RULES` that holds.
The thresholds are relative to the loss level, so they mean the same for a
cross-entropy near 2 and a mean squared error near 1e-4. The quantities the
rules use:

* ``level = max(|tail_mean|, |best|, 1e-8)``;
* ``first``: the mean over repeats of the first-epoch validation loss;
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
  validation loss rose above its minimum and is not still falling (a curve that
  is still falling also has a tail mean above its minimum).

This module imports numpy only: read-only commands such as ``sweep rank`` use it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEGRADATION_TOLERANCE",
    "DIVERGENCE_RISE",
    "HINTS",
    "LEVEL_FLOOR",
    "OSCILLATION_TOLERANCE",
    "RULES",
    "SLOPE_TOLERANCE",
    "SPREAD_TOLERANCE",
    "Diagnosis",
    "Summary",
    "summarize",
]

LEVEL_FLOOR = 1e-8
"""Smallest loss level that relative thresholds are measured against."""

DIVERGENCE_RISE = 2.0
"""Diverged when ``tail_mean - first > DIVERGENCE_RISE * max(|first|, LEVEL_FLOOR)``."""

SPREAD_TOLERANCE = 0.10
"""Unstable across repeats when ``repeat_spread > SPREAD_TOLERANCE * level``."""

OSCILLATION_TOLERANCE = 0.05
"""Oscillating when ``jitter > OSCILLATION_TOLERANCE * level``."""

DEGRADATION_TOLERANCE = 0.10
"""Validation loss rose when ``degradation > DEGRADATION_TOLERANCE * level`` and is not falling."""

SLOPE_TOLERANCE = 0.01
"""Falling: relative slope per epoch ``< -SLOPE_TOLERANCE``; rising: ``> +SLOPE_TOLERANCE``."""

FloatArray = npt.NDArray[np.float64]
LossCurve = Sequence[float] | npt.NDArray[np.floating[Any]]
"""One repeat's per-epoch losses: a list of floats or a 1-D array."""
LossCurves = Sequence[LossCurve] | npt.NDArray[np.floating[Any]]
"""One curve per repeat: a list of curves or a 2-D array (equal lengths)."""


class Diagnosis(str, enum.Enum):
    """Why a trial's validation loss is (un)stable; the value is the lowercase name."""

    STABLE = "stable"
    OVERFITTING = "overfitting"
    OSCILLATING = "oscillating"
    DIVERGED = "diverged"
    UNDERFITTING = "underfitting"
    UNSTABLE_ACROSS_REPEATS = "unstable_across_repeats"

    def __str__(self) -> str:
        return self.value


HINTS: dict[Diagnosis, str] = {
    Diagnosis.STABLE: "nothing to change",
    Diagnosis.OVERFITTING: (
        "add dropout or L2 regularisation, stop earlier (smaller patience), or use fewer units"
    ),
    Diagnosis.OSCILLATING: "lower the learning rate or use a larger batch",
    Diagnosis.DIVERGED: (
        "lower the learning rate, add LayerNormalization, "
        "or use an adaptive optimizer (adam/rmsprop) or gradient clipping"
    ),
    Diagnosis.UNDERFITTING: "train for more epochs, use more units, or raise the learning rate",
    Diagnosis.UNSTABLE_ACROSS_REPEATS: (
        "use more data per fold, a smaller learning rate, or stronger regularisation"
    ),
}
"""The remedy for each diagnosis; :attr:`Summary.hint` ends with it."""

RULES: tuple[tuple[Diagnosis, str], ...] = (
    (
        Diagnosis.DIVERGED,
        "any validation or training loss is NaN, +inf or -inf; or "
        f"`tail_mean - first > {DIVERGENCE_RISE:g} * max(|first|, {LEVEL_FLOOR:g})` "
        f"(for positive losses: `tail_mean > {DIVERGENCE_RISE + 1:g} * first`).",
    ),
    (
        Diagnosis.UNSTABLE_ACROSS_REPEATS,
        f"`R >= 2` and `repeat_spread > {SPREAD_TOLERANCE:g} * level`.",
    ),
    (
        Diagnosis.OSCILLATING,
        f"`jitter > {OSCILLATION_TOLERANCE:g} * level`; or `val_rose` and, with training "
        f"curves, `train_slope > +{SLOPE_TOLERANCE:g}` (training loss rose along with the "
        "validation loss: the optimiser overshoots, the model does not overfit).",
    ),
    (
        Diagnosis.OVERFITTING,
        "`val_rose` (validation loss rose after its minimum and is not still falling, "
        f"while training loss, when given, kept falling or stayed flat: "
        f"`train_slope <= +{SLOPE_TOLERANCE:g}`).",
    ),
    (
        Diagnosis.UNDERFITTING,
        f"`val_slope < -{SLOPE_TOLERANCE:g}` and, when training curves are given, "
        f"`train_slope < -{SLOPE_TOLERANCE:g}` (both still falling by more than "
        f"{SLOPE_TOLERANCE:.0%} of their level per epoch).",
    ),
    (Diagnosis.STABLE, "none of the above."),
)
"""The diagnosis rules in precedence order: the first that holds names the trial."""


@dataclasses.dataclass(frozen=True)
class Summary:
    """The stability of one trial over its repeats.

    Attributes:
        score: ``tail_mean + risk * tail_std``; ``math.inf`` when any loss is non-finite.
        tail_mean: Mean of the last ``tail`` validation losses of every repeat, pooled.
        tail_std: Population standard deviation of the same pooled points.
        best: Lowest validation loss seen in any repeat.
        degradation: Mean over repeats of (the repeat's tail mean - its minimum); >= 0.
        oscillation: Mean absolute epoch-to-epoch change within the tails, pooled;
            0.0 when every tail has one point.
        gap: Pooled tail validation mean minus pooled tail training mean; ``None``
            without training curves.
        repeat_spread: Population standard deviation of the repeats' tail means;
            0.0 for one repeat.
        diagnosis: The first rule of :data:`RULES` that holds.
        hint: One line: what was seen, with numbers, then :data:`HINTS` for the diagnosis.
        n_repeats: Number of repeats.
        epochs: Length of each repeat's validation curve, sorted ascending so that
            the order of repeats does not matter.
    """

    score: float
    tail_mean: float
    tail_std: float
    best: float
    degradation: float
    oscillation: float
    gap: float | None
    repeat_spread: float
    diagnosis: Diagnosis
    hint: str
    n_repeats: int
    epochs: tuple[int, ...]

    def to_attrs(self) -> dict[str, float | int | str | list[int] | None]:
        """Plain JSON-safe values (``inf`` stays a float) for an Optuna user attribute."""
        return {
            "score": float(self.score),
            "tail_mean": float(self.tail_mean),
            "tail_std": float(self.tail_std),
            "best": float(self.best),
            "degradation": float(self.degradation),
            "oscillation": float(self.oscillation),
            "gap": None if self.gap is None else float(self.gap),
            "repeat_spread": float(self.repeat_spread),
            "diagnosis": self.diagnosis.value,
            "hint": self.hint,
            "n_repeats": int(self.n_repeats),
            "epochs": [int(n) for n in self.epochs],
        }


def summarize(
    val_curves: LossCurves,
    train_curves: LossCurves | None = None,
    *,
    tail: int = 5,
    risk: float = 1.0,
) -> Summary:
    """Score and diagnose one trial from its per-repeat loss curves.

    Args:
        val_curves: One validation-loss curve per repeat (lists or 1-D arrays),
            each at least one epoch long; lengths may differ.
        train_curves: One training-loss curve per repeat, in the same order, or
            ``None``. A training curve may differ in length from its validation curve.
        tail: How many final epochs of each curve to pool (fewer if a curve is shorter).
        risk: Weight of ``tail_std`` in the score; finite and >= 0.

    Returns:
        A :class:`Summary` that does not depend on the order of the repeats and
        never holds NaN.

    Raises:
        ValueError: No repeats, an empty or non-1-D curve, a non-numeric value,
            ``train_curves`` with a different number of repeats, ``tail < 1``, or
            ``risk`` negative or non-finite.
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
    epochs = tuple(sorted(len(v) for v in vals))

    broken = sum(
        1
        for r, v in enumerate(vals)
        if not np.isfinite(v).all() or (trains is not None and not np.isfinite(trains[r]).all())
    )
    if broken:
        return _diverged(
            vals,
            trains,
            epochs,
            f"the loss became NaN or infinite in {broken} of {len(vals)} repeat(s)",
        )

    pairs = sorted(
        zip(vals, trains if trains is not None else [None] * len(vals), strict=True),
        key=lambda pair: (pair[0].tolist(), [] if pair[1] is None else pair[1].tolist()),
    )
    with np.errstate(all="ignore"):
        stats = _Stats.compute(
            [v for v, _ in pairs],
            None if trains is None else [u for _, u in pairs if u is not None],
            tail,
        )
    score = stats.tail_mean + risk * stats.tail_std
    if not (stats.finite() and math.isfinite(score)):
        return _diverged(vals, trains, epochs, "the loss grew too large to summarise")

    diagnosis, seen = _diagnose(stats, tail)
    return Summary(
        score=score,
        tail_mean=stats.tail_mean,
        tail_std=stats.tail_std,
        best=stats.best,
        degradation=stats.degradation,
        oscillation=stats.oscillation,
        gap=stats.gap,
        repeat_spread=stats.repeat_spread,
        diagnosis=diagnosis,
        hint=f"{seen}: {HINTS[diagnosis]}",
        n_repeats=len(vals),
        epochs=epochs,
    )


@dataclasses.dataclass(frozen=True)
class _Stats:
    n_repeats: int
    tail_mean: float
    tail_std: float
    best: float
    degradation: float
    oscillation: float
    gap: float | None
    repeat_spread: float
    level: float
    first: float
    jitter: float
    val_slope: float
    train_slope: float | None

    @classmethod
    def compute(cls, vals: list[FloatArray], trains: list[FloatArray] | None, tail: int) -> _Stats:
        tails = [v[-tail:] for v in vals]
        pooled = np.concatenate(tails)
        tail_mean = float(pooled.mean())
        best = float(min(v.min() for v in vals))
        repeat_means = np.array([t.mean() for t in tails])
        degradation = float(
            np.mean([max(0.0, float(m - v.min())) for m, v in zip(repeat_means, vals, strict=True)])
        )
        n_changes = sum(t.size - 1 for t in tails)
        total_change = float(sum(np.abs(np.diff(t)).sum() for t in tails))
        net_change = float(sum(abs(t[-1] - t[0]) for t in tails))
        oscillation = total_change / n_changes if n_changes else 0.0
        jitter = max(0.0, total_change - net_change) / n_changes if n_changes else 0.0
        level = max(abs(tail_mean), abs(best), LEVEL_FLOOR)

        gap: float | None = None
        train_slope: float | None = None
        if trains is not None:
            train_tails = [u[-tail:] for u in trains]
            train_mean = float(np.concatenate(train_tails).mean())
            train_best = float(min(u.min() for u in trains))
            gap = tail_mean - train_mean
            train_level = max(abs(train_mean), abs(train_best), LEVEL_FLOOR)
            train_slope = _mean_slope(train_tails) / train_level

        return cls(
            n_repeats=len(vals),
            tail_mean=tail_mean,
            tail_std=float(pooled.std()),
            best=best,
            degradation=degradation,
            oscillation=oscillation,
            gap=gap,
            repeat_spread=float(repeat_means.std()),
            level=level,
            first=float(np.mean([v[0] for v in vals])),
            jitter=jitter,
            val_slope=_mean_slope(tails) / level,
            train_slope=train_slope,
        )

    def finite(self) -> bool:
        values = [
            self.tail_mean,
            self.tail_std,
            self.degradation,
            self.oscillation,
            self.repeat_spread,
            self.level,
            self.first,
            self.jitter,
            self.val_slope,
        ]
        if self.gap is not None:
            values.append(self.gap)
        if self.train_slope is not None:
            values.append(self.train_slope)
        return all(math.isfinite(x) for x in values)


def _diagnose(s: _Stats, tail: int) -> tuple[Diagnosis, str]:
    """Apply :data:`RULES` in order; return the label and what was seen, with numbers."""
    first_scale = max(abs(s.first), LEVEL_FLOOR)
    if s.tail_mean - s.first > DIVERGENCE_RISE * first_scale:
        return Diagnosis.DIVERGED, (
            f"validation loss rose from {s.first:.3g} in the first epoch "
            f"to {s.tail_mean:.3g} at the end of training"
        )
    if s.n_repeats >= 2 and s.repeat_spread > SPREAD_TOLERANCE * s.level:
        return Diagnosis.UNSTABLE_ACROSS_REPEATS, (
            f"the {s.n_repeats} repeats end at different losses: their tail means spread "
            f"±{s.repeat_spread:.3g} ({s.repeat_spread / s.level:.0%} of the loss level)"
        )
    if s.jitter > OSCILLATION_TOLERANCE * s.level:
        return Diagnosis.OSCILLATING, (
            f"validation loss jumps {s.oscillation:.3g} per epoch at the end of training "
            f"({s.jitter / s.level:.0%} of the loss level beyond any trend)"
        )
    val_rose = s.degradation > DEGRADATION_TOLERANCE * s.level and s.val_slope >= -SLOPE_TOLERANCE
    if val_rose and s.train_slope is not None and s.train_slope > SLOPE_TOLERANCE:
        return Diagnosis.OSCILLATING, (
            f"validation loss rose {s.degradation:.3g} ({s.degradation / s.level:.0%}) above "
            f"its minimum and training loss rose too ({s.train_slope:+.1%} per epoch)"
        )
    if val_rose:
        rose = (
            f"validation loss rose {s.degradation:.3g} ({s.degradation / s.level:.0%}) "
            "above its minimum"
        )
        if s.train_slope is None:
            return Diagnosis.OVERFITTING, rose
        return Diagnosis.OVERFITTING, f"{rose} while training loss kept falling"
    if s.val_slope < -SLOPE_TOLERANCE and (
        s.train_slope is None or s.train_slope < -SLOPE_TOLERANCE
    ):
        still = f"validation loss is still falling ({s.val_slope:+.1%} per epoch"
        if s.train_slope is not None:
            still += f", training loss {s.train_slope:+.1%}"
        return Diagnosis.UNDERFITTING, f"{still}) at the end of training"
    return Diagnosis.STABLE, (
        f"validation loss settled at {s.tail_mean:.3g} ± {s.tail_std:.2g} "
        f"over the last {tail} epoch(s)"
    )


def _diverged(
    vals: list[FloatArray], trains: list[FloatArray] | None, epochs: tuple[int, ...], seen: str
) -> Summary:
    finite = [float(v[np.isfinite(v)].min()) for v in vals if np.isfinite(v).any()]
    return Summary(
        score=math.inf,
        tail_mean=math.inf,
        tail_std=math.inf,
        best=min(finite, default=math.inf),
        degradation=math.inf,
        oscillation=math.inf,
        gap=None if trains is None else math.inf,
        repeat_spread=math.inf,
        diagnosis=Diagnosis.DIVERGED,
        hint=f"{seen}: {HINTS[Diagnosis.DIVERGED]}",
        n_repeats=len(vals),
        epochs=epochs,
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
    if isinstance(tail, bool) or not isinstance(tail, (int, np.integer)) or tail < 1:
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


def _as_curves(curves: LossCurves, name: str) -> list[FloatArray]:
    if isinstance(curves, (str, bytes)):
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
        # -0.0 + 0.0 is +0.0: the sign of a zero in any field must not depend on the repeat order.
        out.append(array + 0.0)
    if not out:
        raise ValueError(
            f"The '{name}' parameter of summarize must hold at least one repeat. "
            "Got no repeats instead."
        )
    return out
