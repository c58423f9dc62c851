"""``scaled_dot_product_attention``: whole heads are the unit.

``q[..., Hq, L, E]``, ``k[..., Hkv, S, E]``, ``v[..., Hkv, S, Ev]``, ``out[..., Hq, L, Ev]``.
Head axes are tied (query head ``h`` reads key/value head ``h // (Hq/Hkv)`` under grouped-query
attention, so a unit is one key/value head with the query heads that share it, and the
ratio ``Hq/Hkv`` survives pruning). The head dimensions ``E``/``Ev`` are left untied and so
kept: the default scale ``1/sqrt(E)`` depends on them. A mask broadcast over heads is tied
where it has a head axis.
"""
from __future__ import annotations

import torch

from prunec.ir.rules.registry import register

aten = torch.ops.aten


@register(aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention_for_cpu)
def couple_sdpa(ctx, node) -> None:
    q, k, v = node.args[:3]
    out = node if ctx.shape(node) is not None else _first_output(ctx, node)
    if out is None:
        return
    qs, ks = ctx.shape(q), ctx.shape(k)
    if len(qs) < 3:
        return
    h = len(qs) - 3
    for ax in range(h):  # batch axes
        for t in (k, v, out):
            ctx.tie(q, ax, t, ax)
    ctx.tie(k, h, v, h)
    hq, hkv = qs[h], ks[h]
    if hq is not None and hkv is not None and hkv > 0 and hq % hkv == 0:
        ctx.tie_blocks(q, h, k, h, hq // hkv)
        ctx.tie(out, h, q, h)
        ctx.tag(q, h, "attention")
    ctx.tie(q, h + 1, out, h + 1)
    ctx.tie(k, h + 1, v, h + 1)
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if ctx.shape(mask) is not None:
        _tie_mask(ctx, mask, q, k, h)


def _tie_mask(ctx, mask, q, k, h) -> None:
    ms = ctx.shape(mask)
    target = [(q, ax) for ax in range(h + 2)] + [(k, h + 1)]
    offset = len(target) - len(ms)
    for ax, size in enumerate(ms):
        t, tax = target[ax + offset]
        if size == 1 and ctx.shape(t)[tax] != 1:
            ctx.cover(mask, ax)
        else:
            ctx.tie(mask, ax, t, tax)


def _first_output(ctx, node):
    outs = ctx.outputs(node)
    return outs[0][1] if outs and outs[0][0] == 0 else None
