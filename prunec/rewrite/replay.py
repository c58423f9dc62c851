"""Replaying a program's lineage on a fresh capture of its model.

A compiled program is captured in eval mode; training needs the model's train-mode graph
(dropout, batch-norm statistics, ``if self.training`` branches), and a recipe that trains
evaluates on an eval-mode graph. Both are a fresh capture of the same model with every step
of the program's lineage (:attr:`~prunec.ir.program.Program.lineage`) applied again, in
order: the plans name only what survives a capture (parameter axes, module paths, consumer
weights), so the replay needs no guessing.
"""
from __future__ import annotations

import dataclasses

import torch

from prunec.ir.capture import capture
from prunec.ir.program import Program
from prunec.rewrite.apply import apply_plan

__all__ = ["recapture", "replay"]


def recapture(model: torch.nn.Module, program: Program, *, train: bool = False) -> Program:
    """A fresh capture of ``model`` with ``program``'s structure.

    ``model`` is captured with ``program``'s example inputs and capture options, in train
    mode when ``train``, then :func:`replay` applies ``program``'s lineage. The result has
    ``model``'s weights (pruned as planned), not ``program``'s: copy those by name
    (:func:`prunec.train.assign_state`) when the program was trained.

    Raises:
        CaptureError: the model no longer captures with those inputs.
        PlanError: a step names a group, block or consumer that the new capture does not
            have (``model`` is not the model ``program`` was made from).
    """
    fresh = capture(model, program.example_args, program.example_kwargs, train=train,
                    **program.capture_options)
    return replay(fresh, program)


def replay(target: Program, source: Program) -> Program:
    """Apply every step of ``source``'s lineage to ``target`` (in place), recording the same
    steps (pass name, config, statistics) so that idempotence and the report count them.

    A step that changed nothing (a pass that kept everything) is recorded as it is, with
    nothing to apply; ``target``'s original group sizes (``origin``) follow from the
    replayed steps. Returns ``target``.
    """
    for step in source.lineage:
        if step.modified and step.plan:
            apply_plan(target, step.plan, config=step.config, stats=step.stats)
        else:
            target.record(dataclasses.replace(step, changed=dict(step.changed),
                                              before=dict(step.before)))
    return target
