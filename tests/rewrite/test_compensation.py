"""Mean compensation: the fold's arithmetic, its consumer keys and its refusals."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunec.errors import PlanError
from prunec.ir.capture import capture
from prunec.rewrite import MeanCompensation, PruningPlan, apply_plan
from prunec.rewrite.compensation import compensations_for, consumer_node
from tests.rewrite.models import captured_mlp, mlp, tokens

aten = torch.ops.aten


def _mean() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 32, dtype=torch.float64)


def test_linear_fold_is_b_plus_w_times_mu_of_the_removed():
    model, program = mlp(), captured_mlp()
    kept = list(range(0, 32, 2))
    plan = PruningPlan({"0.fc1.weight:0": kept}, [MeanCompensation("0.fc2.weight", 1, _mean())])
    apply_plan(program, plan)
    removed = [i for i in range(32) if i not in kept]
    w, b = model[0].fc2.weight.detach().double(), model[0].fc2.bias.detach().double()
    expected = b + w[:, removed] @ _mean()[removed]
    assert torch.allclose(program.get_tensor("0.fc2.bias").double(), expected, atol=1e-6)
    assert program.lineage[-1].plan.compensations[0].consumer == "0.fc2.weight"


def test_a_bias_free_consumer_gets_a_new_bias():
    program = captured_mlp()
    plan = PruningPlan({"1.fc1.weight:0": list(range(16))}, [MeanCompensation("1.fc2.weight", 1, _mean())])
    apply_plan(program, plan)
    fc2 = consumer_node(program.graph, "1.fc2.weight", 1)
    assert fc2.args[2].target == "1.fc2.prunec_bias"


def test_compensations_for_a_value_name_every_consumer():
    program = captured_mlp()
    fc2 = consumer_node(program.graph, "0.fc2.weight", 1)
    (comp,) = compensations_for(fc2.args[0], _mean(), program)
    assert (comp.consumer, comp.axis) == ("0.fc2.weight", 1)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.down(torch.relu(self.up(x))) + self.down(torch.tanh(self.up(x)))


def test_refusals_name_the_consumer():
    program = captured_mlp()
    with pytest.raises(PlanError, match="no layer"):
        consumer_node(program.graph, "0.nothing.weight", 1)
    with pytest.raises(PlanError, match="input axis"):
        consumer_node(program.graph, "0.fc2.weight", 0)
    shared = capture(Shared().eval(), tokens(0))
    with pytest.raises(PlanError, match="2 calls"):
        consumer_node(shared.graph, "down.weight", 1)
    relu = next(n for n in shared.graph.nodes if n.target is aten.relu.default)
    with pytest.raises(PlanError, match="called more than once"):
        compensations_for(relu, _mean(), shared)


def _mean_replaced(model: nn.Module, removed: list[int], mean: torch.Tensor) -> nn.Module:
    """``model`` (an :func:`mlp`) whose block-0 activation has channels ``removed`` replaced
    by ``mean`` (a forward hook): what a mean-compensated removal must compute."""
    def hook(_module, _inputs, out):
        out = out.clone()
        out[..., removed] = mean[removed].to(out.dtype)
        return out

    model[0].act.register_forward_hook(hook)
    return model


def test_numerical_pruned_equals_the_original_with_removed_activations_at_their_means():
    model, program = mlp(), captured_mlp()
    kept = list(range(0, 32, 3))
    removed = [i for i in range(32) if i not in kept]
    apply_plan(program, PruningPlan({"0.fc1.weight:0": kept},
                                    [MeanCompensation("0.fc2.weight", 1, _mean())]))
    reference = _mean_replaced(model, removed, _mean())
    with torch.no_grad():
        for seed, batch in ((2, 4), (3, 1)):
            x = tokens(seed, batch)
            assert (program.run(x) - reference(x)).abs().max() < 1e-5
    # Without the fold the outputs differ: the test sees what compensation adds.
    plain = captured_mlp()
    apply_plan(plain, PruningPlan({"0.fc1.weight:0": kept}))
    with torch.no_grad():
        assert (plain.run(tokens(2)) - reference(tokens(2))).abs().max() > 1e-2


def test_structural_the_fold_changes_the_bias_alone():
    program = captured_mlp()
    weight = program.get_tensor("1.fc2.weight")
    apply_plan(program, PruningPlan({"1.fc1.weight:0": list(range(8))},
                                    [MeanCompensation("1.fc2.weight", 1, _mean())]))
    assert program.get_tensor("1.fc2.weight").shape == (16, 8)
    assert torch.equal(program.get_tensor("1.fc2.weight"), weight[:, :8])
    assert program.get_tensor("1.fc2.prunec_bias").shape == (16,)
    linears = [n for n in program.graph.nodes if n.target is aten.linear.default]
    assert len(linears) == 4 and all(len(n.args) == 3 and n.args[2] is not None for n in linears)


def test_idempotence_a_compensation_with_nothing_removed_changes_nothing():
    program = captured_mlp()
    bias = program.get_tensor("0.fc2.bias").clone()
    apply_plan(program, PruningPlan({"0.fc1.weight:0": list(range(32))},
                                    [MeanCompensation("0.fc2.weight", 1, _mean())]))
    assert torch.equal(program.get_tensor("0.fc2.bias"), bias)
    assert program.get_tensor("0.fc2.weight").shape == (16, 32)
