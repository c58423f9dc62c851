"""Constant folding: mean compensation at zero-padded convs costs nothing per call."""
from __future__ import annotations

import torch
import torch.nn as nn

import prunec
from prunec.ir.capture import capture
from prunec.ir.interpret import ProgramInterpreter
from prunec.passes import VarianceBasedPruning
from prunec.rewrite.reference import reference_program

aten = torch.ops.aten


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def _calibration():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 12, 12, generator=gen) for _ in range(4)]


def _convs_of_constants(gm) -> int:
    """Convolutions of a constant image (the border correction of mean folding)."""
    return sum(1 for n in gm.graph.nodes
               if n.op == "call_function" and n.target is aten.conv2d.default
               and getattr(n.args[0], "target", None) is aten.new_ones.default)


def test_static_sizes_fold_the_border_correction():
    x = torch.randn(4, 3, 12, 12)
    vbp = VarianceBasedPruning(0.5, _calibration(), targets="all")
    compiled = prunec.compile(TwoConvs().eval(), (x,), [vbp], dynamic=False)
    assert compiled.report.passes[0]["verified"].startswith("mean equivalence")
    assert _convs_of_constants(compiled.module) == 0
    assert _convs_of_constants(compiled.artifact.module) == 0
    names = [n for n, _ in compiled.module.named_buffers()]
    assert "c2.prunec_const" in names and not any("mean_kernel" in n for n in names)


def test_dynamic_sizes_keep_an_exact_correction_at_other_sizes():
    x = torch.randn(4, 3, 12, 12)
    vbp = VarianceBasedPruning(0.5, _calibration(), targets="all")
    compiled = prunec.compile(TwoConvs().eval(), (x,), [vbp])
    assert compiled.report.passes[0]["verified"].startswith("mean equivalence")
    assert _convs_of_constants(compiled.module) == 1  # depends on the image size
    other = torch.randn(2, 3, 9, 15)
    before = capture(TwoConvs().eval(), (x,))
    reference, overrides, why = reference_program(before, compiled.plans[0])
    assert not why
    expected = ProgramInterpreter(reference, overrides=overrides).call((other,))
    assert (compiled(other) - expected).abs().max() < 1e-5
