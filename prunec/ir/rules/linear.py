"""Linear maps: ``linear``, ``addmm``, ``mm``/``bmm``/``matmul`` and ``embedding``.

``linear(x, W[out, in], b[out])``: ``x[..., in] == W[:, in]``, ``y[..., out] == W[out] == b``,
leading axes of ``x`` and ``y`` identical. ``matmul(a[..., n, k], b[..., k, m])``: the
contracted ``k`` axes are tied (removing index k from both removes one term of the sum),
``n`` and ``m`` go to the output, batch axes broadcast. ``embedding(W[V, C], idx)``: the
output's last axis is ``W``'s axis 1; the vocabulary axis is kept.
"""
from __future__ import annotations

import torch

from prunec.ir.rules.registry import register

aten = torch.ops.aten


@register(aten.linear)
def couple_linear(ctx, node) -> None:
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    xs, ys = ctx.shape(x), ctx.shape(node)
    last = len(ys) - 1
    ctx.tie(x, len(xs) - 1, w, 1)
    ctx.tie(node, last, w, 0)
    if b is not None:
        ctx.tie(b, 0, w, 0)
    for ax in range(last):
        ctx.tie(x, ax, node, ax)


@register(aten.addmm)
def couple_addmm(ctx, node) -> None:
    bias, a, b = node.args[:3]
    ctx.tie(a, 1, b, 0)
    ctx.tie(node, 0, a, 0)
    ctx.tie(node, 1, b, 1)
    bs = ctx.shape(bias)
    if bs is not None:
        for ax in range(len(bs)):
            if bs[ax] not in (None, 1):
                ctx.tie(bias, ax, node, ax + 2 - len(bs))
            else:
                ctx.cover(bias, ax)


@register(aten.mm, aten.bmm, aten.matmul)
def couple_matmul(ctx, node) -> None:
    a, b = node.args[:2]
    sa, sb, so = ctx.shape(a), ctx.shape(b), ctx.shape(node)
    if len(sa) < 2 or len(sb) < 2:  # vector products: keep it simple and conservative
        return
    ctx.tie(a, len(sa) - 1, b, len(sb) - 2)
    ctx.tie(node, len(so) - 2, a, len(sa) - 2)
    ctx.tie(node, len(so) - 1, b, len(sb) - 1)
    for x, sx in ((a, sa), (b, sb)):
        offset = len(so) - len(sx)
        for ax in range(len(sx) - 2):
            if sx[ax] == 1 and so[ax + offset] != 1:
                ctx.cover(x, ax)
            else:
                ctx.tie(x, ax, node, ax + offset)


@register(aten.embedding)
def couple_embedding(ctx, node) -> None:
    w, idx = node.args[:2]
    so, si = ctx.shape(node), ctx.shape(idx)
    ctx.tie(node, len(so) - 1, w, 1)
    for ax in range(len(si)):
        ctx.tie(idx, ax, node, ax)
