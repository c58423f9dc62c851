"""reference_program: what a plan means on the program before it."""
from __future__ import annotations

import torch

from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.ir.interpret import run_with_overrides
from prunec.rewrite import MeanCompensation, PruningPlan, apply_plan
from prunec.rewrite.compensation import consumer_node
from prunec.rewrite.reference import compensated_values, reference_program, zeroer
from tests.rewrite.models import captured_mlp, tokens


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


def _compensated_plan() -> PruningPlan:
    mean = torch.linspace(-0.5, 0.5, 32, dtype=torch.float64)
    return PruningPlan({"0.fc1.weight:0": list(range(0, 32, 2)), "1.fc1.weight:0": list(range(8))},
                       [MeanCompensation("0.fc2.weight", 1, mean)])


def test_numerical_the_reference_equals_the_rewrite_zeroed_and_compensated_groups_together():
    before, program = captured_mlp(), captured_mlp()
    plan = _compensated_plan()
    reference, overrides, why = reference_program(before, plan)
    assert not why
    apply_plan(program, plan)
    for seed in (2, 3):
        x = tokens(seed)
        expected = run_with_overrides(reference, (x,), overrides)
        assert (program.run(x) - expected).abs().max() < 1e-5
    # and it is not the unpruned program's output
    assert (before.run(tokens(2)) - program.run(tokens(2))).abs().max() > 1e-2


def test_structural_the_reference_shares_every_tensor_and_leaves_the_program_alone():
    before = captured_mlp()
    tensors = {name: before.get_tensor(name) for name, _ in before.gm.named_parameters()}
    nodes = [n.name for n in before.graph.nodes]
    reference, overrides, _ = reference_program(before, _compensated_plan())
    assert reference is not before and [n.name for n in reference.graph.nodes] == nodes
    assert all(reference.get_tensor(name) is t for name, t in tensors.items())
    assert all(before.get_tensor(name) is t for name, t in tensors.items())
    nodes = {n.name: n for n in before.graph.nodes}
    # the zeroed group overrides its parameters (no weight copied); the compensated one
    # replaces the value its consumer reads (fc2's input, the dropout in eval mode)
    assert {nodes[n].target for n in overrides if nodes[n].op == "get_attr"} == {
        "1.fc1.weight", "1.fc1.bias", "1.fc2.weight"}
    fc2 = consumer_node(before.graph, "0.fc2.weight", 1)
    assert [n for n in overrides if nodes[n].op != "get_attr"] == [fc2.args[0].name]


def test_idempotence_zeroing_twice_is_zeroing_once_and_the_reference_is_stable():
    value = torch.randn(4, 6)
    zero = zeroer([(1, torch.tensor([0, 5]))])
    assert torch.equal(zero(zero(value)), zero(value))
    before = captured_mlp()
    outputs = []
    for _ in range(2):
        reference, overrides, _ = reference_program(before, _compensated_plan())
        outputs.append(run_with_overrides(reference, (tokens(4),), overrides))
    assert torch.equal(outputs[0], outputs[1])
