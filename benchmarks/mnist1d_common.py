"""Shared helpers of the MNIST-1D training benchmarks (OCSPruner, PEEAO).

- data: :func:`load_data` wraps :func:`prunec.zoo.mnist1d_data` (train / validation / test);
- optimisation as in the OCSPruner paper's CIFAR recipe, scaled to the epoch budget:
  :func:`make_optimizer` (SGD, Nesterov momentum 0.9, weight decay 5e-4 on every parameter)
  and :func:`make_scheduler` (``MultiStepLR`` x0.2 at 30 / 60 / 80 / 90 % of the epochs, the
  paper's 90 / 180 / 240 / 270 of 300);
- :func:`train_epoch`: one shuffled pass of SGD on in-memory tensors, with an optional hook
  after every optimizer step (what training-time pruners such as
  :class:`prunec.recipes.OneCyclePruner` need); returns the mean loss and the wall time;
- :func:`train`: ``epochs`` of :func:`train_epoch` with validation accuracy after each epoch,
  returning a per-epoch history;
- :func:`evaluate`: top-1 accuracy in eval mode (the model's mode is restored);
- :func:`environment_lines`: where the numbers were taken, for the Markdown results.

Everything is seeded (``torch.Generator`` for the shuffling), so two runs with the same
thread count give the same numbers.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunec.bench import environment
from prunec.zoo import mnist1d_data

__all__ = [
    "RESULTS", "load_data", "make_optimizer", "make_scheduler", "train_epoch", "train",
    "evaluate", "environment_lines", "write_json", "MILESTONE_FRACTIONS",
]

RESULTS = Path(__file__).parent / "results"
MILESTONE_FRACTIONS = (0.3, 0.6, 0.8, 0.9)  # the paper's 90/180/240/270 of 300 epochs


def load_data(num_samples: int = 30000, seed: int = 0, extra_test: int = 0) -> dict[str, torch.Tensor]:
    """MNIST-1D as a dict ``x_train, y_train, x_val, y_val, x_test, y_test``.

    ``extra_test`` sequences from a second, independent draw of the generator (seed
    ``seed + 1``, all of its splits) are appended to the test split: a larger test set for
    comparisons whose differences are a few tenths of a point, at no training cost.
    """
    names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    data = dict(zip(names, mnist1d_data(num_samples, seed)))
    if extra_test:
        parts = mnist1d_data(extra_test, seed + 1, val_fraction=0.0)
        data["x_test"] = torch.cat([data["x_test"], parts[0], parts[4]])
        data["y_test"] = torch.cat([data["y_test"], parts[1], parts[5]])
    return data


def make_optimizer(params, lr: float = 0.1, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> torch.optim.SGD:
    """SGD with Nesterov momentum (the OCSPruner recipe)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                           weight_decay=weight_decay)


def milestones(epochs: int, fractions: Sequence[float] = MILESTONE_FRACTIONS) -> list[int]:
    """Epochs at which the learning rate drops, ``round(f * epochs)`` (distinct, >= 1)."""
    return sorted({max(1, int(round(f * epochs))) for f in fractions})


def make_scheduler(optimizer, epochs: int, gamma: float = 0.2,
                   fractions: Sequence[float] = MILESTONE_FRACTIONS):
    """``MultiStepLR`` stepped once per epoch, milestones scaled to ``epochs``."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(epochs, fractions), gamma)


def train_epoch(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, *,
                batch_size: int = 128, generator: torch.Generator | None = None,
                after_step: Callable[[], Any] | None = None) -> tuple[float, float]:
    """One shuffled pass over ``(x, y)``; returns ``(mean loss, seconds)``.

    The last partial batch is kept. ``after_step()`` runs after every optimizer step. A
    ``torch.export`` module (a train-mode prunec capture) has no ``train()``: its mode is fixed
    at capture, so it is left as it is.
    """
    if not isinstance(model, torch.fx.GraphModule):
        model.train()
    start = time.perf_counter()
    order = torch.randperm(len(y), generator=generator)
    total, count = 0.0, 0
    for idx in order.split(batch_size):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1), time.perf_counter() - start


@torch.no_grad()
def evaluate(model: Callable, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in ``[0, 1]``; an ``nn.Module`` is put in eval mode and restored
    (a ``torch.export`` module is called as it is: pass an eval-mode capture)."""
    switch = isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule)
    was_training = switch and model.training
    if switch:
        model.eval()
    try:
        correct = sum(int((model(xb).argmax(-1) == yb).sum())
                      for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    finally:
        if was_training:
            model.train()
    return correct / max(1, len(y))


def train(model: nn.Module, data: dict, *, epochs: int, lr: float = 0.1, batch_size: int = 128,
          seed: int = 0, optimizer=None, scheduler=None, start_epoch: int = 0,
          on_epoch_end: Callable[[int, Any], Any] | None = None,
          after_step: Callable[[], Any] | None = None,
          val_fn: Callable[[], float] | None = None) -> list[dict]:
    """Train ``epochs`` epochs (``start_epoch`` .. ``epochs - 1`` when resuming) and return one
    dict per epoch: ``epoch, loss, lr, val_acc, seconds`` (training time, evaluation excluded).

    ``on_epoch_end(epoch, optimizer)`` runs after the epoch's scheduler step, before the
    validation (a pruner may rewrite the model there); its return value, when not ``None``,
    is stored under ``"hook"``. ``val_fn()`` replaces the default validation
    (``evaluate(model, x_val, y_val)``), e.g. for a train-mode capture evaluated through an
    eval-mode one; its time is ``eval_seconds``.
    """
    optimizer = optimizer or make_optimizer(model.parameters(), lr)
    scheduler = scheduler or make_scheduler(optimizer, epochs)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(start_epoch, epochs):
        epoch_lr = optimizer.param_groups[0]["lr"]
        loss, seconds = train_epoch(model, optimizer, data["x_train"], data["y_train"],
                                    batch_size=batch_size, generator=gen, after_step=after_step)
        scheduler.step()
        row = {"epoch": epoch, "loss": loss, "lr": epoch_lr}
        if on_epoch_end is not None:
            start = time.perf_counter()
            hook = on_epoch_end(epoch, optimizer)
            seconds += time.perf_counter() - start
            if hook is not None:
                row["hook"] = hook
        row["seconds"] = seconds
        start = time.perf_counter()
        row["val_acc"] = val_fn() if val_fn is not None else evaluate(model, data["x_val"], data["y_val"])
        row["eval_seconds"] = time.perf_counter() - start
        history.append(row)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at epoch {epoch}")
    return history


def environment_lines(threads: int) -> list[str]:
    """Markdown bullet lines: CPU, platform, torch version, threads, shared-machine note."""
    env = environment()
    return [f"- CPU: {env['cpu']} ({env['cpu_count']} logical cores, shared with other jobs)",
            f"- platform: {env['platform']}, Python {env['python']}",
            f"- torch {env['versions']['torch']}, {threads} intra-op thread(s)"]


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
