"""prunec: a structured-pruning compiler for PyTorch models.

``prunec.compile(model, example_inputs, passes=[...], backend=...)`` captures the model with
``torch.export``, groups coupled channels, runs pruning passes that rewrite the graph, and
lowers the result to a deployment backend.
"""
from prunec import passes
from prunec.api import CompiledModel, Report, analyze, compile, load
from prunec.train import finetune
from prunec.errors import (
    BackendUnavailable, CalibrationError, CaptureError, InvalidArgumentError, PassError,
    PlanError, PrunecError, UnsupportedOpError, VerificationError,
)
from prunec.rewrite import PruningPlan
from prunec.passes.latency import LatencyTarget
# Recipes (OCSPruner, PEEAO) are part of the public surface (``prunec.recipes.ocspruner``);
# imported last: they build on passes and train, already loaded above (about 50 ms more).
from prunec import recipes

__all__ = [
    "compile", "analyze", "load", "finetune", "CompiledModel", "Report", "PruningPlan", "passes",
    "recipes", "LatencyTarget",
    "PrunecError", "CaptureError", "UnsupportedOpError", "CalibrationError",
    "BackendUnavailable", "PlanError", "PassError", "VerificationError", "InvalidArgumentError",
]
from prunec.version import __version__
