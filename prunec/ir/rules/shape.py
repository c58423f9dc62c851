"""Layout ops: reshapes, permutations, broadcasts, concatenation, splits and slices.

Reshapes (``view``, ``reshape``, ``flatten``, ``unflatten``) are matched axis-group by
axis-group (products of sizes, symbolic ones included). A merge ``(a, b, ...) -> m`` ties
index ``j`` of ``m`` to index ``j // (b*...)`` of the outer axis ``a`` and keeps the inner
axes at their size; a split is the same read backwards. That is how a ``[B, N, H*D] ->
[B, N, H, D]`` head reshape makes whole heads the unit and how ``flatten`` before a
classifier ties each conv channel to its ``H*W`` block of features. Anything else is kept.
``cat``/``split`` tie ranges at offsets; their rewrites recompute split sizes, slice bounds
and every literal size in ``view``/``reshape``/``expand``.
"""
from __future__ import annotations

import math

import sympy
import torch

from prunec.ir.rules import register

aten = torch.ops.aten


def _exprs(node) -> list:
    return [sympy.Integer(s) if isinstance(s, int) else s.node.expr for s in node.meta["val"].shape]


def _axis_groups(ins: list, outs: list):
    """Pair consecutive axis runs with equal products; ``None`` if they cannot be paired."""
    i_axes = [a for a, s in enumerate(ins) if s != 1]
    o_axes = [a for a, s in enumerate(outs) if s != 1]
    groups, i, j = [], 0, 0
    while i < len(i_axes) and j < len(o_axes):
        gi, gj = [i_axes[i]], [o_axes[j]]
        pi, pj = ins[i_axes[i]], outs[o_axes[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            num, den = sympy.fraction(sympy.cancel(pj / pi))
            if den == 1 and i < len(i_axes):
                gi.append(i_axes[i]), (pi := pi * ins[i_axes[i]])
                i += 1
            elif num == 1 and j < len(o_axes):
                gj.append(o_axes[j]), (pj := pj * outs[o_axes[j]])
                j += 1
            else:
                return None
        groups.append((gi, gj))
    return groups if i == len(i_axes) and j == len(o_axes) else None


def _couple_reshape(ctx, x, y) -> None:
    ins, outs = _exprs(x), _exprs(y)
    for a, s in enumerate(ins):
        if s == 1:
            ctx.cover(x, a)
    groups = _axis_groups(ins, outs)
    if groups is None:
        return  # all untied axes get blocked
    xs, ys = ctx.shape(x), ctx.shape(y)
    for gi, gj in groups:
        if len(gi) == 1 and len(gj) == 1:
            if xs[gi[0]] is not None:
                ctx.tie(x, gi[0], y, gj[0])
        elif len(gj) == 1 and all(xs[a] is not None for a in gi):  # merge
            ctx.tie_blocks(y, gj[0], x, gi[0], math.prod(xs[a] for a in gi[1:]))
        elif len(gi) == 1 and all(ys[a] is not None for a in gj):  # split
            ctx.tie_blocks(x, gi[0], y, gj[0], math.prod(ys[a] for a in gj[1:]))


def rewrite_sizes(ctx, node, pos: int = 1, name: str = "size") -> None:
    """Replace every literal size (not -1, not symbolic) by the output's new size."""
    sizes = list(node.args[pos])
    offset = len(ctx.shape(node)) - len(sizes)
    new = [ctx.new_size(node, p + offset) if isinstance(s, int) and s != -1 else s
           for p, s in enumerate(sizes)]
    if new != sizes:
        ctx.set_arg(node, pos, name, new)


def rewrite_unflatten(ctx, node) -> None:
    dim = node.args[1] % len(ctx.shape(node.args[0]))
    sizes = list(node.args[2])
    new = [ctx.new_size(node, dim + p) if isinstance(s, int) and s != -1 else s for p, s in enumerate(sizes)]
    if new != sizes:
        ctx.set_arg(node, 2, "sizes", new)


@register(aten.view, aten.reshape, aten._unsafe_view, rewrite=rewrite_sizes)
def couple_view(ctx, node) -> None:
    _couple_reshape(ctx, node.args[0], node)


@register(aten.flatten, aten.squeeze, aten.unsqueeze)
def couple_flatten(ctx, node) -> None:
    _couple_reshape(ctx, node.args[0], node)


@register(aten.unflatten, rewrite=rewrite_unflatten)
def couple_unflatten(ctx, node) -> None:
    _couple_reshape(ctx, node.args[0], node)


@register(aten.expand, rewrite=rewrite_sizes)
def couple_expand(ctx, node) -> None:
    x = node.args[0]
    xs, ys = ctx.shape(x), ctx.shape(node)
    offset = len(ys) - len(xs)
    for ax, size in enumerate(xs):
        if size == 1 and ys[ax + offset] != 1:
            ctx.cover(x, ax)
        else:
            ctx.tie(x, ax, node, ax + offset)


@register(aten.permute)
def couple_permute(ctx, node) -> None:
    x, dims = node.args[0], node.args[1]
    rank = len(ctx.shape(x))
    for p, d in enumerate(dims):
        ctx.tie(x, d % rank, node, p)


@register(aten.transpose, aten.t, aten.swapaxes)
def couple_transpose(ctx, node) -> None:
    x = node.args[0]
    rank = len(ctx.shape(x))
    a, b = (node.args[1] % rank, node.args[2] % rank) if len(node.args) > 2 else (0, 1)
    for ax in range(rank):
        ctx.tie(x, ax, node, b if ax == a else a if ax == b else ax)


@register(aten.cat, aten.concat)
def couple_cat(ctx, node) -> None:
    tensors = [t for t in node.args[0] if ctx.shape(t) is not None and ctx.shape(t) != (0,)]
    rank = len(ctx.shape(node))
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % rank
    offset = 0
    for t in tensors:
        size = ctx.shape(t)[dim]
        for ax in range(rank):
            if ax != dim:
                ctx.tie(t, ax, node, ax)
        if size is None or offset is None:
            offset = None
            continue
        ctx.tie_range(t, dim, 0, node, dim, offset, size)
        offset += size


def _split_sizes(node, size: int) -> list[int]:
    packet = node.target.overloadpacket
    if packet is aten.split_with_sizes:
        return list(node.args[1])
    if packet is aten.chunk:
        return [len(c) for c in torch.arange(size).chunk(node.args[1])]
    if packet is aten.unbind:
        return [1] * size
    step = node.args[1]
    return [min(step, size - s) for s in range(0, size, step)]


def _split_dim(node, rank: int) -> int:
    packet = node.target.overloadpacket
    pos = 1 if packet is aten.unbind else 2
    default = 0
    return (node.args[pos] if len(node.args) > pos else node.kwargs.get("dim", default)) % rank


def rewrite_split(ctx, node) -> None:
    """``split``/``chunk`` become ``split_with_sizes`` with the kept count of each range."""
    x = node.args[0]
    dim = _split_dim(node, len(ctx.shape(x)))
    if not ctx.changed(x, dim):
        return
    sizes = _split_sizes(node, ctx.old_size(x, dim))
    kept = ctx.kept(x, dim)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    new = [int(((kept >= s) & (kept < s + n)).sum()) for s, n in zip(starts, sizes)]
    ctx.replace_target(node, aten.split_with_sizes.default, (x, new, dim))


@register(aten.split, aten.split_with_sizes, aten.chunk, aten.unsafe_split, aten.unbind, rewrite=rewrite_split)
def couple_split(ctx, node) -> None:
    x = node.args[0]
    xs = ctx.shape(x)
    dim = _split_dim(node, len(xs))
    if xs[dim] is None:
        return
    sizes = _split_sizes(node, xs[dim])
    unbind = node.target.overloadpacket is aten.unbind
    for idx, out in ctx.outputs(node):
        start = sum(sizes[:idx])
        for ax in range(len(xs)):
            if ax == dim:
                if not unbind:
                    ctx.tie_range(x, dim, start, out, dim, 0, sizes[idx])
            else:
                ctx.tie(x, ax, out, ax - (unbind and ax > dim))


def _slice_bounds(node, size: int):
    start = node.args[2] if len(node.args) > 2 else 0
    end = node.args[3] if len(node.args) > 3 else None
    step = node.args[4] if len(node.args) > 4 else 1
    if not all(isinstance(v, (int, type(None))) for v in (start, end, step)):
        return None
    return slice(start, end, step).indices(size)


def rewrite_slice(ctx, node) -> None:
    x = node.args[0]
    dim = node.args[1] % len(ctx.shape(x))
    if not ctx.changed(x, dim):
        return
    start, _, _ = _slice_bounds(node, ctx.old_size(x, dim))
    new_start = int((ctx.kept(x, dim) < start).sum())
    args = list(node.args) + [None] * (4 - len(node.args))
    args[2], args[3] = new_start, new_start + ctx.new_size(node, dim)
    ctx.set_args(node, tuple(args[:max(4, len(node.args))]))


@register(aten.slice, aten.narrow, rewrite=rewrite_slice)
def couple_slice(ctx, node) -> None:
    x = node.args[0]
    xs = ctx.shape(x)
    dim = node.args[1] % len(xs)
    for ax in range(len(xs)):
        if ax != dim:
            ctx.tie(x, ax, node, ax)
    if xs[dim] is None or node.target.overloadpacket is aten.narrow:
        return
    bounds = _slice_bounds(node, xs[dim])
    if bounds is not None and bounds[2] == 1 and bounds[1] > bounds[0]:
        ctx.tie_range(x, dim, bounds[0], node, dim, 0, bounds[1] - bounds[0])
        ctx.cover(x, dim)


@register(aten.select)
def couple_select(ctx, node) -> None:
    x = node.args[0]
    rank = len(ctx.shape(x))
    dim = node.args[1] % rank
    for ax in range(rank):
        if ax != dim:
            ctx.tie(x, ax, node, ax - (ax > dim))


def _noop(ctx, node) -> None:
    return None


register(aten.sym_size, aten.sym_numel, aten.sym_stride, aten._assert_scalar,
         aten._assert_tensor_metadata, aten.sym_constrain_range_for_size, aten.sym_constrain_range,
         shape_only=True)(_noop)
