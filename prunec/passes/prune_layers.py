"""Layer depth pruning: ``DepthPruning(n, unit="layer")`` removes whole layers.

A transformer decoder layer holds two residual blocks (:mod:`prunec.ir.blocks`): attention
``h = x + attn(norm1(x))`` and MLP ``y = h + mlp(norm2(h))``. ShortGPT and Minitron's depth
pruning remove whole layers, which is what a Hugging Face config (``num_hidden_layers``) and
the ``module`` backend (a member of the layer list removed) can describe. A **layer** is the
set of blocks keyed under one module path (``model.layers.3/...``; a block whose key has no
``/`` is a layer of its own); it is a candidate when all its blocks are removable.

Scores (higher = keep), with ``x`` the input of the layer's first block and ``y`` the output
of its last (the residual stream before and after the layer):

- ``"cosine"`` (ShortGPT's Block Influence): ``1 - cos(x, y)`` per position, averaged;
- ``"angular"`` (Gromov et al.): ``arccos(cos(x, y)) / pi``, averaged;
- ``"kl"``: ``KL(q || p)`` between the outputs with and without all the layer's branches
  (each branch output zeroed);
- ``"magnitude"``: the sum of the layer's blocks' branch scales.

Dropping a layer drops each of its blocks (with its mean under ``compensate=True``) in one
plan, so replay, verification (``"mean"`` / ``"zeroing"``) and the report are those of
:class:`~prunec.passes.prune_depth.DepthPruning` for blocks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from prunec.errors import PrunecError
from prunec.ir.blocks import Block, analyze_blocks
from prunec.ir.interpret import ProgramInterpreter
from prunec.ir.program import Program
from prunec.passes.base import PassResult, PassStats
from prunec.passes.latency import drop_blocks
from prunec.passes.depth_scores import (branch_scale, calibration_items, log_softmax_rows,
                                        similarity_scores)
from prunec.rewrite import apply_plan
from prunec.rewrite.plan import BlockDrop
from prunec.train.finetune import logits_of

__all__ = ["Layer", "layers_of", "dropped_layers", "run_layer_depth"]


@dataclass(frozen=True)
class Layer:
    """Blocks under one module path, in graph order."""

    path: str
    blocks: tuple[Block, ...]

    @property
    def removable(self) -> bool:
        return all(b.removable for b in self.blocks)


def layer_path(key: str) -> str:
    """``model.layers.3`` for block key ``model.layers.3/post_attention_layernorm+mlp``."""
    return key.split("/")[0].split("#")[0]


def layers_of(program: Program) -> list[Layer]:
    """The program's layers, in graph order."""
    order = {n.name: i for i, n in enumerate(program.graph.nodes)}
    by_path: dict[str, list[Block]] = {}
    for block in analyze_blocks(program).blocks:
        by_path.setdefault(layer_path(block.key), []).append(block)
    layers = [Layer(p, tuple(sorted(bs, key=lambda b: order[b.add]))) for p, bs in by_path.items()]
    return sorted(layers, key=lambda l: order[l.blocks[0].add])


def dropped_layers(program: Program) -> int:
    """Layers dropped so far, from the lineage (distinct module paths of dropped blocks)."""
    return len({layer_path(drop.key) for plan in getattr(program, "plans", ())
                for drop in (getattr(plan, "blocks", ()) or ())})


def run_layer_depth(pass_, program: Program) -> PassResult:
    """The body of ``DepthPruning.__call__`` for ``unit="layer"``."""

    layers = layers_of(program)
    candidates = [l for l in layers if l.removable]
    if pass_.protect_first and candidates and candidates[0] is layers[0]:
        candidates = candidates[1:]
    done = dropped_layers(program)
    stats = PassStats(unit="layer", layers=len(layers), candidates=len(candidates),
                      dropped_before=done)
    if pass_.latency_target is not None:
        if pass_.already_applied(program):  # its target is already reached
            stats.already_applied = True
            return pass_.unchanged(program, stats)
        target = done + len(candidates)  # the knapsack decides how many
    else:
        target = pass_.num_blocks if pass_.num_blocks is not None else \
            round(pass_.ratio * (len([l for l in layers if l.removable]) + done))
    if target - done <= 0 or not candidates:
        stats.dropped = 0
        return pass_.unchanged(program, stats)
    if pass_.criterion != "magnitude" and program.training:
        raise PrunecError("DepthPruning scores layers in eval mode, but this program was "
                          "captured with train=True; capture with train=False.")
    scores = layer_scores(program, candidates, pass_)
    realize = _layer_realizer(pass_, program)
    if pass_.latency_target is not None:
        spans = [_LayerSpan(l) for l in candidates]  # a layer as one candidate of its blocks
        picked, stats.latency = drop_blocks(
            program, spans, scores, {0: len(spans)}, pass_.latency_target,
            where="DepthPruning(unit='layer')", realize=lambda c: realize([s.layer for s in c]),
            drops=lambda span: [BlockDrop(b.key, None) for b in span.layer.blocks])
        chosen = [span.layer for span in picked]
        if not chosen:
            stats.dropped = 0
            return pass_.unchanged(program, stats)
    else:
        chosen = sorted(candidates, key=lambda l: (scores[l.path], l.path))[:target - done]
    blocks = [b for layer in chosen for b in layer.blocks]
    plan = realize(chosen)
    apply_plan(program, plan, config=pass_.config(), stats=stats)
    stats.dropped, stats.dropped_layers = len(chosen), [l.path for l in chosen]
    stats.dropped_keys, stats.macs_removed = [b.key for b in blocks], sum(b.macs for b in blocks)
    stats.scores = {k: float(v) for k, v in scores.items()}
    return PassResult(program, True, plan, stats)


@dataclass(frozen=True)
class _LayerSpan:
    """A layer as one candidate of the latency selection: its blocks' nodes, one stage."""

    layer: Layer

    @property
    def key(self) -> str:
        return self.layer.path

    @property
    def nodes(self) -> tuple:
        return tuple(n for b in self.layer.blocks for n in b.nodes)

    stage: int = 0


def _layer_realizer(pass_, program: Program):
    """The plan dropping given layers: every block of each, through the pass's own block
    realizer (stored means when ``compensate``, each measured once)."""
    realize_blocks = pass_._realizer(program)
    return lambda layers: realize_blocks([b for layer in layers for b in layer.blocks])


def layer_scores(program: Program, layers: list[Layer], pass_) -> dict[str, float]:
    """Importance of every layer (higher = keep) under ``pass_.criterion``."""
    if pass_.criterion == "magnitude":
        return {l.path: sum(branch_scale(program, b) for b in l.blocks) for l in layers}
    items = calibration_items(pass_.calibration, pass_.max_batches)
    if pass_.criterion == "kl":
        return _kl_layer_scores(program, layers, items)
    # A layer as one span: its first block's input against its last block's output.
    spans = [dataclasses.replace(l.blocks[0], key=l.path, add=l.blocks[-1].add) for l in layers]
    return similarity_scores(program, spans, items, pass_.criterion, pass_.mask)


def _kl_layer_scores(program: Program, layers: list[Layer], items: list) -> dict[str, float]:
    interp = ProgramInterpreter(program)
    sums = {l.path: 0.0 for l in layers}
    rows = 0
    with torch.no_grad():
        for item in items:
            interp.overrides = {}
            log_p = log_softmax_rows(logits_of(interp.call_item(item)))
            rows += log_p.shape[0]
            for layer in layers:
                interp.overrides = {b.output: torch.zeros_like for b in layer.blocks}
                log_q = log_softmax_rows(logits_of(interp.call_item(item)))
                sums[layer.path] += float((log_q.exp() * (log_q - log_p)).sum())
    return {k: v / max(rows, 1) for k, v in sums.items()}
