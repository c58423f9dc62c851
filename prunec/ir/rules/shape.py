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
import operator

import sympy
import torch
import torch.fx as fx

from prunec.ir.rules.registry import register

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
            ctx.tie(x, gi[0], y, gj[0])  # symbolic axes carry their static factor, if any
        elif len(gj) == 1 and all(xs[a] is not None for a in gi):  # merge
            ctx.tie_blocks(y, gj[0], x, gi[0], math.prod(xs[a] for a in gi[1:]))
        elif len(gi) == 1 and all(ys[a] is not None for a in gj):  # split
            _couple_split(ctx, x, gi[0], y, gj)
        else:
            _couple_symbolic(ctx, x, gi, ins, y, gj, outs)


def _couple_split(ctx, x, ax: int, y, out_axes: list) -> None:
    """``m -> (a, b, ...)``: whole blocks of the outer axis ``a`` are the unit (heads), unless
    ``a`` is a stack that is only ever indexed (``unflatten(-1, [3, E])`` of a packed q/k/v
    projection, then ``select(0, i)``): then the unit is index ``e`` of the inner axis in
    every member of the stack (row ``e`` of each of q, k and v; with ``(3, H, D)``, head ``h``
    of each: timm's ``reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)``)."""
    ys = ctx.shape(y)
    outer, inner = out_axes[0], out_axes[1:]
    if inner and _is_stack_axis(y, outer):
        ctx.tie_tiled(x, ax, y, inner[0], ys[outer], math.prod(ys[a] for a in inner[1:]))
    else:
        ctx.tie_blocks(x, ax, y, outer, math.prod(ys[a] for a in inner))


def _couple_symbolic(ctx, x, gi: list, ins: list, y, gj: list, outs: list) -> None:
    """Reshapes that move a static factor into or out of a symbolic axis.

    * ``(S, E) -> (S*H, D)`` with ``E = H*D`` (``[L, B, E] -> [L, B*H, D]``, heads folded
      into the batch): index ``j`` of ``E`` is head ``j // D``, the factor of ``S*H``;
    * ``(S*H) -> (S, H, ...)``: the factor comes back out as a real axis;
    * ``(S, H, ...) -> (S*H)``: a real axis becomes the factor.

    Anything else leaves the axes untied, and so kept.
    """
    xs, ys = ctx.shape(x), ctx.shape(y)
    sx, sy = [a for a in gi if xs[a] is None], [a for a in gj if ys[a] is None]
    if len(sx) != 1 or len(sy) != 1 or sx[0] != gi[0] or sy[0] != gj[0]:
        return
    ratio = sympy.cancel(outs[gj[0]] / ins[gi[0]])
    static_x, static_y = [xs[a] for a in gi[1:]], [ys[a] for a in gj[1:]]
    if ratio.is_Integer and int(ratio) > 1:  # a static factor enters the symbolic axis
        k = int(ratio)
        if len(static_x) == 1 and static_x[0] == k * math.prod(static_y):  # (S, E) -> (S*H, D)
            ctx.tie_blocks(x, gi[1], ctx.factor(y, gj[0], k), 0, math.prod(static_y))
            ctx.cover(y, gj[0])
        elif not static_y and math.prod(static_x) == k:  # (S, H, ...) -> (S*H*...)
            ctx.tie_blocks(ctx.factor(y, gj[0], k), 0, x, gi[1], math.prod(static_x[1:]))
            ctx.cover(y, gj[0])
    elif (1 / ratio).is_Integer and len(gi) == 1 and static_y:  # (S*H) -> (S, H, ...)
        factor = ctx.factor(x, gi[0])
        k = int(1 / ratio)
        if factor is not None and ctx.space.shapes[factor][0] == k == math.prod(static_y):
            ctx.tie_blocks(factor, 0, y, gj[1], math.prod(static_y[1:]))
            ctx.cover(x, gi[0])


_PERMUTING = {aten.transpose, aten.permute, aten.unsqueeze, aten.squeeze, aten.contiguous,
              aten.clone, aten.alias, aten.detach, aten._to_copy}


def _is_stack_axis(node, axis: int, depth: int = 8) -> bool:
    """Whether every use of ``node``'s ``axis`` (followed through transposes, permutes and
    (un)squeezes) indexes it with ``select``/``unbind``: it stacks tensors, not channels."""
    users = list(node.users)
    if depth == 0 or not users:
        return False
    for user in users:
        packet = getattr(user.target, "overloadpacket", None)
        rank = user.args[0].meta["val"].dim() if user.args and user.args[0] is node else None
        if rank is None:
            return False
        if packet in (aten.select, aten.unbind):
            dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
            if dim % rank != axis:
                return False
            continue
        moved = _moved_axis(user, packet, axis, rank)
        if moved is None or not _is_stack_axis(user, moved, depth - 1):
            return False
    return True


def _moved_axis(user, packet, axis: int, rank: int) -> int | None:
    """Where ``axis`` of ``user``'s input lands in its output, or None."""
    if packet not in _PERMUTING:
        return None
    args = user.args
    if packet is aten.transpose:
        a, b = args[1] % rank, args[2] % rank
        return b if axis == a else a if axis == b else axis
    if packet is aten.permute:
        return [d % rank for d in args[1]].index(axis)
    if packet is aten.unsqueeze:
        d = args[1] % (rank + 1)
        return axis + (d <= axis)
    if packet is aten.squeeze:
        dims = args[1] if len(args) > 1 else [d for d in range(rank) if user.args[0].meta["val"].shape[d] == 1]
        dims = [d % rank for d in ([dims] if isinstance(dims, int) else dims)]
        return None if axis in dims else axis - sum(d < axis for d in dims)
    return axis


def _new_sizes(ctx, node, sizes: list, first_axis: int) -> list:
    """``sizes`` (a size argument whose entry ``p`` is output axis ``first_axis + p``) with
    every literal size of a pruned axis replaced by its kept count, as a Python ``int``.

    Entries that are ``-1``, symbolic (graph nodes) or on axes no plan touched are kept as
    they are: an axis whose traced size is symbolic has no static count to put there, and
    the ATen schemas take ``SymInt[]``, which rejects ``None`` and NumPy integers.
    """
    out = []
    for p, size in enumerate(sizes):
        axis = first_axis + p
        if isinstance(size, int) and size != -1 and ctx.changed(node, axis):
            size = int(ctx.new_size(node, axis))
        elif isinstance(size, fx.Node):
            size = _rescaled_symbol(ctx, node, axis, size)
        out.append(size)
    return out


def _rescaled_symbol(ctx, node, axis: int, size: fx.Node) -> fx.Node:
    """A symbolic size ``S*H`` whose static factor ``H`` was pruned to ``H'`` becomes the
    graph expression ``S*H * H' // H`` (exact: ``S*H`` is a multiple of ``H``)."""
    factor = ctx.analysis.factors.get((node.name, axis))
    if factor is None or not ctx.changed(factor, 0):
        return size
    old, new = ctx.analysis.shapes[factor][0], len(ctx.kept(factor, 0))
    graph = ctx.program.graph
    with graph.inserting_before(node):
        scaled = graph.call_function(operator.floordiv, (graph.call_function(operator.mul, (size, new)), old))
    ctx.propagate = True  # symbolic sizes changed: metadata must be re-propagated
    return scaled


def rewrite_sizes(ctx, node, pos: int = 1, name: str = "size") -> None:
    """Replace every literal size of a pruned axis by the output's new size."""
    sizes = list(node.args[pos])
    new = _new_sizes(ctx, node, sizes, len(ctx.shape(node)) - len(sizes))
    if new != sizes:
        ctx.set_arg(node, pos, name, new)


def rewrite_unflatten(ctx, node) -> None:
    dim = node.args[1] % len(ctx.shape(node.args[0]))
    sizes = list(node.args[2])
    new = _new_sizes(ctx, node, sizes, dim)
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


@register(aten.expand, aten.broadcast_to, rewrite=rewrite_sizes)
def couple_expand(ctx, node) -> None:
    x = node.args[0]
    xs, ys = ctx.shape(x), ctx.shape(node)
    offset = len(ys) - len(xs)
    for ax, size in enumerate(xs):
        if size == 1 and ys[ax + offset] != 1:
            ctx.cover(x, ax)
        else:
            ctx.tie(x, ax, node, ax + offset)


@register(aten.expand_as)
def couple_expand_as(ctx, node) -> None:
    """``x.expand_as(other)``: ``x`` broadcasts as in ``expand``; ``other`` gives only its
    sizes, so each of its axes is tied to the output's (they change together)."""
    other = node.args[1]
    couple_expand(ctx, node)
    for ax in range(len(ctx.shape(other) or ())):
        ctx.tie(other, ax, node, ax)


@register(aten.reshape_as, aten.view_as)
def couple_reshape_as(ctx, node) -> None:
    """``x.reshape_as(other)``: a reshape of ``x``; ``other`` gives only its sizes."""
    other = node.args[1]
    _couple_reshape(ctx, node.args[0], node)
    for ax in range(len(ctx.shape(other) or ())):
        ctx.tie(other, ax, node, ax)


@register(aten.pad, aten.constant_pad_nd, aten.reflection_pad1d, aten.reflection_pad2d,
          aten.replication_pad1d, aten.replication_pad2d, aten.reflection_pad3d,
          aten.replication_pad3d)
def couple_pad(ctx, node) -> None:
    """``pad(x, [l_last, r_last, l_prev, r_prev, ...])``: padded axes change size and are
    kept; every axis with zero padding on both sides is identity (TF "same" padding before a
    depthwise conv pads only the spatial axes)."""
    x, pads = node.args[0], node.args[1]
    rank = len(ctx.shape(x))
    padded = set()
    for i in range(0, len(pads), 2):
        if not all(isinstance(p, int) and p == 0 for p in pads[i:i + 2]):
            padded.add(rank - 1 - i // 2)
    for ax in range(rank):
        if ax not in padded:
            ctx.tie(x, ax, node, ax)


@register(aten.index)
def couple_index(ctx, node) -> None:
    """``x[..., idx, ...]`` with one index tensor at axis ``k``: ``out`` is
    ``x.shape[:k] + idx.shape + x.shape[k+1:]``; the other axes of ``x`` pass through, the
    gathered axis ``k`` is kept (a table of relative position biases keeps its rows and
    lets its head axis be pruned)."""
    x, indices = node.args[0], node.args[1]
    tensors = [i for i, t in enumerate(indices) if t is not None]
    if len(tensors) != 1 or ctx.shape(indices[tensors[0]]) is None:
        return
    k, idx = tensors[0], indices[tensors[0]]
    n = len(ctx.shape(idx))
    for ax in range(len(ctx.shape(x))):
        if ax != k:
            ctx.tie(x, ax, node, ax if ax < k else ax + n - 1)
    for ax in range(n):
        ctx.tie(idx, ax, node, k + ax)


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


@register(aten.numpy_T)
def couple_numpy_t(ctx, node) -> None:
    """``x.T``: every axis reversed (Falcon's ``input @ weight.T``)."""
    x = node.args[0]
    rank = len(ctx.shape(x))
    for ax in range(rank):
        ctx.tie(x, ax, node, rank - 1 - ax)


@register(aten.mT, aten.mH, aten.adjoint)
def couple_matrix_t(ctx, node) -> None:
    """``x.mT``: the last two axes swapped."""
    x = node.args[0]
    rank = len(ctx.shape(x))
    for ax in range(rank):
        ctx.tie(x, ax, node, {rank - 1: rank - 2, rank - 2: rank - 1}.get(ax, ax))


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


@register(aten.stack)
def couple_stack(ctx, node) -> None:
    """``stack(tensors, dim)``: the new axis ``dim`` (one index per tensor) is kept; every
    axis of every tensor is identity with the output's axis after it is inserted."""
    tensors = [t for t in node.args[0] if ctx.shape(t) is not None]
    rank = len(ctx.shape(node))
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % rank
    for t in tensors:
        for ax in range(len(ctx.shape(t))):
            ctx.tie(t, ax, node, ax + (ax >= dim))


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
