"""The only code that changes parameters and shape constants (DESIGN.md contract 4).

- :mod:`prunec.rewrite.plan`: :class:`PruningPlan`, plain data;
- :mod:`prunec.rewrite.apply`: :func:`apply_plan` and :func:`estimate_macs`;
- :mod:`prunec.rewrite.compensation`: folding mean activations into consumers;
- :mod:`prunec.rewrite.replay`: :func:`recapture`, a program's lineage on a fresh capture.
"""
from prunec.rewrite.apply import apply_plan, convert_plan, estimate_macs
from prunec.rewrite.plan import BlockDrop, MeanCompensation, PruningPlan, ValueCompensation
from prunec.rewrite.replay import recapture, replay

__all__ = ["PruningPlan", "MeanCompensation", "BlockDrop", "ValueCompensation", "apply_plan",
           "convert_plan", "estimate_macs", "recapture", "replay"]
