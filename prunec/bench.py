"""``prunec.bench``: the benchmark harness under a short name.

Re-exports the public names of :mod:`prunec.backends.bench` (interleaved latency of several
artifacts, MACs-based speedup / ideal / efficiency), so that ``prunec.bench.benchmark(...)``
works alongside ``prunec.backends.benchmark(...)``.
"""
from __future__ import annotations

from prunec.backends import bench as _bench
from prunec.backends.bench import *  # noqa: F401,F403

__all__ = list(_bench.__all__)
