"""Elementwise ops and activations: broadcasting identity.

Output axis ``p`` is tied to the aligned axis of every tensor operand of the same size
(operands align from the right, numpy-style). A broadcast operand (size 1 on that axis) is
not tied, which is what lets a squeeze-excitation gate ``x * s[:, :, None, None]`` or an
RMS-norm scale ``x * rsqrt(var)`` share ``x``'s channels. An add/sub of two activations is
tagged ``residual``; a product of two activations ``gate`` (SwiGLU, SE).
"""
from __future__ import annotations

import operator

import torch

from prunec.ir.rules.registry import register

aten = torch.ops.aten

UNARY = [
    aten.relu, aten.relu_, aten.gelu, aten.silu, aten.silu_, aten.sigmoid, aten.tanh, aten.hardtanh,
    aten.hardtanh_, aten.hardswish, aten.hardsigmoid, aten.leaky_relu, aten.elu, aten.mish,
    aten.softplus, aten.exp, aten.log, aten.sqrt, aten.rsqrt, aten.neg, aten.abs, aten.erf,
    aten.pow, aten.square, aten.reciprocal, aten.sin, aten.cos, aten.clamp, aten.clamp_min,
    aten.clamp_max, aten.dropout, aten.native_dropout, aten.feature_dropout, aten.alpha_dropout,
    aten.dropout_, aten.clone, aten.contiguous, aten.detach, aten.alias, aten.to, aten._to_copy, aten.type_as,
    aten.relu6, aten.log_sigmoid, aten.sign, aten.floor, aten.ceil, aten.round, aten.lift_fresh_copy,
    aten.logical_not, aten.bitwise_not, aten.isnan, aten.nan_to_num, aten.masked_fill,
]
BINARY = [
    aten.add, aten.add_, aten.sub, aten.sub_, aten.rsub, aten.mul, aten.mul_, aten.div, aten.div_,
    aten.maximum, aten.minimum, aten.where, aten.eq, aten.ne, aten.lt, aten.le, aten.gt, aten.ge,
    aten.bitwise_and, aten.bitwise_or, aten.logical_and, aten.logical_or, aten.floor_divide,
    aten.remainder, aten.addcmul, aten.lerp, aten.fmod,
    operator.add, operator.sub, operator.mul, operator.truediv,
]
_RESIDUAL = {aten.add, aten.add_, aten.sub, aten.sub_, aten.rsub, operator.add, operator.sub}
_GATE = {aten.mul, aten.mul_, operator.mul}


def _operands(ctx, node):
    ops = []
    for a in list(node.args) + list(node.kwargs.values()):
        if ctx.shape(a) is not None:
            ops.append(a)
    return ops


@register(*UNARY, *BINARY)
def couple_elementwise(ctx, node) -> None:
    out_shape = ctx.shape(node)
    if out_shape is None:
        return
    operands = _operands(ctx, node)
    packet = getattr(node.target, "overloadpacket", node.target)
    full = 0
    for x in operands:
        shape = ctx.shape(x)
        offset = len(out_shape) - len(shape)
        for ax, size in enumerate(shape):
            if size is not None and size == out_shape[ax + offset] and size > 1:
                ctx.tie(x, ax, node, ax + offset)
            elif size == 1:
                ctx.cover(x, ax)
        full += _is_activation(x) and len(shape) == len(out_shape)
    if full >= 2:
        tag = "residual" if packet in _RESIDUAL else "gate" if packet in _GATE else None
        if tag == "residual" and _pointwise_of_one_value(operands):
            tag = None  # x + 0.044715 x^3 (gelu_new): one value's pointwise function
        if tag:
            for ax, size in enumerate(out_shape):
                if size is not None and size > 1:
                    ctx.tag(node, ax, tag)


_POINTWISE = frozenset(UNARY + BINARY)


def _elementwise_roots(x, limit: int = 16) -> set:
    """The nodes reached from ``x`` by walking back through elementwise ops only."""
    roots, stack, seen = set(), [x], 0
    while stack and seen < limit:
        node = stack.pop()
        seen += 1
        packet = getattr(node.target, "overloadpacket", node.target)
        if node.op == "call_function" and packet in _POINTWISE:
            stack.extend(a for a in node.all_input_nodes if a.op != "get_attr")
        else:
            roots.add(node)
    return roots | set(stack)


def _pointwise_of_one_value(operands) -> bool:
    """Whether the activation operands are elementwise functions of a common value: an add
    inside an activation (``gelu_new``'s ``x + 0.044715 x^3``), not a residual, whose branch
    holds a linear or convolution between the skip and the add."""
    acts = [x for x in operands if _is_activation(x)]
    if len(acts) < 2:
        return False
    first = _elementwise_roots(acts[0])
    return all(first & _elementwise_roots(x) for x in acts[1:])


def _is_activation(x) -> bool:
    return getattr(x, "op", None) not in (None, "get_attr")


@register(aten.new_ones, aten.new_zeros, aten.new_full, aten.new_empty)
def couple_new_tensor(ctx, node) -> None:
    """``x.new_ones(size)`` reads only ``x``'s dtype and device: ``x``'s axes are free; the
    output's axes come from constants and so are kept."""
    x = node.args[0]
    for ax in range(len(ctx.shape(x) or ())):
        ctx.cover(x, ax)
