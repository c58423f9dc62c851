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

from dataclasses import dataclass
from typing import Callable

import torch.fx as fx

__all__ = ["Rule", "RULES", "register", "rule_for"]


@dataclass(frozen=True)
class Rule:
    """How an op couples channels, and how to fix its shape constants after pruning.

    Attributes:
        couple: ``couple(ctx, node)`` declares ties through ``ctx``.
        rewrite: ``rewrite(ctx, node)`` updates the node's constant arguments, or ``None``
            when every size the op needs is taken from its tensor inputs.
        shape_only: The op reads only metadata (``sym_size``, asserts); it neither ties nor
            blocks.
    """

    couple: Callable
    rewrite: Callable | None = None
    shape_only: bool = False


RULES: dict = {}


def register(*ops, rewrite: Callable | None = None, shape_only: bool = False):
    """Decorator registering ``couple`` for every op (an OpOverload or a Python callable)."""

    def deco(fn: Callable) -> Callable:
        for op in ops:
            RULES[op] = Rule(fn, rewrite, shape_only)
        return fn

    return deco


def rule_for(node: fx.Node) -> Rule | None:
    """The rule for a ``call_function`` node: by overload first, then by packet."""
    target = node.target
    if target in RULES:
        return RULES[target]
    packet = getattr(target, "overloadpacket", None)
    return RULES.get(packet) if packet is not None else None


def _load_rule_modules() -> None:
    from prunec.ir.rules import (  # noqa: F401  (imports register the rules)
        attention, conv, elementwise, linear, norm, pool, shape,
    )


_load_rule_modules()
