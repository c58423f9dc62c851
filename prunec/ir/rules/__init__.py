"""Per-op coupling rules (DESIGN.md contract 5).

A rule says how channel indices map between an op's inputs and outputs along each axis, by
calling the :class:`CoupleContext` verbs:

* ``tie(a, ax, b, bx)`` -- identity: index i of ``a`` on ``ax`` is index i of ``b`` on ``bx``;
* ``tie_range(...)`` -- offset: a contiguous slice of one axis is another axis (cat, split);
* ``tie_blocks(merged, mx, outer, ox, block)`` -- index j of the merged axis is index
  ``j // block`` of the outer axis (head reshapes, flatten, grouped convs);
* ``cover(node, ax)`` -- the op handles a change of size on that axis without a tie
  (a reduction over channels);
* ``block(node, ax)`` -- the axis must keep its size.

Every static axis of a tensor input or output that a rule neither ties nor covers is blocked
after the rule runs, and an op without a rule blocks everything it touches. The analysis is
therefore conservative, never wrong. A rule whose op carries shape constants (view sizes,
split sizes, group counts) also has a ``rewrite`` that recomputes them after pruning.
"""
from __future__ import annotations

# Each rule module registers its ops in the table (registry.RULES) when imported.
from prunec.ir.rules import (  # noqa: F401
    attention, conv, elementwise, linear, norm, pool, shape,
)
from prunec.ir.rules.registry import RULES, Rule, register, rule_for

__all__ = ["Rule", "RULES", "register", "rule_for"]
