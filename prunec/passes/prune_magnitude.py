"""Magnitude pruning: a unit's importance is the norm of all the weights it owns.

For unit ``u`` of a group, ``I_u = (sum over parameter slots s of ||W_s[u]||_p^p)^(1/p)``,
where ``W_s[u]`` are the slices of parameter ``s`` on the unit's indices (producer rows,
consumer columns, norm scales and biases alike).
"""
from __future__ import annotations

import math

import torch

from prunec.ir.channels import ChannelGroup
from prunec.ir.program import Program
from prunec.passes.base import PassContext, PruningPass
from prunec.validate import check_positive

__all__ = ["MagnitudePruning", "unit_norms", "power_sums", "CHUNK_ELEMENTS"]

CHUNK_ELEMENTS = 1 << 24
"""Largest slice of a weight reduced at once (64 MB in float32)."""


def unit_norms(program: Program, group: ChannelGroup, p: float = 2.0) -> torch.Tensor:
    """``sum_s ||W_s[u]||_p^p`` per unit, accumulated in float64 across slots and chunks."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for slot in group.params:
        per_index = power_sums(program.get_tensor(slot.param).detach(), slot.axis, p)
        owner = torch.from_numpy(group.unit_index[slot])
        hit = owner >= 0
        total.index_add_(0, owner[hit], per_index[hit])
    return total


def power_sums(weight: torch.Tensor, axis: int, p: float) -> torch.Tensor:
    """``sum over all other axes of |W|^p`` for every index of ``axis``, in float64.

    No copy of the whole weight is made (a 4 GB float32 weight would need 8 GB as float64).
    The weight is viewed as ``[pre, size, post]`` around ``axis`` and reduced in chunks of at
    most :data:`CHUNK_ELEMENTS`: rows of ``[size, post]`` by ``vector_norm`` when ``axis``
    leads (``pre == 1``), else slices along ``pre`` whose ``|W|^p`` is summed over axes 0 and
    2. Each chunk is reduced in the weight's dtype (float32 for float16/bfloat16: their sums
    would lose digits), and chunk results are added in float64. The relative error is that
    of a float32 reduction, about 1e-7: scores of units closer than that may rank either way.
    """
    w = weight.detach()
    if w.dim() == 1:
        return w.to(torch.float64).abs().pow(p).cpu()
    low = w.dtype in (torch.float16, torch.bfloat16)
    size = w.shape[axis]
    pre, post = math.prod(w.shape[:axis]), math.prod(w.shape[axis + 1:])
    w3 = w.reshape(pre, size, post)
    if pre == 1:  # axis 0: every index owns one contiguous row
        rows = w3[0]
        step = max(1, CHUNK_ELEMENTS // max(post, 1))
        norms = [torch.linalg.vector_norm(chunk, ord=p, dim=1,
                                          dtype=torch.float32 if low else None)
                 for chunk in rows.split(step, dim=0)]
        return torch.cat(norms).to(torch.float64).pow(p).cpu()
    total = torch.zeros(size, dtype=torch.float64, device=w.device)
    step = max(1, CHUNK_ELEMENTS // max(size * post, 1))
    for chunk in w3.split(step, dim=0):
        chunk = chunk.float() if low else chunk
        powered = chunk.square() if p == 2 else chunk.abs().pow(p)
        total += powered.sum(dim=(0, 2)).to(torch.float64)
    return total.cpu()


class MagnitudePruning(PruningPass):
    """Remove the units with the smallest weight norm.

    Args:
        ratio: Fraction of candidate units removed.
        norm: ``p`` of the Lp norm.
        scope: ``"global"`` or ``"local"``.
        targets: ``"all"`` or ``"mlp"``.
        round_to: Kept channel counts are multiples of this.
        latency: Instead of ``ratio``: a latency target (see :mod:`prunec.passes.latency`).
    """

    name = "magnitude"

    def __init__(self, ratio: float | None = None, *, norm: float = 2, scope: str = "global",
                 targets: str = "all", round_to: int = 8, latency=None):
        super().__init__(ratio=ratio, scope=scope, targets=targets, round_to=round_to,
                         latency=latency)
        self.norm = check_positive(norm, type(self).__name__, "norm")

    def score(self, program, groups, ctx: PassContext) -> dict[str, torch.Tensor]:
        return {g.key: unit_norms(program, g, self.norm).pow(1.0 / self.norm) for g in groups}
