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

__all__ = [
    "compile", "analyze", "load", "finetune", "CompiledModel", "Report", "PruningPlan", "passes",
    "PrunecError", "CaptureError", "UnsupportedOpError", "CalibrationError",
    "BackendUnavailable", "PlanError", "PassError", "VerificationError", "InvalidArgumentError",
]
__version__ = "0.1.0"
