"""Normalisations and reductions.

* batch/instance norm: per-channel vectors (weight, bias, running statistics) tied to axis 1.
* layer norm: the normalised trailing axes are tied to weight/bias and tagged ``norm``; the
  rewrite recomputes ``normalized_shape``. (Removing channels of a normalised axis changes the
  statistics the norm computes: the pruned model is still well-formed, but zeroing a channel
  is not the same as removing it.)
* group norm: the unit is a whole group of ``C/G`` channels (a virtual axis of size ``G``);
  the rewrite recomputes ``num_groups``.
* reductions (``mean``, ``sum``, ``amax``, ``var``...) over an axis cover it: the reduced
  axis may shrink (RMS norm's ``x.pow(2).mean(-1)``); the kept axes are tied to the output.
* softmax-like ops tie every axis.
"""
from __future__ import annotations

import torch

from prunec.ir.rules import register

aten = torch.ops.aten


def _tie_all(ctx, a, b) -> None:
    for ax in range(len(ctx.shape(a))):
        ctx.tie(a, ax, b, ax)


def _output(ctx, node):
    outs = ctx.outputs(node)
    return outs[0][1] if outs and outs[0][0] in (None, 0) else None


@register(aten.batch_norm, aten._native_batch_norm_legit_no_training, aten.instance_norm,
          aten._native_batch_norm_legit_functional, aten.native_batch_norm)
def couple_batch_norm(ctx, node) -> None:
    x, out = node.args[0], _output(ctx, node)
    for vec in node.args[1:5]:
        if ctx.shape(vec) is not None:
            ctx.tie(vec, 0, x, 1)
    if out is not None:
        _tie_all(ctx, x, out)


def rewrite_layer_norm(ctx, node) -> None:
    x, shape = node.args[0], list(node.args[1])
    rank = len(ctx.shape(x))
    new = [ctx.new_size(x, rank - len(shape) + i) for i in range(len(shape))]
    if new != shape:
        ctx.set_arg(node, 1, "normalized_shape", new)


@register(aten.layer_norm, aten.native_layer_norm, aten.rms_norm, rewrite=rewrite_layer_norm)
def couple_layer_norm(ctx, node) -> None:
    x, shape = node.args[0], node.args[1]
    out = _output(ctx, node)
    rank = len(ctx.shape(x))
    for vec in node.args[2:4]:
        if ctx.shape(vec) is not None:
            for i in range(len(shape)):
                ctx.tie(vec, i, x, rank - len(shape) + i)
    for i in range(len(shape)):
        ctx.tag(x, rank - len(shape) + i, "norm")
    if out is not None:
        _tie_all(ctx, x, out)


def rewrite_group_norm(ctx, node) -> None:
    x, groups = node.args[0], int(node.args[1])
    if ctx.changed(x, 1):
        per_group = ctx.old_size(x, 1) // groups
        ctx.set_arg(node, 1, "num_groups", ctx.new_size(x, 1) // per_group)


@register(aten.group_norm, rewrite=rewrite_group_norm)
def couple_group_norm(ctx, node) -> None:
    x, groups = node.args[0], int(node.args[1])
    c = ctx.shape(x)[1]
    if c is None:
        return
    virtual = ctx.virtual(groups)
    ctx.tie_blocks(x, 1, virtual, 0, c // groups)
    for vec in node.args[2:4]:
        if ctx.shape(vec) is not None:
            ctx.tie(vec, 0, x, 1)
    ctx.tag(x, 1, "norm")
    _tie_all(ctx, x, node)


@register(aten.mean, aten.sum, aten.amax, aten.amin, aten.var, aten.std, aten.prod,
          aten.logsumexp)
def couple_reduction(ctx, node) -> None:
    x = node.args[0]
    xs, ys = ctx.shape(x), ctx.shape(node)
    dims = _reduced_dims(node, len(xs))
    keep = len(ys) == len(xs)
    j = 0
    for ax in range(len(xs)):
        if ax in dims:
            ctx.cover(x, ax)
            ctx.tag(x, ax, "norm")
            if keep:
                ctx.cover(node, ax)
                j += 1
            continue
        ctx.tie(x, ax, node, j)
        j += 1


def _reduced_dims(node, rank: int) -> set:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None or dims == [] or not isinstance(dims, (int, list, tuple)):
        return set(range(rank))
    dims = [dims] if isinstance(dims, int) else dims
    return {d % rank for d in dims}


@register(aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax, aten.cumsum)
def couple_softmax(ctx, node) -> None:
    _tie_all(ctx, node.args[0], node)
