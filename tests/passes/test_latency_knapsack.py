"""The multiple-choice knapsack against brute force on small random cases."""
from __future__ import annotations

import itertools

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prunec.passes.latency_knapsack import plan_cost, plan_value, select_options, solve_mckp


def brute_force(values, costs, budget):
    """Best value over every plan whose cost fits (None when none fits)."""
    best = None
    for picked in itertools.product(*[range(len(v)) for v in values]):
        if plan_cost(costs, picked) <= budget + 1e-9:
            value = plan_value(values, picked)
            best = value if best is None else max(best, value)
    return best


classes = st.integers(1, 4).flatmap(lambda n: st.lists(
    st.integers(1, 4).flatmap(lambda m: st.tuples(
        st.lists(st.floats(-5, 5, allow_nan=False), min_size=m, max_size=m),
        st.lists(st.integers(0, 12), min_size=m, max_size=m))),
    min_size=n, max_size=n))


@settings(max_examples=300, deadline=None)
@given(classes, st.integers(0, 30))
def test_exact_for_integer_costs(cases, budget):
    values = [v for v, _ in cases]
    costs = [c for _, c in cases]
    picked = solve_mckp(values, costs, budget)
    best = brute_force(values, costs, budget)
    if best is None:
        assert picked is None
        return
    assert picked is not None and len(picked) == len(values)
    assert plan_cost(costs, picked) <= budget
    assert abs(plan_value(values, picked) - best) < 1e-9


real_classes = st.integers(1, 4).flatmap(lambda n: st.lists(
    st.integers(1, 4).flatmap(lambda m: st.tuples(
        st.lists(st.floats(0, 10, allow_nan=False), min_size=m, max_size=m),
        st.lists(st.floats(-3, 3, allow_nan=False), min_size=m, max_size=m))),
    min_size=n, max_size=n))


@settings(max_examples=200, deadline=None)
@given(real_classes, st.floats(-6, 6, allow_nan=False), st.sampled_from([7, 50, 400]))
def test_real_costs_feasible_and_near_optimal(cases, budget, resolution):
    """Costs rounded up: the plan never exceeds the budget, and it is at least as good as
    the best plan with ``len(classes)`` rounding steps of slack."""
    values = [v for v, _ in cases]
    costs = [c for _, c in cases]
    picked = select_options(values, costs, budget, resolution=resolution)
    cheapest = sum(min(c) for c in costs)
    assume(abs(cheapest - budget) > 1e-6)  # at the boundary either answer is right
    if cheapest > budget:
        assert picked is None
        return
    assert picked is not None
    assert plan_cost(costs, picked) <= budget + 1e-9
    room = budget - cheapest
    slack = len(costs) * room / resolution
    tighter = brute_force(values, costs, budget - slack)
    if tighter is not None:
        assert plan_value(values, picked) >= tighter - 1e-9


def test_non_monotone_costs():
    """A wider option that is cheaper (a width the kernels like) is taken when it pays."""
    values = [[1.0, 2.0, 3.0]]
    costs = [[5, 9, 4]]  # the widest option is the cheapest
    assert solve_mckp(values, costs, 4) == [2]


def test_infeasible_and_zero_budget():
    assert solve_mckp([[1.0]], [[3]], 2) is None
    assert select_options([[1.0, 5.0]], [[-1.0, 0.0]], -2.0) is None
    assert select_options([[1.0, 5.0], [2.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]], -2.0) == [0, 1]
