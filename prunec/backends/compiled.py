"""``CompiledModel``: a pruned program, its report and its lowered artifact.

What :func:`prunec.compile` and the recipes return. The artifact is lowered lazily and again
whenever the program's weights change (``prunec.finetune``), so it is never stale
(DESIGN.md contract 7).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prunec.backends.onnx_original import lower_original
from prunec.backends.registry import lower
from prunec.frontends.onnx import onnx_source
from prunec.ir.program import Program
from prunec.report import Report
from prunec.rewrite import PruningPlan
from prunec.validate import check_save_path

__all__ = ["CompiledModel", "lower_program"]


class CompiledModel:
    """The result of :func:`compile`: the pruned program and its lowered artifact.

    Attributes:
        program: The pruned Program (graph, parameters, lineage in ``program.lineage``).
        report: Costs before/after and one entry per pass.
        backend: The backend name; ``backend_options`` its options.

    The artifact always reflects the program's current weights: when the program changes
    after lowering (``prunec.finetune``), the next use of :attr:`artifact` (a call, a save)
    lowers it again.
    """

    def __init__(self, program: Program, report: Report, backend: str = "torch",
                 backend_options: dict | None = None, artifact: Any = None):
        self.program = program
        self.report = report
        self.backend = backend
        self.backend_options = dict(backend_options or {})
        self._artifact = artifact
        self._lowered_version = program.version if artifact is not None else -1

    @property
    def module(self) -> torch.nn.Module:
        """The pruned model: with ``backend="module"`` a pruned copy of the caller's module
        (same class, its own forward; see :mod:`prunec.backends.module`), otherwise the
        pruned graph module, called exactly like the original model (eval mode)."""
        if self.backend == "module":
            return self.artifact.module
        return self.program.gm

    @property
    def plans(self) -> list[PruningPlan]:
        """Every plan applied, in order: replay them with ``prunec.compile(model, x,
        plans=compiled.plans)`` or save them with ``plan.to_json()``."""
        return list(self.program.plans)

    @property
    def artifact(self) -> Any:
        """The backend's artifact, lowered again if the program changed since."""
        if self._artifact is None or self._lowered_version != self.program.version:
            self._artifact = lower_program(self.program, self.backend, self.backend_options)
            self._lowered_version = self.program.version
        return self._artifact

    def __call__(self, *args, **kwargs):
        return self.artifact(*args, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Save the artifact (``.pt2`` for torch and inductor, ``.onnx``, a TensorRT plan);
        :func:`prunec.load` restores it without the model's code. A path in a missing
        directory is refused before a stale artifact is lowered again."""
        path = check_save_path(path)
        return self.artifact.save(path)

    def __repr__(self) -> str:
        return (f"<CompiledModel backend={self.backend!r} plans={len(self.program.plans)} "
                f"MACs {self.report.macs_before} -> {self.report.macs_after}>")


def lower_program(program: Program, backend: str, options: dict):
    """Lower ``program`` to ``backend``; a program captured from an ONNX file is written back
    into that file's graph instead (:mod:`prunec.backends.onnx_original`)."""
    if onnx_source(program) is not None:  # the plan written back into the user's file
        return lower_original(program, backend, **options)
    return lower(program, backend, **options)
