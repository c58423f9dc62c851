"""Magnitude scores computed in chunks equal the float64 reference, in any dtype and axis."""
from __future__ import annotations

import pytest
import torch

import prunec.passes.prune_magnitude as magnitude
from prunec.passes.prune_magnitude import power_sums


def _reference(w: torch.Tensor, axis: int, p: float) -> torch.Tensor:
    x = w.double().abs().pow(p)
    return x.movedim(axis, 0).reshape(w.shape[axis], -1).sum(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape, axis", [((64, 32), 0), ((64, 32), 1), ((16, 8, 3, 3), 0),
                                         ((16, 8, 3, 3), 1), ((40,), 0), ((4, 6, 5), 2)])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_power_sums_match_float64(monkeypatch, dtype, shape, axis, p):
    monkeypatch.setattr(magnitude, "CHUNK_ELEMENTS", 7)  # many chunks, ragged last one
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = power_sums(w, axis, p)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _reference(w, axis, p), rtol=1e-5, atol=0)


@pytest.mark.parametrize("axis", [0, 1])
def test_no_float64_copy_of_the_weight(monkeypatch, axis):
    """Only per-index results (and chunks) reach float64, never the whole weight."""
    converted = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if torch.float64 in args or kwargs.get("dtype") is torch.float64:
            converted.append(self.numel())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    monkeypatch.setattr(magnitude, "CHUNK_ELEMENTS", 64)
    weight = torch.randn(32, 48)
    power_sums(weight, axis, 2.0)
    assert converted and max(converted) <= max(weight.shape)
