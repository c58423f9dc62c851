"""What the command line's values mean: model, data and input specs, option types.

Every function here either returns a checked value or raises :class:`CliError` with one
line that names the option and says what to do, so that ``prunec`` can fail before any
expensive work (training, capture, calibration) starts.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

import prunec
from prunec.backends import registry
from prunec.errors import PrunecError

__all__ = ["CliError", "BUILTIN", "BUILTIN_NAME", "PASSES", "version_text", "InputSpec",
           "parse_input", "make_inputs", "ratio", "latency_fraction", "positive_int", "nonnegative_int", "resolve_callable", "load_factory_model", "calibration_items",
           "check_backend"]

BUILTIN = "builtin"
BUILTIN_NAME = "the built-in digits classifier (a ResNet-14 trained on scikit-learn's 8x8 digits)"
PASSES = {
    "variance": "variance-based pruning: removes the hidden neurons whose activations vary "
                "least and folds their means into the next layer",
    "magnitude": "removes the units with the smallest weight norm",
    "random": "removes random units (a baseline)",
    "heads": "removes attention heads (whole key/value groups under GQA)",
    "depth": "removes residual blocks or, with --unit layer, whole layers",
}
_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int32,
           "bool": torch.bool}


class CliError(PrunecError):
    """A command-line value that cannot work; the message names the option."""


def version_text() -> str:
    """``prunec 0.1.0 (torch 2.13.0)``."""

    return f"prunec {prunec.__version__} (torch {torch.__version__})"


# ---------------------------------------------------------------------------- option types
def ratio(text: str) -> float:
    """``--ratio``: a fraction of candidate units in ``[0, 1)``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"must be in [0, 1) (the fraction of candidate units removed), got {text}")
    return value


def latency_fraction(text: str) -> float:
    """``--latency``: a fraction of the dense latency in ``(0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"must be in (0, 1] (the fraction of the dense latency to reach), got {text}")
    return value


def _integer(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, ">= 1")


def nonnegative_int(text: str) -> int:
    return _integer(text, 0, ">= 0")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def batch_sizes(text: str) -> list[int]:
    """``--batch-sizes 1,8,32``."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers such as 1,8, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers such as 1,8, got {text!r}")
    return sizes


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputSpec:
    """One example input: ``name`` (None: the next positional input), dtype and shape."""

    name: str | None
    dtype: torch.dtype
    shape: tuple[int, ...]

    def make(self, generator: torch.Generator) -> torch.Tensor:
        """Random normal floats; ones for integers (a valid token id and a full attention
        mask); True for booleans."""
        if self.dtype.is_floating_point:
            return torch.randn(self.shape, generator=generator).to(self.dtype)
        return torch.ones(self.shape, dtype=self.dtype)


def parse_input(text: str) -> InputSpec:
    """``[NAME:][DTYPE:]SHAPE`` with SHAPE like ``1x3x224x224`` (or ``1,3,224,224``).

    ``input_ids:int64:1x128`` is a keyword input, ``float16:1x3x32x32`` and ``1x3x32x32``
    positional ones.
    """
    parts = text.split(":")
    if not 1 <= len(parts) <= 3:
        raise argparse.ArgumentTypeError(f"expected [NAME:][DTYPE:]SHAPE, got {text!r}")
    shape_text, rest = parts[-1], parts[:-1]
    dtype, name = torch.float32, None
    if rest and rest[-1] in _DTYPES:
        dtype = _DTYPES[rest.pop()]
    elif len(rest) == 2:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {rest[-1]!r} in {text!r}; use one of {', '.join(sorted(_DTYPES))}")
    if rest:
        name = rest[0]
        if not name.isidentifier():
            raise argparse.ArgumentTypeError(f"input name {name!r} in {text!r} is not a "
                                             f"Python identifier (a keyword of forward)")
    if not re.fullmatch(r"\d+([x,]\d+)*", shape_text):
        raise argparse.ArgumentTypeError(
            f"shape {shape_text!r} in {text!r} must be sizes joined by x, e.g. 1x3x224x224")
    return InputSpec(name, dtype, tuple(int(s) for s in re.split("[x,]", shape_text)))


def make_inputs(specs: list[InputSpec], seed: int = 0) -> tuple[tuple, dict]:
    """Example ``(args, kwargs)`` from ``--input`` specs, seeded."""
    generator = torch.Generator().manual_seed(seed)
    args = tuple(s.make(generator) for s in specs if s.name is None)
    kwargs = {s.name: s.make(generator) for s in specs if s.name is not None}
    return args, kwargs


# ---------------------------------------------------------------------------- callables
def _import_path() -> None:
    """``--model mymodule:make`` finds ``mymodule.py`` in the current directory."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def resolve_callable(spec: str, option: str) -> Callable[..., Any]:
    """Import ``module:function`` (module may be dotted) and return the function.

    Raises:
        CliError: malformed spec, module not found (naming where it looked), no such
            attribute, or not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"{option} must be module:function (e.g. mypackage.models:make), "
                       f"got {spec!r}")
    _import_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CliError(f"{option} {spec}: no module named {exc.name!r} in the current "
                           f"directory ({os.getcwd()}) or on the Python path") from None
        raise CliError(f"{option} {spec}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise CliError(f"{option} {spec}: importing {module_name!r} raised "
                       f"{type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise CliError(f"{option} {spec}: module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise CliError(f"{option} {spec}: {attr!r} is a {type(target).__name__}, not a function")
    return target


def call_user(fn: Callable[..., Any], spec: str, option: str) -> Any:
    """Call a user's factory; its exceptions become one line naming it."""
    try:
        return fn()
    except PrunecError:
        raise
    except Exception as exc:
        raise CliError(f"{option} {spec}: calling it raised {type(exc).__name__}: {exc}") from exc


def load_factory_model(fn: Callable[..., Any], spec: str,
                       inputs: list[InputSpec]) -> tuple[torch.nn.Module, tuple, dict]:
    """``(model, args, kwargs)`` from a factory returning a module, ``(module, inputs)`` or
    ``(module, args, kwargs)``; ``--input`` specs override or supply the example inputs."""
    made = call_user(fn, spec, "--model")
    args: tuple = ()
    kwargs: dict = {}
    if isinstance(made, tuple):
        if len(made) not in (2, 3) or not isinstance(made[0], torch.nn.Module):
            raise CliError(f"--model {spec}: the factory must return a module, (module, inputs) "
                           f"or (module, args, kwargs); got a tuple of {len(made)}")
        model, example = made[0], made[1]
        args = example if isinstance(example, tuple) else (example,)
        kwargs = dict(made[2]) if len(made) == 3 else {}
    else:
        model = made
    if not isinstance(model, torch.nn.Module):
        raise CliError(f"--model {spec}: the factory returned a {type(model).__name__}, "
                       f"not a torch.nn.Module")
    if inputs:
        args, kwargs = make_inputs(inputs)
    if not args and not kwargs:
        raise CliError(f"--model {spec} returned only a module: give its example inputs with "
                       f"--input, e.g. --input 1x3x224x224 or --input input_ids:int64:1x128")
    return model.eval(), args, kwargs


def calibration_items(batches: Any, label_key: str = "labels") -> list:
    """The inputs of ``(inputs, target)`` batches (dict batches lose ``label_key``)."""
    items = []
    for batch in batches:
        if isinstance(batch, Mapping):
            items.append({k: v for k, v in batch.items() if k != label_key})
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            items.append(batch[0])
        else:
            raise CliError("--data must return (inputs, target) pairs or dicts with a "
                           f"{label_key!r} key, as prunec.finetune takes them; got a "
                           f"{type(batch).__name__}")
    if not items:
        raise CliError("--data returned no batches")
    return items


# ---------------------------------------------------------------------------- backends
def check_backend(name: str) -> None:
    """Raise :class:`BackendUnavailable` now, not after pruning, when software is missing
    (what a backend needs is in the backend table, :mod:`prunec.backends.registry`)."""
    registry.check_available(name, where=f"--backend {name}")
