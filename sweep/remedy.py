"""What to change for each diagnosis: one table gives the hint's words and the parameter change.

Each :class:`Remedy` lists concrete changes of searched parameters (the
learning rate divided by 3, the batch doubled, dropout raised by 0.1 ...) and,
where no searched parameter can say it, a piece of advice (train longer, stop
earlier). :data:`sweep.stability.HINTS` ends each hint with
:meth:`Remedy.hint`; ``sweep fix`` applies :meth:`Remedy.apply`, clipped to the
study's search space, and queues the result as a new trial.

Pure Python: no numpy, no Optuna, no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from sweep.spec import Param

FLOOR: dict[str, float] = {"l2": 1e-4, "dropout": 0.0}
"""Where an increase starts from when the value is 0 (a multiple of 0 stays 0)."""


@dataclass(frozen=True)
class Change:
    """One parameter change: ``param`` times ``amount`` (``op="*"``) or plus ``amount`` (``op="+"``)."""

    param: str
    op: Literal["*", "+"]
    amount: float
    words: str  # "lower the learning rate"

    def text(self) -> str:
        """The words with the size of the change: ``lower the learning rate (/3)``."""
        if self.op == "+":
            size = f"{self.amount:+g}"
        elif self.amount >= 1:
            size = f"x{self.amount:g}"
        else:
            size = f"/{1 / self.amount:g}"
        return f"{self.words} ({size})"

    def target(self, value: float) -> float:
        """The value this change asks for, before it is fitted to the search space."""
        if self.op == "+":
            return value + self.amount
        if value == 0 and self.amount > 1:
            return FLOOR.get(self.param, 0.0)
        return value * self.amount


@dataclass(frozen=True)
class Remedy:
    """The changes for one diagnosis, and advice that no searched parameter carries."""

    changes: tuple[Change, ...] = ()
    advice: str = ""

    def hint(self) -> str:
        """One line: each change with its size, then the advice (``a, b, or c``)."""
        parts = [c.text() for c in self.changes] + ([self.advice] if self.advice else [])
        if len(parts) <= 1:
            return parts[0] if parts else ""
        return ", ".join(parts[:-1]) + ", or " + parts[-1]

    def apply(self, params: Mapping[str, Any], space: Mapping[str, Param]) -> dict[str, Any] | None:
        """``params`` with every change applied and fitted to ``space``; None when none can move.

        A parameter the study holds fixed is left as it is (its space has one value); a
        range clips to its bounds (and step); a list of choices takes the nearest choice
        on the side of the change.
        """
        out = dict(params)
        moved = False
        for change in self.changes:
            if change.param not in params or change.param not in space:
                continue
            current = params[change.param]
            if isinstance(current, bool) or not isinstance(current, int | float):
                continue
            new = fit(change.target(float(current)), float(current), space[change.param])
            if new is not None and new != current:
                out[change.param] = new
                moved = True
        return out if moved else None


def fit(wanted: float, current: float, param: Param) -> Any:
    """``wanted`` fitted to ``param``'s space, moving from ``current``; None if the space holds one value."""
    from sweep.spec import Choice, Fixed, Range

    if isinstance(param, Fixed):
        return None
    if isinstance(param, Choice):
        numbers = [v for v in param.values if isinstance(v, int | float) and not isinstance(v, bool)]
        side = [v for v in numbers if (v > current if wanted > current else v < current)]
        return min(side, key=lambda v: abs(v - wanted)) if side else None
    assert isinstance(param, Range)
    value = min(max(wanted, param.low), param.high)
    if param.step is not None:
        value = param.low + round((value - param.low) / param.step) * param.step
        value = min(value, param.high)
    if param.integer:
        value = math.floor(value + 0.5)
        return min(max(value, int(param.low)), int(param.high))
    return float(f"{value:.6g}")


LR, BATCH, UNITS, DROPOUT, L2 = "learning_rate", "batch_size", "units", "dropout", "l2"

REMEDIES: dict[str, Remedy] = {
    "stable": Remedy(advice="nothing to change"),
    "not_learning": Remedy(
        (
            Change(LR, "*", 3, "raise the learning rate"),
            Change(UNITS, "*", 2, "use more units"),
            Change(L2, "*", 0.1, "weaken L2"),
        ),
        advice="check the features",
    ),
    "overfitting": Remedy(
        (
            Change(DROPOUT, "+", 0.1, "add dropout"),
            Change(L2, "*", 10, "strengthen L2"),
            Change(UNITS, "*", 0.5, "use fewer units"),
        ),
        advice="stop earlier (training.patience)",
    ),
    "oscillating": Remedy(
        (Change(LR, "*", 1 / 3, "lower the learning rate"), Change(BATCH, "*", 2, "use a larger batch")),
    ),
    "diverged": Remedy(
        (Change(LR, "*", 0.1, "lower the learning rate"),),
        advice="add LayerNormalization, use adam/rmsprop or training.clipnorm",
    ),
    "underfitting": Remedy(
        (Change(UNITS, "*", 2, "use more units"), Change(LR, "*", 3, "raise the learning rate")),
        advice="train for more epochs (training.max_epochs)",
    ),
    "unstable_across_repeats": Remedy(
        (
            Change(LR, "*", 1 / 3, "lower the learning rate"),
            Change(BATCH, "*", 2, "use a larger batch"),
            Change(L2, "*", 10, "strengthen L2"),
        ),
    ),
    "pruned": Remedy(advice="no advice: it was not trained to the end"),
}
"""The remedy of each diagnosis (by its value, :class:`sweep.stability.Diagnosis`)."""
