"""OCSPruner's selection steps, each against a hand computation: saliency, cost weighting,
per-group cap, the MACs-targeted threshold search, Jaccard and the stability rule."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from prunec.errors import PrunecError
from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.ir.cost import count_macs
from prunec.ir.program import Program
from prunec.recipes import ocs_selection as sel
from prunec.rewrite import apply_plan


class ConvNet(nn.Module):
    """conv(1->3, k=2) -> BN -> ReLU -> conv(3->2, k=1) -> mean over time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 3, 2, bias=False)
        self.bn = nn.BatchNorm1d(3)
        self.conv2 = nn.Conv1d(3, 2, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).mean(2)


def _conv_program() -> tuple[Program, ConvNet]:
    torch.manual_seed(0)
    net = ConvNet()
    with torch.no_grad():
        net.conv1.weight.copy_(torch.tensor([[[1.0, 2.0]], [[0.5, -0.5]], [[3.0, 0.0]]]))
        net.bn.weight.copy_(torch.tensor([2.0, 1.0, 0.5]))
        net.bn.bias.copy_(torch.tensor([7.0, 8.0, 9.0]))  # shifts are not counted
        net.conv2.weight.copy_(torch.tensor([[[1.0], [0.0], [2.0]], [[1.0], [3.0], [-2.0]]]))
    return capture(net, torch.randn(2, 1, 5), train=True), net


def test_saliency_matches_hand_computation():
    program, _ = _conv_program()
    (group,) = analyze_channels(program).prunable()
    roles = {str(s): r for s, r in sel.slot_roles(program, group).items()}
    assert roles == {"conv1.weight[0]": "producer", "bn.weight[0]": "norm_scale",
                     "bn.bias[0]": "norm_shift", "conv2.weight[1]": "consumer"}
    # producer rows W1[c] (2 elements), gamma_c^2, consumer columns W2[:, c] (2 elements)
    rows = [1 + 4, 0.25 + 0.25, 9 + 0]
    gammas = [4.0, 1.0, 0.25]
    cols = [1 + 1, 0 + 9, 4 + 4]
    expected = [(r / math.sqrt(2) + g + c / math.sqrt(2)) / 3 for r, g, c in zip(rows, gammas, cols)]
    assert torch.allclose(sel.saliency(program, group), torch.tensor(expected, dtype=torch.float64))


class MLP(nn.Module):
    def __init__(self, widths=(4, 3, 2)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def test_cost_weighting_matches_hand_computation():
    program = capture(MLP((4, 3, 5, 2)), torch.randn(6, 4), train=True)
    groups = analyze_channels(program).prunable()
    assert [g.size for g in groups] == [3, 5]
    costs = sel.group_costs(program, groups)
    # a unit of the 3-wide layer feeds 4 MACs in and 5 out per row, of the 5-wide 3 and 2
    assert costs == {groups[0].key: 6 * (4 + 5), groups[1].key: 6 * (3 + 2)}
    total = count_macs(program)
    assert total == 6 * (4 * 3 + 3 * 5 + 5 * 2)
    pi = sel.cost_weights(costs, total)
    a, b = math.exp(54 / total), math.exp(30 / total)
    assert pi[groups[0].key] == pytest.approx(a / (a + b), abs=1e-12)
    assert sum(pi.values()) == pytest.approx(1.0)


def test_per_group_cap():
    assert sel.protected_count(16) == 5        # floor(16 * 0.75 * (1 - e^-16)) = 11 candidates
    assert sel.protected_count(64) == 16       # e^-64 vanishes in float64: 48 candidates
    assert sel.protected_count(64, limit=0.7) == 20  # floor(44.8)
    assert sel.protected_count(8) == 3         # floor(6 * (1 - e^-8)) = 5
    assert sel.protected_count(2) == 1
    assert sel.protected_count(1) == 1


def _wide_mlp() -> Program:
    torch.manual_seed(0)
    return capture(MLP((16, 1024, 1024, 1024, 10)), torch.randn(2, 16), train=True)


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_threshold_search_reaches_target_without_copies(target, monkeypatch):
    program = _wide_mlp()
    groups = analyze_channels(program).prunable()
    gen = torch.Generator().manual_seed(1)
    scores = {g.key: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in groups}
    real_deepcopy = copy.deepcopy

    def no_copies(*args, **kwargs):
        raise AssertionError("the threshold search must not copy the program")

    monkeypatch.setattr(copy, "deepcopy", no_copies)
    monkeypatch.setattr(Program, "clone", no_copies)
    choice = sel.select_by_macs(program, groups, scores, target)
    monkeypatch.setattr(copy, "deepcopy", real_deepcopy)
    assert abs(choice.reduction - target) <= 5e-4
    # the estimate is what the rewrite gives, and the lowest scores went first
    base = count_macs(program)
    pruned = copy.deepcopy(program)
    apply_plan(pruned, choice.plan({g.key: g.size for g in groups}))
    assert 1 - count_macs(pruned) / base == pytest.approx(choice.reduction, abs=1e-12)
    removed = torch.cat([scores[k][v] for k, v in choice.removed.items()])
    kept = torch.cat([scores[g.key][sorted(set(range(g.size)) - set(choice.removed.get(g.key, [])))]
                      for g in groups])
    protected = {g.key: set(torch.argsort(scores[g.key], descending=True)[:sel.protected_count(g.size)].tolist())
                 for g in groups}
    unprotected_kept = torch.cat([scores[g.key][sorted(set(range(g.size)) - protected[g.key]
                                                       - set(choice.removed.get(g.key, [])))]
                                  for g in groups])
    assert removed.max() <= unprotected_kept.min()
    assert len(kept) + len(removed) == sum(g.size for g in groups)
    for g in groups:
        assert not protected[g.key] & set(choice.removed.get(g.key, []))
        assert len(choice.removed.get(g.key, [])) <= g.size - sel.protected_count(g.size)


def test_threshold_search_with_coarse_units_takes_the_closest():
    program = capture(MLP((4, 8, 2)), torch.randn(2, 4), train=True)
    groups = analyze_channels(program).prunable()
    scores = {groups[0].key: torch.arange(8, dtype=torch.float64)}
    # each unit is 6 of 48 MACs (0.125): 0.3 lies between 2 units (0.25) and 3 (0.375)
    choice = sel.select_by_macs(program, groups, scores, 0.3)
    assert choice.removed == {groups[0].key: [0, 1]} and choice.reduction == 0.25


def test_unreachable_target_is_a_clear_error():
    program = capture(MLP((4, 8, 2)), torch.randn(2, 4), train=True)
    groups = analyze_channels(program).prunable()
    scores = {groups[0].key: torch.arange(8, dtype=torch.float64)}
    with pytest.raises(PrunecError, match="at most 0.6250 of the MACs"):  # 5 of 8 units
        sel.select_by_macs(program, groups, scores, 0.9)


def test_jaccard_and_stability_rule():
    assert sel.jaccard([1, 2, 3], [2, 3, 4]) == 0.5
    assert sel.jaccard([], []) == 1.0
    now = {"a": [0, 1, 2, 3], "b": [5]}
    before = {"a": [0, 1, 2], "b": [5]}
    assert sel.selection_jaccard(now, before) == pytest.approx((0.75 + 1.0) / 2)
    with pytest.raises(PrunecError):
        sel.selection_jaccard(now, {"a": [0]})
    # running mean of the last three: 0 until three values exist
    assert sel.running_stability([1.0, 1.0]) == 0.0
    assert sel.running_stability([0.0, 0.0, 1.0]) == pytest.approx(1 / 3)
    assert sel.running_stability([0.5, 1.0, 0.999, 0.998]) == pytest.approx(0.999)
    assert sel.running_stability([0.5, 1.0, 0.999, 0.997]) < 0.999
