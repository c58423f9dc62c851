"""reference_program: what a plan means on the program before it."""
from __future__ import annotations

import torch

from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.ir.interpret import run_with_overrides
from prunec.rewrite import MeanCompensation, PruningPlan
from prunec.rewrite.reference import compensated_values, reference_program, zeroer
from tests.rewrite.models import captured_mlp, mlp, tokens


def test_zeroer_zeroes_the_given_indices_on_each_axis():
    value = torch.ones(3, 4)
    out = zeroer([(0, torch.tensor([1])), (1, torch.tensor([0, 3]))])(value)
    assert out.tolist() == [[0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0]]
    assert value.sum() == 12  # the input is not written


def test_mean_reference_replaces_the_consumer_input_channels():
    program = captured_mlp()
    mean = torch.full((32,), 0.25, dtype=torch.float64)
    plan = PruningPlan({"0.fc1.weight:0": list(range(16))}, [MeanCompensation("0.fc2.weight", 1, mean)])
    ((name, (axis, _)),) = compensated_values(program, plan).items()
    assert axis == 2
    reference, overrides, why = reference_program(program, plan)
    assert not why and name in overrides
    seen = {}
    overrides = {**overrides, name: (lambda f: lambda v: seen.setdefault("v", f(v)))(overrides[name])}
    run_with_overrides(reference, (tokens(1),), overrides)
    replaced = seen["v"]
    assert torch.all(replaced[..., 16:] == 0.25)  # the removed channels carry the mean


def test_a_norm_coupled_group_has_no_zeroing_reference():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    program = capture(model.eval(), torch.randn(2, 8))
    group = next(g for g in analyze_channels(program).groups if "norm" in g.tags)
    assert group.prunable
    reference, overrides, why = reference_program(program, PruningPlan({group.key: [0]}))
    assert reference is None and "norm" in why
