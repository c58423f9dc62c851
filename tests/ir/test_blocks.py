"""Block analysis: which residual branches are found, which are removable and why not."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunec.ir.blocks import analyze_blocks
from prunec.ir.capture import capture
from prunec.ir.cost import macs_by_node
from tests.captured import bottleneck_resnet, captured, one_thread  # noqa: F401 (autouse fixture)


# ---------------------------------------------------------------------------- small models
class Residual(nn.Module):
    """``act(skip_scale * x + gamma * conv2(relu(conv1(x))))`` with options."""

    def __init__(self, c: int, *, gamma: bool = False, act: bool = False, skip_scale: float = 1.0):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 0.5)) if gamma else None
        self.act, self.skip_scale = act, skip_scale

    def forward(self, x):
        f = self.conv2(F.relu(self.conv1(x)))
        if self.gamma is not None:
            f = self.gamma * f
        y = (x * self.skip_scale if self.skip_scale != 1.0 else x) + f
        return F.relu(y) if self.act else y


class Leaky(nn.Module):
    """A residual whose branch value is also used after the add (not removable)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        f = self.conv(x)
        return (x + f) * torch.sigmoid(f)


class Net(nn.Module):
    def __init__(self, *blocks):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _program(model, *args, **kwargs):
    return capture(model.eval(), args, kwargs)


def _x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- tests
def test_plain_scaled_gated_and_activated_residuals_are_blocks():
    torch.manual_seed(0)
    model = Net(Residual(8), Residual(8, gamma=True), Residual(8, act=True),
                Residual(8, skip_scale=0.5))
    analysis = analyze_blocks(_program(model, _x()))
    assert [b.key for b in analysis] == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert all(b.removable for b in analysis), [b.reason for b in analysis]
    gated = analysis.by_key()["blocks.1"]
    assert "blocks.1.gamma" in gated.params  # the layer scale belongs to the branch
    assert all(b.channel_axis == 1 for b in analysis)
    assert analysis.by_key()["blocks.0"].param_count == 2 * (8 * 8 * 9 + 8)
    assert "stem.weight" not in {p for b in analysis for p in b.params}


def test_escaping_branch_value_is_not_removable():
    torch.manual_seed(0)
    analysis = analyze_blocks(_program(Net(Leaky(8)), _x()))
    (block,) = analysis.blocks
    assert not block.removable and "also used outside" in block.reason


def test_resnet56_projection_blocks_and_stages():
    _, program = captured("resnet56")
    analysis = analyze_blocks(program)
    assert len(analysis) == 27 and len(analysis.removable()) == 25
    for key in ("layer2.0", "layer3.0"):
        block = analysis.by_key()[key]
        assert not block.removable and "projection shortcut" in block.reason
    stages = analysis.stages()
    assert [len(v) for v in stages.values()] == [9, 9, 9]
    assert [b.key for b in analysis if b.first_in_stage] == ["layer1.0", "layer2.0", "layer3.0"]
    macs = macs_by_node(program)
    block = analysis.by_key()["layer1.3"]
    assert block.macs == sum(macs.get(n, 0) for n in block.nodes) == 2 * (2 * 16 * 16 * 9 * 32 * 32)  # batch 2, two convs
    assert set(block.params) == {f"layer1.3.{m}.{p}" for m in ("conv1", "conv2") for p in ("weight",)} | \
        {f"layer1.3.{m}.{p}" for m in ("bn1", "bn2") for p in ("weight", "bias", "running_mean", "running_var")}
    assert analysis is analyze_blocks(program)  # cached per version
    assert "layer2.0" in analysis.table() and "projection" in str(analysis)


@pytest.mark.parametrize("name,per_layer", [("hf_llama", ("self_attn", "mlp")),
                                            ("hf_bert", ("attention", "")),
                                            ("hf_vit", ("attention", "mlp"))])
def test_transformer_attention_and_mlp_are_separate_blocks(name, per_layer):
    analysis = analyze_blocks(captured(name)[1])
    assert len(analysis) == 4 and all(b.removable for b in analysis), analysis.table()
    assert len({b.key for b in analysis}) == 4
    attn, mlp = analysis.blocks[0], analysis.blocks[1]
    assert per_layer[0] in attn.key and per_layer[1] in mlp.key
    assert attn.channel_axis == 2 and mlp.channel_axis == 2
    assert not set(attn.nodes) & set(mlp.nodes)


def test_bottleneck_identity_blocks_are_removable():
    analysis = analyze_blocks(bottleneck_resnet()[2])
    removable = [b.key for b in analysis.removable()]
    assert removable == ["resnet.encoder.stages.0.layers.1.layer", "resnet.encoder.stages.1.layers.1.layer"]
    assert all("projection" in b.reason for b in analysis if not b.removable)


def test_convnext_layer_scale_blocks():
    analysis = analyze_blocks(captured("hf_convnext")[1])
    assert len(analysis) == 5 and all(b.removable for b in analysis)
    assert all(any(p.endswith("layer_scale_parameter") for p in b.params) for b in analysis)
    assert all(b.channel_axis == 1 for b in analysis)


def test_keys_are_the_same_in_a_train_mode_capture():
    torch.manual_seed(0)
    model = Net(nn.Sequential(nn.BatchNorm2d(8), Residual(8)), Residual(8, act=True))
    eval_blocks = analyze_blocks(_program(model, _x()))
    train_blocks = analyze_blocks(capture(model, (_x(),), train=True))
    assert [b.key for b in train_blocks] == [b.key for b in eval_blocks] == ["blocks.0.1", "blocks.1"]
    assert all(b.removable for b in train_blocks)


def test_analyze_lists_blocks_beside_channel_groups():
    import prunec

    torch.manual_seed(0)
    analysis = prunec.analyze(Net(Residual(8), Leaky(8)), _x())
    assert [b.key for b in analysis.blocks] == ["blocks.0", "blocks.1.conv"]  # a one-conv branch
    table = analysis.blocks.table()
    assert "blocks.0" in table and "no: the branch value" in table
