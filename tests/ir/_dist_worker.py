"""Worker for the distributed calibration test: one gloo rank, spawned by the test.

Each rank captures the same seeded model, takes its contiguous share of the same seeded
batches, collects statistics and saves them to ``<out>/rank<r>.pt`` for the parent to compare
with a single-process run. It also checks that a NaN on one rank makes every rank raise
instead of hanging, and that a rank with no data still contributes to the merge.
"""
from __future__ import annotations

import datetime
import math

import torch
import torch.distributed as dist
import torch.nn as nn

from prunec.errors import CalibrationError
from prunec.ir.calibration import ChannelStats, collect_statistics
from prunec.ir.capture import capture
from prunec.ir.program import Program

__all__ = ["build", "shard", "worker", "as_tuples"]


def build(dtype: torch.dtype = torch.float32) -> tuple[Program, list[torch.Tensor], dict[str, int]]:
    """A seeded conv -> relu -> pool -> linear program, its batches and targets.

    In float64 the activations do not depend on batch size or thread count (float32 convs
    round differently per batch size), so statistics can be compared at 1e-10.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 4),
    ).eval().to(dtype)
    program = capture(model, (torch.randn(2, 3, 5, 5, dtype=dtype),))
    batches = [torch.randn(b, 3, 5, 5, dtype=dtype) for b in (3, 1, 4, 2, 5, 2, 3)]
    names: dict[str, str] = {}
    for n in program.graph.nodes:
        names.setdefault(str(n.target), n.name)
    targets = {names["aten.conv2d.default"]: 1, names["aten.relu.default"]: 1,
               names["aten.linear.default"]: -1}
    return program, batches, targets


def shard(items: list, rank: int, world: int) -> list:
    """The ``rank``-th of ``world`` contiguous, nearly equal parts of ``items``."""
    per = math.ceil(len(items) / world)
    return items[rank * per:(rank + 1) * per]


def as_tuples(stats: dict[str, ChannelStats]) -> dict[str, tuple]:
    return {k: (v.count, v.mean, v.m2) for k, v in stats.items()}


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        program, batches, targets = build(torch.float64)
        result: dict = {}
        mine = shard(batches, rank, world)
        result["sharded"] = as_tuples(collect_statistics(program, mine, targets, progress=False))
        lopsided = batches if rank == 0 else []
        result["lopsided"] = as_tuples(
            collect_statistics(program, lopsided, targets, progress=False))
        nan = torch.full((2, 3, 5, 5), float("nan"), dtype=torch.float64)
        poisoned = mine if rank == 0 else [nan]
        try:
            collect_statistics(program, poisoned, targets, progress=False)
            result["error"] = None
        except CalibrationError as exc:
            result["error"] = str(exc)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
