"""Validation of the public API's arguments, before any expensive work (DESIGN contract 9).

Every check raises a :class:`~prunec.errors.PrunecError` subclass whose message names the
argument (``passes[1]``, ``backend_options['opset']``, ``example_inputs[0]``, calibration
item 3's input ``x``) and says what to pass instead:

- :class:`~prunec.errors.InvalidArgumentError`: wrong type or out of range (also a
  ``TypeError`` and a ``ValueError``);
- :class:`~prunec.errors.CaptureError`: a model that cannot be captured at all (a
  ``torch.jit.script`` module, a ``torch.compile`` wrapper, ``DataParallel``);
- :class:`~prunec.errors.CalibrationError`: calibration data that is missing, empty or
  of another form than the inputs the program was captured with.

Checks only read what they are given; :func:`check_example_inputs` returns detached clones
of the example tensors so that nothing downstream can write into the caller's tensors.
"""
from __future__ import annotations

import difflib
import errno
import inspect
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from prunec.errors import CalibrationError, CaptureError, InvalidArgumentError, PrunecError

__all__ = [
    "check_model", "check_example_inputs", "check_passes", "check_backend", "check_ratio",
    "check_round_to", "check_choice", "check_positive", "check_calibration",
    "check_program_inputs", "check_finetune", "check_compile", "user_items", "is_user_error",
    "check_save_path",
]


# ---------------------------------------------------------------------------- scalars
def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_ratio(ratio: Any, where: str, argument: str = "ratio") -> float:
    """A pruning ratio: a finite real number in ``[0, 1)``.

    Raises:
        InvalidArgumentError: for non-numbers, booleans, NaN/inf, negatives and ``>= 1``.
    """
    if not _is_real(ratio):
        raise InvalidArgumentError(
            f"{where}: {argument} must be a number in [0, 1) (the fraction of candidate "
            f"channels removed), got {type(ratio).__name__} {ratio!r}.")
    value = float(ratio)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise InvalidArgumentError(
            f"{where}: {argument} must be in [0, 1) (the fraction of candidate channels "
            f"removed; 1 would remove every channel), got {ratio!r}.")
    return value


def check_round_to(round_to: Any, where: str) -> int:
    """A channel multiple: a positive integer (``8.0`` is accepted as 8, ``3.5`` is not).

    Raises:
        InvalidArgumentError: for None, booleans, non-integral numbers and values < 1.
    """
    integral = isinstance(round_to, numbers.Integral) or (
        isinstance(round_to, float) and round_to.is_integer())
    if isinstance(round_to, bool) or not integral:
        raise InvalidArgumentError(
            f"{where}: round_to must be a positive integer (kept channel counts are "
            f"multiples of it; round_to=1 disables rounding), got "
            f"{type(round_to).__name__} {round_to!r}.")
    if int(round_to) < 1:
        raise InvalidArgumentError(
            f"{where}: round_to must be >= 1 (round_to=1 disables rounding), got {round_to!r}.")
    return int(round_to)


def check_choice(value: Any, allowed: Sequence[str], where: str, argument: str) -> str:
    """One of ``allowed`` (strings); the message suggests the closest one.

    Raises:
        InvalidArgumentError: when ``value`` is not in ``allowed``.
    """
    if isinstance(value, str) and value in allowed:
        return value
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InvalidArgumentError(
        f"{where}: {argument} must be one of {', '.join(map(repr, allowed))}, got "
        f"{value!r}.{hint}")


def check_positive(value: Any, where: str, argument: str, *, integer: bool = False,
                   allow_zero: bool = False) -> float | int:
    """A finite positive number (or non-negative with ``allow_zero``); an int if ``integer``.

    Raises:
        InvalidArgumentError: naming ``argument`` and the value.
    """
    kind = "integer" if integer else "number"
    bound = ">= 0" if allow_zero else "> 0"
    ok_type = isinstance(value, numbers.Integral) if integer else _is_real(value)
    if isinstance(value, bool) or not ok_type:
        raise InvalidArgumentError(f"{where}: {argument} must be a {kind} {bound}, got "
                                   f"{type(value).__name__} {value!r}.")
    if not math.isfinite(float(value)) or value < 0 or (value == 0 and not allow_zero):
        raise InvalidArgumentError(f"{where}: {argument} must be a finite {kind} {bound}, "
                                   f"got {value!r}.")
    return int(value) if integer else float(value)


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
    if not isinstance(model, torch.nn.Module):
        raise InvalidArgumentError(
            f"{argument} must be a torch.nn.Module, got {type(model).__name__}; prunec "
            f"captures PyTorch modules (wrap a function in an nn.Module).")
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
    from prunec.ir.capture import clone_inputs

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


# ---------------------------------------------------------------------------- passes
def check_passes(passes: Any, argument: str = "passes") -> list:
    """A list (or tuple) of pass instances.

    Raises:
        InvalidArgumentError: a single pass not in a list, a pass class instead of an
            instance, or an element that is not callable.
    """
    if passes is None:
        return []
    if callable(passes) and not isinstance(passes, (list, tuple)):
        shown = passes.__name__ if isinstance(passes, type) else type(passes).__name__
        raise InvalidArgumentError(
            f"{argument} must be a list of passes, got a single {shown}; wrap it in a list: "
            f"{argument}=[{shown}(...)].")
    if isinstance(passes, (str, bytes, Mapping)) or not isinstance(passes, Iterable):
        raise InvalidArgumentError(f"{argument} must be a list of pass objects, e.g. "
                                   f"[prunec.passes.MagnitudePruning(0.5)], got "
                                   f"{type(passes).__name__}.")
    items = list(passes)
    for i, p in enumerate(items):
        if isinstance(p, type):
            raise InvalidArgumentError(
                f"{argument}[{i}] is the class {p.__name__}, not a pass: configure an "
                f"instance, e.g. {p.__name__}(0.5).")
        if not callable(p):
            raise InvalidArgumentError(
                f"{argument}[{i}] is {type(p).__name__} {p!r}, not a pass; passes are objects "
                f"such as prunec.passes.MagnitudePruning(0.5).")
    return items


# ---------------------------------------------------------------------------- backends
def check_backend(backend: Any, options: Any) -> dict:
    """A registered backend name and options its lowering takes (see
    :func:`prunec.backends.registry.check_backend`)."""
    from prunec.backends.registry import check_backend as check

    return check(backend, options)


# ---------------------------------------------------------------------------- calibration
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
    import torch.distributed as dist

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
    from prunec.ir.interpret import flatten_inputs

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
    from prunec.ir.channels import static_shape

    for axis, (got, want) in enumerate(zip(value.shape, static_shape(node))):
        if want is not None and got != want:
            raise error(f"{where}: {name} has size {got} on axis {axis}, but that axis was "
                        f"captured static with size {want} (shape {_shape_text(expected)}); "
                        f"pass inputs of that size or capture with an example that lets "
                        f"the axis vary.")


def _shape_text(val: torch.Tensor) -> str:
    sizes = [s if isinstance(s, int) else s.node.maybe_as_int() for s in val.shape]
    return "(" + ", ".join("*" if s is None else str(s) for s in sizes) + ")"


# ---------------------------------------------------------------------------- finetune
def check_finetune(*, epochs: Any, lr: Any, weight_decay: Any, batch_size: Any,
                   temperature: Any, alpha: Any, train_data: Any, teacher: Any,
                   original: Any, loss_fn: Any, label_key: Any) -> None:
    """The options of :func:`prunec.finetune`.

    Raises:
        InvalidArgumentError: naming the option and its allowed range.
    """
    where = "finetune"
    check_positive(epochs, where, "epochs", integer=True)
    check_positive(lr, where, "lr", allow_zero=True)  # 0: a run that only updates BN stats
    check_positive(weight_decay, where, "weight_decay", allow_zero=True)
    check_positive(batch_size, where, "batch_size", integer=True)
    check_positive(temperature, where, "temperature")
    if not _is_real(alpha) or not 0.0 <= float(alpha) <= 1.0:
        raise InvalidArgumentError(f"{where}: alpha must be in [0, 1] (the weight of the "
                                   f"distillation term), got {alpha!r}.")
    from torch.utils.data import Dataset

    iterable = isinstance(train_data, (Iterable, Dataset)) or hasattr(train_data, "__getitem__")
    if train_data is None or isinstance(train_data, (str, bytes, torch.Tensor)) or not iterable:
        raise InvalidArgumentError(
            f"{where}: train_data must be a Dataset, DataLoader or list of (inputs, target) "
            f"items, got {type(train_data).__name__}.")
    for argument, value in (("teacher", teacher), ("original", original)):
        if value is not None:
            check_model(value, f"{where}: {argument}")
    if loss_fn is not None and not callable(loss_fn):
        raise InvalidArgumentError(f"{where}: loss_fn must be callable (logits, target) -> "
                                   f"loss, got {type(loss_fn).__name__}.")
    if not isinstance(label_key, str):
        raise InvalidArgumentError(f"{where}: label_key must be a string, got "
                                   f"{type(label_key).__name__}.")


# ---------------------------------------------------------------------------- compile
def check_compile(model: Any, example_inputs: Any, passes: Any, *, example_kwargs: Any = None,
                  backend: Any = "torch", backend_options: Any = None, train: Any = False,
                  dynamic: Any = True, verify: Any = True, instruments: Any = None,
                  plans: Any = None, donate: Any = False) -> tuple[tuple, dict, list, dict]:
    """Every argument of :func:`prunec.compile`, before capture.

    Returns:
        ``(args, kwargs, passes, backend_options)``: the example inputs cloned, the passes as
        a list, the options as a dict.

    Raises:
        InvalidArgumentError / CaptureError: see the individual checks.
    """
    check_model(model)
    if any(t.is_meta for t in model.parameters()):
        raise InvalidArgumentError(
            "model has parameters on the meta device (no values): prunec checks the pruned "
            "model's outputs against the original's. Materialise the weights first "
            "(model.to_empty(device='cpu') and load a state dict).")
    args, kwargs = check_example_inputs(model, example_inputs, example_kwargs)
    passes = check_passes(passes)
    if plans is not None:
        _check_plans(plans)
    options = check_backend(backend, backend_options)
    for argument, flag in (("train", train), ("verify", verify), ("donate", donate)):
        if not isinstance(flag, bool):
            raise InvalidArgumentError(f"{argument} must be True or False, got {flag!r}.")
    if donate and verify:
        raise InvalidArgumentError(
            "donate=True releases the original weights as they are sliced, and verify=True "
            "checks every pass against them: pass verify=False with donate=True (or keep "
            "donate=False to verify).")
    if donate and train:
        raise InvalidArgumentError(
            "donate=True applies to eval-mode captures, which share the model's weights; a "
            "train=True capture copies them, so there is nothing to donate: drop donate.")
    check_dynamic(dynamic)
    if instruments is not None:
        if isinstance(instruments, (str, bytes)) or not isinstance(instruments, Iterable):
            raise InvalidArgumentError(f"instruments must be a list of instrument objects, got "
                                       f"{type(instruments).__name__}.")
    return args, kwargs, passes, options


def _check_plans(plans: Any) -> None:
    from prunec.rewrite.plan import PruningPlan

    if isinstance(plans, PruningPlan) or not isinstance(plans, (list, tuple)):
        raise InvalidArgumentError(f"plans must be a list of PruningPlan, got "
                                   f"{type(plans).__name__}; wrap one plan in a list.")
    for i, plan in enumerate(plans):
        if not isinstance(plan, PruningPlan):
            raise InvalidArgumentError(f"plans[{i}] is {type(plan).__name__}, not a "
                                       f"PruningPlan (load saved ones with "
                                       f"PruningPlan.from_json).")


# ---------------------------------------------------------------------------- the caller's data
_USER_TAG = "_prunec_raised_by_caller_data"


def user_items(data: Iterable) -> Iterator:
    """Iterate the caller's data, tagging any exception that the iteration itself raises
    (their loader, their generator) so that prunec re-raises it unchanged, never wrapped:
    it is the caller's error, with the caller's traceback."""
    try:
        iterator = iter(data)
    except Exception as exc:
        _tag(exc)
        raise
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            _tag(exc)
            raise
        yield item


def _tag(exc: BaseException) -> None:
    try:
        setattr(exc, _USER_TAG, True)
    except AttributeError:  # exceptions with __slots__: left untagged (then wrapped)
        pass


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the caller's data iterator (see :func:`user_items`)."""
    return bool(getattr(exc, _USER_TAG, False))


def check_save_path(path: Any) -> Path:
    """A path to write an artifact to: a string or ``PathLike`` whose parent directory exists.

    A missing parent raises ``FileNotFoundError`` (an ``OSError``, as every backend's file
    writer would, with the path in it) before anything is serialised; torch's zip writer
    would otherwise raise a bare ``RuntimeError`` after exporting.

    Raises:
        InvalidArgumentError: ``path`` is not a string or path.
        FileNotFoundError: the parent directory does not exist (or is a file).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"save: path must be a string or pathlib.Path, got "
                                   f"{type(path).__name__}.")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"cannot save to {str(path)!r}: the directory "
                                f"does not exist (create it first)", str(path.parent))
    return path


def check_dynamic(dynamic: Any) -> None:
    """``dynamic`` of capture: a bool, ``"batch"`` or a ``dynamic_shapes`` spec."""
    if isinstance(dynamic, str) and dynamic == "batch":
        return
    if not isinstance(dynamic, (bool, tuple, list, dict)):
        raise InvalidArgumentError(
            f"dynamic must be True, False, 'batch' (only the batch axis dynamic) or a "
            f"torch.export dynamic_shapes spec, got {dynamic!r}.")
