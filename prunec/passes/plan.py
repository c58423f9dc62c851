"""Pruning plans and the one place that rewrites parameters and shape constants.

A :class:`PruningPlan` is plain data (DESIGN.md contract 4): for each channel group, by its
stable key, the units to keep; plus compensations. It prints, saves to JSON and replays on a
fresh capture of the same model.

:func:`apply_plan` then

1. folds compensations into consumers' biases from the *original* weights: for a value whose
   pruned channels ``P`` are replaced by constants ``mu`` and a linear consumer
   ``y = W x + b``, ``b' = b + W[:, P] @ mu[P]``; for a convolution
   ``b'_o = b_o + sum_{i in P} mu_i * sum_k W[o, i, k]`` (exact for 1x1 kernels and unpadded
   convolutions; at zero-padded borders the padded taps contributed 0, not ``mu``, so the fold is
   approximate there -- see docs/compensation.md);
2. slices every coupled parameter and buffer with ``index_select`` on the kept indices;
3. recomputes shape constants with the op rules' ``rewrite`` (view sizes, split sizes, group
   counts, normalised shapes, slice bounds);
4. refreshes the graph's fake-tensor metadata from the sizes the analysis computed (tests
   re-propagate fake tensors through every op and check they agree).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx

from prunec.errors import PlanError
from prunec.ir.channels import ChannelAnalysis, analyze_channels, static_shape
from prunec.ir.program import Program
from prunec.ir.rules import rule_for

__all__ = ["PruningPlan", "MeanCompensation", "apply_plan", "estimate_macs"]

aten = torch.ops.aten


@dataclass
class MeanCompensation:
    """Replace the pruned channels of ``value`` (along ``axis``) by the constants ``mean``."""

    value: str
    axis: int
    mean: torch.Tensor  # one entry per channel of the original axis


@dataclass
class PruningPlan:
    """Kept units per group key, plus compensations. Plain data: print, save, replay."""

    keep: dict[str, list[int]] = field(default_factory=dict)
    compensations: list[MeanCompensation] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.keep)

    def summary(self, analysis: ChannelAnalysis) -> str:
        groups = analysis.by_key()
        return "\n".join(f"{k}: keep {len(v)}/{groups[k].size}" for k, v in self.keep.items())

    def to_json(self) -> str:
        comps = [{"value": c.value, "axis": c.axis, "mean": c.mean.double().tolist()}
                 for c in self.compensations]
        return json.dumps({"keep": self.keep, "compensations": comps})

    @classmethod
    def from_json(cls, text: str) -> "PruningPlan":
        data = json.loads(text)
        comps = [MeanCompensation(c["value"], c["axis"], torch.tensor(c["mean"], dtype=torch.float64))
                 for c in data.get("compensations", [])]
        return cls({k: list(v) for k, v in data["keep"].items()}, comps)


class RewriteContext:
    """What op rewrites see: old and new sizes and kept indices of every axis."""

    def __init__(self, program: Program, analysis: ChannelAnalysis, elem_keep: np.ndarray):
        self.program, self.analysis, self.elem_keep = program, analysis, elem_keep

    def _mask(self, node, ax: int):
        key = (node if isinstance(node, str) else node.name, ax)
        if key not in self.analysis.offsets:
            return None
        start = self.analysis.offsets[key]
        return self.elem_keep[start:start + self.analysis.shapes[key[0]][ax]]

    def changed(self, node, ax: int) -> bool:
        mask = self._mask(node, ax)
        return mask is not None and not mask.all()

    def kept(self, node, ax: int) -> torch.Tensor:
        mask = self._mask(node, ax)
        return torch.from_numpy(np.nonzero(mask)[0])

    def shape(self, node) -> tuple | None:
        return static_shape(node)

    def old_size(self, node, ax: int) -> int:
        return static_shape(node)[ax]

    def new_size(self, node, ax: int) -> int:
        mask = self._mask(node, ax)
        return static_shape(node)[ax] if mask is None else int(mask.sum())

    def set_arg(self, node: fx.Node, pos: int, name: str, value) -> None:
        if len(node.args) > pos:
            args = list(node.args)
            args[pos] = value
            self.program.set_args(node, tuple(args))
        else:
            self.program.set_args(node, node.args, {**node.kwargs, name: value})

    def set_args(self, node: fx.Node, args: tuple) -> None:
        self.program.set_args(node, args)

    def replace_target(self, node: fx.Node, target, args: tuple) -> None:
        node.target = target
        self.program.set_args(node, args, {})


def apply_plan(program: Program, plan: PruningPlan) -> Program:
    """Rewrite ``program`` in place so that only the planned units remain; returns it."""
    analysis = analyze_channels(program)
    elem_keep = _element_keep(analysis, plan)
    if elem_keep.all():
        return program
    expected = {key: int(elem_keep[off:off + analysis.shapes[key[0]][key[1]]].sum())
                for key, off in analysis.offsets.items()}
    ctx = RewriteContext(program, analysis, elem_keep)
    for comp in plan.compensations:
        _fold_mean(ctx, comp)
    _slice_tensors(ctx)
    for node in list(program.graph.nodes):
        rule = rule_for(node) if node.op == "call_function" else None
        if rule is not None and rule.rewrite is not None:
            rule.rewrite(ctx, node)
    program.finalize(sizes=expected)
    return program


def estimate_macs(program: Program, plan: PruningPlan) -> int:
    """MACs ``program`` would have after ``plan``, without rewriting anything.

    Every counted op is re-costed with its axes shrunk to their kept sizes (what a threshold
    search over hypothetical plans needs, e.g. OCSPruner's MACs-targeted selection).
    """
    from prunec.ir.cost import concrete_shapes, node_macs

    analysis = analyze_channels(program)
    keep = _element_keep(analysis, plan)
    shapes = concrete_shapes(program)
    offsets = analysis.offsets

    def shape_of(arg):
        shape = shapes.get(arg) if isinstance(arg, fx.Node) else None
        if shape is None:
            return None
        return tuple(int(keep[offsets[(arg.name, ax)]:offsets[(arg.name, ax)] + n].sum())
                     if (arg.name, ax) in offsets else n for ax, n in enumerate(shape))

    return sum(node_macs(node, shape_of) for node in program.graph.nodes if node.op == "call_function")


def _element_keep(analysis: ChannelAnalysis, plan: PruningPlan) -> np.ndarray:
    groups = analysis.by_key()
    comp_keep = np.ones(int(analysis.component.max()) + 1, dtype=bool)
    for key, units in plan.keep.items():
        group = groups.get(key)
        if group is None:
            raise PlanError(f"plan names group '{key}', which this program does not have; "
                            f"plans replay only on a capture of the same model.")
        if not group.prunable:
            raise PlanError(f"group '{key}' is not prunable: {group.reason}.")
        units = sorted(set(int(u) for u in units))
        if not units or units[0] < 0 or units[-1] >= group.size:
            raise PlanError(f"group '{key}': kept units must be a non-empty subset of 0..{group.size - 1}.")
        slot = group.slots[0]
        start = analysis.offsets[(slot.node, slot.axis)]
        owner = group.unit_index[slot]
        dropped = np.setdiff1d(np.arange(group.size), units)
        comps = analysis.component[start:start + slot.size][np.isin(owner, dropped)]
        comp_keep[comps] = False
    return comp_keep[analysis.component]


def _slice_tensors(ctx: RewriteContext) -> None:
    done = set()
    for node in ctx.program.graph.nodes:
        if node.op != "get_attr" or node.target in done:
            continue
        shape = static_shape(node)
        if shape is None:
            continue
        done.add(node.target)
        tensor = ctx.program.get_tensor(node.target).detach()
        changed = False
        for ax in range(len(shape)):
            if ctx.changed(node, ax):
                tensor = tensor.index_select(ax, ctx.kept(node, ax))
                changed = True
        if changed:
            ctx.program.set_tensor(node.target, tensor)


# ----------------------------------------------------------------------------- compensation
def _fold_mean(ctx: RewriteContext, comp: MeanCompensation) -> None:
    node = next((n for n in ctx.program.graph.nodes if n.name == comp.value), None)
    if node is None:
        raise PlanError(f"compensation names value '{comp.value}', which is not in the graph.")
    if not ctx.changed(node, comp.axis):
        return
    mask = ctx._mask(node, comp.axis)
    pruned = torch.from_numpy(np.nonzero(~mask)[0])
    mu = comp.mean.to(torch.float64)[pruned]
    for user in list(node.users):
        _fold_into(ctx, user, node, pruned, mu)


def _fold_into(ctx: RewriteContext, user: fx.Node, value: fx.Node, pruned, mu) -> None:
    packet = getattr(user.target, "overloadpacket", None)
    if packet is aten.linear and user.args[0] is value:
        w = ctx.program.get_tensor(user.args[1].target).detach().double()
        delta = w[:, pruned] @ mu
    elif packet in (aten.conv1d, aten.conv2d, aten.conv3d) and user.args[0] is value \
            and _groups(user) == 1:
        w = ctx.program.get_tensor(user.args[1].target).detach().double()
        delta = torch.einsum("oi...,i->o", w[:, pruned], mu)
    else:
        raise PlanError(
            f"cannot fold the means of '{value.name}' into its consumer '{user.name}' "
            f"({user.target}): only linear and ungrouped convolution consumers take a bias fold. "
            f"Use compensate=False or target groups whose consumers are linear.")
    _add_to_bias(ctx, user, delta)


def _groups(node: fx.Node) -> int:
    return int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))


def _add_to_bias(ctx: RewriteContext, user: fx.Node, delta: torch.Tensor) -> None:
    bias = user.args[2] if len(user.args) > 2 else user.kwargs.get("bias")
    program = ctx.program
    if bias is not None:
        old = program.get_tensor(bias.target)
        program.set_tensor(bias.target, (old.detach().double() + delta).to(old.dtype))
        return
    weight = user.args[1]
    out_ax = 1 if user.target.overloadpacket is not aten.linear else len(static_shape(user)) - 1
    if ctx.changed(user, out_ax):  # a new bias is not in the analysis: slice it here
        delta = delta[ctx.kept(user, out_ax)]
    prefix = weight.target.rpartition(".")[0]
    target = f"{prefix}.prunec_bias" if prefix else "prunec_bias"
    program.add_tensor(target, delta.to(program.get_tensor(weight.target).dtype))
    with program.graph.inserting_before(user):
        attr = program.graph.get_attr(target)
    attr.meta["val"] = weight.meta["val"].new_empty(delta.shape)  # sliced later like any bias
    args = list(user.args) + [None] * (3 - len(user.args))
    args[2] = attr
    program.set_args(user, tuple(args))
