"""Random pruning: the baseline every criterion has to beat."""
from __future__ import annotations

import numbers

import torch

from prunec.errors import InvalidArgumentError
from prunec.passes.base import PassContext, PruningPass

__all__ = ["RandomPruning"]


class RandomPruning(PruningPass):
    """Remove a random ``ratio`` of candidate units (seeded, reproducible).

    Args:
        ratio: Fraction of candidate units removed.
        seed: Seed of the generator that draws the scores.
        scope: ``"global"`` or ``"local"``.
        targets: ``"all"`` or ``"mlp"``.
        round_to: Kept channel counts are multiples of this.
        latency: Instead of ``ratio``: a latency target (see :mod:`prunec.passes.latency`).
    """

    name = "random"
    normalize_global = False

    def __init__(self, ratio: float | None = None, *, seed: int = 0, scope: str = "global",
                 targets: str = "all", round_to: int = 8, latency=None):
        super().__init__(ratio=ratio, scope=scope, targets=targets, round_to=round_to,
                         latency=latency)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise InvalidArgumentError(f"RandomPruning: seed must be an integer, got "
                                       f"{type(seed).__name__} {seed!r}.")
        self.seed = int(seed)

    def score(self, program, groups, ctx: PassContext) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        return {g.key: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in groups}
