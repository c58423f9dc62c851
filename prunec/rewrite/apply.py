"""``apply_plan``: the one place that rewrites parameters and shape constants.

Given a :class:`~prunec.rewrite.plan.PruningPlan`, :func:`apply_plan`

1. folds compensations into consumers from the *original* weights
   (:mod:`prunec.rewrite.compensation`: ``b' = b + W[:, P] @ mu[P]``, exact at the borders of
   zero-padded convolutions too);
2. slices every coupled parameter and buffer with ``index_select`` on the kept indices;
3. recomputes shape constants with the op rules' ``rewrite`` (view sizes, split sizes, group
   counts, normalised shapes, slice bounds);
4. refreshes the graph's fake-tensor metadata from the sizes the analysis computed (tests
   re-propagate fake tensors through every op and check they agree).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from prunec.errors import PlanError
from prunec.ir.channels import analyze_channels, ChannelAnalysis, static_shape
from prunec.ir.cost import concrete_shapes, node_macs
from prunec.ir.program import Program, Step
from prunec.ir.rules import rule_for
from prunec.rewrite.compensation import convert_value_compensation, fold_mean
from prunec.rewrite.drop import drop_blocks
from prunec.rewrite.fold import fold_constants
from prunec.rewrite.plan import MeanCompensation, PruningPlan, ValueCompensation

__all__ = ["PruningPlan", "MeanCompensation", "apply_plan", "convert_plan", "estimate_macs",
           "RewriteContext", "Slices", "element_keep"]

aten = torch.ops.aten


class RewriteContext:
    """What op rewrites see: old and new sizes and kept indices of every axis."""

    def __init__(self, program: Program, analysis: ChannelAnalysis, elem_keep: np.ndarray):
        self.program, self.analysis, self.elem_keep = program, analysis, elem_keep
        self.propagate = False  # set by rewrites that change symbolic sizes (head factors)

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


class Slices(dict):
    """What :func:`apply_plan` sliced: ``{tensor name: {axis: kept indices}}``.

    Names are the fully qualified names of parameters and buffers (``layer1.0.conv1.weight``).
    ``replaced[name] = (old, new)`` holds the tensor objects before and after, so that an
    optimizer's parameters and state can follow (:func:`prunec.train.slice_optimizer_state`).
    Tensors absent from the map were not touched and keep their identity.
    """

    def __init__(self) -> None:
        super().__init__()
        self.replaced: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def apply_plan(program: Program, plan: PruningPlan, *, config: dict | None = None,
               stats=None) -> Slices:
    """Rewrite ``program`` in place so that only the planned units remain.

    A plan that changes the program is recorded as one :class:`~prunec.ir.program.Step` of
    ``program.lineage`` (what replay, saving, idempotence and the report read), with the
    size of every group it names before the step (``step.before``: what
    ``program.origin`` is derived from); a plan that changes nothing is not recorded here
    (a pass that kept everything records its own no-op step). A plan whose compensations
    are keyed the old way (graph values) is converted first (see :func:`convert_plan`) and
    recorded converted. A plan made by a pass learns the pass's config
    (``plan.source``), so its JSON says which pass made it.

    Args:
        program: Rewritten in place.
        plan: What to remove.
        config: The identity of the pass that made the plan (``pass_.config()``, with its
            ``"pass"`` name); ``None`` records a ``"replay"`` step.
        stats: The pass's statistics, kept in the step (recapture copies them).

    Returns:
        The :class:`Slices` map of every tensor sliced, with the kept indices per axis.

    Raises:
        PlanError: the plan names groups, blocks or consumers this program does not have, or
            unprunable groups.
    """
    plan = convert_plan(program, plan)
    if plan.blocks:  # residual branches first (prunec.rewrite.drop); their groups then go
        drop_blocks(program, plan.blocks)
    analysis = analyze_channels(program)
    elem_keep = element_keep(analysis, plan)
    slices = Slices()
    groups = analysis.by_key()  # element_keep checked that every key is there
    before = {key: groups[key].size for key in plan.keep}
    if elem_keep.all():
        if plan.blocks:
            _record(program, plan, config, stats, slices, before)
        return slices
    expected = {key: int(elem_keep[off:off + analysis.shapes[key[0]][key[1]]].sum())
                for key, off in analysis.offsets.items()}
    ctx = RewriteContext(program, analysis, elem_keep)
    added_nodes = False
    for comp in plan.compensations:
        added_nodes |= fold_mean(ctx, comp)
    _slice_tensors(ctx, slices)
    for node in list(program.graph.nodes):
        rule = rule_for(node) if node.op == "call_function" else None
        if rule is not None and rule.rewrite is not None:
            rule.rewrite(ctx, node)
    # New nodes (border corrections) have no metadata yet: propagate through every op then.
    program.finalize(sizes=None if added_nodes or ctx.propagate else expected)
    if added_nodes:
        fold_constants(program)
    _record(program, plan, config, stats, slices, before)
    return slices


def _record(program: Program, plan: PruningPlan, config: dict | None, stats, slices: Slices,
            before: dict) -> None:
    config = dict(config or {})
    if config and not plan.source:  # the plan's JSON then says which pass made it
        plan.source = dict(config)
    changed = {name: tuple(new.shape) for name, (_old, new) in slices.replaced.items()}
    program.record(Step(config.get("pass", "replay"), config, plan, changed, stats,
                        modified=True, before=before))


def convert_plan(program: Program, plan: PruningPlan) -> PruningPlan:
    """``plan`` with every old, value-keyed compensation (:class:`ValueCompensation`, from a
    file an older prunec saved) converted to consumer-keyed ones on ``program`` (an eval-mode
    capture of the model the plan was made for); ``plan`` itself when there is none.

    Raises:
        PlanError: a value ``program`` does not have, with how to convert the plan.
    """
    if not plan.needs_conversion():
        return plan
    comps: list = []
    for comp in plan.compensations:
        comps += convert_value_compensation(program, comp) if isinstance(comp, ValueCompensation) \
            else [comp]
    return PruningPlan(dict(plan.keep), comps, list(plan.blocks), dict(plan.source))


def estimate_macs(program: Program, plan: PruningPlan) -> int:
    """MACs ``program`` would have after ``plan``, without rewriting anything.

    Every counted op is re-costed with its axes shrunk to their kept sizes (what a threshold
    search over hypothetical plans needs, e.g. OCSPruner's MACs-targeted selection).
    """
    analysis = analyze_channels(program)
    keep = element_keep(analysis, plan)
    shapes = concrete_shapes(program)

    def shape_of(arg):
        shape = shapes.get(arg) if isinstance(arg, fx.Node) else None
        if shape is None:
            return None
        return tuple(_kept_size(analysis, keep, arg.name, ax, n) for ax, n in enumerate(shape))

    return sum(node_macs(node, shape_of) for node in program.graph.nodes if node.op == "call_function")


def _kept_size(analysis: ChannelAnalysis, keep: np.ndarray, name: str, ax: int, size: int) -> int:
    """Size of axis ``ax`` of ``name`` (``size`` as run) once ``keep`` is applied; a symbolic
    axis with a static factor (``B*H``) shrinks with the factor's kept count."""
    key = (name, ax)
    if key in analysis.offsets:
        start = analysis.offsets[key]
        return int(keep[start:start + analysis.shapes[name][ax]].sum())
    factor = analysis.factors.get(key)
    if factor is None:
        return size
    start, full = analysis.offsets[(factor, 0)], analysis.shapes[factor][0]
    return size // full * int(keep[start:start + full].sum())


def element_keep(analysis: ChannelAnalysis, plan: PruningPlan) -> np.ndarray:
    """Per analysed element (see :class:`~prunec.ir.channels.ChannelAnalysis` offsets),
    whether ``plan`` keeps it.

    Raises:
        PlanError: a group the program does not have, an unprunable group, or kept units
            that are not a non-empty subset of the group's units.
    """
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


def _slice_tensors(ctx: RewriteContext, slices: Slices) -> None:
    done = set()
    program = ctx.program
    targets = {n.target for n in program.graph.nodes if n.op == "get_attr"}
    for node in ctx.program.graph.nodes:
        if node.op != "get_attr" or node.target in done:
            continue
        shape = static_shape(node)
        if shape is None:
            continue
        done.add(node.target)
        old = ctx.program.get_tensor(node.target)
        tensor, kept = old.detach(), {}
        for ax in range(len(shape)):
            if ctx.changed(node, ax):
                kept[ax] = ctx.kept(node, ax)
                tensor = tensor.index_select(ax, kept[ax])
        if kept:
            ctx.program.set_tensor(node.target, tensor)
            slices[node.target] = kept
            slices.replaced[node.target] = (old, ctx.program.get_tensor(node.target))
        # Donation: free the old tensor once no target of the program reads it any more (a
        # tensor read under two targets is released after the second is sliced).
        if program.donated and kept and not any(program.get_tensor(t) is old for t in targets):
            release(old)


def release(tensor: torch.Tensor) -> None:
    """Free a donated tensor's storage: it becomes an empty tensor of the same dtype and
    device for every holder (the caller's module included), so memory is returned now
    rather than when the caller drops its model."""
    with torch.no_grad():
        tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
