"""OCSPruner's sub-network selection: saliency, cost weighting, per-group cap, MACs-targeted
threshold, and the stability of successive selections (arXiv 2501.13439, as the authors'
code ghimiredhikura/OCSPruner computes them; ``METHODS.md`` section 3).

For channel group ``g`` with ``C_g`` units:

* **saliency** (the code's ``GroupNormV2Importance``, ``p = 2``):
  ``s_c = (1 / L_g) * ( sum_{conv/linear slices l} ||w_{l,c}||^2 / sqrt(n_{l,c})
  + sum_{batch norms} gamma_c^2 )``, where ``w_{l,c}`` is the slice unit ``c`` owns in a
  conv or linear weight (a producer row ``W[c]`` or a consumer column ``W[:, c]``),
  ``n_{l,c}`` its number of elements (the code's ``w.shape[1]`` after flattening: the fan-in
  of a row, ``C_out * k`` for a column), and ``L_g`` the number of such slices and batch-norm
  scales. Biases, batch-norm shifts and running statistics are not counted (as in the code).
* **cost weighting**: ``cost_g = (M - M_g) / (C_g - 1)`` where ``M`` are the program's MACs
  and ``M_g`` its MACs with all but one unit of ``g`` removed (:func:`estimate_macs`, no
  rewrite); ``pi = softmax(cost / M)`` over the groups; ``s_c <- s_c (1 - pi_g)``.
  *Departure from the code*: it divides by a fixed ``1e6``, which makes the weighting depend
  on the example batch and resolution (and saturates the softmax on large models); dividing
  by the model's own MACs makes it scale-free.
* **cap**: at most ``floor(C_g * limit * (1 - exp(-k C_g)))`` units of a group are candidates;
  the ``C_g - floor(...)`` best (weighted) units are protected.
* **threshold**: candidates are sorted by weighted saliency; the selection is the shortest
  prefix whose removal cuts the MACs by ``macs_reduction`` within ``tol`` (5e-4), found by
  binary search over the prefix length with :func:`estimate_macs` (prefix MACs are monotone);
  when unit granularity makes the tolerance unreachable, the prefix closest to the target.
* **stability**: ``J_t = mean_g |K_t,g ∩ K_{t-2},g| / |K_t,g ∪ K_{t-2},g|`` over the kept
  sets ``K``; the code records ``J = 0`` for the first two monitored epochs (no ``t - 2``);
  stable when the mean of the last three ``J`` is ``>= threshold`` (0.999).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from prunec.errors import PrunecError
from prunec.ir.channels import ChannelGroup, Slot
from prunec.ir.program import Program
from prunec.rewrite import PruningPlan
from prunec.rewrite.apply import estimate_macs

__all__ = [
    "slot_roles", "saliency", "group_costs", "cost_weights", "protected_count", "Selection",
    "select_by_macs", "jaccard", "selection_jaccard", "running_stability",
]

aten = torch.ops.aten
_CONVS = {aten.conv1d: False, aten.conv2d: False, aten.conv3d: False,
          aten.conv_transpose1d: True, aten.conv_transpose2d: True, aten.conv_transpose3d: True}
_BATCH_NORMS = {aten.batch_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
                aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit_functional,
                aten.cudnn_batch_norm}


def _packet(node: fx.Node):
    return getattr(node.target, "overloadpacket", node.target)


def _role_of_use(user: fx.Node, pos: int, axis: int) -> str | None:
    packet = _packet(user)
    if packet in _CONVS and pos == 1:
        out_axis = 1 if _CONVS[packet] else 0
        return "producer" if axis == out_axis else "consumer"
    if packet is aten.convolution and pos == 1:
        transposed = bool(user.args[6]) if len(user.args) > 6 else False
        return "producer" if axis == (1 if transposed else 0) else "consumer"
    if packet is aten.linear and pos == 1:
        return "producer" if axis == 0 else "consumer"
    if packet in _BATCH_NORMS and pos in (1, 2):
        return "norm_scale" if pos == 1 else "norm_shift"
    return None


def slot_roles(program: Program, group: ChannelGroup) -> dict[Slot, str]:
    """The role of each parameter slot of ``group``: ``producer`` (conv/linear output rows),
    ``consumer`` (input columns), ``norm_scale`` / ``norm_shift`` (batch norm gamma / beta).
    Slots with any other use (biases, running statistics, other ops) are left out; a tensor
    reached by several ``get_attr`` nodes appears once."""
    nodes = {n.name: n for n in program.graph.nodes if n.op == "get_attr"}
    roles, seen = {}, set()
    for slot in group.params:
        if (slot.param, slot.axis) in seen:
            continue
        for user in nodes[slot.node].users:
            pos = next((i for i, a in enumerate(user.args) if a is nodes[slot.node]), None)
            role = _role_of_use(user, pos, slot.axis) if pos is not None else None
            if role is not None:
                roles[slot] = role
                seen.add((slot.param, slot.axis))
                break
    return roles


def _per_unit(group: ChannelGroup, slot: Slot, per_index: torch.Tensor) -> torch.Tensor:
    owner = torch.from_numpy(group.unit_index[slot])
    hit = owner >= 0
    return torch.zeros(group.size, dtype=torch.float64).index_add_(0, owner[hit], per_index[hit])


@torch.no_grad()
def saliency(program: Program, group: ChannelGroup, roles: dict[Slot, str] | None = None) -> torch.Tensor:
    """OCSPruner's saliency of every unit of ``group`` (float64; see the module docstring)."""
    roles = slot_roles(program, group) if roles is None else roles
    total = torch.zeros(group.size, dtype=torch.float64)
    layers = 0
    for slot, role in roles.items():
        w = program.get_tensor(slot.param).detach().to("cpu", torch.float64)  # CUDA-trained too
        squares = w.pow(2).movedim(slot.axis, 0).reshape(w.shape[slot.axis], -1).sum(1)
        if role in ("producer", "consumer"):
            elements = (w.numel() // w.shape[slot.axis]) * slot.width  # per unit
            total += _per_unit(group, slot, squares) / math.sqrt(elements)
        elif role == "norm_scale":
            total += _per_unit(group, slot, squares)
        else:
            continue
        layers += 1
    return total / max(layers, 1)


def group_costs(program: Program, groups: list[ChannelGroup]) -> dict[str, float]:
    """MACs saved per unit when all but one unit of a group go: ``(M - M_g) / (C_g - 1)``."""
    macs = estimate_macs(program, PruningPlan())
    return {g.key: (macs - estimate_macs(program, PruningPlan({g.key: [0]}))) / max(g.size - 1, 1)
            for g in groups}


def cost_weights(costs: dict[str, float], total_macs: float) -> dict[str, float]:
    """``pi = softmax(cost / total_macs)`` over the groups (float64)."""
    keys = list(costs)
    z = torch.tensor([costs[k] / max(total_macs, 1.0) for k in keys], dtype=torch.float64)
    pi = torch.softmax(z, 0)
    return {k: float(p) for k, p in zip(keys, pi)}


def protected_count(size: int, limit: float = 0.75, k: float = 1.0) -> int:
    """Units of a group of ``size`` that are never candidates:
    ``size - floor(size * limit * (1 - exp(-k * size)))`` (at least one)."""
    return max(1, size - int(size * limit * (1.0 - math.exp(-k * size))))


@dataclass
class Selection:
    """A sub-network: the removed units per group key (groups with none removed omitted),
    the MACs after removing them, and the reduction reached."""

    removed: dict[str, list[int]]
    macs: int
    reduction: float

    def plan(self, sizes: dict[str, int]) -> PruningPlan:
        """The :class:`PruningPlan` that keeps every unit not removed."""
        return PruningPlan({k: sorted(set(range(sizes[k])) - set(v)) for k, v in self.removed.items()})

    def kept(self, sizes: dict[str, int]) -> dict[str, list[int]]:
        """Kept units of every group in ``sizes`` (all of them where none is removed)."""
        return {k: sorted(set(range(n)) - set(self.removed.get(k, ()))) for k, n in sizes.items()}


def select_by_macs(program: Program, groups: list[ChannelGroup], scores: dict[str, torch.Tensor],
                   macs_reduction: float, *, base_macs: int | None = None, limit: float = 0.75,
                   limit_k: float = 1.0, tol: float = 5e-4) -> Selection:
    """Remove the lowest-scored candidates until the MACs drop by ``macs_reduction``.

    Args:
        program: The program the selection is for (only read).
        groups: Candidate groups; ``scores[g.key]`` holds one (weighted) score per unit.
        macs_reduction: Fraction of ``base_macs`` to remove, in ``(0, 1)``.
        base_macs: MACs the reduction counts against (the program's own by default).
        limit, limit_k: The per-group cap (see :func:`protected_count`).
        tol: Stop as soon as the reduction is within ``tol`` of the target.

    Raises:
        PrunecError: when removing every candidate still misses the target.
    """
    base = estimate_macs(program, PruningPlan()) if base_macs is None else int(base_macs)
    flat, owner = _candidates(groups, scores, limit, limit_k)
    order = torch.argsort(flat, stable=True)
    sizes = {g.key: g.size for g in groups}
    probes: dict[int, Selection] = {}

    def probe(n: int) -> Selection:
        if n not in probes:
            removed: dict[str, list[int]] = {}
            for gi, unit in owner[order[:n]].tolist():
                removed.setdefault(groups[gi].key, []).append(unit)
            removed = {k: sorted(v) for k, v in removed.items()}
            macs = estimate_macs(program, Selection(removed, 0, 0.0).plan(sizes))
            probes[n] = Selection(removed, macs, 1.0 - macs / base)
        return probes[n]

    if probe(len(order)).reduction < macs_reduction - tol:
        raise PrunecError(
            f"OCSPruner: the groups can remove at most {probe(len(order)).reduction:.4f} of the "
            f"MACs under the per-group cap limit={limit}, below macs_reduction={macs_reduction}. "
            f"Lower macs_reduction or raise limit (the classifier and blocked groups are fixed).")
    lo, hi = 0, len(order)  # smallest n with reduction >= target - tol lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if probe(mid).reduction >= macs_reduction - tol:
            hi = mid
        else:
            lo = mid + 1
    best = probe(lo)
    if best.reduction > macs_reduction + tol and lo > 0:
        below = probe(lo - 1)
        if abs(below.reduction - macs_reduction) < abs(best.reduction - macs_reduction):
            best = below
    return best


def _candidates(groups, scores, limit, limit_k) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the unprotected units, and ``(group index, unit)`` of each."""
    flat, owner = [], []
    for gi, g in enumerate(groups):
        s = scores[g.key].double()
        if s.shape != (g.size,):
            raise PrunecError(f"OCSPruner: scores of group '{g.key}' have shape {tuple(s.shape)}, "
                              f"expected ({g.size},).")
        ranked = torch.argsort(s, descending=True, stable=True)
        free = ranked[protected_count(g.size, limit, limit_k):]
        flat.append(s[free])
        owner.append(torch.stack([torch.full_like(free, gi), free], 1))
    if not flat:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.long)
    return torch.cat(flat), torch.cat(owner)


def jaccard(a, b) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two index collections (1 for two empty ones)."""
    a, b = set(a), set(b)
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def selection_jaccard(kept_now: dict[str, list[int]], kept_before: dict[str, list[int]]) -> float:
    """Mean over the groups of the Jaccard index of their kept units."""
    if kept_now.keys() != kept_before.keys():
        raise PrunecError("OCSPruner: two selections over different groups cannot be compared.")
    if not kept_now:
        return 1.0
    return float(np.mean([jaccard(kept_now[k], kept_before[k]) for k in kept_now]))


def running_stability(values: list[float], window: int = 3) -> float:
    """Mean of the last ``window`` values (0 until there are ``window`` of them)."""
    return float(np.mean(values[-window:])) if len(values) >= window else 0.0
