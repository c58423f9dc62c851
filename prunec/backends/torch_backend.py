"""The ``torch`` backend: the pruned graph module itself, run eagerly.

The artifact calls a private copy of ``program.gm`` under ``torch.no_grad()``, so later
passes on the program never change an artifact already handed out. ``save`` re-exports
that module with ``torch.export`` (every axis ``Dim.AUTO``, as at capture) and writes the
``ExportedProgram`` with ``torch.export.save``: a ``.pt2`` file that reloads without the
model's Python code (``TorchArtifact.load``).
"""
from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunec.backends.base import Artifact
from prunec.ir.capture import auto_dynamic_shapes

if TYPE_CHECKING:
    from prunec.ir.program import Program

__all__ = ["TorchArtifact", "lower_torch", "reexport"]


class TorchArtifact(Artifact):
    """An eager ``torch.nn.Module`` (the pruned graph module, or a reloaded export).

    Args:
        module: The module to run.
        example_args: Positional example inputs (needed by :meth:`save` to re-export).
        example_kwargs: Keyword example inputs.
        exported: An ``ExportedProgram`` to save as is (set by :meth:`load`).
    """

    name = "torch"

    def __init__(self, module: torch.nn.Module, example_args: tuple = (),
                 example_kwargs: dict | None = None, exported: Any = None) -> None:
        self.module = module
        self.example_args = tuple(example_args)
        self.example_kwargs = dict(example_kwargs or {})
        self._exported = exported

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def exported_program(self) -> torch.export.ExportedProgram:
        """The module as an ``ExportedProgram`` (re-exported on first use)."""
        if self._exported is None:
            self._exported = reexport(self.module, self.example_args, self.example_kwargs)
        return self._exported

    def save(self, path: str | Path) -> Path:
        """Write a ``torch.export`` ``.pt2`` file."""
        path = Path(path)
        torch.export.save(self.exported_program(), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TorchArtifact":
        """Load a file written by :meth:`save` (no model code needed)."""
        exported = torch.export.load(Path(path))
        return cls(exported.module(), exported=exported)


def lower_torch(program: "Program") -> TorchArtifact:
    """Lower ``program`` to an eager torch artifact (a deep copy of its graph module)."""
    return TorchArtifact(copy.deepcopy(program.gm), program.example_args,
                         program.example_kwargs)


def reexport(module: torch.nn.Module, args: tuple, kwargs: dict,
             dynamic_shapes: Any = "auto") -> torch.export.ExportedProgram:
    """``torch.export.export`` (non-strict) of a graph module with its example inputs.

    Args:
        module: Typically ``program.gm`` (itself an ``ep.module()``).
        args: Positional example inputs.
        kwargs: Keyword example inputs.
        dynamic_shapes: ``"auto"`` for ``Dim.AUTO`` on every tensor axis (keeps dynamic
            what the graph allows), or any spec ``torch.export.export`` accepts.
    """
    if isinstance(dynamic_shapes, str) and dynamic_shapes == "auto":
        dynamic_shapes = _named_auto_shapes(module, args, kwargs)
    with torch.no_grad():
        return torch.export.export(module, tuple(args), dict(kwargs),
                                   dynamic_shapes=dynamic_shapes, strict=False)


def _named_auto_shapes(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
    """``Dim.AUTO`` specs keyed by the forward's parameter names (export wants one form
    for positional and keyword inputs alike)."""
    arg_specs, kwarg_specs = auto_dynamic_shapes(tuple(args), dict(kwargs))
    names = [p.name for p in inspect.signature(module.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(names) < len(arg_specs):
        return (*arg_specs, *kwarg_specs.values()) if not kwarg_specs else None
    return {**dict(zip(names, arg_specs)), **kwarg_specs}
