"""Captures of zoo models shared by the tests of one process (capture is the slow part).

Tests that rewrite a program work on ``program.clone()``; the cached one is never mutated.
"""
from __future__ import annotations

import functools

from prunec.ir.capture import capture
from prunec.ir.program import Program
from tests.zoo import ZooCase, get_case

__all__ = ["captured"]


@functools.lru_cache(maxsize=None)
def captured(name: str) -> tuple[ZooCase, Program]:
    """The zoo case ``name`` and its eval-mode capture (do not mutate: clone it)."""
    case = get_case(name)
    return case, capture(case.model, case.args, case.kwargs)
