"""The ``torch`` backend: the pruned graph module itself, run eagerly.

The artifact calls its own copy of ``program.gm`` (new graph and modules, the same weight
tensors: no memory is duplicated, and a later rewrite of the program, which makes new
tensors, never reaches it) under ``torch.no_grad()``. Inputs are checked against the
captured interface first (:meth:`IOSpec.check_tensors`): a wrong dtype, rank or fixed size
raises :class:`~prunec.errors.PrunecError` naming the input.

``save`` re-exports the module with ``torch.export``, keeping dynamic exactly the axes the
program keeps dynamic, and writes the ``ExportedProgram`` with ``torch.export.save`` plus
prunec's metadata (``prunec.json``: interface and plans): a ``.pt2`` file that
:meth:`TorchArtifact.load` (or ``prunec.load``) restores without the model's Python code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree

from prunec.backends.artifact import METADATA_NAME, metadata_for
from prunec.backends.base import Artifact, IOSpec, sample_inputs

if TYPE_CHECKING:
    from prunec.ir.program import Program

__all__ = ["TorchArtifact", "lower_torch", "reexport"]


class TorchArtifact(Artifact):
    """An eager ``torch.nn.Module`` (the pruned graph module, or a reloaded export).

    Args:
        module: The module to run.
        io: The flat interface (input checks, dynamic axes for saving).
        example_args: Positional example inputs (needed by :meth:`save` to re-export).
        example_kwargs: Keyword example inputs.
        exported: An ``ExportedProgram`` to save as is (set by :meth:`load`).
        metadata: prunec's metadata saved with the file.
    """

    name = "torch"

    def __init__(self, module: torch.nn.Module, io: IOSpec | None = None,
                 example_args: tuple = (), example_kwargs: dict | None = None,
                 exported: Any = None, metadata: dict | None = None) -> None:
        self.module = module
        self.io = io
        self.example_args = tuple(example_args)
        self.example_kwargs = dict(example_kwargs or {})
        self.metadata = dict(metadata or {})
        self._exported = exported

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.io is not None:
            self.io.flatten_inputs(args, kwargs)  # checks dtype, rank and fixed sizes
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def exported_program(self) -> torch.export.ExportedProgram:
        """The module as an ``ExportedProgram`` (re-exported on first use)."""
        if self._exported is None:
            self._exported = reexport(self.module, self.example_args, self.example_kwargs,
                                      self.io)
        return self._exported

    def save(self, path: str | Path) -> Path:
        """Write a ``torch.export`` ``.pt2`` file with prunec's metadata."""
        path = Path(path)
        meta = {**self.metadata, "backend": self.metadata.get("backend", self.name)}
        torch.export.save(self.exported_program(), path,
                          extra_files={METADATA_NAME: json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TorchArtifact":
        """Load a file written by :meth:`save` (no model code needed)."""
        extra = {METADATA_NAME: ""}
        exported = torch.export.load(Path(path), extra_files=extra)
        metadata = json.loads(extra[METADATA_NAME]) if extra[METADATA_NAME] else {}
        io = IOSpec.from_json(metadata["io"]) if metadata.get("io") else None
        return cls(exported.module(), io, exported=exported, metadata=metadata)


def lower_torch(program: "Program") -> TorchArtifact:
    """Lower ``program`` to an eager torch artifact (its own graph, shared weights)."""
    io = IOSpec.from_program(program)
    return TorchArtifact(program.clone(share_tensors=True).gm, io, program.example_args,
                         program.example_kwargs, metadata=metadata_for(program, "torch", io))


def reexport(module: torch.nn.Module, args: tuple, kwargs: dict,
             io: IOSpec | None = None) -> torch.export.ExportedProgram:
    """``torch.export.export`` (non-strict) of a graph module, keeping dynamic the axes that
    ``io.input_shapes`` marks dynamic (every axis of size > 1 without ``io``).

    A dynamic batch axis whose example has size 1 is exported from a batch of 2 built from
    the example (export specialises axes of size 1).
    """
    if io is not None and io.input_shapes and any(io.batch_inputs):
        tensors = io.flatten_inputs(args, kwargs)
        if any(b and t.shape[0] == 1 for t, b in zip(tensors, io.batch_inputs)):
            args, kwargs = sample_inputs(io, args, kwargs, batch=2)
    shapes = iter(io.input_shapes) if io is not None and io.input_shapes else None

    def spec(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return None
        want = next(shapes) if shapes is not None else [None if s > 1 else s for s in x.shape]
        return {ax: torch.export.Dim.AUTO for ax, w in enumerate(want) if w is None} or None

    arg_specs = pytree.tree_map(spec, tuple(args))
    kwarg_specs = pytree.tree_map(spec, dict(kwargs))
    with torch.no_grad():
        return torch.export.export(module, tuple(args), dict(kwargs),
                                   dynamic_shapes=_by_name(module, arg_specs, kwarg_specs),
                                   strict=False)


def _by_name(module: torch.nn.Module, arg_specs: tuple, kwarg_specs: dict) -> Any:
    """Specs keyed by the forward's parameter names (export wants one form for positional
    and keyword inputs alike)."""
    import inspect

    names = [p.name for p in inspect.signature(module.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(names) < len(arg_specs):
        return (*arg_specs, *kwarg_specs.values()) if not kwarg_specs else None
    return {**dict(zip(names, arg_specs)), **kwarg_specs}
