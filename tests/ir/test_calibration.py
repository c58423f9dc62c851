"""Tests for prunec.ir.calibration: float64 streaming per-channel statistics."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from prunec.errors import CalibrationError
from prunec.ir.calibration import ChannelStats, collect_statistics
from prunec.ir.capture import capture
from prunec.ir.interpret import record_values
from tests.ir import _dist_worker

ATOL = 1e-10


class TokenMLP(nn.Module):
    """``fc2(gelu(fc1(x)))`` on tokens, optionally with a padding mask keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        pooled = (h * attention_mask.unsqueeze(-1)).sum(1)  # [B, C]: never masked
        return self.fc2(h) + pooled.mean() * 0


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = TokenMLP().eval()
    program = capture(model, (torch.randn(2, 5, 8),), {"attention_mask": torch.ones(2, 5)})
    names: dict[str, str] = {}
    for n in program.graph.nodes:
        names.setdefault(str(n.target), n.name)
    return program, names


@pytest.fixture(scope="module")
def conv():
    program, batches, targets = _dist_worker.build()
    return program, batches, targets


def token_items(sizes, n=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    items = []
    for b in sizes:
        mask = (torch.rand(b, n, generator=gen) > 0.4).long()
        mask[:, 0] = 1
        items.append({"x": torch.randn(b, n, 8, generator=gen), "attention_mask": mask})
    return items


def reference(values: list[torch.Tensor], axis: int) -> tuple[int, np.ndarray, np.ndarray]:
    """numpy float64 mean and unbiased variance of the concatenated samples."""
    rows = np.concatenate(
        [np.moveaxis(v.double().numpy(), axis, -1).reshape(-1, v.shape[axis]) for v in values])
    return rows.shape[0], rows.mean(0), rows.var(0, ddof=1)


def assert_matches(stats: ChannelStats, ref: tuple[int, np.ndarray, np.ndarray]) -> None:
    count, mean, var = ref
    assert stats.count == count
    assert stats.mean.dtype == stats.m2.dtype == torch.float64
    np.testing.assert_allclose(stats.mean.numpy(), mean, rtol=0, atol=ATOL)
    np.testing.assert_allclose(stats.var.numpy(), var, rtol=0, atol=ATOL)


def as_stats(t: tuple) -> ChannelStats:
    return ChannelStats(*t)


# ---------------------------------------------------------------------------- ChannelStats
def test_merge_is_chan_formula():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=gen) + 3, torch.randn(9, 3, generator=gen) * 2
    merged = ChannelStats.from_samples(a).merge(ChannelStats.from_samples(b))
    both = torch.cat([a, b]).double().numpy()
    assert merged.count == 14
    np.testing.assert_allclose(merged.mean.numpy(), both.mean(0), atol=1e-12)
    np.testing.assert_allclose(merged.var.numpy(), both.var(0, ddof=1), atol=1e-12)
    np.testing.assert_allclose(merged.std.numpy(), both.std(0, ddof=1), atol=1e-12)
    empty = ChannelStats.empty(3)
    assert empty.merge(merged).count == merged.merge(empty).count == 14
    assert torch.isnan(ChannelStats.from_samples(a[:1]).var).all()
    with pytest.raises(CalibrationError, match="channels"):
        merged.merge(ChannelStats.empty(4))


# ---------------------------------------------------------------------------- statistics
def test_linear_token_values_match_numpy(mlp):
    program, names = mlp
    gelu, lin = names["aten.gelu.default"], names["aten.linear.default"]
    items = token_items([2, 3, 4])
    stats = collect_statistics(program, items, {gelu: -1, lin: 2}, progress=False)
    for name in (gelu, lin):
        values = [record_values(program, it, [name])[name] for it in items]
        assert_matches(stats[name], reference(values, 2))


def test_conv_values_match_numpy(conv):
    program, batches, targets = conv
    stats = collect_statistics(program, batches, targets, progress=False)
    for name, axis in targets.items():
        values = [record_values(program, b, [name])[name] for b in batches]
        assert_matches(stats[name], reference(values, axis))


def test_statistics_do_not_depend_on_batching():
    program, _, targets = _dist_worker.build(torch.float64)
    data = torch.randn(21, 3, 5, 5, generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64)
    results = [collect_statistics(program, list(data.split(size)), targets, progress=False)
               for size in (1, 3, 7)]
    for name in targets:
        for other in results[1:]:
            assert other[name].count == results[0][name].count == 21 * (
                25 if targets[name] == 1 else 1)
            torch.testing.assert_close(other[name].mean, results[0][name].mean, rtol=0, atol=ATOL)
            torch.testing.assert_close(other[name].m2, results[0][name].m2, rtol=0, atol=1e-9)


def test_max_batches_and_progress_bar(conv):
    program, batches, targets = conv
    first = collect_statistics(program, iter(batches), targets, max_batches=2, progress=True)
    values = [record_values(program, b, ["conv2d"])["conv2d"] for b in batches[:2]]
    assert_matches(first["conv2d"], reference(values, 1))


# ---------------------------------------------------------------------------- masks
@pytest.mark.parametrize("mask", ["attention_mask", lambda item: item["attention_mask"]])
def test_mask_excludes_padding(mlp, mask):
    program, names = mlp
    gelu, mul = names["aten.gelu.default"], names["aten.mul.Tensor"]
    items = token_items([3, 2, 4], seed=5)
    stats = collect_statistics(program, items, {gelu: -1, mul: 2}, mask=mask, progress=False)
    kept = [record_values(program, it, [gelu])[gelu][it["attention_mask"].bool()] for it in items]
    assert_matches(stats[gelu], reference(kept, 1))
    masked_out = [record_values(program, it, [mul])[mul][it["attention_mask"].bool()]
                  for it in items]
    assert_matches(stats[mul], reference(masked_out, 1))


def test_mask_only_applies_to_token_shaped_values(mlp):
    program, names = mlp
    sum_node = names["aten.sum.dim_IntList"]  # [B, C]: every position counts
    items = token_items([3, 2], seed=6)
    stats = collect_statistics(program, items, {sum_node: 1}, mask="attention_mask",
                               progress=False)
    values = [record_values(program, it, [sum_node])[sum_node] for it in items]
    assert_matches(stats[sum_node], reference(values, 1))


def test_mask_errors(mlp):
    program, names = mlp
    gelu = names["aten.gelu.default"]
    items = token_items([2])
    with pytest.raises(CalibrationError, match="no key 'padding'"):
        collect_statistics(program, items, {gelu: -1}, mask="padding", progress=False)
    with pytest.raises(CalibrationError, match=r"\[B, N\]"):
        collect_statistics(program, items, {gelu: -1}, mask=lambda it: torch.ones(2),
                           progress=False)
    for it in items:
        it["attention_mask"] = torch.zeros_like(it["attention_mask"])
    with pytest.raises(CalibrationError, match="no calibration samples reached node 'gelu'"):
        collect_statistics(program, items, {gelu: -1}, mask="attention_mask", progress=False)


# ---------------------------------------------------------------------------- errors
def test_empty_calibration_raises(conv):
    program, _, targets = conv
    with pytest.raises(CalibrationError, match="empty"):
        collect_statistics(program, [], targets, progress=False)


def test_non_finite_values_name_the_node(conv):
    program, batches, targets = conv
    bad = batches[:2] + [torch.full((1, 3, 5, 5), float("inf"))]
    with pytest.raises(CalibrationError, match=r"node 'conv2d' \(aten.conv2d.default in 0\)"
                                               r".*NaN or inf in calibration item 2"):
        collect_statistics(program, bad, targets, progress=False)


def test_bad_targets_raise(conv):
    program, batches, _ = conv
    with pytest.raises(CalibrationError, match="no node named 'conv'"):
        collect_statistics(program, batches, {"conv": 1}, progress=False)
    with pytest.raises(CalibrationError, match="axis 4 is out of range"):
        collect_statistics(program, batches, {"conv2d": 4}, progress=False)
    with pytest.raises(CalibrationError, match="single tensor"):
        collect_statistics(program, batches, {"_guards_fn": 0}, progress=False)
    with pytest.raises(CalibrationError, match="at least one target"):
        collect_statistics(program, batches, {}, progress=False)


# ---------------------------------------------------------------------------- distributed
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, out_dir: str, timeout: float = 120.0) -> None:
    ctx = mp.start_processes(_dist_worker.worker, args=(world, free_port(), out_dir),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {timeout:.0f} s")
    finally:
        for process in ctx.processes:
            if process.is_alive():
                process.kill()


@pytest.mark.distributed
def test_two_ranks_equal_one_process(tmp_path):
    spawn(2, str(tmp_path))
    program, batches, targets = _dist_worker.build(torch.float64)
    single = collect_statistics(program, batches, targets, progress=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in ranks:
        for key in ("sharded", "lopsided"):
            for name, expected in single.items():
                got = as_stats(result[key][name])
                assert got.count == expected.count
                torch.testing.assert_close(got.mean, expected.mean, rtol=0, atol=ATOL)
                torch.testing.assert_close(got.m2, expected.m2, rtol=0, atol=1e-9)
    assert "rank(s) [1]" in ranks[0]["error"]
    assert "NaN or inf" in ranks[1]["error"]
