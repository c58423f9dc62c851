"""The core issue's zoo checks for both baseline passes (numerical and structural)."""
from __future__ import annotations

import copy

import pytest
import torch

import prunec
from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.ir.cost import count_macs
from prunec.ir.program import refresh_meta
from prunec.passes import MagnitudePruning, PassContext, RandomPruning
from prunec.rewrite import PruningPlan, apply_plan, estimate_macs
from tests.helpers import max_diff, state_equal, zeroed_copy
from tests.zoo import ZOO

NAMES = list(ZOO)


@pytest.fixture(scope="module", params=NAMES)
def case_program(request):
    case = ZOO[request.param]()
    return case, capture(case.model, case.args, case.kwargs)


def _run(case, program):
    with torch.no_grad():
        return program.run(*case.args, **case.kwargs)


def test_ratio_zero_is_identity(case_program):
    case, program = case_program
    p = program.clone()
    result = MagnitudePruning(0.0)(p, PassContext())
    assert not result.modified
    with torch.no_grad():
        assert max_diff(case(), _run(case, p)) < 1e-5


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("pass_cls", [MagnitudePruning, RandomPruning])
def test_pruned_runs_smaller_and_rounded(case_program, ratio, pass_cls):
    case, program = case_program
    p = program.clone()
    before = analyze_channels(p).by_key()
    macs = count_macs(p)
    result = pass_cls(ratio, round_to=8)(p, PassContext())
    assert result.modified, f"{case.name}: nothing pruned"
    with torch.no_grad():
        ref = case()
        out = _run(case, p)
    max_diff(ref, ref)  # structure check of the reference itself
    assert [t.shape for t in _leaves(out)] == [t.shape for t in _leaves(ref)]
    assert count_macs(p) < macs
    for key, kept in result.plan.keep.items():  # the widest axis is aligned (see unit_step)
        widest = max(before[key].slots, key=lambda slot: slot.width)
        assert (len(kept) * widest.width) % 8 == 0, f"{case.name}: {widest} keeps {len(kept)} units"
    _assert_meta_matches_propagation(p)


def _assert_meta_matches_propagation(program):
    """apply_plan's fast metadata refresh agrees with re-running every op on fake tensors."""
    fast = {n.name: tuple(n.meta["val"].shape) for n in program.graph.nodes
            if isinstance(n.meta.get("val"), torch.Tensor)}
    refresh_meta(program.gm)
    slow = {n.name: tuple(n.meta["val"].shape) for n in program.graph.nodes
            if isinstance(n.meta.get("val"), torch.Tensor)}
    assert {k: str(v) for k, v in fast.items()} == {k: str(v) for k, v in slow.items()}


def test_zeroing_removed_channels_matches(case_program):
    case, program = case_program
    p = program.clone()
    analysis = analyze_channels(p)
    result = MagnitudePruning(0.5)(p.clone(), PassContext())
    plain = {k: v for k, v in result.plan.keep.items()
             if "norm" not in analysis.by_key()[k].tags}
    if not plain:
        pytest.skip(f"{case.name}: every pruned group is normalised over")
    apply_plan(p, PruningPlan(plain))
    reference = zeroed_copy(case.model, analysis, PruningPlan(plain))
    with torch.no_grad():
        diff = max_diff(reference(*case.args, **case.kwargs), _run(case, p))
    assert diff < 1e-4, f"{case.name}: {diff}"


def test_estimated_macs_match_rewritten(case_program):
    case, program = case_program
    p = program.clone()
    analysis = analyze_channels(p)
    plan = MagnitudePruning(0.5).plan(p, analysis.prunable(), PassContext())
    estimate = estimate_macs(p, plan)
    apply_plan(p, plan)
    assert estimate == count_macs(p) < count_macs(program)


def test_second_run_is_not_modified(case_program):
    case, program = case_program
    p = program.clone()
    pass_ = MagnitudePruning(0.5)
    assert pass_(p, PassContext()).modified
    assert not pass_(p, PassContext()).modified


def test_compile_leaves_model_untouched(case_program):
    case, _ = case_program
    if case.name.startswith("hf_") and case.name not in ("hf_vit", "hf_llama"):
        pytest.skip("one capture per family is enough for this check")
    state = copy.deepcopy(case.model.state_dict())
    training = case.model.training
    compiled = prunec.compile(case.model, case.args, [MagnitudePruning(0.5)], example_kwargs=case.kwargs)
    assert state_equal(state, case.model.state_dict())
    assert case.model.training == training
    assert compiled.report.macs_after < compiled.report.macs_before


def _leaves(out):
    from tests.helpers import tensors

    return tensors(out)
