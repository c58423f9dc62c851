"""Depth pruning: remove whole residual branches (:mod:`prunec.ir.blocks`).

Every removable block is scored (higher = keep), the lowest-scoring ones are dropped, and
with ``compensate=True`` each dropped branch ``f`` is replaced by its mean output ``mu`` over
the calibration data (per channel on the block's channel axis, all positions pooled), a
constant added at the residual: ``y = x + f(x)`` becomes ``y = x + mu``.

Criteria, over calibration items, with ``x`` the block input and ``y = x + f(x)``:

- ``"kl"`` (PEEAO, arXiv 2506.04513): ``KL(q || p) = sum q (log q - log p)`` between the
  softmax outputs ``p`` of the program and ``q`` of the program with the branch output
  zeroed, averaged over output rows (samples, or tokens for token logits);
- ``"cosine"`` (ShortGPT's Block Influence, Minitron depth): ``1 - cos(x, y)`` per position
  (cosine along the channel axis), averaged over positions;
- ``"angular"`` (Gromov et al. 2403.17887, n = 1): ``arccos(cos(x, y)) / pi``, averaged;
- ``"magnitude"`` (data-free): the RMS of the first parameter of the last op of the branch
  that reads one (the batch-norm or layer-scale gamma, the output projection's weight): the
  scale at which the branch writes into the residual stream.

Blocks are scored independently, once, on the program as it is; the ``k`` lowest go.

Targets count against the program as captured, as channel ratios do: ``num_blocks`` is the
total number of blocks dropped so far (``program.lineage``) plus by this pass, and
``ratio`` the fraction of all blocks that were removable at capture. A pass whose target is
already reached changes nothing (``modified=False``).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from prunec.errors import CalibrationError, InvalidArgumentError, PrunecError
from prunec.ir.blocks import Block, analyze_blocks
from prunec.ir.calibration import MaskSpec, collect_statistics
from prunec.ir.program import Program
from prunec.passes.base import PassBase, PassContext, PassResult, PassStats
from prunec.passes.depth_scores import block_scores
from prunec.passes.latency import check_latency, drop_blocks
from prunec.passes.prune_layers import run_layer_depth
from prunec.rewrite import apply_plan
from prunec.rewrite.plan import BlockDrop, PruningPlan

__all__ = ["DepthPruning", "block_scores", "dropped_blocks"]

CRITERIA = ("kl", "cosine", "angular", "magnitude")


def dropped_blocks(program: Program) -> int:
    """Blocks dropped so far, from the program's lineage."""
    return sum(len(step.plan.blocks) for step in program.lineage)


class DepthPruning(PassBase):
    """Remove the residual blocks that matter least; optionally replace them by their mean.

    Args:
        num_blocks: Total blocks removed from the program as captured (see module docstring).
        ratio: Instead of ``num_blocks``: fraction of the removable blocks, in ``[0, 1]``.
        calibration: Re-iterable items (a tensor, a tuple of positional inputs or a dict of
            keyword inputs each). Needed by ``kl``, ``cosine``, ``angular`` and by
            ``compensate=True``.
        criterion: ``"kl"``, ``"cosine"``, ``"angular"`` or ``"magnitude"``.
        compensate: Replace each dropped branch by its mean output (else by nothing).
        protect_first: Never drop the first block of a stage (PEEAO).
        min_per_stage: Every stage (run of same-shaped blocks) keeps at least this many blocks,
            removable or not (PEEAO: 2).
        mask: Padding mask per item (a dict key such as ``"attention_mask"`` or a callable
            ``item -> [B, N] mask``): padded positions count neither in the cosine/angular
            scores nor in the means.
        max_batches: Use at most this many calibration items.
        progress: Show progress bars while scoring.
        unit: ``"block"`` (default): residual branches; ``"layer"``: whole layers, every
            block under one module path together (a decoder layer's attention and MLP;
            :mod:`prunec.passes.prune_layers`), ``num_blocks`` / ``ratio`` then count layers.
        latency: Instead of ``num_blocks`` or ``ratio``: a latency target (a fraction of the
            dense latency or a :class:`~prunec.passes.latency.LatencyTarget`): the blocks
            dropped maximise the kept block scores under the measured latency budget
            (``unit="block"`` only).

    Raises:
        InvalidArgumentError: not exactly one of ``num_blocks``, ``ratio`` and ``latency``,
            a bad count, ratio, unit or criterion.
        PrunecError: a program captured in train mode with a data criterion.
        CalibrationError: no calibration data where the criterion or compensation needs it.
    """

    name = "depth"

    def __init__(self, num_blocks: int | None = None, *, ratio: float | None = None,
                 calibration: Iterable[Any] | None = None, criterion: str = "cosine",
                 compensate: bool = True, protect_first: bool = False, min_per_stage: int = 0,
                 mask: MaskSpec = None, max_batches: int | None = None, progress: bool = False,
                 unit: str = "block", latency=None):
        if unit not in ("block", "layer"):
            raise InvalidArgumentError(f"DepthPruning: unit must be 'block' or 'layer', got {unit!r}.")
        if sum(v is not None for v in (num_blocks, ratio, latency)) != 1:
            raise InvalidArgumentError("DepthPruning: pass exactly one of num_blocks (blocks to "
                                       "remove), ratio (fraction of the removable blocks) and "
                                       "latency (fraction of the dense latency).")
        self.latency_target = None
        if latency is not None:
            self.latency_target = check_latency(latency, "DepthPruning")
            self.latency = self.latency_target.fraction
        if num_blocks is not None and (not isinstance(num_blocks, int) or num_blocks < 0):
            raise InvalidArgumentError(f"DepthPruning: num_blocks must be an int >= 0, got {num_blocks!r}.")
        if ratio is not None and not 0.0 <= float(ratio) <= 1.0:
            raise InvalidArgumentError(f"DepthPruning: ratio must be in [0, 1], got {ratio!r}.")
        if criterion not in CRITERIA:
            raise InvalidArgumentError(f"DepthPruning: criterion must be one of {CRITERIA}, got {criterion!r}.")
        if calibration is None and (criterion != "magnitude" or compensate):
            raise CalibrationError(
                f"DepthPruning(criterion={criterion!r}, compensate={compensate}) needs "
                f"calibration data; pass calibration=..., or use criterion='magnitude' with "
                f"compensate=False for a data-free drop.")
        self.num_blocks, self.ratio = num_blocks, None if ratio is None else float(ratio)
        self.calibration, self.criterion = calibration, criterion
        self.compensate = bool(compensate)
        self.protect_first, self.min_per_stage = bool(protect_first), int(min_per_stage)
        self.mask, self.max_batches, self.progress = mask, max_batches, bool(progress)
        self.unit = unit

    @property
    def guarantee(self) -> str:
        """What holds between the program before and after: ``"mean"`` or ``"zeroing"``."""
        return "mean" if self.compensate else "zeroing"

    # ------------------------------------------------------------------------ run
    def __call__(self, program: Program, ctx: PassContext | None = None) -> PassResult:
        if self.unit == "layer":
            return run_layer_depth(self, program)
        analysis = analyze_blocks(program)
        done = dropped_blocks(program)
        if self.latency_target is not None:
            if self.already_applied(program):  # its target is already reached
                return self.unchanged(program, PassStats(already_applied=True))
            target = done + len(analysis.removable())  # the knapsack decides how many
        else:
            target = self.num_blocks if self.num_blocks is not None else \
                round(self.ratio * (len(analysis.removable()) + done))
        candidates = self.candidates(program)
        stats = PassStats(blocks=len(analysis), removable=len(analysis.removable()),
                          candidates=len(candidates), dropped_before=done)
        if target - done <= 0 or not candidates:
            stats.dropped = 0
            return self.unchanged(program, stats)
        if self.criterion != "magnitude" and program.training:
            raise PrunecError("DepthPruning scores blocks in eval mode, but this program was "
                              "captured with train=True; capture with train=False.")
        scores = block_scores(program, candidates, self.criterion, self.calibration,
                              max_batches=self.max_batches, progress=self.progress, mask=self.mask)
        realize = self._realizer(program)
        if self.latency_target is not None:
            chosen, stats.latency = drop_blocks(program, candidates, scores,
                                                   self._room(program), self.latency_target,
                                                   where="DepthPruning", realize=realize)
        else:
            chosen = self.select(program, candidates, scores, target - done)
        if not chosen:  # every stage is at its minimum
            stats.dropped = 0
            return self.unchanged(program, stats)
        plan = realize(chosen)
        macs = sum(b.macs for b in chosen)
        apply_plan(program, plan, config=self.config(), stats=stats)
        stats.dropped, stats.dropped_keys = len(chosen), [b.key for b in chosen]
        stats.macs_removed, stats.scores = macs, {k: float(v) for k, v in scores.items()}
        return PassResult(program, True, plan, stats)

    # ------------------------------------------------------------------------ steps
    def _realizer(self, program: Program):
        """The plan dropping given blocks, with their stored means when ``compensate``
        (each block's mean measured once, however many plans the latency loop times)."""
        means: dict[str, torch.Tensor] = {}

        def realize(chosen: list[Block]) -> PruningPlan:
            if self.compensate:
                missing = [b for b in chosen if b.key not in means]
                if missing:
                    means.update((b.key, m) for b, m in zip(missing, self.means(program, missing)))
            return PruningPlan(blocks=[BlockDrop(b.key, means.get(b.key)) for b in chosen])
        return realize

    def candidates(self, program: Program) -> list[Block]:
        """Removable blocks, without the first of each stage when ``protect_first`` and
        without those of stages already at ``min_per_stage`` blocks."""
        room = self._room(program)
        return [b for b in analyze_blocks(program).removable()
                if not (self.protect_first and b.first_in_stage) and room[b.stage] > 0]

    def _room(self, program: Program) -> dict[int, int]:
        return {s: len(bs) - self.min_per_stage for s, bs in analyze_blocks(program).stages().items()}

    def select(self, program: Program, candidates: list[Block], scores: dict[str, float],
               count: int) -> list[Block]:
        """The ``count`` lowest-scoring candidates, each stage keeping ``min_per_stage``."""
        room = self._room(program)
        chosen = []
        for block in sorted(candidates, key=lambda b: (scores[b.key], b.key)):
            if len(chosen) == count:
                break
            if room[block.stage] > 0:
                room[block.stage] -= 1
                chosen.append(block)
        return chosen

    def means(self, program: Program, blocks: list[Block]) -> list[torch.Tensor]:
        """Per-channel mean of each branch output over the calibration data (float64)."""
        targets = {b.output: (-1 if b.channel_axis is None else b.channel_axis) for b in blocks}
        stats = collect_statistics(program, self.calibration, targets, progress=self.progress,
                                   max_batches=self.max_batches, mask=self.mask)
        return [stats[b.output].mean if b.channel_axis is not None
                else stats[b.output].mean.mean().reshape(1) for b in blocks]
