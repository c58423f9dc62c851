"""Attention-head pruning: remove the heads (or key/value groups) that matter least.

The channel analysis already knows attention heads (:mod:`prunec.ir.rules.attention`): a
group tagged ``attention`` has one unit per head, or, under grouped-query attention (GQA),
one unit per key/value head together with the query heads that read it (a query head cannot
go without the others of its group unless the ``k``/``v`` head is kept for them, so the
group is the unit). Each unit owns its rows of the query, key and value projections and its
columns of the output projection.

Scores (higher = keep), for unit ``u`` with output-projection weight ``W_o`` and its input
``a`` (the concatenated head outputs):

- ``"magnitude"`` (data-free): ``||W_q[u]||^2 + ||W_k[u]||^2 + ||W_v[u]||^2 + ||W_o[:, u]||^2``
  (:func:`~prunec.passes.prune_magnitude.unit_norms`), square-rooted;
- ``"activation"`` (calibration): ``sum_{c in u} E[a_c^2] ||W_o[:, c]||^2``, the expected
  squared size of what the unit writes through the output projection if the other units'
  contributions were orthogonal (the first-order output-based criterion of
  Michel et al. 2019 / FLAP's fluctuation without the mean): a head that writes little goes.

Counts: ``ratio`` of the units of all attention groups; ``scope="global"`` ranks them
together (scores normalised per layer), ``uniform=True`` (or ``scope="local"``) removes the
same count from every layer, which a Hugging Face config needs (one
``num_attention_heads`` for all layers). The plan, its replay, verification
(``guarantee="zeroing"``: the pruned program equals the original with the removed heads'
weights zeroed) and the report are those of every :class:`~prunec.passes.base.PruningPass`.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.fx as fx

from prunec import validate
from prunec.errors import CalibrationError, InvalidArgumentError, PrunecError
from prunec.ir.calibration import MaskSpec, collect_statistics
from prunec.ir.channels import ChannelGroup, analyze_channels
from prunec.ir.program import Program
from prunec.passes.base import PassContext, PassResult, PruningPass
from prunec.passes.prune_magnitude import unit_norms
from prunec.passes.sensitivity import OutputProbe, check_reiterable
from prunec.rewrite.plan import PruningPlan

__all__ = ["HeadPruning", "head_groups"]

CRITERIA = ("magnitude", "activation")


def head_groups(program: Program) -> list:
    """The prunable attention-head groups of ``program`` (one per attention layer)."""
    return [g for g in analyze_channels(program).prunable() if "attention" in g.tags]


class HeadPruning(PruningPass):
    """Remove attention heads (whole key/value groups with their query heads under GQA).

    Args:
        ratio: Fraction of the heads (units) removed, in ``[0, 1)``.
        latency: Instead of ``ratio``: a latency target (a fraction of the dense latency or a
            :class:`~prunec.passes.latency.LatencyTarget`); which heads go is then chosen by
            the exact knapsack over measured latency tables, ``min_heads`` included.
        criterion: ``"magnitude"`` (default, data-free) or ``"activation"`` (needs
            ``calibration``); see the module docstring.
        calibration: Re-iterable items for ``"activation"``.
        scope: ``"global"`` (default) or ``"local"``.
        uniform: Remove the same number from every attention layer (what a Hugging Face
            config can describe); the same as ``scope="local"``.
        min_heads: Units every layer keeps at least (default 1).
        mask: Padding mask per calibration item (see :mod:`prunec.ir.calibration`).
        max_batches: Use at most this many calibration items.

    Raises:
        PrunecError: an unknown criterion, ``"activation"`` without calibration, or a
            program without prunable attention heads (when run).
    """

    name = "heads"

    def __init__(self, ratio: float | None = None, *, criterion: str = "magnitude",
                 calibration: Iterable[Any] | None = None, scope: str = "global",
                 uniform: bool = False, min_heads: int = 1, mask: MaskSpec = None,
                 max_batches: int | None = None, latency=None):
        super().__init__(ratio=ratio, scope="local" if uniform else scope, targets="all",
                         round_to=1, latency=latency)
        if latency is not None and uniform:
            raise InvalidArgumentError(
                f"{type(self).__name__}: uniform=True fixes the same count per layer, which a "
                f"latency target does not choose; drop uniform (the Hugging Face write-back "
                f"then needs equal counts: use a ratio with uniform=True instead)")
        where = type(self).__name__
        self.criterion = validate.check_choice(criterion, CRITERIA, where, "criterion")
        if criterion == "activation" and calibration is None:
            raise CalibrationError(f"{where}(criterion='activation') needs calibration data; "
                                   f"pass calibration=..., or use criterion='magnitude'.")
        if not isinstance(min_heads, int) or min_heads < 1:
            raise PrunecError(f"{where}: min_heads must be an int >= 1, got {min_heads!r}.")
        self.targets = "heads"  # for the report: candidates are the attention groups
        self.uniform, self.min_heads = bool(uniform), min_heads
        self.calibration, self.mask, self.max_batches = calibration, mask, max_batches
        if latency is not None:
            check_reiterable(calibration, where)

    def __call__(self, program: Program, ctx: PassContext | None = None) -> PassResult:
        groups = head_groups(program)
        if not groups and not self.already_applied(program):
            raise PrunecError(
                "HeadPruning: the program has no prunable attention heads (no "
                "scaled_dot_product_attention whose heads the analysis could follow); "
                "prunec.analyze(model, x) lists the groups and why.")
        result = super().__call__(program, ctx)
        per_unit = _query_heads_per_unit(groups)
        if per_unit > 1:  # GQA: a unit is a key/value group
            result.stats["unit_name"] = (f"key/value heads (each with its {per_unit} "
                                         f"query heads)")
        return result

    def output_probe(self, program: Program) -> OutputProbe | None:
        """With calibration data, a latency target also solves with each layer's head scores
        scaled by its measured output sensitivity and keeps the plan that moves the output
        less (:mod:`prunec.passes.sensitivity`); without, the scores as they are."""
        if self.calibration is None:
            return None
        return OutputProbe(program, self.calibration, mask=self.mask)

    def candidates(self, analysis) -> list[ChannelGroup]:
        return [g for g in analysis.prunable() if "attention" in g.tags]

    def floor(self, group: ChannelGroup) -> int:
        """A layer keeps at least ``min_heads`` units (all it has when fewer)."""
        return min(self.min_heads, group.size)

    def settle(self, plan: PruningPlan, groups: list[ChannelGroup],
               scores: dict[str, torch.Tensor]) -> PruningPlan:
        for g in groups:  # a layer never loses its last heads
            kept = plan.keep.get(g.key)
            if kept is not None and len(kept) < min(self.min_heads, g.size):
                order = torch.argsort(scores[g.key].double(), descending=True, stable=True)
                plan.keep[g.key] = sorted(order[:min(self.min_heads, g.size)].tolist())
        return plan

    def score(self, program: Program, groups: list[ChannelGroup],
              ctx: PassContext) -> dict[str, torch.Tensor]:
        if self.criterion == "magnitude":
            scores = {g.key: unit_norms(program, g, 2.0).sqrt() for g in groups}
        else:
            scores = _activation_scores(program, groups, self)
        return scores


def _query_heads_per_unit(groups: list[ChannelGroup]) -> int:
    """Query heads per unit under grouped-query attention, 1 otherwise.

    A unit's slots on the projections' output axis (axis 0 of q, k and v) cover
    ``queries_per_kv * head_dim`` query channels and ``head_dim`` key channels, so the ratio
    of the widest to the narrowest is the number of query heads per key/value head.
    """
    ratios = set()
    for g in groups:
        widths = [s.width for s in g.params if s.axis == 0 and s.width > 0]
        if widths and max(widths) % min(widths) == 0:
            ratios.add(max(widths) // min(widths))
    return ratios.pop() if len(ratios) == 1 else 1


def _output_projections(program: Program, group: ChannelGroup) -> list[tuple[fx.Node, Any]]:
    """``(input value node, weight slot)`` of each linear that contracts the group's heads
    (its weight's axis 1 is a slot of the group): the output projection."""
    nodes = {n.name: n for n in program.graph.nodes}
    found = []
    for slot in group.params:
        if slot.axis != 1:
            continue
        for node in program.graph.nodes:
            if (node.op == "call_function" and len(node.args) > 1
                    and getattr(node.args[1], "target", None) == slot.param
                    and isinstance(node.args[0], fx.Node)):
                found.append((nodes[node.args[0].name], slot))
    return found


def _activation_scores(program: Program, groups: list[ChannelGroup],
                       pass_: HeadPruning) -> dict[str, torch.Tensor]:
    targets, owners = {}, {}
    for g in groups:
        projections = _output_projections(program, g)
        if not projections:
            raise PrunecError(f"HeadPruning(criterion='activation'): group '{g.key}' has no "
                              f"output projection (a linear reading its heads); use "
                              f"criterion='magnitude'.")
        owners[g.key] = projections
        for value, _ in projections:
            targets[value.name] = -1
    stats = collect_statistics(program, pass_.calibration, targets, mask=pass_.mask,
                               max_batches=pass_.max_batches, progress=False)
    scores = {}
    for g in groups:
        total = torch.zeros(g.size, dtype=torch.float64)
        for value, slot in owners[g.key]:
            st = stats[value.name]
            second = st.m2 / max(st.count, 1) + st.mean.square()  # E[a^2] per channel
            w = program.get_tensor(slot.param).detach().double().square().sum(0)
            owner = torch.from_numpy(g.unit_index[slot])
            hit = owner >= 0
            total.index_add_(0, owner[hit], (second * w)[hit])
        scores[g.key] = total
    return scores
