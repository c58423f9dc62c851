"""Lowerings of a Program to deployment backends, and the benchmark harness.

``lower(program, "onnxruntime", fp16=True)`` returns an :class:`Artifact`: callable like
the model, with ``save(path)``; ``load(path)`` reads any saved artifact back. What a backend
is (its lowering, packages, file recognition, loader) is one entry of the table in
:mod:`prunec.backends.registry`, which each backend module below fills when imported.
Backend modules import their optional software only when used, so this package imports
with torch alone.
"""
from __future__ import annotations

# Each import registers its backend(s) in the table (registry.BACKENDS).
from prunec.backends import (  # noqa: F401
    inductor_backend, module, onnx_backend, onnx_original, onnxruntime_backend,
    tensorrt_backend, torch_backend,
)
from prunec.backends import bench
from prunec.backends.base import Artifact, IOSpec
from prunec.backends.bench import BenchResult, LatencyStats, benchmark
from prunec.backends.registry import (
    BACKENDS, BackendSpec, Requirement, load, lower, register, register_backend,
)

__all__ = [
    "Artifact", "BACKENDS", "BackendSpec", "Requirement", "IOSpec", "lower", "load", "register",
    "register_backend", "bench", "benchmark", "BenchResult", "LatencyStats",
]
