"""Which configuration trains next, and for how many repeats: the allocation of a budget.

Repeats are what make a ranking trustworthy and what it costs: every repeat is
a configuration not explored. This module decides that trade, and only that.
It is pure: what has been observed goes in (:class:`Config`: which
configuration ran which repeats, with what score, at what cost), a
:class:`Decision` comes out (train a new configuration, train repeat ``r`` of
configuration ``k``, or stop). No TensorFlow, no storage: the objective and the
workers carry its decisions out, and a table of published per-seed results can
drive it as well (benchmark 9). Every worker reads the same storage, so every
worker reaches the same decision from it: there is no coordinator.

The policies (``[allocation] policy``):

``auto`` (the default)
    ``single`` on a small budget, ``racing`` on a large one or without a budget: the
    best row of each budget on published per-seed results (benchmark 9). A budget is
    small when it holds fewer than :data:`AUTO_SMALL` configurations with all R repeats.
``single``
    One run per configuration: only repeat 0, the best explorer at a small
    budget. With a budget, the last part of it verifies the best runs.
``racing``
    Quantile racing: after repeat 0, a configuration trains all R repeats when
    its repeat-0 score is among the best ``keep`` fraction of all repeat-0
    scores (the first ``n_startup`` always do).
``intensify``
    SMAC's intensification against an incumbent. Every new configuration (a
    challenger) trains repeat 0. It trains its next repeat only while the mean
    of its scores so far is no worse than the incumbent's mean over the *same*
    repeats (same splits, same seeds: like with like, so what every
    configuration shares cancels out); once it has as many repeats as the
    incumbent it is the new incumbent and goes on up to R. The incumbent is the
    configuration with the most repeats and, among those, the lowest mean; it
    gains a repeat before each new configuration until it has all R.
``full``
    Every repeat for every configuration: the reference the others save against.

With a budget (in epochs, or trainings for a published table) every policy
keeps what the final verification needs (:func:`reserve`): once a new
configuration would eat into it, the free workers instead train the missing
repeats of the best configurations, best first, until they have all R
repeats or the budget is spent. A repeat starts only while the epochs used
(finished, plus ``cost`` for each repeat in flight) plus its own ``cost`` fit
the budget, which is how the peers of benchmark 7 are held to theirs.

:func:`ranked` is the order every report uses: configurations with all R
repeats (verified) first, by mean score, then the rest, so a lucky single run
is never presented as the winner while a verified configuration exists.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Sequence

__all__ = [
    "Action",
    "Config",
    "Decision",
    "Plan",
    "Policy",
    "go_on",
    "incumbent",
    "next_run",
    "ranked",
    "reserve",
]


AUTO_SMALL = 20
"""``auto`` takes ``single`` below a budget of this many configurations with all R repeats, else ``racing``.

Benchmark 9 (2026-12-06): at 10 such configurations (30 trainings of 3 repeats)
``single`` with 2 verified was the best policy, at 33 and 100 ``racing`` was.
"""


class Policy(str, enum.Enum):
    """How repeats are allocated (see the module's docstring)."""

    AUTO = "auto"
    INTENSIFY = "intensify"
    SINGLE = "single"
    RACING = "racing"
    FULL = "full"


class Action(str, enum.Enum):
    NEW = "new"
    """Draw a new configuration and train its repeat 0."""
    REPEAT = "repeat"
    """Train repeat ``Decision.repeat`` of configuration ``Decision.key``."""
    WAIT = "wait"
    """Nothing to start now, but other workers' repeats in flight may change that: ask again shortly."""
    STOP = "stop"
    """Nothing more to train: for :func:`go_on`, this configuration; for :func:`next_run`, the study."""


@dataclasses.dataclass(frozen=True)
class Config:
    """What has been observed of one configuration.

    Attributes:
        key: the configuration's id (the number of the trial that drew it).
        scores: one score per repeat trained to its end, repeat ``r`` at index ``r``;
            lower is better; ``inf``/NaN for a repeat that diverged.
        busy: a worker is training one of its repeats now.
        closed: it takes no more repeats (pruned, diverged, or failed).
    """

    key: int
    scores: tuple[float, ...] = ()
    busy: bool = False
    closed: bool = False

    @property
    def n(self) -> int:
        return len(self.scores)

    def mean(self, n: int | None = None) -> float:
        """Mean of the first ``n`` scores (all by default); ``inf`` when there are none or one is not finite."""
        s = self.scores[: self.n if n is None else n]
        if not s or not all(math.isfinite(x) for x in s):
            return math.inf
        return math.fsum(s) / len(s)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The allocation's settings.

    Attributes:
        policy: which :class:`Policy`.
        repeats: R, the most repeats a configuration trains.
        cost: what one repeat may cost at most, in the budget's unit (``max_epochs``; 1 for a table).
        budget: the total to spend, in the same unit; ``None`` for an open-ended sweep.
        keep: racing's fraction of repeat-0 scores that go on.
        n_startup: racing's configurations that go on whatever their score.
        verify: how many of the best configurations the final reserve brings to R repeats.
    """

    policy: Policy = Policy.AUTO
    repeats: int = 3
    cost: float = 1.0
    budget: float | None = None
    keep: float = 0.25
    n_startup: int = 3
    verify: int = 2

    def resolved(self) -> Plan:
        """This plan with ``auto`` replaced by the policy it stands for at this budget."""
        if self.policy is not Policy.AUTO:
            return self
        small = self.budget is not None and self.budget < AUTO_SMALL * self.repeats * self.cost
        return dataclasses.replace(self, policy=Policy.SINGLE if small else Policy.RACING)

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not self.cost > 0:
            raise ValueError(f"cost must be > 0, got {self.cost}")
        if self.budget is not None and not self.budget >= 0:
            raise ValueError(f"budget must be >= 0, got {self.budget}")
        if self.verify < 0:
            raise ValueError(f"verify must be >= 0, got {self.verify}")


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    key: int | None = None
    repeat: int | None = None
    reason: str = ""


def incumbent(configs: Iterable[Config], *, exclude: int | None = None) -> Config | None:
    """The configuration with the most repeats and, among those, the lowest mean (then the lowest key)."""
    pool = [c for c in configs if c.key != exclude and c.n > 0 and math.isfinite(c.mean())]
    if not pool:
        return None
    return min(pool, key=lambda c: (-c.n, c.mean(), c.key))


def ranked(configs: Iterable[Config], *, repeats: int) -> list[Config]:
    """Verified configurations (all ``repeats`` scores) first, each group by mean score, then by key."""
    return sorted(
        (c for c in configs if c.n > 0), key=lambda c: (c.n < repeats, c.mean(), c.key)
    )


def reserve(configs: Sequence[Config], plan: Plan) -> float:
    """What the final verification still needs: the missing repeats of the ``verify`` best configurations.

    The best are ranked by mean score over the repeats they have, whether
    verified or not; a closed configuration needs nothing.
    """
    plan = plan.resolved()
    if plan.budget is None or plan.repeats < 2:
        return 0.0
    return sum((plan.repeats - c.n - c.busy) * plan.cost for c in _targets(configs, plan))


def next_run(configs: Sequence[Config], plan: Plan, *, used: float) -> Decision:
    """What a free worker trains next.

    Args:
        configs: every configuration observed so far, in any order.
        plan: the settings.
        used: the budget used: what finished repeats cost, plus ``plan.cost`` for each repeat in flight.

    Returns:
        ``NEW``, ``REPEAT`` of a configuration no worker is training now, ``WAIT`` while
        what is left is kept for a verification another worker is running, or
        ``STOP`` once no repeat fits the budget.
    """
    plan = plan.resolved()
    if plan.budget is not None:
        left = plan.budget - used
        if left < plan.cost:
            return Decision(Action.STOP, reason=f"the budget is spent ({_fmt(used)} of {_fmt(plan.budget)})")
        if left - plan.cost < reserve(configs, plan):
            c = _to_verify(configs, plan, left=left)
            if c is not None:
                return Decision(
                    Action.REPEAT, c.key, c.n, f"final verification of configuration {c.key} ({_fmt(left)} left)"
                )
            if any(c.busy for c in _targets(configs, plan)):
                return Decision(Action.WAIT, reason="the rest of the budget is kept for the final verification")
            return Decision(Action.NEW)
    if plan.policy is Policy.INTENSIFY:
        inc = incumbent(configs)
        if inc is not None and inc.n < plan.repeats and not inc.busy and not inc.closed:
            return Decision(Action.REPEAT, inc.key, inc.n, f"the incumbent (configuration {inc.key}) gains a repeat")
    return Decision(Action.NEW)


def go_on(configs: Sequence[Config], plan: Plan, key: int, *, used: float) -> Decision:
    """Whether configuration ``key``, which just finished a repeat, trains its next one in the same trial.

    ``configs`` holds ``key`` itself with the scores it has now. ``used``
    counts its finished repeats but not the one it asks for.
    """
    plan = plan.resolved()
    me = next((c for c in configs if c.key == key), None)
    if me is None:
        raise ValueError(f"configuration {key} is not among the observed ones")
    if me.busy:  # its repeat has ended: the next one is what it asks for, not one in flight
        me = Config(me.key, me.scores, busy=False, closed=me.closed)
        configs = [me if c.key == key else c for c in configs]
    if me.closed or me.n == 0:
        return Decision(Action.STOP, key, reason="it takes no more repeats")
    if me.n >= plan.repeats:
        return Decision(Action.STOP, key, reason=f"all {plan.repeats} repeats ran")
    if not math.isfinite(me.scores[-1]):
        return Decision(Action.STOP, key, reason=f"repeat {me.n - 1} diverged")
    if plan.budget is not None and plan.budget - used < plan.cost:
        return Decision(
            Action.STOP, key, reason=f"the budget is spent ({_fmt(used)} of {_fmt(plan.budget)})"
        )
    more = Decision(Action.REPEAT, key, me.n)
    if plan.budget is not None:
        left = plan.budget - used
        if left - plan.cost < reserve(configs, plan):
            chosen = _to_verify(configs, plan, left=left)
            if chosen is not None and chosen.key == key:
                return Decision(Action.REPEAT, key, me.n, "final verification")
    match plan.policy:
        case Policy.FULL:
            return more
        case Policy.SINGLE:
            return Decision(Action.STOP, key, reason="one run per configuration; the best are verified at the end")
        case Policy.RACING:
            return _race(configs, plan, me)
    return _intensify(configs, plan, me)


def _race(configs: Sequence[Config], plan: Plan, me: Config) -> Decision:
    if me.n > 1:
        return Decision(Action.REPEAT, me.key, me.n)
    firsts = [c.scores[0] for c in configs if c.n > 0 and c.key != me.key]
    if len(firsts) < plan.n_startup:
        return Decision(Action.REPEAT, me.key, me.n)
    pool = sorted([*firsts, me.scores[0]])
    cut = pool[max(0, math.ceil(plan.keep * len(pool)) - 1)]
    if me.scores[0] <= cut:
        return Decision(Action.REPEAT, me.key, me.n)
    return Decision(
        Action.STOP,
        me.key,
        reason=f"raced out: its repeat-0 score {me.scores[0]:.4g} is not "
        f"among the best {plan.keep:.0%} of {len(pool)} repeat-0 scores (cut {cut:.4g})",
    )


def _intensify(configs: Sequence[Config], plan: Plan, me: Config) -> Decision:
    inc = incumbent(configs, exclude=me.key)
    if inc is None:
        return Decision(Action.STOP, me.key, reason="the first configuration: the incumbent until challenged")
    n = min(me.n, inc.n)
    mine, theirs = me.mean(n), inc.mean(n)
    if mine > theirs:
        return Decision(
            Action.STOP,
            me.key,
            reason=f"lost to the incumbent (configuration {inc.key}): "
            f"mean {mine:.4g} against {theirs:.4g} over the same {_count(n, 'repeat')}",
        )
    if me.n < inc.n:
        return Decision(Action.REPEAT, me.key, me.n, f"ahead of configuration {inc.key} over {_count(n, 'repeat')}")
    return Decision(Action.REPEAT, me.key, me.n, f"the incumbent (beat configuration {inc.key}) gains a repeat")


def _to_verify(configs: Sequence[Config], plan: Plan, *, left: float) -> Config | None:
    """The configuration whose next repeat the final verification trains, if any.

    The best target (:func:`_targets`) whose missing repeats fit in what is
    left; else the open configuration with the most repeats whose missing ones
    fit (finish what was started: a target that lost its place late may leave
    too little to verify the next one).
    """
    def fits(c: Config) -> bool:
        return c.n < plan.repeats and not c.busy and (plan.repeats - c.n) * plan.cost <= left

    for c in _targets(configs, plan):
        if fits(c):
            return c
    started = [c for c in configs if c.n > 1 and not c.closed and math.isfinite(c.mean()) and fits(c)]
    return min(started, key=lambda c: (-c.n, c.mean(), c.key)) if started else None


def _targets(configs: Iterable[Config], plan: Plan) -> list[Config]:
    """The ``verify`` best open configurations: those the final reserve brings to R repeats.

    For ``intensify`` the incumbent comes first (it won every comparison on the
    same repeats), then the others by mean; for the other policies, all by mean.
    """
    if plan.verify == 0:
        return []
    pool = [c for c in configs if c.n > 0 and not c.closed and math.isfinite(c.mean())]
    order = sorted(pool, key=lambda c: (c.mean(), c.key))
    if plan.policy is Policy.INTENSIFY and (inc := incumbent(pool)) is not None:
        order = [inc, *(c for c in order if c.key != inc.key)]
    return order[: plan.verify]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _fmt(x: float) -> str:
    return f"{x:g}"
