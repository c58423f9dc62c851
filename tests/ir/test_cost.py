"""MACs and parameter counts: hand-computed small cases and published large-model numbers."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunec.ir import cost
from prunec.ir.capture import capture
from prunec.ir.cost import cost_report, count_macs, count_params, macs_by_node


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.grouped(F.relu(self.conv(x))))
        return self.fc(self.bn(x).mean((2, 3)))


# x: 2x3x16x16. conv: out 2*8*16*16 = 4096 elements, 3*3*3 = 27 each.
# grouped: out 2*16*8*8 = 2048 elements, (8/4)*3*3 = 18 each.
# transposed: in 2*16*8*8 = 2048 elements, each through (8/1)*2*2 = 32 weights.
# fc: 2 rows * 10 outputs * 8 inputs. Batch norm, relu and mean count 0.
CONV_NET_MACS = {"conv": 4096 * 27 + 2048 * 18, "conv_transpose": 2048 * 32, "linear": 160}


def _conv_program(dynamic: bool = True):
    torch.manual_seed(0)
    return capture(ConvNet().eval(), (torch.randn(2, 3, 16, 16),), dynamic=dynamic)


def test_conv_net_by_kind():
    report = cost_report(_conv_program())
    assert report["macs_by_kind"] == CONV_NET_MACS
    assert report["macs"] == sum(CONV_NET_MACS.values())
    assert report["counted_nodes"] == 4


def test_conv_net_params_exclude_buffers():
    model = ConvNet()
    expected = sum(p.numel() for p in model.parameters())
    assert count_params(_conv_program()) == expected  # running stats are buffers


def test_dynamic_capture_counts_at_example_sizes():
    assert count_macs(_conv_program(dynamic=True)) == count_macs(_conv_program(dynamic=False))


def test_without_hints_shapes_come_from_a_run(monkeypatch):
    """Symbolic sizes without a hint fall back to running the example inputs."""
    runs = []
    record = cost._recorded_shapes
    monkeypatch.setattr(cost, "_hint", lambda s: s if isinstance(s, int) else None)
    monkeypatch.setattr(cost, "_recorded_shapes", lambda p: runs.append(p) or record(p))
    assert cost_report(_conv_program())["macs_by_kind"] == CONV_NET_MACS
    assert len(runs) == 1


def test_macs_by_node_names_the_counted_nodes():
    program = _conv_program()
    per_node = macs_by_node(program)
    targets = {n.name: str(n.target) for n in program.graph.nodes}
    assert sorted(targets[name] for name in per_node) == sorted([
        "aten.conv2d.default", "aten.conv2d.default", "aten.conv_transpose2d.input",
        "aten.linear.default"])
    assert sum(per_node.values()) == count_macs(program)


def test_core_aten_graph_counts_the_same():
    """After decomposition conv ops are ``aten.convolution`` (transposed flag) and linear is
    ``addmm``: the total is unchanged."""
    from prunec.ir.program import Program

    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    ep = torch.export.export(ConvNet().eval(), (x,)).run_decompositions()
    program = Program(ep.module(), (x,))
    ops = {str(n.target) for n in program.graph.nodes}
    assert "aten.convolution.default" in ops and "aten.conv2d.default" not in ops
    assert cost_report(program)["macs_by_kind"] == CONV_NET_MACS


class Products(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 7))
        self.b = nn.Parameter(torch.randn(7))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple:
        return (a @ b, torch.bmm(a, b), torch.einsum("bij,bjk->bik", a, b),
                torch.einsum("...ij,...jk->...ik", a, b), torch.addmm(self.b, a[0], self.w),
                torch.baddbmm(a @ b, a, b), torch.mm(a[0], self.w), torch.einsum("bij->bji", a))


def test_matrix_products():
    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 7)
    report = cost_report(capture(Products(), (a, b)))
    batched = 3 * 4 * 5 * 7  # matmul x2, bmm, baddbmm (its add counts 0), einsum x2
    assert report["macs_by_kind"] == {"matmul": 4 * batched + 4 * 5 * 7,
                                      "einsum": 2 * batched, "linear": 4 * 5 * 7}
    assert report["params"] == 5 * 7 + 7


class Attention(nn.Module):
    def __init__(self, gqa: bool) -> None:
        super().__init__()
        self.gqa = gqa

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=self.gqa)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_counts_both_products_per_query_head(kv_heads):
    q = torch.randn(2, 4, 10, 16)
    k, v = torch.randn(2, kv_heads, 12, 16), torch.randn(2, kv_heads, 12, 8)
    # Q K^T: 2*4*10*12*16, A V: 2*4*10*12*8.
    assert count_macs(capture(Attention(kv_heads != 4), (q, k, v))) == 2 * 4 * 10 * 12 * (16 + 8)


def test_tied_parameters_count_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    program = capture(Tied(), (torch.randn(2, 8),))
    assert count_params(program) == 64 + 8 + 8
    assert count_macs(program) == 2 * 2 * 8 * 8


def test_results_follow_the_program_version():
    program = _conv_program()
    before = count_params(program)
    program.set_tensor("fc.bias", torch.zeros(10))  # same size; the cache is refreshed
    program.add_tensor("extra", torch.zeros(3))
    assert count_params(program) == before  # unused by the graph: not counted


def test_bert_from_the_zoo():
    from tests.zoo import ZOO

    case = ZOO["hf_bert"]()
    batch, tokens, hidden, mlp, layers = 2, 16, 64, 256, 2
    per_layer = batch * tokens * (4 * hidden**2 + 2 * hidden * mlp) \
        + 2 * batch * tokens**2 * hidden
    expected = layers * per_layer + batch * hidden**2 + batch * hidden * 3  # pooler, classifier
    assert count_macs(capture(case.model, case.args, case.kwargs)) == expected


# --------------------------------------------------------------------------- large models
def _vit_macs(tokens: int, hidden: int = 768, mlp: int = 3072, layers: int = 12,
              classes: int = 1000) -> int:
    """Patch embedding (196 patches x 768 x 3*16*16), qkv + proj + MLP, attention, head."""
    per_layer = tokens * (4 * hidden**2 + 2 * hidden * mlp) + 2 * tokens**2 * hidden
    return 196 * hidden * 3 * 16 * 16 + layers * per_layer + hidden * classes


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_resnet50(pixels):
    """HF ResNet-50 (v1.5, stride in the 3x3) is torchvision's: 4.089 GMACs of conv + fc
    (the "4.09 G" / "4.1 G" in papers) and 25,557,032 parameters."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(num_labels=1000)).eval()
    report = cost_report(capture(model, (pixels,), dynamic=False))
    assert report["macs"] == 4_089_184_256
    assert report["macs"] == pytest.approx(4.09e9, rel=0.02)
    assert report["params"] == 25_557_032


def test_vit_base_is_plain_deit_base(pixels):
    """ViT-B/16 = DeiT-B without distillation token, 197 tokens: timm lists 17.58 GMACs and
    86.57 M parameters; fvcore's extra 0.02 G is the layer norms this convention skips."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=1000, attn_implementation="sdpa"))
    report = cost_report(capture(model.eval(), (pixels,), dynamic=False))
    assert report["macs"] == _vit_macs(tokens=197) == 17_563_828_224
    assert report["macs"] == pytest.approx(17.58e9, rel=0.002)
    assert report["params"] == 86_567_656


def test_hf_deit_base_has_the_distillation_token(pixels):
    """HF's DeiT always carries CLS + distillation tokens (198): 17.66 GMACs here (timm's
    distilled DeiT-B: 17.68 G with norms); parameters are DeiT-B's plus 2 x 768."""
    from transformers import DeiTConfig, DeiTForImageClassification

    torch.manual_seed(0)
    model = DeiTForImageClassification(DeiTConfig(num_labels=1000, attn_implementation="sdpa"))
    report = cost_report(capture(model.eval(), (pixels,), dynamic=False))
    assert report["macs"] == _vit_macs(tokens=198) == 17_656_043_520
    assert report["macs"] == pytest.approx(17.6e9, rel=0.01)
    assert report["params"] == 86_567_656 + 2 * 768


class _BiasFreeConsumer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 3, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.block = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 6))
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.block(h))


def test_params_count_the_tensors_compensation_adds():
    """A folded mean needs a bias where the consumer had none, and a dropped block leaves
    its mean: both are stored with the model and counted."""
    from prunec.passes import DepthPruning, VarianceBasedPruning

    torch.manual_seed(0)
    data = [torch.randn(8, 4) for _ in range(2)]
    program = capture(_BiasFreeConsumer().eval(), data[0])
    assert count_params(program) == 4 * 16 + 16 + 16 * 3
    VarianceBasedPruning(0.5, data, round_to=1, compensate=True)(program)
    assert count_params(program) == 4 * 8 + 8 + 8 * 3 + 3  # + fc2's new bias

    program = capture(_Residual().eval(), data[0])
    before = count_params(program)
    result = DepthPruning(1, calibration=data, compensate=True)(program)
    assert result.modified
    block = 6 * 12 + 12 + 12 * 6 + 6
    assert count_params(program) == before - block + 6  # + the block's per-channel mean
