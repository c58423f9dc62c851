"""How much of a program's compute the channel analysis lets pruning reach.

A MAC-counting op (convolution, linear, matrix product, attention) is *prunable* when at
least one of its axes carries channels of a prunable group: pruning that group shrinks the
op. Its MACs then count as prunable. For the other ops, the reason is the one the analysis
gave for the group on the op's channel axis (a weight's output or input axis, else any axis).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch.fx as fx

from prunec.ir.channels import ChannelAnalysis, ChannelGroup, analyze_channels
from prunec.ir.cost import macs_by_node
from prunec.ir.program import Program

__all__ = ["Coverage", "mac_coverage", "general_reason"]


@dataclass
class Coverage:
    """MACs of a program and the share pruning can reach.

    Attributes:
        macs: Total MACs at the example inputs.
        prunable_macs: MACs of ops touching at least one prunable group.
        attention_groups: Head groups (``attention`` tag) found, and how many are prunable.
        blocked: ``{reason: MACs}`` for the ops no prunable group touches.
    """

    macs: int
    prunable_macs: int
    attention_groups: int = 0
    prunable_heads: int = 0
    blocked: dict = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.prunable_macs / self.macs if self.macs else 0.0


def general_reason(reason: str) -> str:
    """A reason without node names, so that the same cause in every layer adds up."""
    return re.sub(r" at node '[^']*'", "", reason)


def mac_coverage(program: Program) -> Coverage:
    analysis = analyze_channels(program)
    prunable = _prunable_elements(analysis)
    slot_group = {(s.node, s.axis): g for g in analysis.groups for s in g.slots}
    macs = macs_by_node(program)
    nodes = {n.name: n for n in program.graph.nodes}
    total = reached = 0
    blocked: dict[str, int] = {}
    for name, m in macs.items():
        if m <= 0:
            continue
        total += m
        node = nodes[name]
        if any(_touches(analysis, prunable, t.name, ax) for t, ax in _axes(node)):
            reached += m
            continue
        reason = _reason(node, slot_group)
        blocked[reason] = blocked.get(reason, 0) + m
    heads = [g for g in analysis.groups if "attention" in g.tags]
    return Coverage(total, reached, len(heads), sum(g.prunable for g in heads),
                    dict(sorted(blocked.items(), key=lambda kv: -kv[1])))


def _prunable_elements(analysis: ChannelAnalysis) -> np.ndarray:
    mask = np.zeros(len(analysis.component), dtype=bool)
    for g in analysis.prunable():
        for s in g.slots:
            start = analysis.offsets[(s.node, s.axis)]
            mask[start:start + s.size] |= g.unit_index[s] >= 0
    return mask


def _axes(node: fx.Node):
    """(tensor node, axis) for every static axis of the op's tensor inputs and output."""
    found: list[fx.Node] = [node]
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    for t in found:
        val = t.meta.get("val")
        for ax in range(getattr(val, "ndim", 0) or 0):
            yield t, ax


def _touches(analysis: ChannelAnalysis, prunable: np.ndarray, name: str, ax: int) -> bool:
    key = (name, ax)
    if key not in analysis.offsets:
        factor = analysis.factors.get(key)
        if factor is None:
            return False
        key = (factor, 0)
    start = analysis.offsets[key]
    return bool(prunable[start:start + analysis.shapes[key[0]][key[1]]].any())


def _reason(node: fx.Node, slot_group: dict) -> str:
    weight = node.args[1] if len(node.args) > 1 and isinstance(node.args[1], fx.Node) else None
    candidates: list[ChannelGroup] = []
    if weight is not None and weight.op == "get_attr":
        candidates += [slot_group.get((weight.name, ax)) for ax in (0, 1)]
    candidates += [slot_group.get((t.name, ax)) for t, ax in _axes(node)]
    for g in candidates:
        if g is not None and g.size > 1 and g.reason:
            return general_reason(g.reason)
    return "no channel axis (every axis is a batch, token or spatial axis, or a single unit)"
