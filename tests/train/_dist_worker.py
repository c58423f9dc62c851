"""Worker for the distributed fine-tuning test: one gloo rank, spawned by the test.

Every rank builds the same seeded model, prunes it with VBP on its own calibration shard
(statistics are merged across ranks, so the plans agree), fine-tunes it under
``DistributedDataParallel`` on its ``DistributedSampler`` shard of one dataset and saves the
pruned program's state to ``<out>/rank<r>.pt``.
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import TensorDataset

import prunec
from prunec.passes import VarianceBasedPruning

__all__ = ["build", "worker"]


def build() -> tuple[nn.Module, torch.Tensor, TensorDataset]:
    """A seeded conv-BN-ReLU / dropout / MLP classifier, an example batch and a dataset."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1), nn.Flatten(1),
        nn.Dropout(0.2), nn.Linear(8 * 4 * 4, 32), nn.GELU(), nn.Linear(32, 5),
    ).eval()
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 3, 6, 6, generator=gen), torch.randint(0, 5, (32,), generator=gen))
    return model, torch.randn(4, 3, 6, 6, generator=gen), data


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        model, example, data = build()
        torch.manual_seed(100 + rank)  # ranks must not rely on equal seeds
        calibration = [data.tensors[0][rank * 8:(rank + 1) * 8]]
        compiled = prunec.compile(model, example, [VarianceBasedPruning(0.5, calibration, targets="all")])
        before = {k: v.clone() for k, v in compiled.module.state_dict().items()}
        _, history = prunec.finetune(compiled, data, epochs=2, teacher=model, lr=1e-2, batch_size=4)
        torch.save({"state": compiled.module.state_dict(), "before": before, "steps": len(history)},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
