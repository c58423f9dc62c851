"""The prunec version (read by artifact metadata and the CLI, below every other room)."""
from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
