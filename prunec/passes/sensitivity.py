"""Put a pass's per-unit scores of different groups on one scale: the model's output.

A latency target trades units of one group against units of another (a wide, cheap layer
against a narrow, expensive one), so the knapsack's values must mean the same thing in every
group. A pass's own scores often do not: VBP's activation variances are in each layer's
units (a layer after a small-gain normalisation has small variances however much the model
depends on it). Ranking by count, as a ratio does, barely notices; a latency knapsack
exploits it and prunes where the scores are small in absolute terms, not where the model
is insensitive (on the digits ResNet: 87 % test accuracy against 99 % for the ratio plan at
the same latency, ``benchmarks/results/latency_target.md``).

The exchange rate is measured, label-free, on the calibration data. For each group ``g``
the pass's own plan for ``g`` alone at its first candidate width ``k_g`` (the widest one
that removes a non-zero score; compensations included) is applied to a copy of the program
(tensors shared) and run on a few calibration items next to the dense program. Its relative
output distortion

    D_g = sum ||y'(x) - y(x)||^2 / sum ||y(x) - ybar||^2

(over the items and every floating output; padding positions left out with ``mask``)
divided by the score it removes, ``R_g = sum of the lowest size_g - k_g scores``, is the
group's sensitivity ``a_g = D_g / R_g``: the output distortion per unit of score, to first
order (one small removal per group, as HALP's Taylor importance is a first-order estimate
of the loss). The knapsack then keeps the most ``sum_g a_g * (score kept in g)``. Within a
group the order of the units is the pass's own; only the scale between groups is measured.

Both value sets are solved for every budget (:func:`~prunec.passes.latency.closed_loop`):
the pass's scores as they are, and scaled by ``a_g``. When their plans differ, the one whose
whole-plan distortion ``D`` (:meth:`OutputProbe.distortion`, the same items) is lower is
kept. The scaled scores fix what the raw ones get badly wrong (layers whose activations are
small but matter); the raw ones stay when the first-order scale misleads (a model whose
groups all cost the same, where the pass's own ranking is already its MACs plan). Which one
wins is measured on the model, never assumed.

A group none of whose candidate widths removes any score (every unit scores 0) gets
``a_g = 0``: removing it is free by its scores, and the pass's plan says so.

A probe whose reference has no spread, ``sum ||y - ybar||^2 = 0`` (no floating output, as a
model returning class ids; or outputs constant over the items), measures nothing: every
``D`` would be 0 (or undefined). It is *blind* (:attr:`OutputProbe.blind`), and the pass then
takes its scores as they are.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

import torch
import torch.utils._pytree as pytree

from prunec.errors import CalibrationError
from prunec.ir.calibration import _checked_item, _resolve_mask
from prunec.ir.calibration_checks import check_calibration
from prunec.ir.channels import ChannelGroup
from prunec.ir.program import Program
from prunec.progress import bar as progress_bar
from prunec.rewrite import PruningPlan, apply_plan
from prunec.validate import user_items

__all__ = ["OutputProbe", "check_reiterable", "output_sensitivity", "probe_width",
           "relative_distortion"]

Realize = Callable[[dict[str, int]], PruningPlan]


def probe_width(scores: torch.Tensor, widths: list[int]) -> tuple[int, float] | None:
    """The widest candidate width below the full size that removes a positive score, and
    the score it removes (the sum of the lowest ``size - width`` scores); None when none
    does."""
    ordered = torch.sort(scores.double()).values  # ascending: the first ones go
    size = ordered.numel()
    for width in sorted((w for w in widths if w < size), reverse=True):
        removed = float(ordered[:size - width].sum())
        if removed > 0:
            return width, removed
    return None


def _outputs(value: Any) -> list[torch.Tensor]:
    """Every floating tensor in a program's output (tuples, lists, dicts, model outputs)."""
    return [t for t in pytree.tree_leaves(value)
            if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _masked(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    if keep is not None and t.dim() >= 2 and tuple(t.shape[:2]) == tuple(keep.shape):
        return t[keep.bool()]
    return t


def _spread(reference: list[list[torch.Tensor]]) -> float:
    """``sum ||y - ybar||^2`` over the outputs (float64), as :func:`relative_distortion`'s
    denominator; 0 without floating outputs."""
    total = 0.0
    for j in range(len(reference[0]) if reference else 0):
        ref = torch.cat([item[j].double().flatten() for item in reference])
        total += float(((ref - ref.mean()) ** 2).sum())
    return total


def relative_distortion(reference: list[list[torch.Tensor]],
                        outputs: list[list[torch.Tensor]]) -> float:
    """``sum ||y' - y||^2 / sum ||y - ybar||^2`` over items and outputs (float64); ``ybar``
    is each output's mean over all its items and elements. 0 when the reference is
    constant and the outputs equal it."""
    num = 0.0
    for j in range(len(reference[0]) if reference else 0):
        ref = torch.cat([item[j].double().flatten() for item in reference])
        out = torch.cat([item[j].double().flatten() for item in outputs])
        num += float(((out - ref) ** 2).sum())
    den = _spread(reference)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return num / den


def check_reiterable(calibration: Any, where: str) -> None:
    """A latency target reads a pass's calibration data twice (its statistics, then the
    output probe): a one-shot iterator (a generator, ``iter(list)``) would be empty the
    second time.

    Raises:
        CalibrationError: ``calibration`` is its own iterator, naming ``where``.
    """
    if calibration is not None and iter(calibration) is calibration:
        raise CalibrationError(
            f"{where}: with a latency target the calibration data is read twice (statistics, "
            f"then the output probe), but a one-shot iterator ({type(calibration).__name__}) "
            f"is empty the second time; pass a list or a DataLoader.")


class OutputProbe:
    """The program's outputs on its first calibration items, and the relative distortion of
    a plan applied to a copy of it (tensors shared; the program is left unchanged).

    Args:
        program: The program the pass receives.
        calibration: The pass's calibration items; the first ``items`` are run.
        mask: The pass's padding mask spec (a key of dict items, or a callable).
        items: Calibration items run per plan.

    Attributes:
        blind: The reference outputs have no spread (no floating output, or constant over
            the items): no distortion can be measured, so the pass should not use the probe.

    Raises:
        CalibrationError: no calibration items, one bare tensor, or an item that does not
            fit the program's inputs (naming it).
    """

    def __init__(self, program: Program, calibration: Iterable[Any], *, mask=None,
                 items: int = 4):
        # A pass may read its data only here (HeadPruning by magnitude): check it as
        # calibration is checked everywhere else, before running anything.
        check_calibration(calibration, "the latency target's output probe")
        batch = list(itertools.islice(user_items(calibration), items))
        if not batch:  # an iterator without a length, found empty
            raise CalibrationError("the latency target's output probe needs calibration "
                                   "items; pass non-empty calibration data.")
        self.program = program
        self._keeps = [_resolve_mask(mask, item, i) for i, item in enumerate(batch)]
        self._calls = [_checked_item(program, item, i) for i, item in enumerate(batch)]
        self._reference = self._run(program)
        self.blind = _spread(self._reference) == 0  # NaN outputs still raise when judged

    def _run(self, p: Program) -> list[list[torch.Tensor]]:
        with torch.no_grad():
            return [[_masked(t, keep) for t in _outputs(p.run(*args, **kwargs))]
                    for (args, kwargs), keep in zip(self._calls, self._keeps)]

    def distortion(self, plan: PruningPlan) -> float:
        """:func:`relative_distortion` of the program with ``plan`` applied.

        Raises:
            CalibrationError: the distortion is not finite (NaN/inf outputs).
        """
        if not plan:
            return 0.0
        variant = self.program.clone(share_tensors=True)
        apply_plan(variant, plan)
        value = relative_distortion(self._reference, self._run(variant))
        if not value < float("inf"):
            raise CalibrationError(
                "a candidate plan gave a non-finite output distortion on the calibration "
                "items; check the calibration data for NaN/inf.")
        return value


def output_sensitivity(probe: OutputProbe, groups: list[ChannelGroup],
                       scores: dict[str, torch.Tensor], widths: dict[str, list[int]],
                       realize: Realize, *, progress: bool | None = None) -> dict[str, float]:
    """Per group key, the measured output distortion per unit of score (see module docstring).

    Args:
        probe: The program's output probe.
        groups: The candidate groups.
        scores: The pass's score per unit of every group.
        widths: Per group key, its candidate kept counts.
        realize: ``{group key: kept count}`` (every group) -> the plan the pass would apply.
        progress: Progress bar (see :mod:`prunec.progress`).
    """
    sizes = {g.key: g.size for g in groups}
    sensitivity: dict[str, float] = {}
    bar = progress_bar(groups, total=len(groups), desc="sensitivity", unit="group",
                       progress=progress)
    try:
        for g in bar:
            found = probe_width(scores[g.key], widths[g.key])
            if found is None:
                sensitivity[g.key] = 0.0
                continue
            width, removed = found
            sensitivity[g.key] = probe.distortion(realize({**sizes, g.key: width})) / removed
    finally:
        bar.close()
    return sensitivity
