"""Magnitude pruning: a unit's importance is the norm of all the weights it owns.

For unit ``u`` of a group, ``I_u = (sum over parameter slots s of ||W_s[u]||_p^p)^(1/p)``,
where ``W_s[u]`` are the slices of parameter ``s`` on the unit's indices (producer rows,
consumer columns, norm scales and biases alike).
"""
from __future__ import annotations

import torch

from prunec.ir.channels import ChannelGroup
from prunec.ir.program import Program
from prunec.passes.base import PassContext, PruningPass

__all__ = ["MagnitudePruning", "unit_norms"]


def unit_norms(program: Program, group: ChannelGroup, p: float = 2.0) -> torch.Tensor:
    """``sum_s ||W_s[u]||_p^p`` per unit, in float64."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for slot in group.params:
        w = program.get_tensor(slot.param).detach().double()
        per_index = w.abs().pow(p).movedim(slot.axis, 0).reshape(w.shape[slot.axis], -1).sum(1)
        owner = torch.from_numpy(group.unit_index[slot])
        hit = owner >= 0
        total.index_add_(0, owner[hit], per_index[hit])
    return total


class MagnitudePruning(PruningPass):
    """Remove the units with the smallest weight norm.

    Args:
        ratio: Fraction of candidate units removed.
        norm: ``p`` of the Lp norm.
        scope: ``"global"`` or ``"local"``.
        targets: ``"all"`` or ``"mlp"``.
        round_to: Kept channel counts are multiples of this.
    """

    name = "magnitude"

    def __init__(self, ratio: float, *, norm: float = 2, scope: str = "global", targets: str = "all",
                 round_to: int = 8):
        super().__init__(ratio=ratio, scope=scope, targets=targets, round_to=round_to)
        self.norm = float(norm)

    def score(self, program, groups, ctx: PassContext) -> dict[str, torch.Tensor]:
        return {g.key: unit_norms(program, g, self.norm).pow(1.0 / self.norm) for g in groups}
