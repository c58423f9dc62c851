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
