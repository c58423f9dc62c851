"""backend="module": the plan written back into a copy of the caller's nn.Module."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import prunec
from prunec.backends.module import load_module
from prunec.errors import PlanError, VerificationError
from prunec.passes import DepthPruning, MagnitudePruning, VarianceBasedPruning
from tests.helpers import max_diff, state_equal


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.bn2 = nn.BatchNorm2d(24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.pw(torch.relu(self.dw(x)))))
        return self.head(x.mean((2, 3)))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32, bias=False)
        self.fc2 = nn.Linear(32, 16, bias=False)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.norm(self.fc2(torch.relu(self.fc1(x)))))


class PaddedPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.c2(torch.relu(self.c1(x))).mean((2, 3)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return x + self.fc(torch.relu(x))


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([Residual() for _ in range(3)])
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


class HardWidth(nn.Module):
    """Reshapes with a width held as a plain int: a write-back cannot know to change it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.width = 32
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h.reshape(-1, self.width)[:, : h.shape[-1]])


def _compile(model, x, passes, **kw):
    return prunec.compile(model, (x,), passes, backend="module", **kw)


def test_conv_write_back_same_class_and_equal_to_program():
    torch.manual_seed(0)
    model = ConvNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    compiled = _compile(model, x, [MagnitudePruning(0.5, scope="local")])
    pruned = compiled.module
    assert type(pruned) is ConvNet and pruned is not model
    assert state_equal(model.state_dict(), before)  # the caller's model is untouched
    assert pruned.dw.groups == pruned.dw.out_channels == pruned.dw.in_channels < 16
    assert pruned.conv1.out_channels == pruned.bn1.num_features == pruned.dw.in_channels
    assert pruned.bn2.num_features == pruned.pw.out_channels == pruned.head.in_features < 24
    with torch.no_grad():
        assert max_diff(pruned(x), compiled.program.gm(x)) < 1e-5
    # the module's own training works and never reaches the caller's weights
    pruned.train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    pruned(x).sum().backward()
    opt.step()
    assert state_equal(model.state_dict(), before)


def test_vbp_compensation_becomes_a_linear_bias_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Mlp().eval()
    x = torch.randn(4, 8)
    calib = [torch.randn(8, 8) for _ in range(3)]
    compiled = _compile(model, x, [VarianceBasedPruning(0.5, calib, scope="local")])
    pruned = compiled.module
    assert model.fc2.bias is None and pruned.fc2.bias is not None  # the folded means
    assert pruned.fc1.out_features == pruned.fc2.in_features == 16
    with torch.no_grad():
        assert max_diff(pruned(x), compiled.program.gm(x)) < 1e-5
    out = compiled.save(tmp_path / "mlp")
    assert {"model.safetensors", "prunec.json", "plan.json"} <= {p.name for p in out.iterdir()}
    reloaded = load_module(out, Mlp())
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))
    with pytest.raises(prunec.PrunecError, match="load_module"):
        prunec.load(out)  # a plain module needs its class: never imported from a file
    with pytest.raises(prunec.PrunecError, match="holds a"):
        load_module(out, ConvNet())


def test_whole_list_members_dropped_without_means_are_removed():
    torch.manual_seed(0)
    model = Stack().eval()
    x = torch.randn(4, 8)
    compiled = _compile(model, x, [DepthPruning(1, criterion="magnitude", compensate=False)])
    pruned = compiled.module
    assert len(pruned.blocks) == 2 and len(model.blocks) == 3
    with torch.no_grad():
        assert max_diff(pruned(x), compiled.program.gm(x)) < 1e-5


def test_constants_the_module_cannot_hold_are_clear_errors():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    calib = [torch.randn(8, 8) for _ in range(2)]
    with pytest.raises(PlanError, match="compensate=False"):
        _compile(Stack().eval(), x, [DepthPruning(1, calibration=calib, compensate=True)])
    x = torch.randn(2, 3, 8, 8)
    calib = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    with pytest.raises(PlanError, match="zero-padded convolution.*compensate=False"):
        _compile(PaddedPair().eval(), x, [VarianceBasedPruning(0.5, calib, scope="local")])


def test_a_write_back_that_differs_from_the_program_is_a_verification_error():
    torch.manual_seed(0)
    with pytest.raises(VerificationError, match="backend='torch'"):
        _compile(HardWidth().eval(), torch.randn(4, 8),
                 [MagnitudePruning(0.5, scope="local", round_to=1)])


def test_module_backend_needs_the_model():
    from prunec.backends import lower
    from prunec.ir.capture import capture

    program = capture(Mlp().eval(), (torch.randn(2, 8),))
    with pytest.raises(prunec.PrunecError, match="model"):
        lower(program, "module")
