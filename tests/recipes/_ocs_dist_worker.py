"""Worker for the distributed OCSPruner test: one gloo rank, spawned by the test.

Every rank runs :func:`prunec.recipes.ocspruner` on the same seeded model and dataset with
a global batch of 8 (4 per rank); pruning is forced at the end of epoch 1, so the run trains
through the pruning (DDP re-wrapped, momentum sliced). :func:`run` does the same in one
process. The model has no batch norm: per-rank batch statistics would differ from the global
batch's by construction.
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["build", "run", "worker"]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 3, padding=1)
        self.conv2 = nn.Conv1d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(2))


def build() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 2, 12, generator=gen)
    y = torch.randint(0, 3, (32,), generator=gen)
    return _Net(), x, y


def run() -> dict:
    """The OCSPruner run (in whatever process group is initialised), as a plain dict."""
    from prunec.recipes import ocspruner

    model, x, y = build()
    compiled = ocspruner(model, x[:4], (x, y), epochs=4, macs_reduction=0.4, lr=0.05,
                         monitor_start=0, last_search_epoch=1, batch_size=8, progress=False,
                         pruner_options={"shrink_start": 1, "shrink": 0.05})
    return {"state": {k: v.detach().clone() for k, v in compiled.module.state_dict().items()},
            "stable_epoch": compiled.report.stable_epoch}


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(100 + rank)  # ranks must not rely on equal seeds
        torch.save(run(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
