"""Passes: each is configured in its constructor and called as ``pass_(program, ctx)``."""
from prunec.passes.base import Pass, PassBase, PassContext, PassResult, PassStats, PruningPass
from prunec.rewrite import MeanCompensation, PruningPlan, apply_plan
from prunec.passes.prune_depth import DepthPruning
from prunec.passes.prune_heads import HeadPruning
from prunec.passes.prune_magnitude import MagnitudePruning
from prunec.passes.prune_random import RandomPruning
from prunec.passes.prune_variance import VarianceBasedPruning

__all__ = [
    "Pass", "PassBase", "PassContext", "PassResult", "PassStats", "PruningPass", "PruningPlan", "MeanCompensation",
    "apply_plan", "DepthPruning", "HeadPruning", "MagnitudePruning", "RandomPruning", "VarianceBasedPruning",
]
