"""Pruning plans: plain data that says what a rewrite removes (DESIGN.md contract 4).

A :class:`PruningPlan` holds, for each channel group by its stable key, the units to keep,
the residual blocks to drop (:class:`BlockDrop`, by block key), plus compensations (mean
activations of what was removed). It prints, saves to JSON and replays on a fresh capture of
the same model: ``apply_plan(program, plan)`` (:mod:`prunec.rewrite.apply`) is the only code
that carries it out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from prunec.ir.channels import ChannelAnalysis

__all__ = ["PruningPlan", "MeanCompensation", "BlockDrop"]


@dataclass
class MeanCompensation:
    """Replace the pruned channels of ``value`` (along ``axis``) by the constants ``mean``."""

    value: str
    axis: int
    mean: torch.Tensor  # one entry per channel of the original axis


@dataclass
class BlockDrop:
    """Remove the residual branch of block ``key`` (see :mod:`prunec.ir.blocks`).

    ``mean``: per-channel mean of the branch output over calibration data (on the block's
    channel axis), added at the residual in place of the branch; ``None`` drops the branch
    (the block becomes ``y = x``, or ``act(x)``).
    """

    key: str
    mean: torch.Tensor | None = None


@dataclass
class PruningPlan:
    """Kept units per group key, dropped blocks, compensations. Plain data: print, save, replay."""

    keep: dict[str, list[int]] = field(default_factory=dict)
    compensations: list[MeanCompensation] = field(default_factory=list)
    blocks: list[BlockDrop] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.keep) or bool(self.blocks)

    def summary(self, analysis: ChannelAnalysis | None = None) -> str:
        groups = analysis.by_key() if analysis is not None else {}
        lines = [f"{k}: keep {len(v)}/{groups[k].size}" if k in groups else f"{k}: keep {len(v)}"
                 for k, v in self.keep.items()]
        lines += [f"drop block {b.key}" + (" (mean compensated)" if b.mean is not None else "")
                  for b in self.blocks]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary() or "(empty plan)"

    def to_json(self) -> str:
        comps = [{"value": c.value, "axis": c.axis, "mean": c.mean.double().tolist()}
                 for c in self.compensations]
        blocks = [{"key": b.key, "mean": None if b.mean is None else b.mean.double().tolist()}
                  for b in self.blocks]
        return json.dumps({"keep": self.keep, "compensations": comps, "blocks": blocks})

    @classmethod
    def from_json(cls, text: str) -> "PruningPlan":
        data = json.loads(text)
        comps = [MeanCompensation(c["value"], c["axis"], torch.tensor(c["mean"], dtype=torch.float64))
                 for c in data.get("compensations", [])]
        blocks = [BlockDrop(b["key"], None if b.get("mean") is None
                            else torch.tensor(b["mean"], dtype=torch.float64))
                  for b in data.get("blocks", [])]
        return cls({k: list(v) for k, v in data["keep"].items()}, comps, blocks)
