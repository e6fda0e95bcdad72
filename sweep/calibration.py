"""The diagnosis's thresholds, calibrated on the study: what distinguishes a trial, not what all share.

A label should mark what sets a trial apart from the study's other
configurations, in amounts the data can tell apart. :func:`calibrate` reads
the study's complete trials and returns a :class:`Calibration` of loss
differences (never loss levels), so every threshold, like the score's ranking,
is unchanged when a constant is added to every curve of a split (and to that
split's baseline):

* ``noise``: the median, over the study's complete trials, of ``jitter`` (the
  epoch-to-epoch movement of a tail that no trend explains): what an ordinary
  trial of this study does from one epoch to the next;
* ``gain``: the median of ``start - tail_mean``, where ``start`` is the
  baseline (a model that learned nothing) or the first epoch's loss, whichever
  is higher: how much an ordinary trial learns;
* ``best_gain``: ``baseline - min(tail_mean)``: how far below the baseline the
  study's best trial ends (``None`` without a baseline);
* the medians of ``degradation``, of the fall per epoch at the end
  (``max(0, -val_slope)``) and of ``repeat_spread``.

A trial is then named for a property only when its amount is an outlier of the
study (more than :data:`OUTLIER` times the study's median) and material (more
than :data:`MATERIAL` of the study's gain, and more than the noise). Fewer than
half of a study's trials can exceed twice the study's median, so a label
other than ``not_learning`` or ``diverged`` never names most of a study; those
two compare with the baseline and the study's best, and can.

Pure numbers and the standard library: read-only commands use it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "BASELINE_TOLERANCE",
    "DIVERGENCE_RISE",
    "MATERIAL",
    "MIN_TRIALS",
    "OUTLIER",
    "Calibration",
    "Scales",
    "calibrate",
]

OUTLIER = 2.0
"""A trial's amount must exceed this many times the study's median to name it."""

MATERIAL = 0.05
"""... and this fraction of the study's median gain (so a wiggle no ranking would notice names nothing)."""

MIN_TRIALS = 3
"""Fewest complete trials with finite losses that calibrate a study (as for the per-split reference)."""

DIVERGENCE_RISE = 2.0
"""Diverged: ``tail_mean - start`` above this many times the study's gain (uncalibrated: times ``|first|``)."""

BASELINE_TOLERANCE = 0.10
"""Not learning: less than this fraction of the best trial's gain below the baseline (uncalibrated: of it)."""

FLOOR = 1e-12
"""Smallest scale a threshold is measured against (a study whose trials neither learn nor move)."""


@dataclass(frozen=True)
class Scales:
    """The scales one trial is judged against: those of the study's other complete trials."""

    trials: int
    noise: float
    gain: float
    best_gain: float | None
    degradation: float
    fall: float
    spread: float | None

    @property
    def diverge_limit(self) -> float:
        """Diverged: the loss ends more than this above where it started (or above the baseline)."""
        return DIVERGENCE_RISE * self.gain

    @property
    def learn_margin(self) -> float | None:
        """Not learning: the loss ends less than this below the baseline; ``None`` without a baseline."""
        if self.best_gain is None:
            return None
        return max(BASELINE_TOLERANCE * self.best_gain, self.noise)

    @property
    def material(self) -> float:
        """The smallest movement worth a label: :data:`MATERIAL` of the gain, and at least the noise."""
        return max(MATERIAL * self.gain, self.noise, FLOOR)

    @property
    def jitter_limit(self) -> float:
        """Oscillating: ``jitter`` above this."""
        return max(OUTLIER * self.noise, MATERIAL * self.gain, FLOOR)

    @property
    def rise_limit(self) -> float:
        """Overfitting (or oscillating, with the training loss): ``degradation`` above this."""
        return max(OUTLIER * self.degradation, self.material)

    def fall_limit(self, window: int) -> float:
        """Still falling (per epoch) over a tail of ``window`` epochs: ``-val_slope`` above this."""
        return max(OUTLIER * self.fall, self.material / max(1, window))

    @property
    def spread_limit(self) -> float:
        """Unstable across repeats: ``repeat_spread`` above this."""
        return max(OUTLIER * (self.spread or 0.0), self.material)


@dataclass(frozen=True)
class Calibration:
    """A study's complete trials, as the rules read them (:func:`calibrate`); each tuple sorted."""

    jitters: tuple[float, ...]
    gains: tuple[float, ...]
    degradations: tuple[float, ...]
    falls: tuple[float, ...]
    spreads: tuple[float, ...]
    best_gain: float | None

    def scales(self, own: Mapping[str, Any] | None = None) -> Scales | None:
        """The scales of the study's trials other than ``own`` (a trial of the study, by its summary attrs).

        Returns ``None`` when fewer than :data:`MIN_TRIALS` others remain. ``own``
        that is not among the study's trials (a trial being recorded) removes nothing.
        """
        mine = _row(own) if own is not None else None
        jitter = gain = degradation = fall = spread = None  # the indexes of ``own``'s numbers, left out
        if mine is not None and (jitter := _find(self.jitters, mine.jitter)) is not None:
            gain, fall = _find(self.gains, mine.gain), _find(self.falls, mine.fall)
            degradation = _find(self.degradations, mine.degradation)
            spread = None if mine.spread is None else _find(self.spreads, mine.spread)
        trials = len(self.jitters) - (jitter is not None)
        if trials < MIN_TRIALS:
            return None
        noise = _median(self.jitters, jitter)
        spreads = len(self.spreads) - (spread is not None)
        return Scales(
            trials=trials,
            noise=noise,
            gain=max(_median(self.gains, gain), noise, FLOOR),
            best_gain=self.best_gain,
            degradation=_median(self.degradations, degradation),
            fall=_median(self.falls, fall),
            spread=_median(self.spreads, spread) if spreads >= MIN_TRIALS else None,
        )


def calibrate(rows: Iterable[Mapping[str, Any]]) -> Calibration | None:
    """The study's :class:`Calibration` from its complete trials' stored summaries.

    Args:
        rows: One mapping per complete trial with the summary fields
            (:meth:`sweep.stability.Summary.to_attrs`): ``tail_mean``,
            ``degradation``, ``baseline``, ``repeat_spread`` and ``evidence``.
            Trials with a non-finite or missing ``tail_mean`` or no
            ``evidence`` are left out.

    Returns:
        The calibration, or ``None`` with fewer than :data:`MIN_TRIALS` usable trials.
    """
    usable = [r for r in map(_row, rows) if r is not None]
    if len(usable) < MIN_TRIALS:
        return None
    best_gain = None
    if all(u.baseline is not None for u in usable):
        best_gain = max(0.0, max((u.baseline or 0.0) - u.tail_mean for u in usable))
    return Calibration(
        jitters=tuple(sorted(u.jitter for u in usable)),
        gains=tuple(sorted(u.gain for u in usable)),
        degradations=tuple(sorted(u.degradation for u in usable)),
        falls=tuple(sorted(u.fall for u in usable)),
        spreads=tuple(sorted(u.spread for u in usable if u.spread is not None)),
        best_gain=best_gain,
    )


class _Row(NamedTuple):
    tail_mean: float
    gain: float
    jitter: float
    fall: float
    degradation: float
    spread: float | None
    baseline: float | None


def _row(attrs: Mapping[str, Any]) -> _Row | None:
    evidence = attrs.get("evidence")
    tail_mean = _finite(attrs.get("tail_mean"))
    if not isinstance(evidence, Mapping) or tail_mean is None:
        return None
    first, jitter = _finite(evidence.get("first")), _finite(evidence.get("jitter"))
    slope = _finite(evidence.get("val_slope"))
    if first is None or jitter is None or slope is None:
        return None
    baseline = _finite(attrs.get("baseline"))
    start = first if baseline is None else max(first, baseline)
    return _Row(
        tail_mean=tail_mean,
        gain=start - tail_mean,
        jitter=jitter,
        fall=max(0.0, -slope),
        degradation=_finite(attrs.get("degradation")) or 0.0,
        spread=_finite(attrs.get("repeat_spread")),
        baseline=baseline,
    )


def _find(values: tuple[float, ...], value: float) -> int | None:
    """The index of one occurrence of ``value`` in the sorted ``values`` (``None`` if it is not there)."""
    i = bisect.bisect_left(values, value)
    return i if i < len(values) and values[i] == value else None


def _median(values: tuple[float, ...], skip: int | None = None) -> float:
    """The median of sorted ``values`` less the one at index ``skip`` (0.0 for none), without copying them.

    Judging each of a study's trials against the others is then one lookup per
    trial rather than a copy of the study's numbers, so it stays linear in the trials.
    """
    n = len(values) - (skip is not None)
    if n == 0:
        return 0.0

    def at(k: int) -> float:
        return values[k if skip is None or k < skip else k + 1]

    return at(n // 2) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2


def _finite(value: Any) -> float | None:
    if type(value) is float:  # what a stored number reads back as: no conversion, and one check
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


