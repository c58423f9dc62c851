"""Small models the backend tests lower: an MLP, a CNN with batch norm, an attention block
with ``scaled_dot_product_attention``, and a model with keyword inputs and dict outputs."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from prunec.ir.capture import capture
from prunec.ir.program import Program

__all__ = [
    "MLP", "SmallCNN", "TinyAttention", "KwargsModel", "MODELS", "model", "inputs", "program",
]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)
        for bn in (self.bn1, self.bn2):  # non-trivial running statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


class TinyAttention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2))
        return x + self.proj(y.transpose(1, 2).reshape(b, t, d))


class KwargsModel(nn.Module):
    """Token ids plus an optional mask as keyword input; a dict with a nested tuple out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 16), nn.Linear(16, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                temperature: float = 1.0) -> dict:
        h = self.embed(input_ids)
        if attention_mask is not None:
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            pooled = h.mean(1)
        logits = self.head(pooled) / temperature
        return {"logits": logits, "extra": (pooled, None)}


def _kwargs_inputs(batch: int) -> tuple[tuple, dict]:
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, 50, (batch, 7), generator=gen)
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[:, 5:] = 0
    return (ids,), {"attention_mask": mask, "temperature": 2.0}


MODELS = {
    "mlp": (MLP, lambda b: ((torch.randn(b, 16),), {})),
    "cnn": (SmallCNN, lambda b: ((torch.randn(b, 3, 16, 16),), {})),
    "attention": (TinyAttention, lambda b: ((torch.randn(b, 6, 32),), {})),
    "kwargs": (KwargsModel, _kwargs_inputs),
}
"""Name -> (model class, ``batch -> (args, kwargs)``)."""


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name][0]().eval()


def model(name: str) -> nn.Module:
    """The (cached, seeded, eval-mode) model instance."""
    return _model(name)


def inputs(name: str, batch: int) -> tuple[tuple, dict]:
    torch.manual_seed(batch)
    return MODELS[name][1](batch)


@functools.lru_cache(maxsize=None)
def program(name: str, batch: int = 2) -> Program:
    """The captured program (cached: lowerings never mutate it)."""
    args, kwargs = inputs(name, batch)
    return capture(model(name), args, kwargs)
