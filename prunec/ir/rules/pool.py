"""Pooling and resampling: batch and channel axes pass through, spatial axes are pooled or
resized (``interpolate``: nearest, linear, bilinear, bicubic, trilinear).

``pool(x[B, C, *S]) -> y[B, C, *S']``: axes 0 and 1 are tied identity; spatial axes are left
untied (so kept at their size). Ops returning ``(values, indices)`` tie both outputs.
"""
from __future__ import annotations

import torch

from prunec.ir.rules.registry import register

aten = torch.ops.aten

POOLS = [aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.avg_pool1d, aten.avg_pool2d,
         aten.avg_pool3d, aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d,
         aten._adaptive_avg_pool2d, aten.max_pool2d_with_indices, aten.max_pool3d_with_indices,
         aten.adaptive_max_pool1d, aten.adaptive_max_pool2d]


@register(*POOLS)
def couple_pool(ctx, node) -> None:
    x = node.args[0]
    rank = len(ctx.shape(x))
    outs = [node] if ctx.shape(node) is not None else [o for _, o in ctx.outputs(node)]
    # Unbatched inputs are [C, *S]: the channel axis is then axis 0.
    spatial = {aten.max_pool1d: 1, aten.avg_pool1d: 1, aten.adaptive_avg_pool1d: 1,
               aten.adaptive_max_pool1d: 1}.get(node.target.overloadpacket)
    spatial = spatial or (3 if "3d" in str(node.target) else 2)
    for out in outs:
        for ax in range(rank - spatial):
            ctx.tie(x, ax, out, ax)


RESAMPLES = [aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d,
             aten.upsample_linear1d, aten.upsample_bilinear2d, aten.upsample_bicubic2d,
             aten.upsample_trilinear3d, aten._upsample_bilinear2d_aa, aten._upsample_bicubic2d_aa,
             aten._upsample_nearest_exact1d, aten._upsample_nearest_exact2d,
             aten._upsample_nearest_exact3d]


@register(*RESAMPLES)
def couple_resample(ctx, node) -> None:
    """``interpolate(x[B, C, *S]) -> y[B, C, *S']``: every output pixel mixes input pixels
    of one channel only, so the leading axes are identity."""
    x = node.args[0]
    rank = len(ctx.shape(x))
    name = str(node.target.overloadpacket)
    spatial = 1 if "1d" in name else 3 if "3d" in name else 2
    for ax in range(rank - spatial):
        ctx.tie(x, ax, node, ax)
