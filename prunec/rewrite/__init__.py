"""The only code that changes parameters and shape constants (DESIGN.md contract 4).

- :mod:`prunec.rewrite.plan`: :class:`PruningPlan`, plain data;
- :mod:`prunec.rewrite.apply`: :func:`apply_plan` and :func:`estimate_macs`;
- :mod:`prunec.rewrite.compensation`: folding mean activations into consumers.
"""
from prunec.rewrite.apply import apply_plan, estimate_macs
from prunec.rewrite.plan import BlockDrop, MeanCompensation, PruningPlan

__all__ = ["PruningPlan", "MeanCompensation", "BlockDrop", "apply_plan", "estimate_macs"]
