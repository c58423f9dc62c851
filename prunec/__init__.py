"""prunec: a structured-pruning compiler for PyTorch models."""
from prunec.errors import (
    BackendUnavailable, CalibrationError, CaptureError, PlanError, PrunecError, UnsupportedOpError,
)

__all__ = [
    "PrunecError", "CaptureError", "UnsupportedOpError", "CalibrationError",
    "BackendUnavailable", "PlanError",
]
__version__ = "0.1.0"
