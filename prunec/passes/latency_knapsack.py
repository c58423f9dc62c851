"""Multiple-choice knapsack: one option per class, most value under a cost budget.

Selection for a latency target is a multiple-choice knapsack (MCKP): every class (a channel
group, or a stage of residual blocks) offers options ``j`` (a kept width, a number of blocks
dropped) with a value ``v_ij`` (the importance kept) and a cost ``c_ij`` (its latency), and
exactly one option per class is taken:

    maximise  sum_i v_i,j(i)   subject to   sum_i c_i,j(i) <= B.

:func:`solve_mckp` solves it exactly for integer costs by dynamic programming over the
budget: ``F_i(b) = max_j F_{i-1}(b - c_ij) + v_ij`` with ``F_0(0) = 0`` and ``F_0(b) = -inf``
elsewhere (the cost used exactly ``b``), in ``O(sum_i |options_i| * B)`` time, keeping the
argmax per class and budget to backtrack. Unlike HALP's greedy augmented knapsack it is
optimal, and costs need not be monotone in width (a width the kernels like may be faster
than a narrower one).

:func:`select_options` takes real costs (milliseconds, deltas that may be negative): each
class is shifted by its cheapest option (``c'_ij = c_ij - min_j c_ij``,
``B' = B - sum_i min_j c_ij``; ``B' < 0`` means even the cheapest plan is over budget), and
costs are rounded **up** to multiples of ``B' / resolution``. Rounding up is conservative:
any plan the integer problem allows costs at most ``B'`` in real milliseconds; the price is
that plans within ``len(classes) * B' / resolution`` of the budget may be missed.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["solve_mckp", "select_options", "plan_value", "plan_cost"]


def solve_mckp(values: Sequence[Sequence[float]], costs: Sequence[Sequence[int]],
               budget: int) -> list[int] | None:
    """Exact MCKP for non-negative integer costs (see the module docstring).

    Args:
        values: Per class, the value of each option.
        costs: Per class, the integer cost (``>= 0``) of each option.
        budget: The integer budget (``>= 0``).

    Returns:
        The option index per class of a plan of maximal total value whose total cost is at
        most ``budget`` (ties: the earlier option), or None when no plan fits.
    """
    if budget < 0:
        return None
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    choices = []
    for vals, cs in zip(values, costs):
        new = np.full(budget + 1, -np.inf)
        arg = np.full(budget + 1, -1, dtype=np.int32)
        for j, (v, c) in enumerate(zip(vals, cs)):
            c = int(c)
            if c < 0:
                raise ValueError(f"costs must be >= 0, got {c}")
            if c > budget:
                continue
            candidate = best[:budget + 1 - c] + float(v)
            better = candidate > new[c:]
            new[c:][better] = candidate[better]
            arg[c:][better] = j
        best = new
        choices.append(arg)
    if not np.isfinite(best).any():
        return None
    b = int(np.argmax(best))  # the first budget reaching the best value: the cheapest
    picked = []
    for arg, cs in zip(reversed(choices), reversed(list(costs))):
        j = int(arg[b])
        picked.append(j)
        b -= int(cs[j])
    return picked[::-1]


def select_options(values: Sequence[Sequence[float]], costs: Sequence[Sequence[float]],
                   budget: float, *, resolution: int = 4000) -> list[int] | None:
    """MCKP with real costs, rounded up onto ``resolution`` steps of the budget.

    Returns:
        The option per class (None when even the cheapest options exceed ``budget``); the
        plan's real cost never exceeds ``budget``.
    """
    lows = [min(float(c) for c in cs) for cs in costs]
    # Differences below rounding error of the sums count as equal.
    tol = 1e-12 * max([1.0, abs(budget)] + [abs(float(c)) for cs in costs for c in cs])
    room = budget - sum(lows)
    if room < -tol:
        return None
    room = room if room > tol else 0.0
    unit = room / resolution if room > 0 else 1.0
    integer = []
    for cs, low in zip(costs, lows):
        shifted = [float(c) - low for c in cs]
        if room == 0:  # only the cheapest options fit
            integer.append([0 if s <= tol else 1 for s in shifted])
        else:
            integer.append([max(0, math.ceil(s / unit - 1e-9)) for s in shifted])
    return solve_mckp(values, integer, resolution if room > 0 else 0)


def plan_value(values: Sequence[Sequence[float]], picked: Sequence[int]) -> float:
    """Total value of a plan."""
    return float(sum(vals[j] for vals, j in zip(values, picked)))


def plan_cost(costs: Sequence[Sequence[float]], picked: Sequence[int]) -> float:
    """Total cost of a plan."""
    return float(sum(cs[j] for cs, j in zip(costs, picked)))
