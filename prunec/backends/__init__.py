"""Lowerings of a Program to deployment backends, and the benchmark harness.

``lower(program, "onnxruntime", fp16=True)`` returns an :class:`Artifact`: callable like
the model, with ``save(path)``. Backend modules import their optional software only when
used, so this package imports with torch alone.
"""
from __future__ import annotations

from prunec.backends import bench
from prunec.backends.base import BACKENDS, Artifact, IOSpec, lower, register_backend
from prunec.backends.bench import BenchResult, LatencyStats, benchmark

__all__ = [
    "Artifact", "BACKENDS", "IOSpec", "lower", "register_backend",
    "bench", "benchmark", "BenchResult", "LatencyStats",
]
