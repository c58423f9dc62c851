"""``prunec.recipes.ocspruner``: the complete OCSPruner training run, from scratch to a pruned
eval-mode :class:`~prunec.api.CompiledModel`.

The run is the paper's CIFAR recipe scaled to the epoch budget ``E``: SGD with Nesterov
momentum 0.9 and weight decay 5e-4 on every parameter, the learning rate ``lr`` multiplied by
0.2 at 30 / 60 / 80 / 90 % of ``E`` (the paper: 90 / 180 / 240 / 270 of 300), cross-entropy
loss. The schedule of :class:`~prunec.recipes.ocs_pruner.OneCyclePruner` is scaled the same
way: the shrink starts at 10 % of ``E`` (the code's 30 of 300, at least one epoch after
``monitor_start``) and pruning is forced at ``last_search_epoch`` (default 40 % of ``E``; the
code's ``sl_end`` 130 of 300). The shrink multiplies a selected weight by about
``exp(-lambda * lr * n)`` per epoch of ``n`` steps; so that this per-epoch decay follows the
paper's CIFAR-10 run (``n = 391``, ``lambda`` from 1e-4 growing by 1e-4 per epoch over 300
epochs) whatever the data size and budget, ``lambda`` starts at ``1e-4 * 391 / n`` and grows
by ``1e-4 * (300 / E) * (391 / n)`` per epoch. Every default can be overridden through
``pruner_options``.

Per epoch: one pass over ``train_data`` (``pruner.after_step`` after every optimizer step),
the scheduler's step, ``pruner.end_epoch`` (selection, stability, pruning at the stable epoch
with the optimizer's momentum sliced to match), then validation accuracy, evaluated in eval
mode: an eval-mode capture of ``model`` with the applied plans replayed is run with the
trained parameters and buffers (``torch.func.functional_call``: nothing is copied).

On CUDA the forward and loss run under ``torch.autocast`` (float16) with a ``GradScaler``.
Under ``torchrun`` (``torch.distributed`` initialised, world size > 1) the module is wrapped
in ``DistributedDataParallel`` (re-wrapped after the pruning replaces parameters), each rank
reads its ``DistributedSampler`` shard and ``batch_size`` is the global batch: the ranks
follow the same trajectory as one process on the whole batch.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunec.backends.compiled import CompiledModel
from prunec.errors import PrunecError
from prunec.ir.program import Program
from prunec.passes.base import record_unchanged
from prunec.progress import bar
from prunec.recipes.ocs_pruner import OneCyclePruner
from prunec.report import Report
from prunec.rewrite import PruningPlan, recapture
from prunec.train import assign_state

__all__ = ["ocspruner", "OCSReport", "MILESTONES"]

MILESTONES = (0.3, 0.6, 0.8, 0.9)


@dataclass
class OCSReport(Report):
    """A compile report plus OCSPruner's run: the stable epoch (``forced`` when pruning was
    forced at ``last_search_epoch``), one Jaccard value per monitored epoch, and one row
    per epoch in :attr:`epochs` (``loss``, ``lr``, ``val_acc``, ``jaccard``, ``stability``,
    ``pruned``, ``macs``; ``seconds``: the training pass plus selection and pruning;
    ``eval_seconds``: the validation, with the eval-mode re-capture after pruning).

    ``history`` is the deprecated old name of :attr:`epochs` (it warns; in
    :meth:`to_dict` both keys hold the rows for one more release): ``Program.history``
    means the configs of the passes applied.
    """

    stable_epoch: int | None = None
    forced: bool = False
    jaccard: list = field(default_factory=list)
    epochs: list = field(default_factory=list)

    @property
    def history(self) -> list:
        """Deprecated: the epoch rows, now :attr:`epochs`."""
        warnings.warn("OCSReport.history is renamed OCSReport.epochs (the rows per epoch); "
                      "history will be removed.", DeprecationWarning, stacklevel=2)
        return self.epochs

    def to_dict(self) -> dict:
        rows = list(self.epochs)
        return {**super().to_dict(), "stable_epoch": self.stable_epoch, "forced": self.forced,
                "jaccard": list(self.jaccard), "epochs": rows,
                "history": rows}  # deprecated key, for readers of older files

    def summary_lines(self) -> list[str]:
        lines = super().summary_lines()
        if self.stable_epoch is not None:
            how = "forced at the last search epoch" if self.forced else "stable selection"
            lines.append(f"pruned at the end of epoch {self.stable_epoch} ({how}); "
                         f"Jaccard per monitored epoch: "
                         + ", ".join(f"{j:.3f}" for j in self.jaccard))
        return lines


def ocspruner(model: nn.Module, example_inputs: Any, train_data: Any, *, epochs: int,
              macs_reduction: float, val_data: Any = None, lr: float = 0.1,
              monitor_start: int = 2, last_search_epoch: int | None = None,
              batch_size: int = 128, momentum: float = 0.9, weight_decay: float = 5e-4,
              milestones: tuple = MILESTONES, gamma: float = 0.2,
              loss_fn: Callable = F.cross_entropy, device: str | torch.device | None = None,
              amp: bool | None = None, seed: int = 0, progress: bool | None = None,
              pruner_options: dict | None = None):
    """Train ``model`` from its current weights with OCSPruner; return the pruned model.

    Args:
        model: The network (never modified).
        example_inputs: A tensor or tuple of positional inputs, for capture.
        train_data: A ``Dataset`` of ``(input, label)`` pairs or an ``(inputs, labels)`` tuple
            of tensors.
        epochs: The whole budget ``E`` (before and after pruning).
        macs_reduction: Fraction of the MACs removed, in ``(0, 1)``.
        val_data: Like ``train_data``; its accuracy is recorded every epoch.
        lr, momentum, weight_decay, milestones, gamma: SGD (Nesterov) and ``MultiStepLR`` at
            ``round(f * E)`` for each fraction ``f`` of ``milestones``.
        monitor_start, last_search_epoch: See :class:`OneCyclePruner` (default of the latter:
            ``max(monitor_start, round(0.4 E))``).
        batch_size: The global batch (split evenly over the ranks under torchrun).
        loss_fn: ``loss_fn(logits, labels)``.
        device: Default CUDA when available, else CPU.
        amp: Mixed precision; default on for CUDA.
        seed: Seeds the data order.
        progress: A per-epoch progress bar on stderr (default: when stderr is a terminal).
        pruner_options: More :class:`OneCyclePruner` options (``shrink_growth``, ``limit``...).

    Returns:
        A :class:`~prunec.api.CompiledModel` in eval mode whose ``report`` is an
        :class:`OCSReport` and whose ``plans`` hold the pruning.

    Raises:
        PrunecError: invalid arguments (before any training), or any error of
            :class:`OneCyclePruner`.
    """
    world, rank = _world()
    _check_args(epochs, lr, batch_size, world)
    train_set, val_set = _dataset(train_data, "train_data"), _dataset(val_data, "val_data")
    steps = -(-len(train_set) // batch_size)
    options = _pruner_defaults(epochs, steps, monitor_start, last_search_epoch, macs_reduction)
    options.update(pruner_options or {})
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = device.type == "cuda" if amp is None else bool(amp)
    started = time.perf_counter()
    pruner = OneCyclePruner(model, example_inputs, **options)
    report = OCSReport.start(pruner.program, model=model)
    pruner.module.to(device)
    optimizer = torch.optim.SGD(pruner.module.parameters(), lr=lr, momentum=momentum,
                                nesterov=True, weight_decay=weight_decay)
    drops = sorted({max(1, int(round(f * epochs))) for f in milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, drops, gamma)
    run = _Run(pruner, optimizer, loss_fn, device, amp, world)
    evaluator = _Evaluator(model, pruner, device) if val_set is not None else None
    bar = _Progress(epochs, progress, rank)
    epoch_rows = report.epochs
    for epoch in range(epochs):
        row = run.epoch(train_set, epoch, batch_size, seed)
        start = time.perf_counter()
        scheduler.step()
        event = pruner.end_epoch(epoch, optimizer)
        if event["pruned"]:
            run.rewrap()
        row["seconds"] += time.perf_counter() - start  # selection and pruning are training
        row.update(jaccard=event["jaccard"], stability=event["stability"], pruned=event["pruned"],
                   macs=pruner.macs)
        if evaluator is not None:
            start = time.perf_counter()
            if event["pruned"]:
                evaluator.refresh()
            _sync_buffers(pruner.module, world)
            row["val_acc"] = evaluator.accuracy(val_set)
            row["eval_seconds"] = time.perf_counter() - start
        epoch_rows.append(row)
        bar.update(row)
    bar.close()
    final = evaluator.program if evaluator is not None else None
    return _compiled(model, pruner, report, device, final, time.perf_counter() - started)


# ---------------------------------------------------------------------------- arguments
def _check_args(epochs, lr, batch_size, world) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise PrunecError(f"ocspruner: epochs must be an int >= 1, got {epochs!r}.")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise PrunecError(f"ocspruner: lr must be > 0, got {lr!r}.")
    if not isinstance(batch_size, int) or batch_size < 1 or batch_size % world:
        raise PrunecError(f"ocspruner: batch_size must be a positive int divisible by the "
                          f"world size {world} (it is the global batch), got {batch_size!r}.")


def _dataset(data: Any, name: str):
    from torch.utils.data import Dataset, TensorDataset

    if data is None or isinstance(data, Dataset):
        return data
    if (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data) and len(data[0]) == len(data[1])):
        return TensorDataset(*data)
    from torch.utils.data import DataLoader

    hint = ""
    if isinstance(data, DataLoader):
        hint = (f" Pass the loader's dataset ({name}=loader.dataset): ocspruner batches and "
                f"shuffles itself (batch_size=..., sharded per rank under torchrun).")
    elif isinstance(data, (tuple, list)) and data and all(
            isinstance(b, (tuple, list)) and len(b) == 2 for b in data[:3]):
        hint = (" For a list of (inputs, labels) batches pass "
                "(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])).")
    raise PrunecError(f"ocspruner: {name} must be a Dataset of (input, label) pairs or an "
                      f"(inputs, labels) tuple of tensors of equal length, got "
                      f"{type(data).__name__}.{hint}")


def _pruner_defaults(epochs, steps, monitor_start, last_search_epoch, macs_reduction) -> dict:
    """The paper's schedule scaled to ``epochs`` of ``steps`` steps (see the module doc)."""
    if last_search_epoch is None:
        last_search_epoch = max(monitor_start, int(round(0.4 * epochs)))
    per_step = 391 / max(steps, 1)
    return dict(macs_reduction=macs_reduction, monitor_start=monitor_start,
                last_search_epoch=last_search_epoch,
                shrink_start=max(monitor_start + 1, int(round(0.1 * epochs))),
                shrink=1e-4 * per_step, shrink_growth=1e-4 * 300 / epochs * per_step)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


# ---------------------------------------------------------------------------- training
class _Run:
    """One epoch of (mixed-precision, distributed) SGD with the pruner's shrink."""

    def __init__(self, pruner, optimizer, loss_fn, device, amp, world):
        self.pruner, self.optimizer, self.loss_fn = pruner, optimizer, loss_fn
        self.device, self.amp, self.world = device, amp, world
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp)
        self.net = pruner.module
        self.rewrap()

    def rewrap(self) -> None:
        """(Re)build the DDP wrapper: the pruning replaced the parameters it held."""
        self.net = self.pruner.module
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.pruner.module, device_ids=ids)

    def epoch(self, data, epoch: int, batch_size: int, seed: int) -> dict:
        from torch.utils.data import DataLoader, DistributedSampler

        world, rank = _world()
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(int(epoch))
        loader = DataLoader(data, batch_size=batch_size // world, sampler=sampler)
        lr = float(self.optimizer.param_groups[0]["lr"])
        start = time.perf_counter()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                loss = self.loss_fn(self.net(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.pruner.after_step(self.optimizer)
            total[0] += loss.detach().double() * len(y)
            total[1] += len(y)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        seconds = time.perf_counter() - start
        return {"epoch": int(epoch), "loss": float(total[0] / total[1].clamp_min(1)), "lr": lr,
                "seconds": seconds}


def _sync_buffers(module: nn.Module, world: int) -> None:
    """Rank 0's batch-norm statistics on every rank (each rank's last forward updated its own)."""
    if world > 1:
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


class _Progress:
    """A per-epoch bar through :func:`prunec.progress.bar` (stderr, only on a terminal unless
    ``progress`` says otherwise; rank 0 only)."""

    def __init__(self, epochs: int, progress: bool | None, rank: int):
        self.bar = bar(total=epochs, desc="ocspruner", unit="epoch",
                       progress=False if rank else progress)

    def update(self, row: dict) -> None:
        self.bar.set_postfix({k: round(v, 4) for k, v in row.items()
                              if k in ("loss", "val_acc", "stability") and v is not None})
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------- evaluation
class _Evaluator:
    """Eval-mode forward with the training program's tensors: an eval capture of the original
    model, the pruner's plans replayed, called through ``torch.func.functional_call``."""

    def __init__(self, model: nn.Module, pruner: OneCyclePruner, device: torch.device):
        self.model, self.pruner, self.device = model, pruner, device
        self.refresh()

    def refresh(self) -> None:
        self.program = eval_program(self.model, self.pruner)
        self.program.gm.to(self.device)

    @torch.no_grad()
    def accuracy(self, data, batch_size: int = 1024) -> float:
        from torch.utils.data import DataLoader

        state = dict(self.pruner.module.named_parameters())
        state.update(self.pruner.module.named_buffers())
        correct = count = 0
        for x, y in DataLoader(data, batch_size=batch_size):
            x, y = x.to(self.device), y.to(self.device)
            out = torch.func.functional_call(self.program.gm, state, (x,))
            correct += int((out.argmax(-1) == y).sum())
            count += len(y)
        return correct / max(count, 1)


def eval_program(model: nn.Module, pruner: OneCyclePruner) -> Program:
    """An eval-mode capture of ``model`` with ``pruner``'s plans replayed (its weights are the
    capture's: call :func:`prunec.train.assign_state` or ``functional_call`` for the trained
    ones)."""
    return recapture(model, pruner.program)


def _compiled(model: nn.Module, pruner: OneCyclePruner, report: OCSReport, device,
              program: Program | None, seconds: float):
    """The eval-mode result: ``program`` (the evaluator's, already pruned) or a fresh
    :func:`eval_program`, given copies of the trained parameters and buffers."""
    if program is None:
        program = eval_program(model, pruner)
        program.gm.to(device)
    assign_state(pruner.module, program, clone=True)
    step = next((s for s in reversed(program.lineage) if s.name == "OCSPruner"), None)
    if step is None:  # never pruned: the run is in the lineage as a step that changed nothing
        record_unchanged(program, "OCSPruner", pruner.config(), pruner._stats(PruningPlan()))
        step = program.lineage[-1]
    step.stats.extra.update(stable_epoch=pruner.stable_epoch, forced=pruner.forced)
    report.read_lineage(program)  # the report lists what the lineage records
    report.stable_epoch, report.forced = pruner.stable_epoch, pruner.forced
    report.jaccard = list(pruner.jaccard)
    report.finish(program, seconds=seconds)
    return CompiledModel(program, report)
