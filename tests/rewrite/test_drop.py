"""Dropping residual branches: numerical (mean or zero at the residual), structural
(branch nodes and tensors gone) and idempotence (a dropped block is no longer a candidate)."""
from __future__ import annotations

import pytest
import torch

from prunec.errors import PlanError
from prunec.ir.blocks import analyze_blocks
from prunec.ir.interpret import run_with_overrides
from prunec.rewrite import BlockDrop, PruningPlan, apply_plan
from prunec.rewrite.drop import block_overrides
from tests.helpers import max_diff
from tests.rewrite.models import captured_residual, tokens


def _program():
    return captured_residual()


@pytest.mark.parametrize("mean", [None, torch.linspace(-1, 1, 16, dtype=torch.float64)])
def test_numerical_equals_the_branch_replaced_by_its_mean_or_zero(mean):
    before, program = _program(), _program()
    key = analyze_blocks(program).removable()[1].key
    plan = PruningPlan(blocks=[BlockDrop(key, mean)])
    overrides = block_overrides(before, plan)
    apply_plan(program, plan)
    x = tokens(4, batch=3)
    assert max_diff(program.run(x), run_with_overrides(before, (x,), overrides)) < 1e-5


def test_structural_branch_tensors_are_unregistered_and_recorded():
    program = _program()
    blocks = analyze_blocks(program).removable()
    apply_plan(program, PruningPlan(blocks=[BlockDrop(blocks[0].key)]))
    names = dict(program.gm.named_parameters())
    assert not any(n.startswith("blocks.0.") for n in names)
    assert any(n.startswith("blocks.1.") for n in names)
    assert [b.key for b in program.lineage[-1].plan.blocks] == [blocks[0].key]


def test_idempotence_a_dropped_block_is_gone_and_cannot_be_dropped_again():
    program = _program()
    key = analyze_blocks(program).removable()[0].key
    apply_plan(program, PruningPlan(blocks=[BlockDrop(key)]))
    assert key not in analyze_blocks(program).by_key()
    with pytest.raises(PlanError, match="does not have"):
        apply_plan(program, PruningPlan(blocks=[BlockDrop(key)]))


def test_a_mean_of_the_wrong_width_is_refused():
    program = _program()
    key = analyze_blocks(program).removable()[0].key
    with pytest.raises(PlanError, match="entries"):
        apply_plan(program, PruningPlan(blocks=[BlockDrop(key, torch.zeros(3))]))
