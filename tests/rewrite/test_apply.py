"""apply_plan, the one rewrite: numerical, structural and idempotence tests, and its errors."""
from __future__ import annotations

import pytest
import torch

from prunec.errors import PlanError
from prunec.ir.channels import analyze_channels
from prunec.ir.interpret import run_with_overrides
from prunec.rewrite import PruningPlan, apply_plan, estimate_macs
from prunec.rewrite.reference import reference_program
from prunec.ir.cost import count_macs
from tests.helpers import max_diff, zeroed_copy
from tests.rewrite.models import captured_mlp, mlp, tokens

aten = torch.ops.aten
KEEP = {"0.fc1.weight:0": [1, 4, 5, 9, 12, 20, 30, 31]}


def _program():
    return captured_mlp()


def test_numerical_pruned_equals_the_original_with_removed_units_zeroed():
    model, program = mlp(), _program()
    plan = PruningPlan(dict(KEEP))
    zeroed = zeroed_copy(model, analyze_channels(program), plan)
    apply_plan(program, plan)
    with torch.no_grad():
        for seed, batch in ((3, 4), (4, 7)):  # another batch size: the capture is dynamic
            x = tokens(seed, batch)
            assert max_diff(program.run(x), zeroed(x)) < 1e-5


def test_numerical_reference_program_agrees():
    before, program = _program(), _program()
    plan = PruningPlan(dict(KEEP))
    reference, overrides, why = reference_program(before, plan)
    assert not why
    apply_plan(program, plan)
    x = tokens(5)
    assert max_diff(program.run(x), run_with_overrides(reference, (x,), overrides)) < 1e-5


def test_structural_shapes_slices_and_identity_of_untouched_tensors():
    program = _program()
    untouched = program.get_tensor("1.fc1.weight")
    slices = apply_plan(program, PruningPlan(dict(KEEP)))
    assert program.get_tensor("0.fc1.weight").shape == (8, 16)
    assert program.get_tensor("0.fc1.bias").shape == (8,)
    assert program.get_tensor("0.fc2.weight").shape == (16, 8)
    assert set(slices) == {"0.fc1.weight", "0.fc1.bias", "0.fc2.weight"}
    assert slices["0.fc2.weight"][1].tolist() == KEEP["0.fc1.weight:0"]
    old, new = slices.replaced["0.fc1.weight"]
    assert torch.equal(old[KEEP["0.fc1.weight:0"]], new)
    assert program.get_tensor("1.fc1.weight") is untouched  # an optimizer holding it stays valid
    linears = [n for n in program.graph.nodes if n.target is aten.linear.default]
    assert [tuple(n.meta["val"].shape)[-1] for n in linears] == [8, 16, 32, 16]


def test_estimate_macs_predicts_the_rewrite():
    program = _program()
    plan = PruningPlan(dict(KEEP))
    predicted = estimate_macs(program, plan)
    apply_plan(program, plan)
    assert predicted == count_macs(program)


def test_idempotence_keeping_everything_changes_nothing():
    program = _program()
    version = program.version
    slices = apply_plan(program, PruningPlan({"0.fc1.weight:0": list(range(32))}))
    assert not slices and program.version == version and not program.lineage


@pytest.mark.parametrize("keep, match", [
    ({"no.such.weight:0": [0]}, "does not have"),
    ({"0.fc1.weight:0": []}, "non-empty subset"),
    ({"0.fc1.weight:0": [0, 32]}, "non-empty subset"),
])
def test_bad_plans_are_plan_errors_and_leave_the_program_alone(keep, match):
    program = _program()
    version = program.version
    with pytest.raises(PlanError, match=match):
        apply_plan(program, PruningPlan(keep))
    assert program.version == version and not program.lineage


def test_an_unprunable_group_is_refused_with_its_reason():
    program = _program()
    residual = next(g for g in analyze_channels(program).groups if not g.prunable)
    with pytest.raises(PlanError, match="not prunable"):
        apply_plan(program, PruningPlan({residual.key: [0]}))
