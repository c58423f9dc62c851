"""PEEAO's neuron candidate: inner filters of residual blocks, scored by the KL divergence of
the softmax outputs when a filter is zeroed, removed in one global sort.

**Which units.** The hidden channel groups (:meth:`ChannelGroup.is_mlp`: crossing no residual
add, not attention heads) whose nodes lie inside a residual block's branch
(:mod:`prunec.ir.blocks`): the filters of the first convolution of a basic block (with its
batch-norm channel), the inner convolutions of a bottleneck, the hidden neurons of a
transformer MLP. A unit's value ``h`` is read where it enters the next layer (after the
activation, as :func:`prunec.passes.prune_variance.measured_values` finds it), so zeroing the
filter and its batch-norm channel is ``h_i -> 0``.

**Score.** PEEAO zeroes each filter in turn and measures ``KL(q || p)`` between the softmax
outputs ``q`` of the zeroed network and ``p`` of the network, one forward pass over the
calibration data per filter: about a thousand passes per iteration for a ResNet-56. We use
its second-order expansion instead, which needs one forward and ``K`` backward passes (``K``
classes). With logits ``z`` and ``delta z`` the change caused by ``h_i -> 0``,

    KL(q || p) = 1/2 delta_z^T (diag(p) - p p^T) delta_z + O(|delta_z|^3)
               = 1/2 sum_y p_y (delta log p_y)^2 + O(.),
    delta log p_y ~= grad_h log p_y . delta_h = - sum_positions g_y[i] * h[i],

so per sample ``KL_i ~= 1/2 sum_y p_y (sum_pos g_y[i] h[i])^2`` with ``g_y = d log p_y / d h``:
the Fisher-information estimate of the divergence (Theis et al. 2018 use its empirical form
for pruning), exact in the limit of small ``h_i`` and ranking-faithful when zeroing one of many
filters moves the output little. It is averaged over samples (rows of the logits). Beyond
:data:`EXACT_CLASSES` classes, one ``y ~ p`` per row is drawn instead of the sum over ``y``
(an unbiased Monte-Carlo estimate of the same quantity).

**Selection** (as the code): all candidate units in one list sorted by score, the lowest
``count`` removed, every group keeping at least one unit.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F

from prunec.errors import CalibrationError
from prunec.ir.blocks import analyze_blocks
from prunec.ir.channels import ChannelGroup, analyze_channels
from prunec.ir.interpret import ProgramInterpreter, run_with_overrides
from prunec.ir.program import Program
from prunec.passes.prune_variance import MeasuredValue, measured_values
from prunec.rewrite.plan import PruningPlan
from prunec.rewrite.reference import zeroer
from prunec.train.finetune import logits_of

__all__ = ["inner_groups", "neuron_kl_scores", "neuron_kl_exact", "select_units", "EXACT_CLASSES"]

EXACT_CLASSES = 32


def inner_groups(program: Program) -> dict[str, tuple[ChannelGroup, list[MeasuredValue]]]:
    """Prunable hidden groups inside residual branches, with the values that carry them."""
    inside = {n for b in analyze_blocks(program) for n in b.nodes}
    found = {}
    for group in analyze_channels(program).prunable():
        if not group.is_mlp() or not all(s.node in inside for s in group.slots):
            continue
        values = measured_values(program, group)
        if values:
            found[group.key] = (group, values)
    return found


def neuron_kl_scores(program: Program, groups: dict, calibration: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Second-order estimate of ``KL(q || p)`` for zeroing each unit (float64, per group)."""

    names = {mv.node: mv for _, values in groups.values() for mv in values}
    per_node = {name: None for name in names}
    rows = 0
    for item in calibration:
        seen: dict[str, torch.Tensor] = {}
        interp = ProgramInterpreter(program, observers={n: _keeper(seen, n) for n in names})
        with torch.enable_grad():
            log_p = F.log_softmax(logits_of(interp.call_item(item)).double(), dim=-1)
            log_p = log_p.reshape(-1, log_p.shape[-1])
            contrib = _fisher_terms(log_p, [seen[n] for n in names], [names[n].axis for n in names])
        for name, term in zip(names, contrib):
            per_node[name] = term if per_node[name] is None else per_node[name] + term
        rows += log_p.shape[0]
    if rows == 0:
        raise CalibrationError("the calibration data for the neuron scores is empty.")
    return {key: _unit_totals(group, values, per_node, rows) for key, (group, values) in groups.items()}


def neuron_kl_exact(program: Program, groups: dict, calibration: Iterable[Any]) -> dict[str, torch.Tensor]:
    """``KL(q || p)`` for zeroing each unit, measured: one forward per unit per calibration item
    with the unit's channels zeroed where they enter the next layer (the authors' procedure;
    per-row KL averaged over rows, float64). Slower than :func:`neuron_kl_scores` by about
    the number of units over the number of classes."""

    items = list(calibration)
    with torch.no_grad():
        refs = []
        for item in items:
            z = logits_of(run_with_overrides(program, item, {})).double()
            refs.append(F.log_softmax(z.reshape(-1, z.shape[-1]), -1))
    rows = sum(r.shape[0] for r in refs)
    if rows == 0:
        raise CalibrationError("the calibration data for the neuron scores is empty.")
    out = {}
    for key, (group, values) in groups.items():
        scores = torch.zeros(group.size, dtype=torch.float64)
        for unit in range(group.size):
            overrides = {mv.node: zeroer([(mv.axis, group.indices(mv.slot, [unit]))]) for mv in values}
            with torch.no_grad():
                for item, ref in zip(items, refs):
                    z = logits_of(run_with_overrides(program, item, overrides)).double()
                    log_q = F.log_softmax(z.reshape(-1, z.shape[-1]), -1)
                    scores[unit] += (log_q.exp() * (log_q - ref)).sum()
        out[key] = scores / rows
    return out


def _keeper(seen: dict, name: str):
    def keep(value: torch.Tensor) -> None:
        seen[name] = value
    return keep


def _fisher_terms(log_p: torch.Tensor, values: list[torch.Tensor], axes: list[int]) -> list[torch.Tensor]:
    """Per value, ``sum over rows of 1/2 sum_y p_y s_y^2`` per channel, ``s_y = sum_pos g_y h``."""
    p = log_p.exp().detach()
    classes = log_p.shape[-1]
    totals = [torch.zeros(v.shape[a], dtype=torch.float64) for v, a in zip(values, axes)]
    if classes <= EXACT_CLASSES:
        picks = [(y, p[:, y]) for y in range(classes)]
    else:  # one y ~ p per row: E_y[s_y^2] estimated without bias
        draw = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
        picks = [(draw, torch.ones_like(p[:, 0]))]
    for y, weight in picks:
        target = log_p[:, y].sum() if isinstance(y, int) else log_p.gather(1, y[:, None]).sum()
        grads = torch.autograd.grad(target, values, retain_graph=True, allow_unused=True)
        for i, (v, g, a) in enumerate(zip(values, grads, axes)):
            if g is None:
                continue
            s = _per_sample_channel(g.double() * v.detach().double(), a, weight.shape[0])
            totals[i] += 0.5 * (weight[:, None] * s.pow(2)).sum(0)
    return totals


def _per_sample_channel(x: torch.Tensor, axis: int, rows: int) -> torch.Tensor:
    """Sum over positions: ``[rows, C]`` when the leading axes are the rows, else ``[1, C]``."""
    x = x.movedim(axis, -1)
    if x.shape[0] == rows:
        return x.reshape(rows, -1, x.shape[-1]).sum(1)
    if x.dim() > 1 and x.shape[0] * x.shape[1] == rows:  # token logits [B, N, V]
        return x.reshape(rows, -1, x.shape[-1]).sum(1)
    return x.reshape(-1, x.shape[-1]).sum(0, keepdim=True)


def _unit_totals(group: ChannelGroup, values: list[MeasuredValue], per_node: dict,
                 rows: int) -> torch.Tensor:
    total = torch.zeros(group.size, dtype=torch.float64)
    for mv in values:
        owner = torch.from_numpy(group.unit_index[mv.slot])
        hit = owner >= 0
        total.index_add_(0, owner[hit], per_node[mv.node][hit])
    return total / rows


def select_units(groups: dict, scores: dict[str, torch.Tensor], count: int) -> PruningPlan:
    """Remove the ``count`` lowest-scoring units in one sort; every group keeps one unit."""
    flat, owner, index = [], [], []
    for key, (group, _) in groups.items():
        s = scores[key].clone()
        s[torch.argmax(s)] = float("inf")  # a group's best unit is never a candidate
        flat.append(s)
        owner += [key] * group.size
        index.append(torch.arange(group.size))
    if not flat:
        return PruningPlan()
    order = torch.argsort(torch.cat(flat), stable=True)
    index_all = torch.cat(index)
    removed: dict[str, set] = {}
    finite = torch.isfinite(torch.cat(flat))
    for pos in order[:count].tolist():
        if finite[pos]:
            removed.setdefault(owner[pos], set()).add(int(index_all[pos]))
    keep = {key: [u for u in range(groups[key][0].size) if u not in gone]
            for key, gone in removed.items()}
    return PruningPlan(keep)
