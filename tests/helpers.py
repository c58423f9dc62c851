"""Shared test helpers: output comparison and the zeroing reference."""
from __future__ import annotations

import copy

import torch
import torch.utils._pytree as pytree

from prunec.ir.channels import ChannelAnalysis
from prunec.rewrite import PruningPlan


def tensors(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def max_diff(a, b) -> float:
    ta, tb = tensors(a), tensors(b)
    assert len(ta) == len(tb), "different number of outputs"
    assert all(x.shape == y.shape for x, y in zip(ta, tb)), "output shapes differ"
    return max(((x.double() - y.double()).abs().max().item() for x, y in zip(ta, tb)), default=0.0)


def zeroed_copy(model: torch.nn.Module, analysis: ChannelAnalysis, plan: PruningPlan) -> torch.nn.Module:
    """A copy of ``model`` with every parameter slice of every removed unit set to zero.

    Removing a channel and zeroing its producer rows, its consumer columns and its per-channel
    scales and shifts give the same function wherever no op normalises over that axis.
    """
    zeroed = copy.deepcopy(model)
    named = dict(zeroed.named_parameters())
    named.update(dict(zeroed.named_buffers()))
    groups = analysis.by_key()
    with torch.no_grad():
        for key, kept in plan.keep.items():
            group = groups[key]
            dropped = sorted(set(range(group.size)) - set(kept))
            for slot in group.params:
                if slot.param not in named:
                    continue
                if slot.param.endswith("running_var"):
                    continue  # a zero variance would divide by ~0; gamma=beta=0 already zeroes
                idx = group.indices(slot, dropped)
                named[slot.param].index_fill_(slot.axis, idx, 0.0)
    return zeroed


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recurrent(torch.nn.Module):
    """An LSTM classifier head: export cannot take a symbolic sequence length through it."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(8, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def require_onnx2torch() -> None:
    """Skip the calling test module when onnx2torch is missing (prunec imports it without
    torchvision: frontends/converters.py)."""
    import pytest

    from prunec.frontends.converters import import_onnx2torch

    try:
        import_onnx2torch()
    except ImportError:
        pytest.skip("onnx2torch is not installed", allow_module_level=True)
