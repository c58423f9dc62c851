"""Tiny models shared by the rewrite room's tests."""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from prunec.ir.capture import capture


class Mlp(nn.Module):
    """``x + fc2(drop(gelu(fc1(x))))``: in train mode the dropout sits between the activation
    that a compensation measures and the layer it folds into."""

    def __init__(self, width: int = 16, hidden: int = 32, p: float = 0.0, fc2_bias: bool = True):
        super().__init__()
        self.fc1, self.act, self.drop = nn.Linear(width, hidden), nn.GELU(), nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, width, bias=fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(x))))


def mlp(p: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Mlp(p=p), Mlp(p=p, fc2_bias=False)).eval()


def tokens(seed: int, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 6, 16, generator=torch.Generator().manual_seed(seed))


def calibration() -> list[torch.Tensor]:
    return [tokens(s) for s in range(1, 4)]


class Residual(nn.Module):
    """Two residual MLP blocks on ``[B, N, 16]`` (block keys ``0`` and ``1``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([Mlp(), Mlp()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@functools.lru_cache(maxsize=None)
def _captured(kind: str):
    return capture(mlp() if kind == "mlp" else Residual().eval(), tokens(0))


def captured_mlp():
    """A private copy of the eval-mode capture of :func:`mlp` (captured once per session)."""
    return _captured("mlp").clone()


def captured_residual():
    """A private copy of the eval-mode capture of :class:`Residual`."""
    return _captured("residual").clone()
