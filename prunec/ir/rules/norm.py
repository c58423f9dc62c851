"""Normalisations, reductions and ops that mix the channels of an axis.

* batch/instance norm: per-channel vectors (weight, bias, running statistics) tied to axis 1.
* layer norm: the normalised trailing axes are tied to weight/bias and tagged ``norm``; the
  rewrite recomputes ``normalized_shape``. (Removing channels of a normalised axis changes the
  statistics the norm computes: the pruned model is still well-formed, but zeroing a channel
  is not the same as removing it.)
* group norm: the unit is a whole group of ``C/G`` channels (a virtual axis of size ``G``);
  the rewrite recomputes ``num_groups``.
* reductions (``mean``, ``sum``, ``amax``, ``var``..., and the vector norms ``norm``,
  ``linalg_vector_norm``) over an axis cover it: the reduced axis may shrink (RMS norm's
  ``x.pow(2).mean(-1)``, CLIP's ``x / x.norm(dim=-1)``); the axis is tagged ``norm`` and the
  kept axes are tied to the output.

Mixing ops (DESIGN.md contract 5): every output index along ``dim`` depends on every input
index along it, so that axis is not channel-independent.

* ``softmax``/``log_softmax`` over ``dim`` normalise it, ``y_i = exp(x_i) / sum_j exp(x_j)``:
  with channels removed the sum runs over the kept ones only, a well-formed smaller model
  but not the model with the channels zeroed (``exp(0) = 1`` still enters the sum), and a
  removed channel's mean cannot be folded into a consumer. Like layer norm, ``dim`` is tied
  through and tagged ``norm``: passes may prune it, zeroing equivalence and VBP's mean folding
  skip the group.
* ``cumsum``/``cumprod``/``logcumsumexp``/``cummax``/``cummin`` (``y_i`` depends on
  ``x_0..x_i``) and ``sort``/``argsort``/``topk`` (outputs are ranks, not channels) block
  ``dim``: output index ``i`` is not input channel ``i``, so removing a channel from both is
  not removing it from the model. The other axes are tied.
"""
from __future__ import annotations

import torch

from prunec.ir.rules.registry import register

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
    axes = [rank - len(shape) + i for i in range(len(shape))]
    new = [int(ctx.new_size(x, ax)) if ctx.changed(x, ax) else s for ax, s in zip(axes, shape)]
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
    _couple_reduced(ctx, node, _dims_arg(node, 1))


@register(aten.norm, aten.linalg_vector_norm, aten.frobenius_norm, aten.linalg_norm)
def couple_vector_norm(ctx, node) -> None:
    """``norm(x, p, dim, keepdim)`` / ``linalg_vector_norm(x, ord, dim, keepdim)``."""
    pos = 1 if node.target.overloadpacket is aten.frobenius_norm else 2
    _couple_reduced(ctx, node, _dims_arg(node, pos))


def _couple_reduced(ctx, node, dims_arg) -> None:
    x = node.args[0]
    xs, ys = ctx.shape(x), ctx.shape(node)
    if xs is None or ys is None:
        return
    dims = _reduced_dims(dims_arg, len(xs))
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


def _dims_arg(node, pos: int):
    return node.args[pos] if len(node.args) > pos else node.kwargs.get("dim")


def _reduced_dims(dims, rank: int) -> set:
    if dims is None or dims == [] or not isinstance(dims, (int, list, tuple)):
        return set(range(rank))
    dims = [dims] if isinstance(dims, int) else dims
    return {d % rank for d in dims}


def _mixed_dim(node, rank: int, pos: int = 1, default: int = -1) -> int:
    dim = node.args[pos] if len(node.args) > pos else node.kwargs.get("dim", default)
    return dim % rank


@register(aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax, aten._safe_softmax)
def couple_softmax(ctx, node) -> None:
    x = node.args[0]
    rank = len(ctx.shape(x))
    _tie_all(ctx, x, node)
    if rank:
        ctx.tag(x, _mixed_dim(node, rank), "norm")


_ORDERED = {aten.cumsum: "sums", aten.cumprod: "multiplies", aten.logcumsumexp: "accumulates",
            aten.cummax: "accumulates", aten.cummin: "accumulates"}
_RANKING = {aten.sort: 1, aten.argsort: 1, aten.topk: 2}


@register(*_ORDERED, *_RANKING)
def couple_mixing(ctx, node) -> None:
    """Tie every axis but ``dim``; block ``dim`` on the input and on every output."""
    x = node.args[0]
    xs = ctx.shape(x)
    if not xs:
        return
    packet = node.target.overloadpacket
    dim = _mixed_dim(node, len(xs), _RANKING.get(packet, 1))
    what = (f"{packet.__name__} {_ORDERED[packet]} along it (output i depends on inputs 0..i)"
            if packet in _ORDERED else f"{packet.__name__} ranks along it (outputs are ranks, not channels)")
    why = f"axis {dim} mixes its channels at node '{node.name}': {what}"
    outs = [node] if ctx.shape(node) is not None else [o for _, o in ctx.outputs(node)]
    ctx.block(x, dim, why)
    for out in outs:
        ctx.block(out, dim, why)
        for ax in range(len(xs)):
            if ax != dim:
                ctx.tie(x, ax, out, ax)
