"""Errors raised by prunec. Every error names the place (module path, op) and what to do."""
from __future__ import annotations

__all__ = [
    "PrunecError",
    "CaptureError",
    "UnsupportedOpError",
    "CalibrationError",
    "BackendUnavailable",
    "PlanError",
    "PassError",
    "VerificationError",
    "InvalidArgumentError",
]


class PrunecError(Exception):
    """Base of every error prunec raises."""


class CaptureError(PrunecError):
    """The model could not be captured with ``torch.export``."""


class UnsupportedOpError(PrunecError):
    """An op prunec cannot rewrite was asked to be rewritten."""


class CalibrationError(PrunecError):
    """Calibration data was empty, malformed, or produced non-finite statistics."""


class BackendUnavailable(PrunecError):
    """A backend's software or hardware is missing; the message says what to install."""


class PlanError(PrunecError):
    """A pruning plan does not fit the program it is applied to."""


class PassError(PrunecError):
    """A pass failed; the message names it, its options and the passes before it."""


class VerificationError(PrunecError):
    """A rewritten program does not compute what its pass guarantees."""


class InvalidArgumentError(PrunecError, TypeError, ValueError):
    """An argument of the public API has the wrong type or is out of range.

    Raised before any expensive work; the message names the argument and what to pass
    instead. It is also a ``TypeError`` and a ``ValueError``, so code written against the
    built-in conventions catches it too.
    """
