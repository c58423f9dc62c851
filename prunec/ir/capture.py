"""Capture: ``nn.Module`` + example inputs -> :class:`~prunec.ir.program.Program`.

The caller's module is deep-copied first, so neither its parameters nor its train/eval mode
are ever touched. Capture uses ``torch.export.export(strict=False)``; by default every
dimension of every tensor input is declared ``Dim.AUTO``, which lets export keep dynamic
whatever the model allows (batch, sequence length, image size) and specialise the rest.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.utils._pytree as pytree

from prunec.errors import CaptureError
from prunec.ir.program import Program, refresh_meta

__all__ = ["capture", "auto_dynamic_shapes"]


def auto_dynamic_shapes(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``Dim.AUTO`` on every axis of size > 1 of every tensor input (size-1 axes are
    specialised by export anyway; ``None`` for non-tensors)."""

    def spec(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return {i: torch.export.Dim.AUTO for i in range(x.dim()) if x.shape[i] > 1}
        return None

    return (pytree.tree_map(spec, tuple(args)), pytree.tree_map(spec, dict(kwargs)))


def _as_args(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise CaptureError(
        f"example_inputs must be a tensor or a tuple of positional inputs, got "
        f"{type(example_inputs).__name__}; pass keyword inputs as example_kwargs={{...}}."
    )


def capture(
    model: torch.nn.Module,
    example_inputs: Any,
    example_kwargs: dict | None = None,
    *,
    train: bool = False,
    dynamic: bool | tuple | dict = True,
) -> Program:
    """Capture ``model`` as a Program without mutating it.

    Args:
        model: The user's module (copied, never modified).
        example_inputs: A tensor or a tuple of positional inputs.
        example_kwargs: Keyword inputs (e.g. ``attention_mask``).
        train: Capture in train mode (dropout, batch-norm statistics updates) instead of eval.
        dynamic: ``True`` for ``Dim.AUTO`` on every input axis, ``False`` for fully static
            shapes, or an explicit ``dynamic_shapes`` spec as ``torch.export`` takes it
            (a ``(args_spec, kwargs_spec)`` pair, or a dict keyed by argument name).

    Raises:
        CaptureError: naming the model class and export's reason, with what to try.
    """
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"prunec captures torch.nn.Module objects, got {type(model).__name__}.")
    args = _as_args(example_inputs)
    kwargs = dict(example_kwargs or {})
    work = copy.deepcopy(model)
    work.train(train)
    if dynamic is True:
        shapes = auto_dynamic_shapes(args, kwargs)
        shapes = {**_name_args(work, shapes[0]), **shapes[1]}
    elif dynamic is False:
        shapes = None
    else:
        shapes = dynamic
    try:
        with torch.no_grad() if not train else _nullcontext():
            ep = torch.export.export(work, args, kwargs, dynamic_shapes=shapes, strict=False)
        gm = ep.module()
    except Exception as exc:  # export raises many unrelated types; we re-raise one.
        where = _failing_module(exc) or type(model).__name__
        raise CaptureError(
            f"torch.export could not capture {where}: {type(exc).__name__}: "
            f"{_first_line(exc)}. Make the forward traceable (no data-dependent Python "
            f"control flow, no .item()/.tolist() on activations), or pass dynamic=False if "
            f"the failure concerns dynamic shapes."
        ) from exc
    program = Program(gm, args, kwargs, training=train)
    refresh_meta(program.gm)
    return program


def _name_args(model: torch.nn.Module, arg_specs: tuple) -> dict:
    """Key positional specs by the forward's parameter names (export accepts either form,
    but a dict mixes cleanly with keyword specs)."""
    import inspect

    names = [
        p.name for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(names) < len(arg_specs):  # *args forwards: fall back to positional form
        raise CaptureError(
            f"{type(model).__name__}.forward takes *args; pass dynamic=False or an explicit "
            f"dynamic_shapes tuple."
        )
    return dict(zip(names, arg_specs))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _failing_module(exc: BaseException) -> str:
    """Best effort: the user module path mentioned in export's message."""
    import re

    m = re.search(r"L\['self'\]\.?([\w.\[\]']*)", str(exc))
    return f"module 'self.{m.group(1)}'" if m and m.group(1) else ""
