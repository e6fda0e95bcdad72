"""The allocation policy on synthetic tables: pure decisions, no training, no storage."""

from __future__ import annotations

import math
import random

import pytest

from sweep.allocation import Action, Config, Plan, Policy, go_on, incumbent, next_run, ranked, reserve


def _drive(plan: Plan, table: list[list[float]], *, workers: int = 1) -> tuple[dict[int, Config], float]:
    """Run ``plan`` over ``table`` (row k: configuration k's score on each repeat) as a sweep would.

    New configurations are drawn in table order; one repeat costs ``plan.cost``.
    With several workers, each takes the next decision in turn and its repeat
    stays in flight (busy, counted as used) until the others have decided too.
    """
    configs: dict[int, Config] = {}
    used = 0.0
    drawn = 0
    for _ in range(10_000):
        in_flight: list[tuple[int, int]] = []
        for _ in range(workers):
            step = next_run(list(configs.values()), plan, used=used + plan.cost * len(in_flight))
            if step.action in (Action.STOP, Action.WAIT):
                break
            if step.action is Action.NEW:
                if drawn == len(table):
                    break
                key, r = drawn, 0
                drawn += 1
                configs[key] = Config(key)
            else:
                assert step.key is not None and step.repeat is not None
                key, r = step.key, step.repeat
            configs[key] = Config(key, configs[key].scores, busy=True)
            in_flight.append((key, r))
        if not in_flight:
            return configs, used
        for i, (key, r) in enumerate(in_flight):
            others = plan.cost * (len(in_flight) - i - 1)  # the repeats the other workers still train
            while True:
                assert r == configs[key].n, "a repeat is trained once, in order"
                used += plan.cost
                configs[key] = Config(key, (*configs[key].scores, table[key][r]), busy=True)
                decision = go_on(list(configs.values()), plan, key, used=used + others)
                if decision.action is not Action.REPEAT:
                    configs[key] = Config(key, configs[key].scores)
                    break
                r = decision.repeat if decision.repeat is not None else r + 1
    raise AssertionError("the driver did not end")


def test_a_clearly_worse_challenger_stops_after_one_repeat() -> None:
    plan = Plan(policy=Policy.INTENSIFY, repeats=3)
    configs = [Config(0, (0.30, 0.32, 0.31)), Config(1, (0.90,))]
    step = go_on(configs, plan, 1, used=4)
    assert step.action is Action.STOP
    assert step.reason == (
        "lost to the incumbent (configuration 0): mean 0.9 against 0.3 over the same 1 repeat"
    )


def test_a_better_challenger_catches_up_on_the_same_repeats_then_takes_over() -> None:
    plan = Plan(policy=Policy.INTENSIFY, repeats=3, budget=100)
    inc = Config(0, (0.50, 0.40, 0.45))
    assert go_on([inc, Config(1, (0.45,))], plan, 1, used=4).action is Action.REPEAT
    # ahead on repeat 0 but behind over repeats 0 and 1: compared like with like, it stops
    assert go_on([inc, Config(1, (0.45, 0.50))], plan, 1, used=5).action is Action.STOP
    better = Config(1, (0.44, 0.39, 0.40))
    assert incumbent([inc, better]) == better
    assert ranked([inc, better, Config(2, (0.01,))], repeats=3) == [better, inc, Config(2, (0.01,))]


def test_the_comparison_is_invariant_to_what_every_configuration_shares() -> None:
    """Adding the same offset to one repeat for every configuration (a hard split) changes no decision."""
    plan = Plan(policy=Policy.INTENSIFY, repeats=3)
    inc, challenger = Config(0, (0.5, 0.4, 0.45)), Config(1, (0.45, 0.41))
    shifted = [
        Config(c.key, tuple(s + (7.0 if r == 1 else 0.0) for r, s in enumerate(c.scores))) for c in (inc, challenger)
    ]
    assert go_on([inc, challenger], plan, 1, used=5).action == go_on(shifted, plan, 1, used=5).action


def test_without_a_budget_the_incumbent_is_verified_before_more_exploration() -> None:
    plan = Plan(policy=Policy.INTENSIFY, repeats=3)
    first = Config(0, (0.5,))
    step = next_run([first], plan, used=1)
    assert (step.action, step.key, step.repeat) == (Action.REPEAT, 0, 1)
    assert next_run([Config(0, (0.5,), busy=True)], plan, used=2).action is Action.NEW
    assert next_run([Config(0, (0.5, 0.5, 0.5))], plan, used=3).action is Action.NEW


@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize("budget", [7, 30, 101])
@pytest.mark.parametrize("workers", [1, 3])
def test_the_budget_is_spent_exactly_and_the_best_is_verified(policy: Policy, budget: int, workers: int) -> None:
    rng = random.Random(budget * 7 + workers)
    table = [[q + rng.gauss(0, 0.05) for _ in range(3)] for q in (rng.uniform(0.2, 1.0) for _ in range(500))]
    plan = Plan(policy=policy, repeats=3, cost=1, budget=budget, verify=1)
    configs, used = _drive(plan, table, workers=workers)
    assert used == budget  # every repeat costs exactly its cost here: nothing is left unused
    assert sum(c.n for c in configs.values()) == budget
    top = ranked(configs.values(), repeats=3)[0]
    assert top.n == 3, "a verified configuration is ranked first"


def test_a_small_budget_explores_where_every_repeat_for_every_configuration_cannot() -> None:
    rng = random.Random(1)
    table = [[q + rng.gauss(0, 0.02) for _ in range(3)] for q in (rng.uniform(0.2, 1.0) for _ in range(200))]
    seen = {
        p: len(_drive(Plan(policy=p, repeats=3, cost=1, budget=30), table)[0]) for p in (Policy.FULL, Policy.INTENSIFY)
    }
    assert seen[Policy.FULL] == 10
    assert seen[Policy.INTENSIFY] >= 20


def test_a_lucky_single_run_is_verified_and_loses_its_place() -> None:
    """Configuration 3 is lucky once: the final verification exposes it, and the ranking does not pick it."""
    table = [[0.50, 0.50, 0.50], [0.40, 0.41, 0.40], [0.60, 0.60, 0.60], [0.10, 0.90, 0.95]] + [[0.7] * 3] * 40
    configs, used = _drive(Plan(policy=Policy.SINGLE, repeats=3, cost=1, budget=20, verify=2), table)
    assert configs[3].n == 3 and configs[1].n == 3
    assert ranked(configs.values(), repeats=3)[0].key == 1
    assert used == 20


def test_the_reserve_covers_the_missing_repeats_of_the_best() -> None:
    plan = Plan(policy=Policy.SINGLE, repeats=3, cost=10, budget=150, verify=2)
    configs = [Config(0, (0.5,)), Config(1, (0.3,)), Config(2, (0.4, 0.4)), Config(3, (0.2,), closed=True)]
    assert reserve(configs, plan) == 10 * 2 + 10 * 1
    assert reserve(configs, Plan(policy=Policy.SINGLE, repeats=3, cost=10)) == 0
    step = next_run(configs, plan, used=115)
    assert (step.action, step.key, step.repeat) == (Action.REPEAT, 1, 1)
    assert next_run(configs, plan, used=141).action is Action.STOP
    assert next_run(configs, plan, used=80).action is Action.NEW


def test_racing_keeps_the_best_quantile_of_first_repeats() -> None:
    plan = Plan(policy=Policy.RACING, repeats=3, keep=0.5, n_startup=2)
    firsts = [Config(k, (s,)) for k, s in enumerate([0.2, 0.4, 0.6])]
    assert go_on([*firsts, Config(9, (0.3,))], plan, 9, used=4).action is Action.REPEAT
    out = go_on([*firsts, Config(9, (0.7,))], plan, 9, used=4)
    assert out.action is Action.STOP
    assert out.reason.startswith("raced out: its repeat-0 score 0.7 is not among the best 50% of 4")
    assert go_on([Config(9, (5.0,))], plan, 9, used=1).action is Action.REPEAT  # startup


def test_a_diverged_repeat_ends_the_configuration() -> None:
    plan = Plan(policy=Policy.FULL, repeats=3)
    assert go_on([Config(0, (0.5, math.inf))], plan, 0, used=2).reason == "repeat 1 diverged"
    assert Config(0, (0.5, math.nan)).mean() == math.inf


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        Plan(repeats=0)
    with pytest.raises(ValueError, match="cost must be > 0"):
        Plan(cost=0)
    with pytest.raises(ValueError, match="not among the observed"):
        go_on([], Plan(), 3, used=0)


def test_auto_is_the_best_explorer_on_a_small_budget_and_races_on_a_large_one() -> None:
    small = Plan(policy=Policy.AUTO, repeats=3, cost=10, budget=150)  # 5 configurations with every repeat
    large = Plan(policy=Policy.AUTO, repeats=3, cost=10, budget=600)  # 20
    assert small.resolved().policy is Policy.SINGLE and small.resolved().verify == 2
    assert large.resolved().policy is Policy.RACING
    assert Plan(policy=Policy.AUTO).resolved().policy is Policy.RACING  # no budget
    assert Plan(policy=Policy.FULL, budget=1).resolved().policy is Policy.FULL
    firsts = [Config(k, (s,)) for k, s in enumerate([0.2, 0.3, 0.4, 0.5])]
    assert go_on([*firsts, Config(9, (0.1,))], small, 9, used=50).action is Action.STOP
    assert go_on([*firsts, Config(9, (0.1,))], large, 9, used=50).action is Action.REPEAT
