"""What a plan means in terms of the program before it: the reference a rewrite must equal.

For a program ``P`` and a plan, the rewritten program must equal ``P`` run with

* the parameter slices of every removed unit set to zero (producer rows, consumer columns,
  norm scales and shifts), for groups without compensation — *zeroing equivalence*;
* each compensated value's removed channels replaced by their means ``mu_P``
  (:class:`~prunec.rewrite.plan.MeanCompensation`) — *mean equivalence*;

Zeroing is not removal for a group that an op normalises or mixes over (layer norm over the
hidden width, softmax over channels): there the reference is undefined and
:func:`reference_program` says why instead of building one.
"""
from __future__ import annotations

from typing import Callable

import torch

from prunec.ir.channels import ChannelAnalysis, analyze_channels
from prunec.ir.program import Program
from prunec.rewrite.apply import convert_plan, element_keep
from prunec.rewrite.compensation import consumer_node, fold_axis
from prunec.rewrite.drop import block_overrides
from prunec.rewrite.plan import MeanCompensation, PruningPlan

__all__ = ["reference_program", "zeroer", "compensated_values", "UNCHECKABLE_TAGS"]

UNCHECKABLE_TAGS = frozenset({"norm", "mixing"})
"""Group tags under which removing units is not the same as zeroing them."""


def reference_program(before: Program, plan: PruningPlan
                      ) -> tuple[Program | None, dict[str, Callable], str]:
    """``(reference, overrides, why_not)`` for ``plan`` applied to ``before``.

    ``reference`` is a copy of ``before``'s graph sharing all its tensors; run it with
    ``overrides`` (``{node name: value -> value}``, see
    :func:`prunec.ir.interpret.run_with_overrides`). Zeroing is an override of the
    parameters' ``get_attr`` nodes, so no weight is copied: each zeroed tensor exists only
    while the run needs it. When no reference is defined, ``reference`` is ``None`` and
    ``why_not`` says why.
    """
    plan = convert_plan(before, plan)
    analysis = analyze_channels(before)
    groups = analysis.by_key()
    values = compensated_values(before, plan)
    compensated = {(name, axis) for name, (axis, _comp) in values.items()}
    zeroed: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, kept in plan.keep.items():
        group = groups[key]
        if any((s.node, s.axis) in compensated for s in group.slots):
            continue
        bad = UNCHECKABLE_TAGS & group.tags
        if bad:
            return None, {}, (f"group '{key}' is {'/'.join(sorted(bad))}-coupled: removing its "
                              f"units is not the same as zeroing them")
        dropped = sorted(set(range(group.size)) - set(kept))
        for slot in group.params:
            if not slot.param.endswith("running_var"):  # gamma = beta = 0 zeroes the channel
                zeroed.setdefault(slot.param, []).append((slot.axis, group.indices(slot, dropped)))
    overrides = {n.name: zeroer(zeroed[n.target]) for n in before.graph.nodes
                 if n.op == "get_attr" and n.target in zeroed}
    overrides.update({name: _mean_replacer(analysis, plan, name, axis, comp.mean)
                      for name, (axis, comp) in values.items()})
    overrides.update(block_overrides(before, plan))  # dropped branches: mean or zero
    return before.clone(share_tensors=True), overrides, ""


def zeroer(cuts: list[tuple[int, torch.Tensor]]) -> Callable:
    """An override (see :func:`prunec.ir.interpret.run_with_overrides`) that zeroes, for each
    ``(axis, index)`` of ``cuts``, the entries ``index`` along ``axis``."""

    def zero(value: torch.Tensor) -> torch.Tensor:
        for axis, index in cuts:
            value = value.index_fill(axis, index.to(value.device), 0.0)
        return value

    return zero


def compensated_values(program: Program, plan: PruningPlan
                       ) -> dict[str, tuple[int, MeanCompensation]]:
    """``{value node name: (channel axis, compensation)}``: the graph values whose removed
    channels ``plan``'s compensations replace by means (the inputs of their consumers)."""
    values = {}
    for comp in plan.compensations:
        user = consumer_node(program.graph, comp.consumer, comp.axis)
        values[user.args[0].name] = (fold_axis(user, user.args[0]), comp)
    return values


def _mean_replacer(analysis: ChannelAnalysis, plan: PruningPlan, name: str, axis: int,
                   mean: torch.Tensor) -> Callable:
    start = analysis.offsets[(name, axis)]
    size = analysis.shapes[name][axis]
    pruned = torch.from_numpy(~element_keep(analysis, plan)[start:start + size].astype(bool))

    def replace(value: torch.Tensor) -> torch.Tensor:
        shape = [1] * value.dim()
        shape[axis] = -1
        mask = pruned.to(value.device).view(shape)
        return torch.where(mask, mean.to(value).view(shape).expand_as(value), value)

    return replace
