"""Pruning plans: plain data that says what a rewrite removes (DESIGN.md contract 4).

A :class:`PruningPlan` holds, for each channel group by its stable key, the units to keep,
plus compensations (mean activations of what was removed). It prints, saves to JSON and
replays on a fresh capture of the same model: ``apply_plan(program, plan)``
(:mod:`prunec.rewrite.apply`) is the only code that carries it out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from prunec.ir.channels import ChannelAnalysis

__all__ = ["PruningPlan", "MeanCompensation"]


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
