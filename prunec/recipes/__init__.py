"""Published methods that combine passes with training (DESIGN.md contract 10).

A recipe builds candidate Programs with ``Program.clone()``, runs passes on them, trains them
with :mod:`prunec.train`, compares them (:mod:`prunec.ir.similarity`, stability measures) and
keeps one, reporting every step.

- :class:`OneCyclePruner` / :func:`ocspruner`: OCSPruner (arXiv 2501.13439), pruning once
  during training from scratch at the epoch its selected sub-network becomes stable.
- :func:`peeao`: Pruning Everything, Everywhere, All at Once (arXiv 2506.04513): at every
  step a residual block or as many filters, whichever candidate keeps the higher linear CKA
  to its parent.
"""
from prunec.recipes.ocs_pruner import OneCyclePruner
from prunec.recipes.ocs_train import OCSReport, ocspruner
from prunec.recipes.peeao import peeao

__all__ = ["OneCyclePruner", "ocspruner", "OCSReport", "peeao"]
