"""Pruning plans: plain data that says what a rewrite removes (DESIGN.md contract 4).

A :class:`PruningPlan` holds, for each channel group by its stable key, the units to keep,
the residual blocks to drop (:class:`BlockDrop`, by block key), plus compensations (mean
activations of what was removed). It prints, saves to JSON and replays on a fresh capture of
the same model: ``apply_plan(program, plan)`` (:mod:`prunec.rewrite.apply`) is the only code
that carries it out.

Every name in a plan survives a fresh capture (eval or train mode), a saved file and the
user's module tree:

* a channel group is ``"<parameter>:<axis>"`` (the key of :class:`~prunec.ir.channels.ChannelGroup`);
* a block is its module path (:mod:`prunec.ir.blocks`);
* a compensation is ``(consumer weight parameter, axis)``: the layer whose removed *input*
  channels (``axis`` of its weight, 1 for linear and convolution) are replaced by means.

Plans saved before compensations were keyed this way name a graph value instead
(``{"value": "relu_1", ...}``); :meth:`PruningPlan.from_json` keeps such entries as
:class:`ValueCompensation`, which :func:`~prunec.rewrite.apply.apply_plan` converts on the
program it is applied to (the capture the plan was made on, in eval mode), or refuses with a
:class:`~prunec.errors.PlanError` that says how to convert them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from prunec.errors import PlanError

if TYPE_CHECKING:
    from prunec.ir.channels import ChannelAnalysis

__all__ = ["PruningPlan", "MeanCompensation", "BlockDrop", "ValueCompensation",
           "plans_from_metadata"]


@dataclass
class MeanCompensation:
    """Replace the removed input channels of a layer by the constants ``mean``.

    Attributes:
        consumer: Fully qualified name of the consuming layer's weight
            (``"blocks.0.mlp.fc2.weight"``).
        axis: The weight's axis that reads the channels (1 for ``linear`` and ``conv``).
        mean: One entry per channel of the original (unpruned) axis, float64.
    """

    consumer: str
    axis: int
    mean: torch.Tensor


@dataclass
class ValueCompensation:
    """A compensation from a plan saved by an older prunec: keyed by the graph value
    ``value`` (an fx node name of the eval-mode capture) and its channel ``axis``.

    :meth:`to_mean_compensations` converts it on that capture (one
    :class:`MeanCompensation` per consumer of the value).
    """

    value: str
    axis: int
    mean: torch.Tensor


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
    """Kept units per group key, dropped blocks, compensations. Plain data: print, save, replay.

    ``source`` is the config of the pass that made the plan (``{"pass": "MagnitudePruning",
    "ratio": 0.5, ...}``; set when the plan is applied for a pass, saved in its JSON):
    replaying the plan records that pass in the lineage, so running the pass again on the
    replayed program is a no-op. ``{}`` when unknown (the replay is then recorded as
    ``"replay"``). It is not part of a plan's equality: two plans that remove the same units
    are equal.
    """

    keep: dict[str, list[int]] = field(default_factory=dict)
    compensations: list = field(default_factory=list)  # MeanCompensation (ValueCompensation: old files)
    blocks: list[BlockDrop] = field(default_factory=list)
    source: dict = field(default_factory=dict, compare=False)

    def __bool__(self) -> bool:
        return bool(self.keep) or bool(self.blocks)

    def summary(self, analysis: "ChannelAnalysis | None" = None) -> str:
        groups = analysis.by_key() if analysis is not None else {}
        lines = [f"{k}: keep {len(v)}/{groups[k].size}" if k in groups else f"{k}: keep {len(v)}"
                 for k, v in self.keep.items()]
        lines += [f"drop block {b.key}" + (" (mean compensated)" if b.mean is not None else "")
                  for b in self.blocks]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary() or "(empty plan)"

    def to_json(self) -> str:
        comps = [_comp_json(c) for c in self.compensations]
        blocks = [{"key": b.key, "mean": None if b.mean is None else b.mean.double().tolist()}
                  for b in self.blocks]
        data = {"keep": self.keep, "compensations": comps, "blocks": blocks}
        if self.source:  # older readers ignore it
            data["source"] = self.source
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "PruningPlan":
        """The plan :meth:`to_json` wrote (or an older prunec: see the module docstring).

        Raises:
            PlanError: the text is not a saved plan.
        """
        try:
            data = json.loads(text)
            comps = [_comp_from(c) for c in data.get("compensations", [])]
            blocks = [BlockDrop(b["key"], None if b.get("mean") is None
                                else torch.tensor(b["mean"], dtype=torch.float64))
                      for b in data.get("blocks", [])]
            source = data.get("source") or {}
            if not isinstance(source, dict) or (source and not isinstance(source.get("pass"), str)):
                raise TypeError(f"'source' must be a pass config with a 'pass' name, got "
                                f"{source!r}")
            return cls({k: list(v) for k, v in data["keep"].items()}, comps, blocks, source)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PlanError(f"not a saved PruningPlan ({type(exc).__name__}: {exc}); pass the "
                            f"text of plan.to_json().") from exc

    def needs_conversion(self) -> bool:
        """Whether compensations are still keyed by graph values (a plan from an older file)."""
        return any(isinstance(c, ValueCompensation) for c in self.compensations)


def plans_from_metadata(metadata: dict) -> list[PruningPlan]:
    """The plans of a saved artifact's metadata (``prunec.load(path).metadata``, or the
    ``prunec.json`` in its archive), ready for ``prunec.compile(..., plans=...)``.

    Each plan says which pass made it (``plan.source``): from its own JSON, or, for a file
    whose plans predate ``source``, from the matching entry of the metadata's ``lineage``
    (its steps that changed the program, in the order of ``plans``) or of a report's
    ``passes`` (``report.to_dict()``, e.g. the ``report.json`` of ``prunec prune``: its
    entries that changed the program; their options leave out ``progress``, so a config
    rebuilt from a report lacks it). A plan that none of these names is replayed as
    ``"replay"``.

    Raises:
        PlanError: an entry of ``plans`` that is not a saved plan.
    """
    plans = [PruningPlan.from_json(p if isinstance(p, str) else json.dumps(p))
             for p in metadata.get("plans") or []]
    configs = [s.get("config") for s in metadata.get("lineage") or []
               if isinstance(s, dict) and s.get("modified", True)]
    if not configs:  # a report's entries: {"pass": name, "options": {...}, "modified": ...}
        configs = [{"pass": e.get("pass"), **e["options"]} if isinstance(e.get("options"), dict)
                   and e.get("pass") != "replay" else None
                   for e in metadata.get("passes") or [] if isinstance(e, dict) and e.get("modified")]
    if len(configs) == len(plans):  # parallel lists: each names its plan's pass
        for plan, config in zip(plans, configs):
            if not plan.source and isinstance(config, dict) \
                    and isinstance(config.get("pass"), str):
                plan.source = dict(config)
    return plans


def _comp_json(comp) -> dict:
    mean = comp.mean.double().tolist()
    if isinstance(comp, ValueCompensation):
        return {"value": comp.value, "axis": comp.axis, "mean": mean}
    return {"consumer": comp.consumer, "axis": comp.axis, "mean": mean}


def _comp_from(entry: dict):
    mean = torch.tensor(entry["mean"], dtype=torch.float64)
    if "consumer" in entry:
        return MeanCompensation(entry["consumer"], int(entry["axis"]), mean)
    return ValueCompensation(entry["value"], int(entry["axis"]), mean)
