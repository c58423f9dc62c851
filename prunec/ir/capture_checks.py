"""Checks of what capture is given: the model, its example inputs and ``dynamic``
(DESIGN contract 9: before any expensive work).

Checks only read what they are given; :func:`check_example_inputs` returns detached clones
of the example tensors so that nothing downstream can write into the caller's tensors.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.utils._pytree as pytree

from prunec.errors import CaptureError, InvalidArgumentError

__all__ = ["check_model", "check_example_inputs", "check_dynamic", "clone_inputs"]


def clone_inputs(tree: Any) -> Any:
    """Detached clones of every tensor leaf (other leaves as they are).

    Examples and calibration items pass through this at the boundary so that nothing prunec
    runs can write into the caller's tensors.
    """
    return pytree.tree_map(
        lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, tree)


# ---------------------------------------------------------------------------- model
def check_model(model: Any, argument: str = "model") -> torch.nn.Module:
    """An eager ``nn.Module`` that ``torch.export`` can trace.

    Raises:
        InvalidArgumentError: not a module.
        CaptureError: a ``torch.jit`` script/trace, a ``torch.compile`` wrapper, or a
            ``DataParallel``/``DistributedDataParallel`` wrapper (each with what to pass).
    """
    if isinstance(model, type) and issubclass(model, torch.nn.Module):
        raise InvalidArgumentError(
            f"{argument} is the class {model.__name__}, not a model: pass an instance, "
            f"e.g. {model.__name__}(...).")
    if isinstance(model, (str, Path)):
        raise InvalidArgumentError(
            f"{argument} is the path {str(model)!r}, not an .onnx file: prunec takes the "
            f"nn.Module itself (build it and load its weights; torch.load of a checkpoint "
            f"gives a state dict, not a model) or an .onnx file; prunec.load reads what "
            f"prunec saved.")
    if not isinstance(model, torch.nn.Module):
        raise InvalidArgumentError(
            f"{argument} must be a torch.nn.Module or the path of an .onnx file, got "
            f"{type(model).__name__}; prunec captures PyTorch modules (wrap a function in "
            f"an nn.Module) and reads ONNX files (prunec.compile('model.onnx', feeds)).")
    if isinstance(model, torch.jit.ScriptModule):
        raise CaptureError(
            f"{argument} is a TorchScript module ({type(model).__name__}); prunec captures "
            f"with torch.export, which needs the eager Python module: pass the model before "
            f"torch.jit.script / torch.jit.trace.")
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        raise CaptureError(
            f"{argument} is a torch.compile wrapper; pass the module it wraps "
            f"({argument}._orig_mod) and compile the pruned model afterwards.")
    if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        raise CaptureError(
            f"{argument} is wrapped in {type(model).__name__}; pass {argument}.module (the "
            f"wrapped model) instead.")
    return model


def _model_device(model: torch.nn.Module) -> torch.device | None:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else None


# ---------------------------------------------------------------------------- example inputs
def _as_args(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    if isinstance(example_inputs, Mapping):
        raise InvalidArgumentError(
            "example_inputs is a dict; pass keyword inputs as example_kwargs={...} and "
            "positional ones (if any) as example_inputs=(...).")
    raise InvalidArgumentError(
        f"example_inputs must be a tensor or a tuple of positional inputs, got "
        f"{type(example_inputs).__name__}; pass keyword inputs as example_kwargs={{...}}.")


def check_example_inputs(model: torch.nn.Module, example_inputs: Any,
                         example_kwargs: Mapping | None = None) -> tuple[tuple, dict]:
    """Check the example inputs and return detached clones of them.

    Checks: the container form; ``example_kwargs`` a dict with string keys; at least one
    tensor; no tensor on the meta device, of zero size, or holding NaN/inf (floating);
    tensors on the model's device; the inputs bind to ``model.forward``'s signature.

    Returns:
        ``(args, kwargs)`` whose tensors are detached clones (``requires_grad`` dropped), so
        a forward that writes into its inputs never reaches the caller's tensors.

    Raises:
        InvalidArgumentError: naming the input (``example_inputs[1]``, ``example_kwargs['mask']``).
    """
    args = _as_args(example_inputs)
    if example_kwargs is not None and not isinstance(example_kwargs, Mapping):
        raise InvalidArgumentError(f"example_kwargs must be a dict of keyword inputs, got "
                                   f"{type(example_kwargs).__name__}.")
    kwargs = dict(example_kwargs or {})
    if any(not isinstance(k, str) for k in kwargs):
        raise InvalidArgumentError("example_kwargs keys must be the forward's argument names "
                                   "(strings).")
    named = [(f"example_inputs[{i}]", a) for i, a in enumerate(args)]
    named += [(f"example_kwargs[{k!r}]", v) for k, v in kwargs.items()]
    device = _model_device(model)
    tensors = 0
    for name, value in named:
        for leaf in pytree.tree_leaves(value):
            if isinstance(leaf, torch.Tensor):
                tensors += 1
                _check_example_tensor(name, leaf, device)
    if not tensors:
        raise InvalidArgumentError("example_inputs and example_kwargs hold no tensor; pass at "
                                   "least one example tensor shaped like real inputs.")
    _check_binds(model, args, kwargs)
    return clone_inputs(args), clone_inputs(kwargs)


def _check_example_tensor(name: str, t: torch.Tensor, device: torch.device | None) -> None:
    if t.is_meta:
        raise InvalidArgumentError(f"{name} is on the meta device (no values); pass a real "
                                   f"tensor, e.g. torch.randn(shape) or real data.")
    if t.numel() == 0:
        raise InvalidArgumentError(f"{name} has a zero-size axis {tuple(t.shape)}; pass an "
                                   f"example with at least one element per axis.")
    if t.layout != torch.strided:
        raise InvalidArgumentError(f"{name} is a {t.layout} tensor; pass a dense one "
                                   f"(x.to_dense()).")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InvalidArgumentError(f"{name} holds NaN or inf; outputs could not be checked "
                                   f"against the original model. Pass finite example values.")
    if device is not None and device.type != "meta" and t.device != device:
        raise InvalidArgumentError(f"{name} is on {t.device} but the model's parameters are on "
                                   f"{device}; move one of them (x.to({str(device)!r})).")


def _check_binds(model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # builtins without a signature: export will tell
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        params = ", ".join(str(p) for p in signature.parameters.values())
        raise InvalidArgumentError(
            f"example inputs do not fit {type(model).__name__}.forward({params}): {exc} "
            f"(got {len(args)} positional and {len(kwargs)} keyword inputs). Pass one "
            f"example per forward argument: a tensor or tuple as example_inputs, keyword "
            f"inputs as example_kwargs.") from None


def check_dynamic(dynamic: Any) -> None:
    """``dynamic`` of capture: a bool, ``"batch"`` or a ``dynamic_shapes`` spec."""
    if isinstance(dynamic, str) and dynamic == "batch":
        return
    if not isinstance(dynamic, (bool, tuple, list, dict)):
        raise InvalidArgumentError(
            f"dynamic must be True, False, 'batch' (only the batch axis dynamic) or a "
            f"torch.export dynamic_shapes spec, got {dynamic!r}.")
