"""Pruning Everything, Everywhere, All at Once (PEEAO, arXiv 2506.04513), as the authors'
code does it (see ``METHODS.md`` section 2).

Per iteration, from the current parent ``F`` (not the original network):

1. **Layer candidate**: :class:`~prunec.passes.DepthPruning` with the criterion (``"kl"``:
   KL of the softmax outputs with the block's branch zeroed), never the first block of a
   stage, every stage keeping at least ``min_per_stage`` (2) blocks; one block is dropped.
2. **Neuron candidate**: inner filters of residual blocks scored by the KL of zeroing each
   one (:mod:`prunec.recipes.neuron_kl`: its second-order estimate by default,
   ``neuron_scores="exact"`` measures it as the code does), as many filters removed
   as the dropped block had (its convolutions' and linear layers' output channels), in one
   global sort, every layer keeping one. With no block left to drop, half of the candidate
   filters go.
3. Both candidates -- clones of ``F`` -- are fine-tuned ``finetune_epochs`` and compared to
   ``F`` by linear CKA (:func:`prunec.ir.similarity.linear_cka`) of the penultimate features
   on ``val_data`` (held-out data, never the test split).
4. The higher CKA is kept (a tie keeps the layer candidate), fine-tuned ``final_epochs``
   more, and becomes the parent; the loop stops once ``macs_reduction`` of the original
   MACs is removed (or nothing is left to remove, or after ``max_iterations``).

**Training.** Every candidate is a pair of Programs: an eval-mode one (scored, compared,
returned) and a train-mode capture of the same model with the same plans replayed, which
:func:`prunec.finetune` trains (batch-norm statistics and dropout as in the model's training
mode); trained weights are copied into the eval-mode Program by name. Both are cloned from
the parent's pair, so the model is captured twice in all.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import torch

from prunec.backends.compiled import CompiledModel
from prunec.errors import PrunecError
from prunec.ir.blocks import analyze_blocks
from prunec.ir.capture import capture
from prunec.ir.cost import count_macs, count_params, mac_kind
from prunec.ir.interpret import scratch_state
from prunec.ir.program import Program
from prunec.ir.similarity import linear_cka, penultimate_features
from prunec.passes.prune_depth import CRITERIA, DepthPruning, dropped_blocks
from prunec.progress import bar
from prunec.recipes.neuron_kl import inner_groups, neuron_kl_exact, neuron_kl_scores, select_units
from prunec.report import PassStats, Report
from prunec.rewrite import apply_plan, recapture
from prunec.rewrite.plan import PruningPlan
from prunec.train import finetune
from prunec.train.finetune import assign_state, logits_of

__all__ = ["peeao", "Candidate", "filters_removed", "choose", "class_balanced"]

Trainer = Callable[[Program, int], Any]
NEURON_SCORES = ("fisher", "exact")


class Candidate:
    """An eval-mode Program, its train-mode twin, and the plan that made them."""

    def __init__(self, program: Program, twin: Program, plan: PruningPlan | None = None,
                 kind: str = "parent"):
        self.program, self.twin, self.plan, self.kind = program, twin, plan, kind

    def child(self, plan: PruningPlan, kind: str, program: Program | None = None, *,
              config: dict | None = None, stats: Any = None) -> "Candidate":
        """Clones of both Programs with ``plan`` applied (``program``: already applied by a
        pass, which recorded its own lineage step), each recorded in the lineage under
        ``config`` (the pass that made the plan) with ``stats``."""
        if program is None:
            program = self.program.clone()
            apply_plan(program, plan, config=config, stats=stats)
        twin = self.twin.clone()
        apply_plan(twin, plan, config=config, stats=stats)
        return Candidate(program, twin, plan, kind)

    def sync(self) -> None:
        """Copy the twin's trained parameters and buffers into the eval-mode Program."""
        assign_state(self.twin.gm, self.program)


def choose(cka_layer: float | None, cka_neuron: float | None) -> str:
    """``"layer"`` when its CKA is at least the neuron candidate's (ties keep the layer)."""
    if cka_layer is None and cka_neuron is None:
        raise PrunecError("no candidate to choose from")
    if cka_neuron is None:
        return "layer"
    if cka_layer is None:
        return "neuron"
    return "layer" if cka_layer >= cka_neuron else "neuron"


def filters_removed(program: Program, keys: list[str]) -> int:
    """Output channels of the weighted layers (conv, linear) in the named blocks' branches."""
    nodes = {n.name: n for n in program.graph.nodes}
    blocks = analyze_blocks(program).by_key()
    total = 0
    for key in keys:
        for name in blocks[key].nodes:
            node = nodes[name]
            if mac_kind(node) in ("conv", "linear") and len(node.args) > 1:
                total += int(program.get_tensor(node.args[1].target).shape[0])
    return total


def class_balanced(data: Iterable, per_class: int, batch_size: int = 256) -> list[torch.Tensor]:
    """Up to ``per_class`` inputs of every class from ``(inputs, target)`` items or batches,
    in batches of ``batch_size`` (PEEAO's code scores on 500 training images per class)."""
    kept: dict[int, list[torch.Tensor]] = {}
    for x, y in _batches(data):
        for xi, yi in zip(x, y.reshape(-1).tolist()):
            bucket = kept.setdefault(int(yi), [])
            if len(bucket) < per_class:
                bucket.append(xi)
        if kept and all(len(v) >= per_class for v in kept.values()) and len(kept) > 1 and \
                _enough(kept, per_class):
            break
    rows = [x for k in sorted(kept) for x in kept[k]]
    if not rows:
        raise PrunecError("class_balanced: train_data yielded no (inputs, target) items.")
    return [torch.stack(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def _enough(kept: dict, per_class: int) -> bool:
    return sum(len(v) for v in kept.values()) >= per_class * len(kept)


def _batches(data: Iterable):
    """``(x, y)`` batches from a Dataset of items or an iterable of batches."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=256, shuffle=False)
    for item in data:
        x, y = item
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise PrunecError("PEEAO's calibration sample needs tensor (inputs, target) items; "
                              "pass calibration= explicitly for other inputs.")
        yield (x, y) if y.dim() > 0 else (x[None], y[None])


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def accuracy(program: Program, data: Iterable) -> float:
    """Top-1 accuracy of ``program`` on ``(inputs, target)`` batches."""
    correct = total = 0
    for x, y in _batches(data):
        with scratch_state(program.gm):  # evaluation leaves the state the forward writes
            pred = logits_of(program.run(x)).argmax(-1)
        correct += int((pred == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


def _default_trainer(train_data, *, lr: float, batch_size: int, options: dict) -> Trainer:
    def train(twin: Program, epochs: int) -> None:
        if epochs > 0:
            finetune(twin, train_data, epochs=epochs, lr=lr, batch_size=batch_size, **options)
    return train


# ---------------------------------------------------------------------------- candidates
def _layer_candidate(parent: Candidate, calibration, criterion: str, compensate: bool,
                     min_per_stage: int) -> tuple[Candidate, int] | None:
    program = parent.program.clone()
    pass_ = DepthPruning(dropped_blocks(program) + 1, calibration=calibration,
                         criterion=criterion, compensate=compensate, protect_first=True,
                         min_per_stage=min_per_stage)
    result = pass_(program)
    if not result.modified:
        return None
    keys = result.stats.dropped_keys
    count = filters_removed(parent.program, keys)
    step = program.lineage[-1]  # the DepthPruning step: the twin records the same
    return parent.child(result.plan, "layer", program, config=step.config,
                        stats=step.stats), count


def _neuron_candidate(parent: Candidate, calibration, count: int | None,
                      neuron_scores: str) -> Candidate | None:
    groups = inner_groups(parent.program)
    if not groups:
        return None
    if count is None:  # no block left to drop: half of the candidate filters (the code)
        count = sum(g.size for g, _ in groups.values()) // 2
    score = neuron_kl_exact if neuron_scores == "exact" else neuron_kl_scores
    scores = score(parent.program, groups, calibration)
    plan = select_units(groups, scores, count)
    if not plan:
        return None
    config = {"pass": "PEEAO", "unit": "neuron", "filters": count, "scores": neuron_scores}
    total = sum(g.size for g, _ in groups.values())
    kept = sum(len(plan.keep[key]) if key in plan.keep else g.size
               for key, (g, _) in groups.items())
    stats = PassStats(targets="block inner channels", groups=len(groups), units_total=total,
                      pruned_groups=len(plan.keep), units_removed=total - kept)
    return parent.child(plan, "neuron", config=config, stats=stats)


# ---------------------------------------------------------------------------- recipe
def peeao(model: torch.nn.Module, example_inputs: Any, train_data: Any, val_data: Iterable, *,
          macs_reduction: float, finetune_epochs: int = 10, final_epochs: int | None = None,
          criterion: str = "kl", neuron_scores: str = "fisher", compensate: bool = False,
          calibration: Iterable | None = None,
          per_class: int = 50, min_per_stage: int = 2, max_iterations: int = 100,
          lr: float = 1e-3, batch_size: int = 128, trainer: Trainer | None = None,
          finetune_options: dict | None = None, progress: bool | None = None,
          on_iteration: Callable[[dict, Program], Any] | None = None):
    """Prune ``model`` with PEEAO until ``macs_reduction`` of its MACs is removed.

    Args:
        model: The trained model (never modified).
        example_inputs: A tensor or tuple of positional inputs for capture.
        train_data: ``(inputs, target)`` items (a ``Dataset``) or batches, for fine-tuning and
            the default calibration sample.
        val_data: Re-iterable ``(inputs, target)`` batches of held-out data: CKA features and
            the accuracy in the report.
        macs_reduction: Fraction of the original MACs to remove, in ``(0, 1)``.
        finetune_epochs: Epochs of each candidate's fine-tune (the code: 10).
        final_epochs: Further epochs of the kept candidate each iteration (the code: 190;
            default ``finetune_epochs``).
        criterion: Block criterion of :class:`~prunec.passes.DepthPruning` (``"kl"``).
        neuron_scores: How the neuron candidate's filters are scored: ``"fisher"``, the
            second-order estimate of the KL of zeroing each (one forward, K backward passes),
            or ``"exact"``, that KL measured with one forward pass per filter (the authors'
            procedure; ~100x slower on a ResNet-56).
        compensate: Replace a dropped block by its mean output (the paper zeroes it).
        calibration: Input batches for the KL scores (default: ``per_class`` training
            inputs of every class).
        per_class: Size of the default calibration sample per class (the code: 500).
        min_per_stage: Blocks every stage keeps (the code: 2).
        max_iterations: Stop after this many iterations.
        lr: Peak learning rate of :func:`prunec.finetune`.
        batch_size: Batch size of :func:`prunec.finetune` for ``Dataset`` inputs.
        trainer: ``trainer(train_program, epochs)`` replacing :func:`prunec.finetune`.
        finetune_options: Extra keyword options of :func:`prunec.finetune`.
        progress: Show a bar per iteration on standard error (default: when a terminal).
        on_iteration: ``on_iteration(row, program)`` after every iteration, with the new
            parent (e.g. to keep checkpoints at several MACs reductions; do not mutate it).

    Returns:
        A :class:`~prunec.api.CompiledModel`; ``report.iterations`` holds one dict per
        iteration: ``iteration, cka_layer, cka_neuron, choice, macs, params,
        macs_reduction, val_accuracy, blocks_dropped, filters_removed``.
    """
    _check(macs_reduction, finetune_epochs, final_epochs, criterion)
    if neuron_scores not in NEURON_SCORES:
        raise PrunecError(f"peeao: neuron_scores must be one of {NEURON_SCORES}, got {neuron_scores!r}.")
    _check_pairs(val_data, "val_data")
    final_epochs = finetune_epochs if final_epochs is None else final_epochs
    train = trainer or _default_trainer(train_data, lr=lr, batch_size=batch_size,
                                        options=dict(finetune_options or {}))
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    program = capture(model, args)
    if not analyze_blocks(program).removable() and not inner_groups(program):
        raise PrunecError(f"peeao: {type(model).__name__} has no removable residual block and no "
                          f"prunable channels inside one; PEEAO prunes residual networks "
                          f"(see prunec.analyze(model, example_inputs) for what is prunable; "
                          f"use prunec.compile with a width pass for other models).")
    parent = Candidate(program, recapture(model, program, train=True))
    calibration = list(calibration) if calibration is not None else class_balanced(train_data, per_class)
    report = Report.start(parent.program, model=model)
    macs0 = count_macs(parent.program)
    iterations: list[dict] = []
    stop = f"max_iterations={max_iterations} reached"  # why a run ends short of the target
    with bar(total=max_iterations, desc="PEEAO", unit="iter", progress=progress) as pbar:
        for it in range(max_iterations):
            if 1 - count_macs(parent.program) / macs0 >= macs_reduction - 1e-12:
                break
            row, parent = _iteration(parent, calibration, val_data, train, criterion, compensate,
                                     min_per_stage, finetune_epochs, final_epochs, it, macs0,
                                     neuron_scores)
            if row is None:
                stop = "neither a block nor a filter is left to remove"
                break
            iterations.append(row)
            if on_iteration is not None:
                on_iteration(row, parent.program)
            pbar.update(1)
            pbar.set_postfix(cut=f"{100 * row['macs_reduction']:.1f}%", choice=row["choice"],
                             acc=f"{row['val_accuracy']:.3f}")
    reached = 1 - count_macs(parent.program) / macs0
    if reached < macs_reduction - 1e-12:
        warnings.warn(f"peeao: stopped at {100 * reached:.1f}% of the MACs removed, short of "
                      f"macs_reduction={macs_reduction} ({stop}).", stacklevel=2)
    report.finish(parent.program)
    report.read_lineage(parent.program)  # each iteration's kept step: a block or neurons
    report.iterations.extend(iterations)
    return CompiledModel(parent.program, report)


def _check(macs_reduction, finetune_epochs, final_epochs, criterion) -> None:
    if not isinstance(macs_reduction, (int, float)) or not 0.0 < float(macs_reduction) < 1.0:
        raise PrunecError(f"peeao: macs_reduction must be in (0, 1), got {macs_reduction!r} "
                          f"(0.8 removes 80% of the MACs).")
    for name, value in (("finetune_epochs", finetune_epochs), ("final_epochs", final_epochs)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise PrunecError(f"peeao: {name} must be an int >= 0, got {value!r}.")
    if criterion not in CRITERIA:
        raise PrunecError(f"peeao: criterion must be one of {CRITERIA}, got {criterion!r}.")


def _check_pairs(data: Any, name: str) -> None:
    """``data`` is re-iterable and its first item is a tensor ``(inputs, target)`` pair."""
    from torch.utils.data import Dataset

    try:
        one_shot = iter(data) is data
    except TypeError:
        raise PrunecError(f"peeao: {name} must be an iterable of (inputs, target) batches or a "
                          f"Dataset, got {type(data).__name__}.") from None
    if one_shot:
        raise PrunecError(f"peeao: {name} must be re-iterable (a list of batches, a DataLoader or "
                          f"a Dataset); got a one-shot {type(data).__name__}, which the second "
                          f"iteration would find empty.")
    first = next(iter(data), None)
    if first is None:
        raise PrunecError(f"peeao: {name} is empty; pass (inputs, target) batches.")
    # Dataset items are collated by a DataLoader, so their targets may be Python ints
    tensors = first[:1] if isinstance(data, Dataset) else first
    if not (isinstance(first, (tuple, list)) and len(first) == 2
            and all(isinstance(t, torch.Tensor) for t in tensors)):
        raise PrunecError(f"peeao: {name} items must be (inputs, target) pairs of tensors; the "
                          f"first item is {type(first).__name__}"
                          f"{'' if not isinstance(first, (tuple, list)) else f' of length {len(first)}'}.")


def _iteration(parent, calibration, val_data, train, criterion, compensate, min_per_stage,
               finetune_epochs, final_epochs, it, macs0, neuron_scores):
    """One PEEAO step; returns ``(row, new parent)`` or ``(None, parent)`` when stuck."""
    layer = _layer_candidate(parent, calibration, criterion, compensate, min_per_stage)
    count = layer[1] if layer is not None else None
    neuron = _neuron_candidate(parent, calibration, count, neuron_scores)
    layer = layer[0] if layer is not None else None
    if layer is None and neuron is None:
        return None, parent
    reference = penultimate_features(parent.program, val_data)
    cka = {}
    for cand in (layer, neuron):
        if cand is None:
            continue
        train(cand.twin, finetune_epochs)
        cand.sync()
        cka[cand.kind] = linear_cka(reference, penultimate_features(cand.program, val_data))
    choice = choose(cka.get("layer"), cka.get("neuron"))
    kept = layer if choice == "layer" else neuron
    train(kept.twin, final_epochs)
    kept.sync()
    macs = count_macs(kept.program)
    row = {"iteration": it, "cka_layer": cka.get("layer"), "cka_neuron": cka.get("neuron"),
           "choice": choice, "macs": macs, "params": count_params(kept.program),
           "macs_reduction": 1 - macs / macs0, "val_accuracy": accuracy(kept.program, val_data),
           "blocks_dropped": dropped_blocks(kept.program),
           "filters_removed": count if count is not None else None}
    return row, kept
