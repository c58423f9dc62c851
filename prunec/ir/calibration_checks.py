"""Checks of calibration data, and of inputs against the placeholders of a captured program
(DESIGN contract 9)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
import torch.fx as fx

from prunec.errors import CalibrationError, InvalidArgumentError, PrunecError
from prunec.ir.channels import static_shape
from prunec.ir.interpret import flatten_inputs

__all__ = ["check_calibration", "check_program_inputs"]


def check_calibration(calibration: Any, where: str, argument: str = "calibration") -> Any:
    """Calibration data: an iterable of items, not None, not one bare tensor, not empty.

    Under ``torch.distributed`` (world size > 1) an empty shard is allowed: the statistics
    are merged over all ranks, and the merge reports when no rank had data.

    Raises:
        CalibrationError: naming ``argument`` and what to pass.
    """
    if calibration is None:
        raise CalibrationError(
            f"{where}: {argument} is None; pass calibration data: a list (or DataLoader) of "
            f"items shaped like the example inputs (a tensor, a tuple of positional inputs or "
            f"a dict of keyword inputs each).")
    if isinstance(calibration, torch.Tensor):
        raise CalibrationError(
            f"{where}: {argument} is one tensor; pass a list of batches, e.g. [x] or "
            f"list(x.split(32)) (iterating a tensor would yield rows without a batch axis).")
    if isinstance(calibration, (str, bytes, Mapping)) or not isinstance(calibration, Iterable):
        raise CalibrationError(
            f"{where}: {argument} must be an iterable of items (list, DataLoader), got "
            f"{type(calibration).__name__}; one dict of keyword inputs goes in a list: "
            f"[{{...}}].")
    try:
        empty = len(calibration) == 0  # type: ignore[arg-type]
    except TypeError:  # an iterator without a length: emptiness shows when it is consumed
        empty = False
    if empty and not _distributed():
        raise CalibrationError(f"{where}: {argument} is empty; pass at least one batch.")
    return calibration


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_program_inputs(program: Any, args: tuple, kwargs: dict, *, where: str,
                         error: type[PrunecError] = InvalidArgumentError,
                         dtypes: bool = True) -> None:
    """Inputs of a call against the placeholders the program was captured with.

    For every tensor input: the same rank, the same size on every axis that capture made
    static (dynamic axes accept any size in their range) and, with ``dtypes``, the same
    dtype. Calibration checks dtypes only once a run has failed: a graph may well take an
    integer mask where a float one was captured (``x * mask`` promotes).

    Raises:
        ``error`` (InvalidArgumentError by default; CalibrationError for calibration items):
            naming ``where``, the input and what was expected.
    """
    try:
        flat = flatten_inputs(program, tuple(args), dict(kwargs))
    except PrunecError as exc:
        raise error(f"{where}: {exc}") from None
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, flat):
        _check_against(node, value, where, error, dtypes)


def _check_against(node: fx.Node, value: Any, where: str, error: type[PrunecError],
                   dtypes: bool) -> None:
    expected = node.meta.get("val")
    if not isinstance(expected, torch.Tensor):
        return
    name = f"input {node.name!r}"
    if not isinstance(value, torch.Tensor):
        raise error(f"{where}: {name} must be a tensor, got {type(value).__name__}.")
    if dtypes and value.dtype != expected.dtype:
        raise error(f"{where}: {name} has dtype {value.dtype}, but the model was captured "
                    f"with {expected.dtype}; convert it (x.to({expected.dtype})).")
    if value.dim() != expected.dim():
        raise error(f"{where}: {name} has {value.dim()} axes {tuple(value.shape)}, but the "
                    f"model was captured with {expected.dim()} {_shape_text(expected)}; "
                    f"items need the same layout as the example inputs (batch axis included).")
    for axis, (got, want) in enumerate(zip(value.shape, static_shape(node))):
        if want is not None and got != want:
            raise error(f"{where}: {name} has size {got} on axis {axis}, but that axis was "
                        f"captured static with size {want} (shape {_shape_text(expected)}); "
                        f"pass inputs of that size or capture with an example that lets "
                        f"the axis vary.")


def _shape_text(val: torch.Tensor) -> str:
    sizes = [s if isinstance(s, int) else s.node.maybe_as_int() for s in val.shape]
    return "(" + ", ".join("*" if s is None else str(s) for s in sizes) + ")"
