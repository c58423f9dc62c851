"""Scores of residual blocks and spans of blocks, shared by block and layer depth pruning.

:class:`~prunec.passes.prune_depth.DepthPruning` scores blocks (:func:`block_scores`) and
:mod:`prunec.passes.prune_layers` scores layers (spans of blocks) with the same pieces, so
they live here, below both. Criteria (higher = keep), with ``x`` a block's (or span's) input
and ``y`` its output on the residual stream:

- ``"kl"``: ``KL(q || p) = sum q (log q - log p)`` between the softmax outputs ``p`` of the
  program and ``q`` of the program with the branch output zeroed, averaged over output rows;
- ``"cosine"``: ``1 - cos(x, y)`` per position along the channel axis, averaged;
- ``"angular"``: ``arccos(cos(x, y)) / pi``, averaged;
- ``"magnitude"``: the RMS of the first parameter of the last op of the branch that reads one.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from prunec.errors import CalibrationError
from prunec.ir.blocks import Block
from prunec.ir.calibration import MaskSpec, _resolve_mask
from prunec.ir.interpret import ProgramInterpreter, record_values
from prunec.ir.program import Program
from prunec.train.finetune import logits_of

__all__ = ["block_scores", "calibration_items", "branch_scale", "similarity_scores",
           "log_softmax_rows"]


def block_scores(program: Program, blocks: list[Block], criterion: str,
                 calibration: Iterable[Any] | None, *, max_batches: int | None = None,
                 progress: bool = False, mask: MaskSpec = None) -> dict[str, float]:
    """Importance of every block (higher = keep) under ``criterion``."""
    if criterion == "magnitude":
        return {b.key: branch_scale(program, b) for b in blocks}
    items = calibration_items(calibration, max_batches)
    if criterion == "kl":
        return _kl_scores(program, blocks, items, progress)
    return similarity_scores(program, blocks, items, criterion, mask)


def calibration_items(calibration: Iterable[Any] | None, max_batches: int | None) -> list:
    """The first ``max_batches`` calibration items (all when ``None``) as a list; no data or
    an empty iterable is a :class:`~prunec.errors.CalibrationError`."""
    import itertools

    if calibration is None:
        raise CalibrationError("this criterion needs calibration data; pass calibration=...")
    items = list(calibration if max_batches is None else itertools.islice(calibration, max_batches))
    if not items:
        raise CalibrationError("the calibration data is empty; pass at least one item.")
    return items


def branch_scale(program: Program, block: Block) -> float:
    """RMS ``sqrt(mean(w^2))`` of the first parameter read by the last op of ``block``'s
    branch that reads one (0.0 when none does)."""
    nodes = {n.name: n for n in program.graph.nodes}
    for name in reversed(block.nodes):
        node = nodes[name]
        if node.op != "call_function":
            continue
        for arg in node.all_input_nodes:
            if arg.op == "get_attr":
                w = program.get_tensor(arg.target)
                if isinstance(w, torch.nn.Parameter):
                    return float(w.detach().double().pow(2).mean().sqrt())
    return 0.0


def similarity_scores(program, blocks, items, criterion, mask: MaskSpec = None) -> dict[str, float]:
    """Mean ``1 - cos(x, y)`` (``"cosine"``) or ``arccos(cos(x, y)) / pi`` (``"angular"``)
    between each block's input and residual output over ``items``, masked positions out."""

    names = [n for b in blocks for n in (b.input, b.add)]
    sums = {b.key: 0.0 for b in blocks}
    counts = {b.key: 0 for b in blocks}
    for index, item in enumerate(items):
        values = record_values(program, item, names)
        keep = _resolve_mask(mask, item, index)
        for b in blocks:
            cos = _cosine(values[b.input], values[b.add], b.channel_axis)
            if keep is not None and cos.shape == keep.shape:  # [B, N] positions: drop padding
                cos = cos[keep.bool()]
            dist = 1.0 - cos if criterion == "cosine" else torch.arccos(cos.clamp(-1, 1)) / math.pi
            sums[b.key] += float(dist.sum())
            counts[b.key] += dist.numel()
    return {k: sums[k] / max(counts[k], 1) for k in sums}


def _cosine(x: torch.Tensor, y: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Cosine along the channel axis per position (per sample when the axis is unknown)."""
    x, y = x.double(), y.double()
    if axis is None:
        return F.cosine_similarity(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1), dim=1)
    return F.cosine_similarity(x, y, dim=axis, eps=1e-12)


def _kl_scores(program, blocks, items, progress: bool) -> dict[str, float]:
    from tqdm.auto import tqdm

    interp = ProgramInterpreter(program)
    sums = {b.key: 0.0 for b in blocks}
    rows = 0
    with torch.no_grad():
        for item in tqdm(items, desc="block KL", disable=not progress):
            interp.overrides = {}
            log_p = log_softmax_rows(logits_of(interp.call_item(item)))
            rows += log_p.shape[0]
            for b in blocks:
                interp.overrides = {b.output: torch.zeros_like}
                log_q = log_softmax_rows(logits_of(interp.call_item(item)))
                sums[b.key] += float((log_q.exp() * (log_q - log_p)).sum())
    return {k: v / max(rows, 1) for k, v in sums.items()}


def log_softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last axis in float64, every leading axis flattened to rows."""
    return F.log_softmax(logits.reshape(-1, logits.shape[-1]).double(), dim=-1)
