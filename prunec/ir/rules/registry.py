"""The rule table: op -> :class:`Rule` (see :mod:`prunec.ir.rules`). Each rule module
registers its ops with :func:`register` when imported; the package imports them all."""
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
