"""Variance-Based Pruning (VBP, arXiv 2507.12988): remove the hidden neurons whose activation
varies least, and fold their mean into the next layer's bias.

For a two-layer MLP ``h = act(W1 x + b1)``, ``y = W2 h + b2`` and calibration data run
through the *unpruned* model in eval mode, every hidden neuron ``i`` has a mean ``mu_i`` and
a sample variance ``sigma_i^2`` of ``h_i`` (after the activation, at the input of ``W2``),
pooled over all tokens / spatial positions in float64 (Welford/Chan, see
:mod:`prunec.ir.calibration`). Replacing ``h_i`` by the constant ``mu_i`` changes ``y`` by
``W2[:, i] (h_i - mu_i)``, whose expected squared size is ``||W2[:, i]||^2 sigma_i^2``; VBP ranks
by the raw ``sigma_i^2`` alone.

1. **Statistics.** One pass over the calibration data collects every layer's statistics
   before anything is rewritten.
2. **Selection.** Candidate neurons of all layers in one list, sorted by raw variance (no
   per-layer normalisation); the lowest ``ratio`` fraction (counted in neurons) goes, so
   layers lose different counts. ``round_to`` rounds the kept counts per layer.
3. **Compensation.** For the pruned set ``P`` and kept set ``K``:
   ``b2' = b2 + W2[:, P] @ mu[P]`` from the original ``W2`` (a bias is created if absent),
   then ``W1[K]``, ``b1[K]``, ``W2[:, K]``. The fold is a :class:`MeanCompensation` that
   :func:`~prunec.rewrite.apply.apply_plan` writes as constants (no runtime cost). It is exact:
   the pruned model equals the original with ``h_P`` replaced by ``mu_P``, for ``linear``
   and ungrouped convolution consumers (zero-padded ``k x k`` ones included: see
   ``docs/compensation.md``).

Which value is measured: for a group, every activation ``v`` that is the input (``args[0]``)
of a ``linear`` or ungrouped convolution whose weight's input axis (axis 1) is a slot of the
group; its channel axis is the last one for ``linear`` and 1 for convolutions. A unit spread
over several indices (attention heads, ``targets="all"``) scores the sum of their variances.
A group is a candidate only when *every* route of its channels out of the group passes
through such a consumer (otherwise mean replacement would not describe the pruned model):
groups that are normalised over (``norm`` tag) or whose channels reach any other consumer are
skipped.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from prunec import validate
from prunec.errors import CalibrationError, InvalidArgumentError, PrunecError
from prunec.ir.calibration import ChannelStats, MaskSpec, collect_statistics
from prunec.ir.calibration_checks import check_calibration
from prunec.ir.channels import ChannelGroup, Slot
from prunec.ir.program import Program
from prunec.passes.base import PassContext, PruningPass
from prunec.passes.sensitivity import OutputProbe, check_reiterable
from prunec.rewrite.compensation import compensations_for, fold_axis
from prunec.rewrite.plan import PruningPlan

__all__ = ["VarianceBasedPruning", "MeasuredValue", "measured_values", "unmeasured_reason",
           "unit_variances"]

aten = torch.ops.aten


@dataclass(frozen=True)
class MeasuredValue:
    """An activation whose statistics VBP reads: ``node``'s value on channel ``axis``."""

    node: str
    axis: int
    slot: Slot


def measured_values(program: Program, group: ChannelGroup) -> list[MeasuredValue] | None:
    """The values to measure for ``group``, or None when VBP does not describe it.

    Walks every activation slot of the group: a user that is itself a slot node carries the
    channels on inside the group; any other user must be a ``linear``/ungrouped-conv consumer
    contracting the channels with a weight whose axis 1 is in the group. A measured value must
    feed only such consumers (each takes the bias fold).
    """
    return _measure(program, group)[0]


def unmeasured_reason(program: Program, group: ChannelGroup) -> str:
    """Why VBP does not describe ``group`` (``""`` when it does), naming the op."""
    return _measure(program, group)[1]


# Ops that normalise over an axis (the channel rules tag their input ``norm``).
_NORMALISING = {"softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax",
                "layer_norm", "native_layer_norm", "rms_norm", "group_norm", "batch_norm",
                "instance_norm", "native_batch_norm", "_native_batch_norm_legit_no_training",
                "_native_batch_norm_legit_functional"}


def _splits_into(node, slot_nodes: set) -> bool:
    """``node`` returns a tuple (``chunk``, ``split``) whose every read is a slot of the group:
    the channels go on inside it (a fused gate/up projection split in two halves)."""
    return bool(node.users) and all(u.op == "call_function" and u.target is operator.getitem
                                    and u.name in slot_nodes for u in node.users)


def _measure(program: Program, group: ChannelGroup) -> tuple[list[MeasuredValue] | None, str]:
    nodes = {n.name: n for n in program.graph.nodes}
    slot_nodes = {s.node for s in group.slots}
    act_slots = {(s.node, s.axis): s for s in group.slots if s.param is None}
    if "norm" in group.tags:
        return None, _normalised_reason(nodes, act_slots)
    weight_axes = {(s.param, s.axis) for s in group.params}
    found: dict[str, MeasuredValue] = {}
    for name in dict.fromkeys(node for node, _ in act_slots):
        value = nodes[name]
        for user in value.users:
            if user.name in slot_nodes or _splits_into(user, slot_nodes):
                continue
            axis = fold_axis(user, value)
            if axis is None or (user.args[1].target, 1) not in weight_axes \
                    or (name, axis) not in act_slots:
                return None, _consumer_reason(user)
            found[name] = MeasuredValue(name, axis, act_slots[(name, axis)])
    for mv in found.values():  # every user of a measured value must take the fold
        for user in nodes[mv.node].users:
            if fold_axis(user, nodes[mv.node]) != mv.axis:
                return None, _consumer_reason(user)
    if not found:
        return None, "no linear or convolution consumer reads its channels"
    return list(found.values()), ""


def _normalised_reason(nodes: dict, act_slots: dict) -> str:
    for name, _axis in act_slots:
        for user in nodes[name].users:
            packet = getattr(getattr(user.target, "overloadpacket", None), "__name__", "")
            if packet in _NORMALISING:
                return (f"{_op(user)} normalises over its channels, so a removed neuron's mean "
                        f"would change the others")
    return "it is normalised over, so a removed neuron's mean would change the others"


def _consumer_reason(user) -> str:
    return (f"its channels reach {_op(user)}, not a linear or convolution whose bias can "
            f"take their mean")


def _op(node) -> str:
    """``aten.softmax at node 'softmax'``."""
    packet = getattr(getattr(node.target, "overloadpacket", None), "__name__", None)
    return f"aten.{packet} at node '{node.name}'" if packet else f"node '{node.name}'"


def unit_variances(group: ChannelGroup, values: list[MeasuredValue],
                   stats: dict[str, ChannelStats]) -> torch.Tensor:
    """Per unit, ``sum over measured values v and the unit's indices i of var(v_i)`` (float64)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for mv in values:
        s = stats[mv.node]
        var = s.var
        if s.count < 2 or not torch.isfinite(var).all():
            raise CalibrationError(
                f"VBP needs at least 2 calibration samples per channel of node '{mv.node}', "
                f"got {s.count}; pass more calibration data.")
        owner = torch.from_numpy(group.unit_index[mv.slot])
        hit = owner >= 0
        total.index_add_(0, owner[hit], var[hit])
    return total


class VarianceBasedPruning(PruningPass):
    """Remove the hidden neurons with the lowest activation variance; fold their means.

    Args:
        ratio: Fraction of candidate neurons removed, in ``[0, 1)`` (counts neurons).
        calibration: Re-iterable calibration items (tensor, tuple of positional inputs or dict
            of keyword inputs each; a ``DataLoader`` works). Run through the program as
            captured, which must be in eval mode.
        targets: ``"mlp"``: hidden neurons of MLP/FFN blocks (two-layer and gated SwiGLU) and
            conv bottlenecks; ``"all"``: every prunable group whose channels leave only through
            linear/conv consumers.
        round_to: Kept channel counts are multiples of this (or the full size).
        compensate: Fold ``W[:, P] @ mu[P]`` into the consumers' biases. ``False`` gives the
            ablation "variance without mean shift".
        mask: Padding mask per item (a dict key such as ``"attention_mask"`` or a callable);
            masked positions are excluded from the statistics.
        scope: ``"global"`` (the method: one ranking over all layers) or ``"local"``.
        max_batches: Use at most this many calibration items.
        progress: Calibration progress bar: False hides it; by default it shows when
            standard error is a terminal (see :mod:`prunec.progress`).
        latency: Instead of ``ratio``: a latency target (see :mod:`prunec.passes.latency`);
            the knapsack keeps the most variance, as it is or scaled per group by its measured
            output sensitivity, whichever plan moves the output less
            (:mod:`prunec.passes.sensitivity`).

    Raises:
        CalibrationError: empty calibration data, NaN/inf activations, fewer than 2 samples.
        PrunecError: a program captured in train mode (statistics need eval mode).
    """

    name = "variance"
    normalize_global = False

    def __init__(self, ratio: float | None = None, calibration: Iterable[Any] | None = None, *,
                 targets: str = "mlp", round_to: int = 8, compensate: bool = True,
                 mask: MaskSpec = None, scope: str = "global", max_batches: int | None = None,
                 progress: bool | None = None, latency=None):
        super().__init__(ratio=ratio, scope=scope, targets=targets, round_to=round_to,
                         latency=latency)
        where = type(self).__name__
        self.calibration = check_calibration(calibration, where)
        if latency is not None:
            check_reiterable(calibration, where)
        if mask is not None and not isinstance(mask, str) and not callable(mask):
            raise InvalidArgumentError(f"{where}: mask must be None, a key of the items (e.g. "
                                       f"'attention_mask') or a callable item -> [B, N] mask, "
                                       f"got {type(mask).__name__}.")
        if max_batches is not None:
            max_batches = validate.check_positive(max_batches, where, "max_batches",
                                                  integer=True)
        self.fold_means = bool(compensate)  # not `compensate`: that name is the hook method
        self.mask = mask
        self.max_batches = max_batches
        self.progress = progress

    @property
    def guarantee(self) -> str:
        """With mean folding the pruned model equals the original with the removed neurons
        replaced by their means; without it, with them zeroed."""
        return "mean" if self.fold_means else "zeroing"

    # -- score ---------------------------------------------------------------------------
    def plan(self, program: Program, groups: list[ChannelGroup], ctx: PassContext) -> PruningPlan:
        """Rank only the groups VBP describes (see :func:`measured_values`)."""
        measured = self._measured(program, groups)
        described = [g for g in groups if g.key in measured]
        return super().plan(program, described, ctx) if described else PruningPlan()

    def kept_because(self, program: Program, analysis, groups: list[ChannelGroup]) -> list[str]:
        """The base reasons, plus every candidate group VBP cannot describe and why."""
        reasons = [f"{g.key}: {why}" for g in groups if (why := unmeasured_reason(program, g))]
        return reasons + super().kept_because(program, analysis, groups)

    def score(self, program, groups, ctx: PassContext) -> dict[str, torch.Tensor]:
        measured = self._measured(program, groups)
        stats = self._statistics(program, groups)
        return {g.key: unit_variances(g, measured[g.key], stats) for g in groups}

    def compensate(self, program, groups, plan: PruningPlan, ctx: PassContext) -> None:
        """One :class:`MeanCompensation` per consumer of every measured value of every
        pruned group (keyed by the consumer's weight, so it replays on any capture)."""
        if not self.fold_means:
            return
        measured = self._measured(program, groups)
        stats = self._statistics(program, groups)
        nodes = {n.name: n for n in program.graph.nodes}
        seen: set = set()
        for key in plan.keep:
            for mv in measured[key]:
                if (mv.node, mv.axis) not in seen:
                    seen.add((mv.node, mv.axis))
                    plan.compensations += compensations_for(
                        nodes[mv.node], stats[mv.node].mean.clone(), program)

    def output_probe(self, program: Program) -> OutputProbe:
        """Raw variances are in each layer's own units: for a latency target the knapsack
        also solves with each group's scaled by its measured output sensitivity and keeps
        the plan that moves the output least on the first calibration items
        (:mod:`prunec.passes.sensitivity`)."""
        return OutputProbe(program, self.calibration, mask=self.mask)

    # -- analyses (cached per program version) --------------------------------------------
    def _measured(self, program: Program, groups: list[ChannelGroup]) -> dict[str, list]:
        found = program.analysis("vbp_measured", lambda p: {})
        for g in groups:
            if g.key not in found:
                found[g.key] = measured_values(program, g)
        return {g.key: found[g.key] for g in groups if found[g.key]}

    def _statistics(self, program: Program, groups: list[ChannelGroup]) -> dict[str, ChannelStats]:
        """All statistics from one pass over the calibration data, before any rewrite."""
        if program.training:
            raise PrunecError(
                "VarianceBasedPruning collects statistics in eval mode, but this program was "
                "captured with train=True; capture (or prunec.compile) with train=False.")
        measured = self._measured(program, groups)
        targets = {mv.node: mv.axis for g in groups for mv in measured.get(g.key, ())}
        return program.analysis(f"vbp_statistics:{id(self)}", lambda p: collect_statistics(
            p, self.calibration, targets, mask=self.mask, progress=self.progress,
            max_batches=self.max_batches))
