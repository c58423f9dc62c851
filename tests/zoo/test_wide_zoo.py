"""The wide zoo: every architecture of :mod:`tests.zoo.hf_wide` passes the checks of
:mod:`tests.zoo.wide_checks` -- ratio 0 is the identity; magnitude 0.3 and random 0.5 keep
output shapes, stay finite and cut MACs; zeroing equivalence holds over the groups not
normalised over; the caller's model is untouched; and at least 30% of the MACs lie in
prunable groups, or capture raises a ``PrunecError`` that names the op.

The cases in ``SLOW`` take tens of seconds each on two cores, so a run checks a deterministic
third of them (rotating with the ISO week); ``PRUNEC_WIDE_ZOO=all`` checks every one, and
``benchmarks/coverage.py`` always runs every architecture.
"""
from __future__ import annotations

import datetime
import os

import pytest

from tests.zoo.hf_wide import SLOW, WIDE
from tests.zoo.wide_checks import MIN_SHARE, check_architecture


def _selected() -> list:
    if os.environ.get("PRUNEC_WIDE_ZOO") == "all":
        return sorted(WIDE)
    week = datetime.date.today().isocalendar()[1]
    slow = sorted(SLOW)
    sampled = {name for i, name in enumerate(slow) if i % 3 == week % 3}
    return sorted(n for n in WIDE if n not in SLOW or n in sampled)


def _param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


@pytest.mark.parametrize("name", [_param(n) for n in _selected()])
def test_architecture(name):
    result = check_architecture(WIDE[name]())
    if result.error is not None:
        assert "op" in result.error or "module" in result.error, result.error
        return
    cov = result.coverage
    assert cov.share >= MIN_SHARE, (
        f"{name}: {cov.share:.0%} of MACs prunable; blocked: {list(cov.blocked.items())[:3]}")
    assert result.macs_random < result.macs


def test_zoo_is_wide():
    assert len(WIDE) >= 40
