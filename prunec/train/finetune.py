"""Recovery fine-tuning of a pruned model by distillation from the unpruned one.

Loss per batch, with student logits ``s``, teacher logits ``t``, temperature ``T`` and task
target ``y``:

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * loss_fn(s, y)

(the KL term averaged over rows: every leading axis of the logits counts as a row, so token
logits ``[B, N, V]`` work). AdamW with decoupled weight decay, learning rate on a cosine from
``lr`` to 0 over all steps, stepped once per batch.

**Train mode.** The graph of a compiled program was captured in eval mode: dropout is the
identity, batch norm uses its running statistics, and any ``if self.training`` branch of the
model (stochastic depth ...) was resolved to its eval side at capture; ``.train()`` on it
raises. Patching the graph (``torch.ao.quantization.move_exported_model_to_train``) can
only swap the dropout and batch-norm patterns it knows and cannot bring back a branch that
capture removed. So the student trains as a *train-mode capture* of the original model on
which the program's lineage (``program.lineage``) is replayed: it has the pruned
shapes and the model's exact training behaviour. Its parameters and buffers are loaded from
the program before training (same fully qualified names, including biases created by mean
folding) and assigned back after it (new tensor objects, nothing written in place), so the
program keeps its eval-mode graph and gets the trained weights and the batch-norm running
statistics; its version is bumped, so a ``CompiledModel``'s artifact is lowered again.
Tensors that mean folding created (``prunec_bias``, ``prunec_const``...) are buffers: they
are copied across but stay constant while training. A program captured with ``train=True``
trains as it is, on copies of its tensors.

**Distributed.** Under ``torchrun`` (``torch.distributed`` initialised, world size > 1) the
student is wrapped in ``DistributedDataParallel`` (which broadcasts rank 0's state at the
start and averages gradients), a ``Dataset`` is sharded with ``DistributedSampler``; every
rank ends with the same weights.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.utils.data import Dataset

from prunec.errors import InvalidArgumentError, PrunecError
from prunec.ir.capture_checks import check_model
from prunec.ir.interpret import split_inputs
from prunec.ir.program import Program
from prunec.progress import bar as progress_bar
from prunec.rewrite import recapture
from prunec.train.causal_lm import causal_lm_batch, masked_distillation, next_token_loss
from prunec.validate import check_positive, is_real

__all__ = ["finetune", "train_program", "assign_state", "distillation_loss", "logits_of", "check_finetune"]


# ---------------------------------------------------------------------------- train program
def _program_of(target: Any) -> Program:
    if isinstance(target, Program):
        return target
    program = getattr(target, "program", None)
    if isinstance(program, Program):
        return program
    raise InvalidArgumentError(f"target must be a prunec Program or CompiledModel, got "
                               f"{type(target).__name__}; pass the result of prunec.compile "
                               f"(or its .program).")


def train_program(target: Any, original: nn.Module | None) -> Program:
    """A train-mode Program with ``target``'s pruned structure and private copies of its
    current weights.

    ``target`` is a Program or a CompiledModel. A program captured in eval mode is rebuilt:
    ``original`` is captured with ``train=True`` and the example inputs of the program, the
    program's lineage is replayed (:func:`prunec.rewrite.recapture`), then the program's
    parameters and buffers are loaded into it by name. A train-mode program is used as it is, its tensors replaced
    by copies (training writes in place; the copies keep the caller's tensors untouched).

    Raises:
        PrunecError: no ``original`` for an eval-mode program, or a replayed structure that
            does not match (a rewrite that did not record its plan).
    """
    program = _program_of(target)
    if program.training:
        assign_state(program.gm, program, clone=True)
        return program
    if original is None:
        raise PrunecError("training an eval-mode program needs the unpruned model "
                          "(original= or teacher=) to capture the pruned structure in train mode.")
    student = recapture(original, program, train=True)
    assign_state(program.gm, student, clone=True)
    return student


def assign_state(source: nn.Module, target: Program, *, clone: bool = False) -> None:
    """Give every parameter and buffer of ``target`` the tensor of the same name in
    ``source`` (new tensor objects: nothing is written in place, so tensors shared with the
    caller's model or a lowered artifact stay as they are); bumps ``target.version``.

    Raises:
        PrunecError: naming the first tensor missing in ``target`` or of another shape.
    """
    dst = dict(target.gm.named_parameters())
    dst.update(target.gm.named_buffers())
    src = dict(source.named_parameters())
    src.update(source.named_buffers())
    for name, tensor in src.items():
        if name not in dst or dst[name].shape != tensor.shape:
            got = tuple(dst[name].shape) if name in dst else "missing"
            raise PrunecError(
                f"'{name}' is {tuple(tensor.shape)} in the pruned program but {got} in the "
                f"train-mode replay; every pass that changes structure must record its "
                f"plan in program.lineage (through prunec.rewrite.apply_plan).")
        value = tensor.detach().clone() if clone else tensor.detach()
        target.set_tensor(name, value.to(dst[name].device))


def check_finetune(*, epochs: Any, lr: Any, weight_decay: Any, batch_size: Any,
                   temperature: Any, alpha: Any, train_data: Any, teacher: Any,
                   original: Any, loss_fn: Any, label_key: Any) -> None:
    """The options of :func:`prunec.finetune`.

    Raises:
        InvalidArgumentError: naming the option and its allowed range.
    """
    where = "finetune"
    check_positive(epochs, where, "epochs", integer=True)
    check_positive(lr, where, "lr", allow_zero=True)  # 0: a run that only updates BN stats
    check_positive(weight_decay, where, "weight_decay", allow_zero=True)
    check_positive(batch_size, where, "batch_size", integer=True)
    check_positive(temperature, where, "temperature")
    if not is_real(alpha) or not 0.0 <= float(alpha) <= 1.0:
        raise InvalidArgumentError(f"{where}: alpha must be in [0, 1] (the weight of the "
                                   f"distillation term), got {alpha!r}.")
    iterable = isinstance(train_data, (Iterable, Dataset)) or hasattr(train_data, "__getitem__")
    if train_data is None or isinstance(train_data, (str, bytes, torch.Tensor)) or not iterable:
        raise InvalidArgumentError(
            f"{where}: train_data must be a Dataset, DataLoader or list of (inputs, target) "
            f"items, got {type(train_data).__name__}.")
    for argument, value in (("teacher", teacher), ("original", original)):
        if value is not None:
            check_model(value, f"{where}: {argument}")
    if loss_fn is not None and not callable(loss_fn):
        raise InvalidArgumentError(f"{where}: loss_fn must be callable (logits, target) -> "
                                   f"loss, got {type(loss_fn).__name__}.")
    if not isinstance(label_key, str):
        raise InvalidArgumentError(f"{where}: label_key must be a string, got "
                                   f"{type(label_key).__name__}.")


# ---------------------------------------------------------------------------- losses
def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output: a tensor, ``.logits``, ``["logits"]`` or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    raise PrunecError(f"cannot find logits in a {type(output).__name__} output; return a "
                      f"tensor or an object with .logits.")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over rows of the last axis."""
    s = F.log_softmax(student.reshape(-1, student.shape[-1]).float() / temperature, -1)
    t = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]).float() / temperature, -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


# ---------------------------------------------------------------------------- data
def _split_batch(batch: Any, label_key: str) -> tuple[Any, Any]:
    """``(inputs, target)`` pairs, or dicts holding the target under ``label_key``."""
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k != label_key}
        return inputs, batch.get(label_key)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise PrunecError("training items must be (inputs, target) pairs (target may be None) or "
                      f"dicts with the target under {label_key!r}.")


def _loader(data: Any, batch_size: int, seed: int) -> Iterable:
    from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler

    if not isinstance(data, Dataset) or isinstance(data, IterableDataset):
        return data
    if _world() > 1:
        sampler = DistributedSampler(data, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


def _to(x: Any, device: torch.device) -> Any:
    import torch.utils._pytree as pytree

    return pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, x)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# ---------------------------------------------------------------------------- loop
def _sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics).

    DDP broadcasts rank 0's buffers before each forward, so during training every rank
    normalises with rank 0's statistics; the last forward still updated each rank's own copy.
    """
    if _world() == 1:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def _wrap(module: nn.Module, device: torch.device) -> nn.Module:
    if _world() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _cosine(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_t = lr * (1 + cos(pi * t / total)) / 2``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / max(total, 1))))


def _steps_per_epoch(loader: Iterable) -> int:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError as exc:
        raise PrunecError("train_data needs a length (a Dataset, DataLoader or list) to plan "
                          "the cosine schedule.") from exc


def finetune(
    target: Any,
    train_data: Any,
    *,
    epochs: int = 1,
    teacher: nn.Module | None = None,
    original: nn.Module | None = None,
    lr: float = 1.5e-5,
    weight_decay: float = 0.01,
    batch_size: int = 32,
    temperature: float = 1.0,
    alpha: float = 0.5,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    loss: str = "default",
    device: str | torch.device | None = None,
    label_key: str = "labels",
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[Any, list[dict]]:
    """Fine-tune the pruned model in train mode, distilling from ``teacher``.

    Args:
        target: A :class:`~prunec.ir.program.Program` or the ``CompiledModel`` that
            :func:`prunec.compile` returned; its program gets the trained weights (a
            compiled model's artifact is lowered again on its next use).
        train_data: A ``Dataset`` (batched here with ``batch_size``; sharded under
            ``torchrun``) or an iterable of batches (e.g. a ``DataLoader``). Items are
            ``(inputs, target)`` pairs (inputs as for calibration: a tensor, a tuple of
            positional inputs or a dict; target may be None) or dicts with ``label_key``.
        epochs: Passes over ``train_data``.
        teacher: The unpruned model; run in eval mode on a copy. ``None``: no distillation.
        original: The model ``target`` was built from (defaults to ``teacher``); captured
            in train mode to give the student its training behaviour.
        lr: Peak learning rate of AdamW (cosine to 0).
        weight_decay: AdamW's decoupled weight decay.
        batch_size: Batch size when ``train_data`` is a ``Dataset``.
        temperature: ``T`` of the distillation term.
        alpha: Weight of the distillation term; ``1 - alpha`` weighs the task loss.
        loss_fn: Task loss ``loss_fn(logits, target)``; cross-entropy by default.
        loss: ``"default"`` (``loss_fn`` on ``(inputs, target)`` items) or ``"causal_lm"``:
            token batches, shifted next-token cross-entropy over real tokens plus
            distillation from the teacher's logits on the same positions
            (:mod:`prunec.train.causal_lm`).
        device: Where to train (default: where the pruned weights are).
        label_key: Key of the target in dict items.
        seed: Seed of the shuffling.
        progress: A bar of the steps with epoch and loss; False hides it, by default it
            shows when standard error is a terminal (see :mod:`prunec.progress`).

    Returns:
        ``(target, history)``: ``history`` has one dict per step with ``epoch``, ``step``,
        ``loss``, ``kl``, ``task`` and ``lr``.

    Raises:
        PrunecError: no model to capture in train mode, no length for the schedule, items
            of another form, or a structure that the plans do not replay.
    """
    check_finetune(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                   temperature=temperature, alpha=alpha, train_data=train_data,
                   teacher=teacher, original=original, loss_fn=loss_fn, label_key=label_key)
    if loss not in ("default", "causal_lm"):
        raise InvalidArgumentError(f"finetune: loss must be 'default' or 'causal_lm', got "
                                   f"{loss!r}.")
    if loss == "causal_lm" and loss_fn is not None:
        raise InvalidArgumentError("finetune: loss='causal_lm' sets the task loss; drop loss_fn.")
    base = original if original is not None else teacher
    program = _program_of(target)
    student = train_program(program, base)
    device = torch.device(device) if device is not None else next(student.gm.parameters()).device
    student.gm.to(device)
    net = _wrap(student.gm, device)
    tutor = copy.deepcopy(teacher).eval().to(device) if teacher is not None else None
    loader = _loader(train_data, batch_size, seed)
    total = epochs * _steps_per_epoch(loader)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad],
                                  lr=lr, weight_decay=weight_decay)
    schedule = _cosine(optimizer, total)
    step_fn = _Step(net, tutor, optimizer, schedule, temperature, alpha,
                    loss_fn or F.cross_entropy, device, label_key)
    if loss == "causal_lm":
        step_fn.split, step_fn.loss_fn = causal_lm_batch, next_token_loss
        step_fn.distill = lambda s, t, y: masked_distillation(s, t, y, temperature)
    history = []
    with progress_bar(total=total, desc="fine-tuning", unit="step",
                      progress=progress if _rank() == 0 else False) as shown:
        for epoch in range(epochs):
            if hasattr(getattr(loader, "sampler", None), "set_epoch"):
                loader.sampler.set_epoch(epoch)
            for batch in loader:
                history.append({"epoch": epoch, "step": len(history), **step_fn(batch)})
                shown.set_postfix(epoch=f"{epoch + 1}/{epochs}",
                                  loss=f"{history[-1]['loss']:.4f}", refresh=False)
                shown.update(1)
    _sync_buffers(student.gm)
    if student is not program:
        assign_state(student.gm, program)  # new tensors; bumps the version: artifacts re-lower
    return target, history


def _check_token_targets(loss_fn, logits: torch.Tensor, target: Any) -> None:
    """Token logits ``[B, N, V]`` with token labels ``[B, N]`` under plain cross-entropy
    (which wants classes on axis 1) mean a language model: say which loss to use."""
    if loss_fn is F.cross_entropy and logits.dim() == 3 and isinstance(target, torch.Tensor) \
            and tuple(target.shape) == tuple(logits.shape[:2]):
        raise PrunecError("finetune: the model returns token logits [B, N, V] and the targets "
                          "are token ids [B, N]: for a language model pass loss='causal_lm' "
                          "(shifted next-token cross-entropy), or a loss_fn of your own.")


class _Step:
    """One optimisation step: forward student (and teacher), loss, backward, update."""

    def __init__(self, net, teacher, optimizer, schedule, temperature, alpha, loss_fn, device,
                 label_key):
        self.net, self.teacher, self.optimizer, self.schedule = net, teacher, optimizer, schedule
        self.temperature, self.alpha, self.loss_fn = temperature, alpha, loss_fn
        self.device, self.label_key = device, label_key
        self.split = _split_batch
        self.distill = lambda s, t, _y: distillation_loss(s, t, temperature)

    def __call__(self, batch: Any) -> dict:
        inputs, target = self.split(batch, self.label_key)
        args, kwargs = split_inputs(_to(inputs, self.device))
        logits = logits_of(self.net(*args, **kwargs))
        kl = task = torch.zeros((), device=logits.device)
        if self.teacher is not None and self.alpha > 0:
            with torch.no_grad():
                reference = logits_of(self.teacher(*args, **kwargs))
            kl = self.distill(logits, reference, target)
        if target is not None and self.alpha < 1:
            _check_token_targets(self.loss_fn, logits, target)
            task = self.loss_fn(logits, _to(target, self.device))
        loss = self._combine(kl, task, distilled=self.teacher is not None and self.alpha > 0,
                             supervised=target is not None and self.alpha < 1)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return {"loss": loss.item(), "kl": kl.item(), "task": task.item(), "lr": lr}

    def _combine(self, kl, task, *, distilled: bool, supervised: bool) -> torch.Tensor:
        """``alpha * kl + (1 - alpha) * task`` when both apply, else the one that does."""
        if distilled and supervised:
            return self.alpha * kl + (1.0 - self.alpha) * task
        if distilled or supervised:
            return kl if distilled else task
        raise PrunecError("nothing to train on: pass teacher= for distillation or items with a "
                          "target (and alpha < 1) for the task loss.")
