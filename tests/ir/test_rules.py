"""Coupling rules: mixing axes, packed multi-head attention, size rewrites and round_to."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from prunec.ir.capture import capture
from prunec.ir.channels import ChannelGroup, Slot, analyze_channels
from prunec.ir.cost import count_macs
from prunec.ir.rules import RULES, Rule
from prunec.passes import MagnitudePruning, PassContext
from prunec.passes.base import _round_keep
from prunec.passes.prune_variance import measured_values
from prunec.rewrite import PruningPlan, apply_plan, estimate_macs
from tests.helpers import max_diff, state_equal, zeroed_copy

aten = torch.ops.aten


class MixNet(nn.Module):
    """``linear -> sigmoid -> <mix over the hidden axis> -> linear``: the hidden axis of 16
    channels goes through an op that mixes it (softmax, cumsum, sort...)."""

    def __init__(self, mix):
        super().__init__()
        self.up, self.down, self.mix = nn.Linear(8, 16), nn.Linear(16, 8), mix

    def forward(self, x):
        return self.down(self.mix(torch.sigmoid(self.up(x))))


MIXES = {
    "softmax": lambda h: torch.softmax(h, dim=-1),
    "log_softmax": lambda h: torch.log_softmax(h, dim=-1),
    "cumsum": lambda h: torch.cumsum(h, dim=-1),
    "cumprod": lambda h: torch.cumprod(h, dim=-1),
    "sort": lambda h: torch.sort(h, dim=-1).values,
}


def _hidden(program) -> ChannelGroup:
    return next(g for g in analyze_channels(program) if g.key == "up.weight:0")


def _mix_program(name):
    torch.manual_seed(0)
    model = MixNet(MIXES[name]).eval()
    x = torch.randn(4, 8)
    return model, x, capture(model, (x,))


def _pruned_vs_zeroed(model, x, program, group) -> float:
    plan = PruningPlan({group.key: list(range(0, group.size, 2))})
    analysis = analyze_channels(program)
    pruned = program.clone()
    apply_plan(pruned, plan)
    with torch.no_grad():
        return max_diff(zeroed_copy(model, analysis, plan)(x), pruned.run(x))


@pytest.fixture
def old_tie_all_rules(monkeypatch):
    """The rules as they were: every axis of softmax/cumsum tied through, untagged."""

    def tie_all(ctx, node):
        x = node.args[0]
        for ax in range(len(ctx.shape(x))):
            ctx.tie(x, ax, node, ax)

    for op in (aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax, aten.cumsum, aten.cumprod):
        monkeypatch.setitem(RULES, op, Rule(tie_all))


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "cumsum", "cumprod"])
def test_old_rules_claimed_a_non_equivalent_model(old_tie_all_rules, name):
    """Under the old rules the group was plain (no tag) and prunable, so the zeroing check
    and VBP's mean folding took it as channel-independent -- and the pruned model is not
    the model with those channels zeroed."""
    model, x, program = _mix_program(name)
    group = _hidden(program)
    assert group.prunable and "norm" not in group.tags
    assert _pruned_vs_zeroed(model, x, program, group) > 1e-3


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_axis_is_tagged_norm(name):
    """A normalised axis stays prunable (a well-formed smaller model) but is tagged ``norm``:
    zeroing equivalence is not claimed and VBP does not fold means through it."""
    model, x, program = _mix_program(name)
    group = _hidden(program)
    assert group.prunable and "norm" in group.tags
    assert measured_values(program, group) is None
    assert _pruned_vs_zeroed(model, x, program, group) > 1e-3  # why the tag is needed


@pytest.mark.parametrize("name", ["cumsum", "cumprod", "sort"])
def test_ordered_and_ranking_axes_are_blocked(name):
    model, x, program = _mix_program(name)
    group = _hidden(program)
    assert not group.prunable
    assert "mixes its channels" in group.reason and name in group.reason


def test_mixing_over_another_axis_keeps_channels_free():
    """cumsum over the token axis (position ids) does not touch the channel axis."""

    class TokenCumsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            return self.down(torch.cumsum(torch.relu(self.up(x)), dim=1))

    torch.manual_seed(0)
    model, x = TokenCumsum().eval(), torch.randn(2, 5, 8)
    program = capture(model, (x,))
    group = _hidden(program)
    assert group.prunable and "norm" not in group.tags
    assert _pruned_vs_zeroed(model, x, program, group) < 1e-5


def test_vector_norm_is_a_reduction():
    """``x / x.norm(dim=-1)`` (CLIP's projection): the axis is prunable and tagged ``norm``."""

    class L2(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            h = self.up(x)
            return self.down(h / torch.linalg.vector_norm(h, dim=-1, keepdim=True))

    torch.manual_seed(0)
    program = capture(L2().eval(), (torch.randn(4, 8),))
    group = _hidden(program)
    assert group.prunable and "norm" in group.tags


# ------------------------------------------------------------------- nn.MultiheadAttention
def _encoder(batch_first: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_heads_are_units(batch_first):
    model = _encoder(batch_first)
    x = torch.randn(2, 10, 32) if batch_first else torch.randn(10, 2, 32)
    program = capture(model, (x,))
    heads = [g for g in analyze_channels(program) if "attention" in g.tags]
    assert len(heads) == 2 and all(g.prunable and g.size == 4 for g in heads)
    for g in heads:  # q, k and v rows of a head and the out_proj columns go together
        slots = {s.param: s for s in g.params}
        assert {p.rsplit(".", 1)[-1] for p in slots} >= {"in_proj_weight", "in_proj_bias", "weight"}
        rows = g.indices(slots[next(p for p in slots if p.endswith("in_proj_weight"))], [1])
        assert rows.tolist() == [e for t in range(3) for e in range(t * 32 + 8, t * 32 + 16)]


def test_multihead_attention_heads_prune_equivalently():
    """Two of four heads per layer removed: zeroing equivalence, other batch and length."""
    model = _encoder()
    x = torch.randn(2, 10, 32)
    program = capture(model, (x,))
    analysis = analyze_channels(program)
    plan = PruningPlan({g.key: [0, 2] for g in analysis if "attention" in g.tags})
    pruned = program.clone()
    estimate = estimate_macs(pruned, plan)
    apply_plan(pruned, plan)
    assert estimate == count_macs(pruned) < count_macs(program)
    layer = pruned.gm.get_submodule("layers.0.self_attn")
    assert layer.in_proj_weight.shape == (48, 32) and layer.out_proj.weight.shape == (32, 16)
    reference = zeroed_copy(model, analysis, plan)
    with torch.no_grad():
        for inp in (x, torch.randn(3, 7, 32), torch.randn(1, 4, 32)):
            assert max_diff(reference(inp), pruned.run(inp)) < 1e-5


def test_transformer_encoder_magnitude_prunes_heads():
    """MagnitudePruning(0.5, scope='local') leaves fewer heads in every layer, with no
    user code; the caller's model is untouched."""
    model = _encoder()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 10, 32)
    program = capture(model, (x,))
    analysis = analyze_channels(program)
    result = MagnitudePruning(0.5, scope="local", round_to=1)(program, PassContext())
    plan = result.plan
    heads = [k for k in plan.keep if "attention" in analysis.by_key()[k].tags]
    assert len(heads) == 2 and all(len(plan.keep[k]) == 2 for k in heads)
    assert program.gm.get_submodule("layers.1.self_attn").in_proj_weight.shape[0] == 48
    assert state_equal(state, model.state_dict()) and not model.training
    reference = zeroed_copy(model, analysis, plan)
    with torch.no_grad():
        for inp in (x, torch.randn(5, 3, 32)):
            assert max_diff(reference(inp), program.run(inp)) < 1e-5


# ------------------------------------------------------------------- size rewrites
def test_rewritten_size_lists_hold_python_ints():
    """A view whose literal sizes sit next to symbolic ones keeps ``int`` literals; every
    rewritten size list holds only ``int`` and graph nodes."""

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(32, 96), nn.Linear(32, 32)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
            y = nn.functional.scaled_dot_product_attention(q, k, v)
            return self.out(y.transpose(1, 2).reshape(b, n, 32))

    torch.manual_seed(0)
    model, x = Heads().eval(), torch.randn(2, 6, 32)
    program = capture(model, (x,))
    analysis = analyze_channels(program)
    plan = PruningPlan({g.key: [1, 3] for g in analysis if "attention" in g.tags})
    assert plan.keep
    apply_plan(program, plan)
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target in (aten.view.default, aten.reshape.default):
            assert all(type(s) is int or isinstance(s, fx.Node) for s in node.args[1]), node.format_node()
    with torch.no_grad():
        assert max_diff(zeroed_copy(model, analysis, plan)(x), program.run(x)) < 1e-5
        program.run(torch.randn(3, 9, 32))


# ------------------------------------------------------------------- round_to
def _group(size: int) -> ChannelGroup:
    return ChannelGroup("g:0", size, [Slot("g", 0, size, 1, "g")], True)


@pytest.mark.parametrize("size,keep,expected", [
    (10, 5.0, 8), (12, 6.0, 8), (12, 8.4, 8), (10, 9.0, 8), (10, 9.6, 10), (20, 19.0, 20),
    (20, 13.0, 16), (16, 12.0, 16), (16, 11.0, 8), (8, 1.0, 8), (24, 1.0, 8), (10, 10.0, 10),
])
def test_round_keep_reaches_the_largest_multiple(size, keep, expected):
    assert _round_keep(_group(size), keep, 8) == expected


def test_round_to_prunes_a_group_of_ten():
    class Ten(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(8, 10), nn.Linear(10, 8)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    torch.manual_seed(0)
    program = capture(Ten().eval(), (torch.randn(4, 8),))
    result = MagnitudePruning(0.5, scope="local", round_to=8)(program, PassContext())
    assert result.modified
    assert program.gm.get_submodule("up").weight.shape[0] == 8


def test_literal_sizes_of_unpruned_axes_are_left_alone():
    """MobileViT's unfold ``reshape(x, [B*C, 2, 4, 2])`` holds literals on axes whose traced
    sizes are symbolic: only literals of pruned axes change, and always to ``int``."""
    from types import SimpleNamespace

    from prunec.ir.rules.shape import _new_sizes

    changed = {1: False, 2: True}
    ctx = SimpleNamespace(changed=lambda node, ax: changed.get(ax, False),
                          new_size=lambda node, ax: torch.tensor(3).numpy(),  # a NumPy integer
                          analysis=SimpleNamespace(factors={}))
    node = SimpleNamespace(name="reshape")
    new = _new_sizes(ctx, node, [-1, 2, 4, 2], 0)
    assert new == [-1, 2, 3, 2] and all(type(s) is int for s in new)
