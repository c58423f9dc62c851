"""The checks every architecture of the wide zoo must pass, shared by the tests and by
``benchmarks/coverage.py`` (which runs them on every architecture and records the numbers).

For one :class:`~tests.zoo.ZooCase`:

1. capture; a :class:`~prunec.errors.PrunecError` here is an accepted outcome (it must name
   the op or module), any other exception is a failure;
2. ratio 0 is the identity: not modified, same outputs as the model;
3. ``MagnitudePruning(0.3)`` and ``RandomPruning(0.5)``: output structure and shapes kept,
   finite, fewer MACs;
4. zeroing equivalence of the magnitude plan, over the groups not normalised over (``norm``):
   the pruned program computes what the model computes with those channels zeroed;
5. the caller's model is untouched (state dict and training flag);
6. at least :data:`MIN_SHARE` of the MACs lie in prunable groups.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree

from prunec.errors import PrunecError
from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.ir.cost import count_macs
from prunec.passes import MagnitudePruning, PassContext, RandomPruning
from prunec.rewrite import PruningPlan, apply_plan
from tests.helpers import max_diff, state_equal, tensors, zeroed_copy
from tests.zoo import ZooCase
from tests.zoo.coverage import Coverage, mac_coverage

__all__ = ["MIN_SHARE", "ArchitectureResult", "check_architecture"]

MIN_SHARE = 0.30
ATOL = 1e-4  # float32 sums of a few hundred terms, outputs of order 1


@dataclass
class ArchitectureResult:
    """What :func:`check_architecture` measured (numbers only; failures raise)."""

    name: str
    params: int
    error: str | None = None
    coverage: Coverage | None = None
    macs: int = 0
    macs_magnitude: int = 0
    macs_random: int = 0
    zeroing_diff: float | None = None
    zeroing_groups: int = 0
    seconds: dict = field(default_factory=dict)


def _run(program, case: ZooCase):
    with torch.no_grad():
        return program.run(*case.args, **case.kwargs)


def _check_outputs(case: ZooCase, ref, out, what: str) -> None:
    ref_spec, out_spec = pytree.tree_structure(ref), pytree.tree_structure(out)
    assert str(ref_spec) == str(out_spec), f"{case.name} {what}: output structure changed"
    assert [t.shape for t in tensors(out)] == [t.shape for t in tensors(ref)], f"{case.name} {what}"
    for t in tensors(out):
        assert not t.is_floating_point() or torch.isfinite(t).all(), f"{case.name} {what}: not finite"


def check_architecture(case: ZooCase) -> ArchitectureResult:
    """Run every check on ``case``; assertion failures name the architecture."""
    model = case.model
    state, training = copy.deepcopy(model.state_dict()), model.training
    result = ArchitectureResult(case.name, sum(p.numel() for p in model.parameters()))
    with torch.no_grad():
        ref = case()
    start = time.perf_counter()
    try:
        program = capture(model, case.args, case.kwargs, **case.capture_options)
    except PrunecError as err:  # an accepted outcome: a clear error, no model
        result.error = f"{type(err).__name__}: {err}"
        assert state_equal(state, model.state_dict()) and model.training == training
        return result
    result.seconds["capture"] = time.perf_counter() - start
    lap = _Lap(result.seconds)
    result.coverage = mac_coverage(program)
    result.macs = count_macs(program)
    lap("analysis")
    _check_identity(case, program, ref)
    lap("identity")
    result.macs_magnitude, plan = _check_pass(case, program, ref, MagnitudePruning(0.3))
    lap("magnitude")
    result.macs_random, _ = _check_pass(case, program, ref, RandomPruning(0.5, seed=0))
    lap("random")
    result.zeroing_diff, result.zeroing_groups = _zeroing_diff(case, program, plan)
    lap("zeroing")
    if result.zeroing_diff is not None:
        assert result.zeroing_diff < ATOL, f"{case.name}: zeroing differs by {result.zeroing_diff}"
    assert state_equal(state, model.state_dict()), f"{case.name}: the caller's weights changed"
    assert model.training == training, f"{case.name}: the caller's training flag changed"
    result.seconds["total"] = time.perf_counter() - start
    return result


class _Lap:
    """Records the seconds since the previous lap under a name."""

    def __init__(self, into: dict):
        self.into, self.last = into, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name], self.last = now - self.last, now


def _check_identity(case: ZooCase, program, ref) -> None:
    p = program.clone()
    assert not MagnitudePruning(0.0)(p, PassContext()).modified
    diff = max_diff(ref, _run(p, case))
    assert diff < ATOL, f"{case.name}: ratio 0 changed the outputs by {diff}"


def _check_pass(case: ZooCase, program, ref, pass_) -> tuple[int, PruningPlan | None]:
    p = program.clone()
    result = pass_(p, PassContext())
    what = type(pass_).__name__
    if not result.modified:
        return count_macs(p), None
    _check_outputs(case, ref, _run(p, case), what)
    macs = count_macs(p)
    assert macs < count_macs(program), f"{case.name} {what}: MACs did not drop"
    return macs, result.plan


def _zeroing_diff(case: ZooCase, program, plan: PruningPlan | None) -> tuple[float | None, int]:
    """Max difference between the pruned program and the zeroed model, over the plan's groups
    that no op normalises over; None when there are none."""
    if plan is None:
        return None, 0
    analysis = analyze_channels(program)
    plain = PruningPlan({k: v for k, v in plan.keep.items() if "norm" not in analysis.by_key()[k].tags})
    if not plain.keep:
        return None, 0
    p = program.clone()
    apply_plan(p, plain)
    reference = zeroed_copy(case.model, analysis, plain)
    with torch.no_grad():
        diff = max_diff(reference(*case.args, **case.kwargs), _run(p, case))
    return (diff if math.isfinite(diff) else float("inf")), len(plain.keep)
