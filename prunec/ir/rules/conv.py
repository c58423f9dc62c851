"""Convolutions: dense, grouped, depthwise and transposed.

``conv(x[B, Cin, *S], W[Cout, Cin/g, *K], b[Cout], groups=g)``:

* ``g == 1``: ``x[:, i] == W[:, i]`` and ``y[:, o] == W[o] == b[o]``.
* ``g > 1``: group ``j`` owns inputs ``j*Cin/g ... `` and outputs ``j*Cout/g ...``; channels
  inside a group are not independent, so the unit is a whole group, tied through a
  virtual axis of size ``g``. Depthwise (``Cin/g == 1``) is the same rule with one input
  channel per group: output ``o`` is input ``o // (Cout/Cin)``. The rewrite recomputes
  ``groups`` from the pruned input width.
* transposed: ``W[Cin, Cout/g, *K]``; only ``g == 1`` is coupled, otherwise blocked.

Spatial axes are never tied, so they stay at their size.
"""
from __future__ import annotations

import torch

from prunec.ir.rules.registry import register

aten = torch.ops.aten

# (index of the groups argument, is_transposed) per op.
_GROUPS_ARG = {aten.conv1d: (6, False), aten.conv2d: (6, False), aten.conv3d: (6, False),
               aten.convolution: (8, None), aten.conv_transpose1d: (6, True),
               aten.conv_transpose2d: (6, True), aten.conv_transpose3d: (6, True)}


def _packet(node):
    return getattr(node.target, "overloadpacket", node.target)


def conv_arg(node, pos: int, name: str, default):
    """Argument ``pos`` (keyword ``name``) of a conv node, or ``default``."""
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def conv_groups(node) -> int:
    """The ``groups`` argument of any conv overload."""
    pos, _ = _GROUPS_ARG[_packet(node)]
    return int(conv_arg(node, pos, "groups", 1))


def _transposed(node) -> bool:
    pos, transposed = _GROUPS_ARG[_packet(node)]
    if transposed is None:  # aten.convolution carries it as argument 6
        return bool(conv_arg(node, 6, "transposed", False))
    return transposed


def rewrite_conv(ctx, node) -> None:
    """Recompute ``groups`` after pruning: ``g' = Cin' / (Cin / g)``."""
    g = conv_groups(node)
    x = node.args[0]
    if g == 1 or not ctx.changed(x, 1):
        return
    per_group = ctx.old_size(x, 1) // g
    pos, _ = _GROUPS_ARG[_packet(node)]
    ctx.set_arg(node, pos, "groups", ctx.new_size(x, 1) // per_group)


@register(*_GROUPS_ARG, rewrite=rewrite_conv)
def couple_conv(ctx, node) -> None:
    x, w = node.args[0], node.args[1]
    b = conv_arg(node, 2, "bias", None)
    g, transposed = conv_groups(node), _transposed(node)
    cin, cout = ctx.shape(x)[1], ctx.shape(node)[1]
    out_ax, in_ax = (1, 0) if transposed else (0, 1)
    if b is not None:
        ctx.tie(b, 0, node, 1)
    if g == 1:
        ctx.tie(x, 1, w, in_ax)
        ctx.tie(node, 1, w, out_ax)
        _tie_batch(ctx, x, node)
        return
    if transposed or cin is None or cout is None:
        return  # everything untied is blocked
    groups = ctx.virtual(g)
    ctx.tie_blocks(x, 1, groups, 0, cin // g)
    ctx.tie_blocks(node, 1, groups, 0, cout // g)
    ctx.tie(node, 1, w, 0)
    _tie_batch(ctx, x, node)


def _tie_batch(ctx, x, y) -> None:
    if ctx.shape(x)[0] is not None:
        ctx.tie(x, 0, y, 0)
