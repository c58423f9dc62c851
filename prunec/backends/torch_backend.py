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

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree

from prunec.backends.artifact import METADATA_NAME, add_zip_metadata, metadata_for, pt2_kind
from prunec.backends.base import Artifact, IOSpec, sample_inputs
from prunec.backends.registry import BackendSpec, register
from prunec.backends.integrity import check_export_archive, read_io
from prunec.errors import PrunecError
from prunec.fileio import atomic_write_bytes

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
            kwargs = self.io.complete_kwargs(kwargs)  # constant keywords may be left out
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
        """Write a ``torch.export`` ``.pt2`` file with prunec's metadata, atomically
        (:mod:`prunec.fileio`): the metadata records the SHA-256 of every other entry.

        The archive is assembled in memory first (peak memory grows by the file's size
        while saving)."""
        path = Path(path)
        exported = self.exported_program()
        meta = {**self.metadata, "backend": self.metadata.get("backend", self.name)}
        # The archive is built in memory and then written with one plain write: torch's zip
        # writer aborts the whole process (std::terminate) when a write fails half-way, as
        # on a full disk; a failed plain write is an OSError that leaves the old file.
        buffer = io.BytesIO()
        torch.export.save(exported, buffer)
        add_zip_metadata(buffer, meta, digests=True)
        atomic_write_bytes(path, buffer.getbuffer())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TorchArtifact":
        """Load a file written by :meth:`save` (no model code needed, nothing unpickled).

        The archive is checked first (:func:`~prunec.backends.integrity.check_export_archive`:
        no pickles, no code in shape expressions, entries inside their folder, checksums),
        then read by ``torch.export.load`` from the same open file, and every weight is
        checked against the shape and dtype its graph expects.

        Raises:
            PrunecError: the file would run code, is damaged, or is not a torch ``.pt2``.
            OSError: the file cannot be read (naming it).
        """
        path = Path(path)
        with open(path, "rb") as handle:
            metadata = check_export_archive(handle, path, METADATA_NAME)
            handle.seek(0)
            try:
                exported = torch.export.load(handle)
            except Exception as exc:  # torch raises many types on a bad archive
                raise PrunecError(f"prunec.load: torch.export could not read '{path}' "
                                  f"({type(exc).__name__}: {_first_line(exc)}).") from exc
        check_weight_shapes(exported, path)
        io = read_io(metadata.get("io"), path)
        # check_guards=False: with guards, torch exec()s the guard source stored in the
        # file; prunec's IOSpec checks every input's dtype, rank and fixed sizes instead.
        module = exported.module(check_guards=False)
        return cls(module, io, exported=exported, metadata=metadata)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


def check_weight_shapes(exported: torch.export.ExportedProgram, path: Path) -> None:
    """Every parameter, buffer and tensor constant has the shape and dtype the graph
    expects (a file whose weights were edited fails here, not at the first call)."""
    from torch.export.graph_signature import InputKind

    kinds = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    nodes = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    for spec in exported.graph_signature.input_specs:
        if spec.kind not in kinds or spec.target is None:
            continue
        tensor = exported.state_dict.get(spec.target, exported.constants.get(spec.target))
        val = nodes[spec.arg.name].meta.get("val") if spec.arg.name in nodes else None
        if not isinstance(tensor, torch.Tensor) or not isinstance(val, torch.Tensor):
            continue
        want = [int(d) if isinstance(d, int) else None for d in val.shape]
        fits = len(want) == tensor.dim() and all(w is None or w == g
                                                 for w, g in zip(want, tensor.shape))
        if not fits or val.dtype != tensor.dtype:
            raise PrunecError(
                f"prunec.load: weight {spec.target!r} in '{path}' is {tensor.dtype} of shape "
                f"{list(tensor.shape)}, but the graph uses {val.dtype} of shape {want}: the "
                f"file was edited or damaged.")


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


register(BackendSpec(
    "torch", lower_torch, sniff=lambda path: pt2_kind(path) == "export",
    load=TorchArtifact.load, sniff_order=20,
    summary="the pruned graph run by PyTorch; saves a torch.export .pt2"))
