"""The lowering contract: ``lower(program, backend) -> Artifact``.

Backends are lowerings, not passes (DESIGN contract 7). Each backend module exposes one
function ``(program, **options) -> Artifact`` and registers it in the backend table
(:mod:`prunec.backends.registry`, which also holds ``lower`` and ``load``); a backend module
imports onnx, onnxruntime or tensorrt only when used. Missing software or hardware raises
:class:`~prunec.errors.BackendUnavailable` with the command that installs it.

This module also holds what several lowerings share:

- :class:`IOSpec`: how a model's ``(args, kwargs)`` pytree maps to the flat tensor inputs
  and outputs of an ONNX graph or a TensorRT engine, and back;
- :func:`check_parity`: the numerical check every compiled artifact passes before it is
  handed out.
"""
from __future__ import annotations

import abc
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.utils._pytree as pytree

from prunec.errors import BackendUnavailable, InvalidArgumentError, PrunecError
from prunec.ir.channels import static_shape
from prunec.ir.interpret import scratch_state
from prunec.ir.program import OUTPUT_SWITCHES

if TYPE_CHECKING:
    from types import ModuleType

    from prunec.ir.program import Program

ONNX_PIP_HINT = "'prunec[onnx]'  (onnx onnxruntime onnx-graphsurgeon onnxscript)"
"""What to install for the ONNX lowerings and for reading ONNX files."""

__all__ = [
    "Artifact", "IOSpec", "require", "ONNX_PIP_HINT",
    "check_parity", "max_abs_diff", "sample_inputs", "verify_artifact",
]

class Artifact(abc.ABC):
    """A lowered program: callable with the model's inputs, savable to disk.

    Subclasses set :attr:`name` to their backend name and implement ``__call__`` and
    :meth:`save`; those whose saved form can be run again implement :meth:`load`.
    """

    name: ClassVar[str] = "artifact"

    @abc.abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the artifact on the same ``args``/``kwargs`` the captured model takes."""

    @abc.abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write the artifact's deployable form to ``path`` and return the path."""

    @classmethod
    def load(cls, path: str | Path) -> "Artifact":
        """Load an artifact written by :meth:`save`."""
        raise NotImplementedError(f"{cls.__name__} artifacts cannot be loaded back.")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.name!r}>"


def require(module: str, *, backend: str, pip: str) -> "ModuleType":
    """Import ``module`` or raise :class:`BackendUnavailable` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(
            f"The {backend!r} backend needs the Python package {module!r}, which is not "
            f"installed ({exc}). Install it with: pip install {pip}"
        ) from exc


# --------------------------------------------------------------------------- io spec
_TENSOR = object()  # marks a tensor leaf in a tree of captured input constants


def _holds_tensor(tree: Any) -> bool:
    return any(leaf is _TENSOR for leaf in pytree.tree_leaves(tree))


@dataclass
class IOSpec:
    """The flat tensor interface of a program, and how to go back to its pytrees.

    Inputs are the leaves of ``(args, kwargs)`` in ``torch.utils._pytree`` order, which is
    also the order of the program's placeholders. Tensor leaves become graph inputs (named
    after the placeholders); other leaves (``None``, ints, flags) were specialised at
    capture and must be passed unchanged. Outputs are the tensor leaves of the model's
    output pytree; :meth:`unflatten_outputs` rebuilds the original structure (tuple, dict,
    ``transformers`` ``ModelOutput``...) when the output spec is known, else returns the
    tensors as a tuple (a single tensor alone).

    Attributes:
        in_spec: Tree spec of ``(args, kwargs)``.
        input_constants: Per input leaf, ``None`` for a tensor, else ``[value]``.
        input_names: Names of the tensor inputs, in order.
        batch_inputs: Per tensor input, whether axis 0 is the (dynamic) batch axis.
        out_spec: Tree spec of the output, or ``None`` when it could not be kept.
        output_constants: Per output leaf, ``None`` for a tensor, else ``[value]``.
        output_names: Names of the tensor outputs, in order.
        input_dtypes: Per tensor input, its dtype (``"torch.float32"``).
        input_shapes: Per tensor input, its sizes with ``None`` where the program keeps the
            axis dynamic: a call with another rank, dtype or fixed size is refused with a
            :class:`~prunec.errors.PrunecError` naming the input.
    """

    in_spec: pytree.TreeSpec
    input_constants: list
    input_names: list[str]
    batch_inputs: list[bool]
    out_spec: pytree.TreeSpec | None
    output_constants: list
    output_names: list[str]
    input_dtypes: list[str] | None = None
    input_shapes: list[list[int | None]] | None = None

    @classmethod
    def from_program(cls, program: "Program") -> "IOSpec":
        """Read the interface from the program's placeholders and one example run."""
        leaves, in_spec = pytree.tree_flatten((program.example_args, program.example_kwargs))
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
        names = [_identifier(n.name) for n in placeholders]
        if len(names) != len(leaves):
            names = [f"input_{i}" for i in range(len(leaves))]
        with torch.no_grad(), scratch_state(program.gm):
            out = program.gm(*program.example_args, **program.example_kwargs)
        out_leaves = pytree.tree_flatten_with_path(out)[0]
        return cls(
            in_spec=in_spec,
            input_constants=[None if _is_tensor(x) else [x] for x in leaves],
            input_names=[nm for nm, x in zip(names, leaves) if _is_tensor(x)],
            batch_inputs=_batch_inputs(placeholders, leaves),
            out_spec=pytree.tree_structure(out),
            output_constants=[None if _is_tensor(x) else [x] for _, x in out_leaves],
            output_names=_output_names([p for p, x in out_leaves if _is_tensor(x)]),
            input_dtypes=[str(x.dtype) for x in leaves if _is_tensor(x)],
            input_shapes=_input_shapes(placeholders, leaves),
        )

    # ----------------------------------------------------------------- inputs
    def complete_kwargs(self, kwargs: dict) -> dict:
        """``kwargs`` with the output switches it leaves out (``use_cache``, ``return_dict``...:
        :data:`prunec.ir.program.OUTPUT_SWITCHES`) set to their captured constants, which
        the artifact is specialised to. No other keyword is filled in."""
        captured = pytree.tree_unflatten(
            [_TENSOR if c is None else c[0] for c in self.input_constants], self.in_spec)[1]
        missing = {k: v for k, v in captured.items()
                   if k in OUTPUT_SWITCHES and k not in kwargs and not _holds_tensor(v)}
        return {**kwargs, **missing} if missing else kwargs

    def flatten_inputs(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """The tensor inputs of a call, in graph order; constants are checked (a constant
        keyword may be left out, see :meth:`complete_kwargs`)."""
        keys = list(pytree.tree_unflatten([None] * self.in_spec.num_leaves, self.in_spec)[1])
        kwargs = self.complete_kwargs(kwargs)
        if set(kwargs) != set(keys):
            unknown = sorted(set(kwargs) - set(keys))
            absent = sorted(k for k in keys if k not in kwargs)
            raise InvalidArgumentError(
                f"Keyword inputs {sorted(kwargs)} differ from those captured {sorted(keys)}"
                + (f": {unknown} unknown" if unknown else "")
                + (f"{';' if unknown else ':'} {absent} missing (tensor inputs cannot be left "
                   f"out)" if absent else "") + ".")
        leaves, spec = pytree.tree_flatten((tuple(args), {k: kwargs[k] for k in keys}))
        if spec != self.in_spec:
            raise InvalidArgumentError(f"Inputs are structured as {spec}, but the artifact was "
                              f"built for {self.in_spec}.")
        for leaf, const in zip(leaves, self.input_constants):
            if const is not None and not _same_constant(leaf, const[0]):
                raise InvalidArgumentError(f"A non-tensor input was {const[0]!r} at capture and is "
                                  f"specialised into the artifact; got {leaf!r}.")
        tensors = [x for x, c in zip(leaves, self.input_constants) if c is None]
        self.check_tensors(tensors)
        return tensors

    def check_tensors(self, tensors: list) -> None:
        """Refuse inputs of another type, dtype, rank or fixed size, naming the input."""
        for i, (name, x) in enumerate(zip(self.input_names, tensors)):
            if not _is_tensor(x):
                raise InvalidArgumentError(f"Input {name!r} must be a tensor, got {type(x).__name__}.")
            if self.input_dtypes and str(x.dtype) != self.input_dtypes[i]:
                raise InvalidArgumentError(f"Input {name!r} must be {self.input_dtypes[i]}, got {x.dtype}; "
                                  f"cast it (the artifact was built for that dtype).")
            if not self.input_shapes:
                continue
            want = self.input_shapes[i]
            fixed = [w == g or w is None for w, g in zip(want, x.shape)]
            if len(want) != x.dim() or not all(fixed):
                shown = "[" + ", ".join("*" if w is None else str(w) for w in want) + "]"
                raise InvalidArgumentError(f"Input {name!r} must have shape {shown} (* = any size), got "
                                  f"{list(x.shape)}; sizes other than * were fixed at capture.")

    def unflatten_inputs(self, tensors: list) -> tuple[tuple, dict]:
        """``(args, kwargs)`` from the tensor inputs (inverse of :meth:`flatten_inputs`)."""
        it = iter(tensors)
        leaves = [next(it) if c is None else c[0] for c in self.input_constants]
        return pytree.tree_unflatten(leaves, self.in_spec)

    # ----------------------------------------------------------------- outputs
    def output_tensors(self, out: Any) -> tuple[torch.Tensor, ...]:
        """The tensor leaves of a model output, in graph output order."""
        return tuple(x for x in pytree.tree_leaves(out) if _is_tensor(x))

    def unflatten_outputs(self, tensors: list) -> Any:
        """Rebuild the model's output structure from the graph's output tensors."""
        if self.out_spec is None:
            return tensors[0] if len(tensors) == 1 else tuple(tensors)
        it = iter(tensors)
        leaves = [next(it) if c is None else c[0] for c in self.output_constants]
        return pytree.tree_unflatten(leaves, self.out_spec)

    # ----------------------------------------------------------------- persistence
    def to_json(self) -> str:
        """Serialise. An output spec of an unregistered type is dropped (outputs then come
        back as a tuple); constants that are not JSON values are stored as their ``repr``
        (a reloaded artifact then rejects them, which is safe but strict)."""
        try:
            out_spec = pytree.treespec_dumps(self.out_spec) if self.out_spec else None
        except Exception:  # types without a serialized_type_name cannot be dumped
            out_spec = None
        return json.dumps({
            "in_spec": pytree.treespec_dumps(self.in_spec),
            "input_constants": self.input_constants, "input_names": self.input_names,
            "batch_inputs": self.batch_inputs, "out_spec": out_spec,
            "output_constants": self.output_constants, "output_names": self.output_names,
            "input_dtypes": self.input_dtypes, "input_shapes": self.input_shapes,
        }, default=repr)

    @classmethod
    def from_json(cls, text: str) -> "IOSpec":
        data = json.loads(text)
        out_spec = data.pop("out_spec")
        try:
            out_spec = pytree.treespec_loads(out_spec) if out_spec else None
        except Exception:  # the output's container type is not importable here
            out_spec = None
        return cls(in_spec=pytree.treespec_loads(data.pop("in_spec")), out_spec=out_spec,
                   **data)


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _same_constant(a: Any, b: Any) -> bool:
    # JSON round trips turn tuples into lists and may turn ints into floats.
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_constant(x, y) for x, y in zip(a, b))
    return a == b


def _identifier(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_") or "input"


def _output_names(paths: list) -> list[str]:
    """``output`` for a lone tensor, else the key path joined by ``_`` (``logits``,
    ``output_0``, ``b_1``)."""
    if len(paths) == 1 and not paths[0]:
        return ["output"]
    names = []
    for path in paths:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                 for k in path]
        name = _identifier("_".join(parts))
        names.append(name if name and not name[0].isdigit() else f"output_{name}")
    return names


def _input_shapes(placeholders: list, leaves: list) -> list[list[int | None]] | None:
    """Per tensor input, its sizes with ``None`` for axes the program keeps dynamic."""
    if len(placeholders) != len(leaves):
        return None
    shapes = []
    for node, x in zip(placeholders, leaves):
        if _is_tensor(x):
            dims = static_shape(node)
            shapes.append(list(dims) if dims is not None else list(x.shape))
    return shapes


def _batch_inputs(placeholders: list, leaves: list) -> list[bool]:
    """Per tensor input: whether its axis 0 is the batch axis and was kept dynamic.

    An input is batched when its placeholder's axis 0 is symbolic and its example has the
    same axis-0 size as the first such input. Sizes, not symbols, are compared: export may
    give ``input_ids`` and ``attention_mask`` separate batch symbols.
    """
    tensors = [(n, x) for n, x in zip(placeholders, leaves) if _is_tensor(x)]
    if len(placeholders) != len(leaves):
        return [False for x in leaves if _is_tensor(x)]
    symbolic = [
        isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].dim() > 0
        and isinstance(n.meta["val"].shape[0], torch.SymInt) for n, _ in tensors
    ]
    sizes = [x.shape[0] if x.dim() else None for _, x in tensors]
    batch = next((size for size, sym in zip(sizes, symbolic) if sym), None)
    return [sym and size == batch for size, sym in zip(sizes, symbolic)]


# --------------------------------------------------------------------------- parity
def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` in float64, NaNs in the same places counted equal."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    both_nan = torch.isnan(a) & torch.isnan(b)
    diff = (a - b).abs().masked_fill(both_nan, 0.0)
    return float(diff.max()) if diff.numel() else 0.0


def check_parity(reference: Any, candidate: Any, *, atol: float, rtol: float,
                 backend: str, names: list[str] | None = None) -> float:
    """Compare two outputs leaf by leaf; return the largest error.

    An output passes when ``max|ref - out| <= atol + rtol * max|ref|``: a scale-aware
    bound, so that a logit of 300 is not held to the absolute error of a probability.

    Raises:
        PrunecError: naming the first failing output, its max abs diff and the bound.
    """
    ref = [x for x in pytree.tree_leaves(reference) if _is_tensor(x)]
    out = [x for x in pytree.tree_leaves(candidate) if _is_tensor(x)]
    if len(ref) != len(out):
        raise PrunecError(f"{backend}: {len(out)} outputs, the program returns {len(ref)}.")
    names = names or [f"output {i}" for i in range(len(ref))]
    worst = 0.0
    for name, r, o in zip(names, ref, out):
        if tuple(r.shape) != tuple(o.shape):
            raise PrunecError(f"{backend}: output {name!r} has shape {tuple(o.shape)}, "
                              f"torch gives {tuple(r.shape)}.")
        err = max_abs_diff(r, o)
        bound = atol + rtol * (float(r.detach().abs().max()) if r.numel() else 0.0)
        if not err <= bound:
            raise PrunecError(
                f"{backend}: output {name!r} differs from torch by max abs diff {err:.3g} "
                f"(allowed {bound:.3g} = atol {atol:g} + rtol {rtol:g} * max|ref|).")
        worst = max(worst, err)
    return worst


def sample_inputs(io: IOSpec, args: tuple, kwargs: dict, batch: int | None = None,
                  seed: int = 0) -> tuple[tuple, dict]:
    """Random inputs shaped like the examples, for parity checks.

    Floating tensors are drawn from N(0, 1); integer and boolean tensors (token ids,
    masks) reuse the example values, since random ids or masks could be out of range.
    With ``batch``, axis 0 of every batched input is resized (examples repeat cyclically).
    """
    gen = torch.Generator().manual_seed(seed)
    tensors = io.flatten_inputs(args, kwargs)
    new = []
    for t, batched in zip(tensors, io.batch_inputs):
        if batched and batch is not None:
            t = t[torch.arange(batch, device=t.device) % t.shape[0]]
        if t.is_floating_point():
            t = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t)
        new.append(t)
    return io.unflatten_inputs(new)


def verify_artifact(program: "Program", artifact: Any, io: IOSpec, *, atol: float,
                    rtol: float, backend: str) -> float:
    """Parity of ``artifact`` against the program on random example-shaped inputs
    (plus batch + 1 when the batch is dynamic); returns the largest error seen."""
    batches = [None] + ([_example_batch(program, io) + 1] if any(io.batch_inputs) else [])
    worst = 0.0
    for seed, batch in enumerate(batches):
        args, kwargs = sample_inputs(io, program.example_args, program.example_kwargs,
                                     batch=batch, seed=seed)
        with torch.no_grad(), scratch_state(program.gm):
            ref = program.gm(*args, **kwargs)
        worst = max(worst, check_parity(ref, artifact(*args, **kwargs), atol=atol, rtol=rtol,
                                        backend=backend, names=io.output_names))
    return worst


def _example_batch(program: "Program", io: IOSpec) -> int:
    tensors = io.flatten_inputs(program.example_args, program.example_kwargs)
    return next(t.shape[0] for t, b in zip(tensors, io.batch_inputs) if b)
