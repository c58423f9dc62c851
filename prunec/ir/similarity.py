"""Representation similarity: linear CKA and the features it compares.

Linear CKA (Kornblith et al., ICML 2019), the biased (not debiased) estimator PEEAO uses.
For features ``X: [N, p]`` and ``Y: [N, q]`` of the same ``N`` examples, with every column
centred (``X <- X - 1 mean(X)``):

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

(feature-space form, ``p x q`` products: what is computed when ``N`` is larger than the
feature widths). With Gram matrices ``K = X X^T`` and ``L = Y Y^T`` the same number is
``<K, L>_F / (||K||_F ||L||_F)`` (``N x N`` products: used when ``N`` is the smaller side).
It lies in ``[0, 1]``, equals 1 for ``Y = X``, and is invariant to orthogonal transforms and
isotropic scaling of either side (not to arbitrary invertible linear maps). Computed in
float64.

:func:`penultimate_features` gathers the input of the program's last linear layer (the
pooled features a classifier reads) over a dataset; under ``torchrun`` every rank gathers its
shard and all ranks receive the concatenation in rank order.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.fx as fx

from prunec.errors import CalibrationError, PrunecError
from prunec.ir.calibration import _collective_device
from prunec.ir.interpret import record_values
from prunec.ir.program import Program

__all__ = ["linear_cka", "penultimate_node", "penultimate_features", "gather_rows"]


def _centred(features: torch.Tensor, name: str) -> torch.Tensor:
    if features.dim() < 2:
        raise PrunecError(f"linear_cka: {name} must be [N, features], got shape {tuple(features.shape)}.")
    x = features.reshape(features.shape[0], -1).double()
    return x - x.mean(dim=0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of ``x: [N, p]`` and ``y: [N, q]`` (rows are the same examples).

    Extra trailing axes are flattened into features. Returns 0 when either side is constant.

    Raises:
        PrunecError: different numbers of rows, or fewer than 2 rows.
    """
    if x.shape[0] != y.shape[0]:
        raise PrunecError(f"linear_cka: x has {x.shape[0]} rows and y {y.shape[0]}; both must hold "
                          f"the features of the same examples.")
    if x.shape[0] < 2:
        raise PrunecError("linear_cka needs at least 2 examples.")
    x, y = _centred(x, "x"), _centred(y, "y")
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    if n >= max(p, q):
        cross = torch.linalg.matrix_norm(y.T @ x) ** 2
        norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    else:
        k, l = x @ x.T, y @ y.T
        cross = (k * l).sum()
        norm = torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l)
    return float(cross / norm) if norm > 0 else 0.0


def penultimate_node(program: Program) -> fx.Node:
    """The input of the last ``linear`` op in graph order (the classifier's features).

    Raises:
        PrunecError: when the program has no linear layer.
    """
    aten = torch.ops.aten
    last = None
    for node in program.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "overloadpacket", None) in (
                aten.linear, aten.addmm):
            last = node
    if last is None:
        raise PrunecError("penultimate_features: the program has no linear layer; pass node= "
                          "naming the value to compare.")
    return last.args[1] if last.target.overloadpacket is aten.addmm else last.args[0]


def penultimate_features(program: Program, data: Iterable[Any], *, node: str | None = None,
                         max_batches: int | None = None) -> torch.Tensor:
    """Features ``[N, d]`` at ``node`` (default :func:`penultimate_node`) over ``data``.

    Args:
        program: The program to run (eval mode).
        data: ``(inputs, target)`` pairs; inputs as for calibration (a tensor, a tuple of
            positional inputs or a dict of keyword inputs).
        node: Name of the node whose value to gather; rows are its leading axis.
        max_batches: Use at most this many items.

    Returns:
        float64 features on the CPU, gathered across ranks under ``torch.distributed``.

    Raises:
        CalibrationError: when ``data`` is empty.
    """
    name = node or penultimate_node(program).name
    rows = []
    for i, item in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise CalibrationError("penultimate_features: items must be (inputs, target) pairs "
                                   "(target may be None).")
        value = record_values(program, item[0], [name])[name]
        rows.append(value.detach().reshape(value.shape[0], -1).double().cpu())
    if not rows:
        raise CalibrationError("penultimate_features: the data is empty.")
    return gather_rows(torch.cat(rows))


def gather_rows(features: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``[N_r, d]`` rows in rank order (identity without torchrun)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return features

    device = _collective_device()
    count = torch.tensor([features.shape[0]], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    most = int(max(c.item() for c in counts))
    padded = torch.zeros(most, features.shape[1], dtype=features.dtype, device=device)
    padded[:features.shape[0]] = features.to(device)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(c.item())].cpu() for p, c in zip(parts, counts)])
