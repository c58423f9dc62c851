"""The ``onnx`` backend: an ONNX model, checked against torch, run with ONNX Runtime (CPU).

Lowering, step by step:

1. The program's graph module is wrapped so that it takes and returns flat tensors
   (:class:`~prunec.backends.base.IOSpec`): ONNX has no pytrees, kwargs or ``None``.
   Non-tensor inputs (``None``, ints) are specialised into the graph.
2. The wrapper is re-exported with ``torch.export`` (non-strict) and handed to
   ``torch.onnx.export(..., dynamo=True)``. Every input axis that the program keeps dynamic
   (batch, sequence length, image size) stays dynamic in the ONNX graph (``Dim.AUTO`` on
   exactly those axes); the axes are named from the inputs (``batch``, ``sequence``,
   ``height``, ``width``, else ``<input>_dim<k>``; see :func:`axis_names`).
   ``dynamic_batch=False`` fixes the batch at the example's size.
3. ``fp16``: the module's floating parameters and buffers are cast to half, so are the
   ``float32`` dtype constants of the graph (a ``mask.to(h.dtype)`` recorded at capture),
   and the wrapper casts floating inputs to half and floating outputs back to their torch
   dtype: the ONNX graph computes in half but keeps the model's fp32 interface. Upcasts a
   model makes on purpose (softmax in fp32) become fp16 as well.
4. onnxscript's optimizer folds constants, onnx-graphsurgeon ``cleanup().toposort()``,
   the dynamic dimensions are named, ``onnx.checker.check_model`` runs, and the
   :class:`IOSpec` is stored in the model's metadata (key ``prunec.io``) so a saved file
   is self-describing.
5. Parity: the artifact and the program run on random inputs shaped like the examples
   (and, with a dynamic batch, on batch + 1). Each output must satisfy
   ``max|ref - out| <= atol + rtol * max|ref|`` with :data:`TOLERANCES` (fp32: 1e-4/1e-4,
   fp16: 1e-2/1e-2), else :class:`~prunec.errors.PrunecError` names the output.

Outputs come back in the program's output structure (tensor, tuple, dict, or a
``transformers`` ``ModelOutput`` whose tensors are in field order); an artifact loaded
from a file whose output type cannot be rebuilt returns its tensors as a tuple.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunec.backends.artifact import metadata_for
from prunec.backends.base import (
    ONNX_PIP_HINT, Artifact, IOSpec, require, sample_inputs, verify_artifact,
)
from prunec.backends.integrity import load_onnx_file, onnx_io, read_io, stamp_onnx_digest
from prunec.backends.registry import BackendSpec, Requirement, register
from prunec.errors import PrunecError
from prunec.fileio import atomic_path
from prunec.frontends.opaque import opaque_labels
from prunec.ir.interpret import scratch_state, written_attributes

if TYPE_CHECKING:
    import onnx

    from prunec.ir.program import Program

__all__ = [
    "OnnxArtifact", "lower_onnx", "export_onnx", "optimize_onnx",
    "DEFAULT_OPSET", "TOLERANCES", "IO_METADATA_KEY", "stamp", "axis_names", "ONNX_REQUIREMENTS",
    "is_onnx_file", "saved_backend", "refuse_bfloat16",
]

DEFAULT_OPSET = 18
TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2)}
"""Parity tolerances ``(atol, rtol)`` per precision."""
IO_METADATA_KEY = "prunec.io"
BATCH_DIM = "batch"
PIP_HINT = ONNX_PIP_HINT
ONNX_REQUIREMENTS = (Requirement("onnx", "onnx"), Requirement("onnxruntime", "onnxruntime"),
                     Requirement("onnx_graphsurgeon", "onnx-graphsurgeon"),
                     Requirement("onnxscript", "onnxscript"))
"""What the ONNX lowerings need (the ``onnx`` extra of setup.py)."""


class _FlatModule(torch.nn.Module):
    """``forward(*tensors) -> tuple[tensor, ...]`` around a program's graph module."""

    def __init__(self, gm: torch.nn.Module, io: IOSpec, out_dtypes: list[torch.dtype],
                 half: bool = False) -> None:
        super().__init__()
        self.gm = _to_half(gm) if half else gm
        self.io = io
        self.out_dtypes = out_dtypes
        self.half_compute = half

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.half_compute:
            tensors = tuple(t.half() if t.is_floating_point() else t for t in tensors)
        args, kwargs = self.io.unflatten_inputs(list(tensors))
        outs = self.io.output_tensors(self.gm(*args, **kwargs))
        return tuple(o.to(dt) if o.dtype != dt else o for o, dt in zip(outs, self.out_dtypes))


def _to_half(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Cast floating parameters and buffers to half and every ``float32`` dtype constant
    in the graph (``x.to(h.dtype)``, ``torch.full(..., dtype=...)``, recorded at capture as
    ``float32``) to ``float16``, so the whole graph computes in half precision."""

    def halve(arg: Any) -> Any:
        return torch.float16 if arg is torch.float32 else arg

    gm = gm.half()
    for node in gm.graph.nodes:
        node.args = torch.fx.node.map_aggregate(node.args, halve)
        node.kwargs = torch.fx.node.map_aggregate(node.kwargs, halve)
    gm.recompile()
    return gm


def export_onnx(program: "Program", *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                fp16: bool = False) -> tuple["onnx.ModelProto", IOSpec]:
    """Export the program to an optimised, checked ONNX model (steps 1-4 above)."""
    require("onnxscript", backend="onnx", pip=PIP_HINT)
    _check_stateless(program)
    io = IOSpec.from_program(program)
    if not dynamic_batch:
        io.batch_inputs = [False] * len(io.batch_inputs)
    tensors = io.flatten_inputs(program.example_args, program.example_kwargs)
    if any(b and t.shape[0] == 1 for t, b in zip(tensors, io.batch_inputs)):
        # export specialises axes of size 1: trace a dynamic batch from a batch of 2
        tensors = io.flatten_inputs(*sample_inputs(io, program.example_args,
                                                   program.example_kwargs, batch=2))
    if not dynamic_batch and io.input_shapes:  # the batch axis becomes fixed, the rest stays
        for shape, x in zip(io.input_shapes, tensors):
            if shape:
                shape[0] = int(x.shape[0])
    with torch.no_grad(), scratch_state(program.gm):
        ref = io.output_tensors(program.gm(*program.example_args, **program.example_kwargs))
    flat = _FlatModule(copy.deepcopy(program.gm), io, [o.dtype for o in ref], half=fp16)
    specs = tuple({ax: torch.export.Dim.AUTO for ax, d in enumerate(shape) if d is None} or None
                  for shape in (io.input_shapes or [[]] * len(tensors)))
    try:
        with torch.no_grad():
            ep = torch.export.export(flat, tuple(tensors), dynamic_shapes=(specs,),
                                     strict=False)
            with _quiet_registration():
                onnx_program = torch.onnx.export(
                    ep, dynamo=True, opset_version=opset, input_names=io.input_names,
                    output_names=io.output_names, verbose=False)
    except Exception as exc:  # export raises many unrelated types; we re-raise one.
        opaque = opaque_labels(program.gm)
        if opaque:  # the stand-in of an .onnx file calls ONNX Runtime: only its write-back
            raise PrunecError(
                f"ONNX export failed: the program runs ONNX node(s) {', '.join(opaque)} of "
                f"its .onnx file by ONNX Runtime (no torch converter), which only the "
                f"write-back into that file holds, not a new export. Prune the file with a "
                f"ratio, or convert those nodes to torch first.") from exc
        raise PrunecError(
            f"ONNX export failed: {type(exc).__name__}: {_first_line(exc)}. Try "
            f"dynamic_batch=False, another opset (now {opset}), or the 'torch' backend."
        ) from exc
    batched = [n for n, b in zip(io.input_names, io.batch_inputs) if b]
    model = optimize_onnx(onnx_program.model_proto, batch_inputs=batched)
    _set_metadata(model, IO_METADATA_KEY, io.to_json())
    return model, io


@contextlib.contextmanager
def _quiet_registration():
    """torch.onnx warns on every export that torchvision's detection ops are not installed
    (prunec never installs torchvision): nothing a user can act on, so kept out of stderr."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_stateless(program: "Program") -> None:
    """Refuse a program whose forward updates its own buffers (a step counter, a cache).

    An ONNX graph has no state: every call would start from the saved values, so from the
    second call on its outputs would differ from the model's (with ``steps += 1``, the ONNX
    Runtime artifact answered 2x and 3x the model's on calls 2 and 3).

    Raises:
        PrunecError: naming the buffers and the backends that keep state.
    """

    written = written_attributes(program.gm) if not program.training else []
    if written:
        raise PrunecError(
            f"ONNX export: the model's forward updates {', '.join(map(repr, written[:4]))} "
            f"(state kept from one call to the next, e.g. a step counter); an ONNX graph has "
            f"no state, so from the second call on its outputs would differ from the "
            f"model's. Use backend='torch' or 'inductor', or make the forward stateless.")


def optimize_onnx(model: "onnx.ModelProto", batch_inputs: list[str] | None = None
                  ) -> "onnx.ModelProto":
    """Fold constants, drop dead nodes, sort topologically, name the dynamic axes, check.

    Constants are folded by onnxscript's optimizer, not onnx-graphsurgeon's
    ``fold_constants``: graphsurgeon 0.6.1 folds ``Shape(x, start=a, end=b)`` of a static
    ``x`` into the *whole* shape of ``x`` (a ``Reshape`` fed by it then gets the wrong
    target). graphsurgeon still removes dead nodes and sorts.

    Args:
        model: The exported model.
        batch_inputs: Inputs whose axis 0 is the dynamic batch (named ``batch``); the other
            dynamic axes are named by :func:`axis_names`.
    """
    onnx = require("onnx", backend="onnx", pip=PIP_HINT)
    gs = require("onnx_graphsurgeon", backend="onnx", pip=PIP_HINT)
    optimizer = require("onnxscript", backend="onnx", pip=PIP_HINT).optimizer
    metadata = {p.key: p.value for p in model.metadata_props}
    graph = gs.import_onnx(optimizer.optimize(model))
    graph.cleanup().toposort()
    _rename_symbols(graph, axis_names(graph.inputs, batch_inputs or []))
    optimized = gs.export_onnx(graph)
    for key, value in metadata.items():
        _set_metadata(optimized, key, value)
    onnx.checker.check_model(optimized)
    return optimized


# Names of the dynamic axes of an input, by its rank, after the batch axis 0: token ids and
# masks [B, N], token features [B, N, D], images [B, C, H, W], volumes [B, C, D, H, W].
_AXIS_NAMES = {2: {1: "sequence"}, 3: {1: "sequence"}, 4: {2: "height", 3: "width"},
               5: {2: "depth", 3: "height", 4: "width"}}


def axis_names(inputs: list, batch_inputs: list[str]) -> dict[str, str]:
    """``{symbol: name}`` for the dynamic axes of the graph inputs.

    Axis 0 of a batch input is ``batch``; otherwise an axis gets the conventional name for
    its position and the input's rank (:data:`_AXIS_NAMES`: ``sequence``, ``height``,
    ``width``, ``depth``), and ``<input>_dim<k>`` where there is none. A symbol shared by
    several inputs (ids and mask of one sequence) keeps the first name it got; a name
    already taken by another symbol is prefixed with the input's name
    (``decoder_input_ids_sequence``).

    Args:
        inputs: Graph inputs with ``name`` and ``shape`` (onnx-graphsurgeon variables);
            symbolic dimensions are strings.
        batch_inputs: Names of the inputs whose axis 0 is the batch.
    """
    names: dict[str, str] = {}
    for tensor in inputs:
        shape = list(tensor.shape or [])
        for axis, dim in enumerate(shape):
            if not isinstance(dim, str) or dim in names:
                continue
            if axis == 0 and tensor.name in batch_inputs:
                name = BATCH_DIM
            else:
                name = _AXIS_NAMES.get(len(shape), {}).get(axis, f"{tensor.name}_dim{axis}")
            if name in names.values():
                name = f"{tensor.name}_{name}" if name != BATCH_DIM else f"{tensor.name}_dim0"
            names[dim] = name
    return names


def _rename_symbols(graph: Any, names: dict[str, str]) -> None:
    """Rename symbols in every shape of the graph, inside expressions too
    (``((s43 - 1)//2) + 1`` becomes ``((width - 1)//2) + 1``)."""
    import re

    import onnx_graphsurgeon as gs

    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for tensor in graph.tensors().values():
        shape = tensor.shape if isinstance(tensor, gs.Variable) else None
        if shape:
            tensor.shape = [pattern.sub(lambda m: names[m.group(1)], d) if isinstance(d, str)
                            else d for d in shape]


def stamp(model: "onnx.ModelProto", program: "Program", backend: str) -> None:
    """Write prunec's metadata (version, backend, plans) into ``model.metadata_props``."""
    meta = metadata_for(program, backend)
    _set_metadata(model, "prunec.version", meta["prunec_version"])
    _set_metadata(model, "prunec.backend", backend)
    _set_metadata(model, "prunec.plans", json.dumps(meta["plans"]))


def _set_metadata(model: "onnx.ModelProto", key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


class OnnxArtifact(Artifact):
    """An ONNX model run by an ONNX Runtime ``InferenceSession``.

    Args:
        model: The ONNX model (its metadata holds the :class:`IOSpec` unless ``io`` is
            given).
        io: The flat interface; read from the model's metadata when ``None``.
        session_options: ``onnxruntime.SessionOptions``; ORT's defaults when ``None``.
        providers: Execution providers; ``["CPUExecutionProvider"]`` when ``None``.
    """

    name = "onnx"

    def __init__(self, model: "onnx.ModelProto", io: IOSpec | None = None,
                 session_options: Any = None, providers: list[str] | None = None) -> None:
        ort = require("onnxruntime", backend=self.name, pip=PIP_HINT)
        self.model = model
        self.io = io or _io_from_metadata(model)
        self.session = _session(ort, model, self.io, session_options,
                                providers or ["CPUExecutionProvider"], self.name)
        self._input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tensors = self.io.flatten_inputs(args, kwargs)
        device = tensors[0].device if tensors else torch.device("cpu")
        feeds = {n: t.detach().cpu().contiguous().numpy()
                 for n, t in zip(self._input_names, tensors)}
        try:
            outs = self.session.run(None, feeds)
        except Exception as exc:  # onnxruntime's own types; inputs were checked above
            raise PrunecError(f"{self.name}: ONNX Runtime failed running the model "
                              f"({type(exc).__name__}: {_first_line(exc)}); a model whose "
                              f"file was edited (weight shapes) fails here.") from None
        return self.io.unflatten_outputs([torch.from_numpy(o).to(device) for o in outs])

    @property
    def metadata(self) -> dict:
        """prunec's metadata, as every artifact has it: ``prunec_version``, ``backend``,
        ``io`` (the interface, JSON) and ``plans`` (the plans applied, JSON strings)."""
        props = {p.key: p.value for p in self.model.metadata_props}
        plans = props.get("prunec.plans")
        return {"prunec_version": props.get("prunec.version"),
                "backend": props.get("prunec.backend", self.name),
                "io": props.get(IO_METADATA_KEY), "plans": json.loads(plans) if plans else []}

    def save(self, path: str | Path) -> Path:
        """Write the ``.onnx`` file atomically (the interface travels in its metadata,
        with the SHA-256 of the model in ``prunec.sha256``)."""

        onnx = require("onnx", backend=self.name, pip=PIP_HINT)
        path = Path(path)
        stamp_onnx_digest(self.model)
        with atomic_path(path) as temp:
            onnx.save(self.model, str(temp))
        return path

    @classmethod
    def load(cls, path: str | Path, **session: Any) -> "OnnxArtifact":
        """Load an ``.onnx`` file written by :meth:`save` (read as data and checked:
        :func:`~prunec.backends.integrity.load_onnx_file`)."""

        model = load_onnx_file(Path(path))
        return cls(model, onnx_io(model, path), **session)


def _session(ort: Any, model: "onnx.ModelProto", io: IOSpec, options: Any,
             providers: list[str], backend: str) -> Any:
    """An ``InferenceSession``; ONNX Runtime's refusal (an op without a kernel for a
    dtype, a damaged graph) becomes one PrunecError that says what to do."""
    try:
        return ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                    providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        text = _first_line(exc)
        hint = ""
        if _has_bfloat16(model):
            hint = " " + BFLOAT16_HINT
        raise PrunecError(f"{backend}: ONNX Runtime cannot run this model "
                          f"({type(exc).__name__}: {text}).{hint}") from None


BFLOAT16_HINT = ("ONNX Runtime on CPU computes in float32 (or float16 with fp16=True), not "
                 "bfloat16: cast the model with model.float() before compiling, or use the "
                 "'torch' or 'inductor' backend (see the dtype table in the README).")


def refuse_bfloat16(program: "Program", backend: str) -> None:
    """Refuse a bfloat16 program before the export: ONNX Runtime's CPU kernels (Gemm,
    Conv...) have no bfloat16 implementation."""
    tensors = [*program.gm.parameters(), *program.gm.buffers(),
               *(x for x in torch.utils._pytree.tree_leaves(
                   (program.example_args, program.example_kwargs))
                 if isinstance(x, torch.Tensor))]
    if any(t.dtype == torch.bfloat16 for t in tensors):
        raise PrunecError(f"backend {backend!r}: the model or its inputs are bfloat16. "
                          f"{BFLOAT16_HINT}")


def _has_bfloat16(model: "onnx.ModelProto") -> bool:
    bf16 = 16  # onnx.TensorProto.BFLOAT16
    graph = model.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    return (any(t.data_type == bf16 for t in graph.initializer)
            or any(v.type.tensor_type.elem_type == bf16 for v in values))


def _io_from_metadata(model: "onnx.ModelProto") -> IOSpec:
    for prop in model.metadata_props:
        if prop.key == IO_METADATA_KEY:
            return read_io(prop.value, f"the ONNX model's {IO_METADATA_KEY}")
    raise PrunecError(f"This ONNX model has no {IO_METADATA_KEY!r} metadata: it was not "
                      f"written by prunec; pass io=IOSpec(...) explicitly.")


def lower_onnx(program: "Program", *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
               fp16: bool = False, check: bool = True, atol: float | None = None,
               rtol: float | None = None) -> OnnxArtifact:
    """Lower ``program`` to ONNX, run by ONNX Runtime on CPU with default settings.

    Args:
        program: The program (not mutated).
        opset: ONNX opset for the dynamo exporter (18 is its tested default).
        dynamic_batch: Keep axis 0 of batched inputs dynamic (``batch`` in the graph).
        fp16: Compute in half precision behind an fp32 interface.
        check: Run the parity check against torch.
        atol: Absolute tolerance; :data:`TOLERANCES` per precision when ``None``.
        rtol: Tolerance relative to ``max|ref|``; likewise.

    Raises:
        BackendUnavailable: onnx, onnxruntime, onnx-graphsurgeon or onnxscript is missing.
        PrunecError: export failed, or an output is outside the tolerance.
    """
    for module in ("onnx", "onnxruntime", "onnx_graphsurgeon", "onnxscript"):
        require(module, backend="onnx", pip=PIP_HINT)
    refuse_bfloat16(program, "onnx")
    model, io = export_onnx(program, opset=opset, dynamic_batch=dynamic_batch, fp16=fp16)
    stamp(model, program, "onnx")
    artifact = OnnxArtifact(model, io)
    if check:
        tol = TOLERANCES["fp16" if fp16 else "fp32"]
        verify_artifact(program, artifact, io, atol=tol[0] if atol is None else atol,
                        rtol=tol[1] if rtol is None else rtol, backend="onnx")
    return artifact


def is_onnx_file(path: Path) -> bool:
    """Whether ``path`` is an ONNX model: named ``.onnx``, or starting as a ``ModelProto``
    does (field 1, ``ir_version``: byte ``0x08``)."""
    if not path.is_file():
        return False
    if path.suffix == ".onnx":
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x08"


def saved_backend(path: Path) -> str | None:
    """The ``prunec.backend`` metadata of the ONNX model at ``path`` (``None``: absent or
    unreadable: the loader that then claims the file reads it with every check and says
    what is wrong). External data is not read."""
    onnx = require("onnx", backend="onnx", pip=PIP_HINT)
    try:  # strings decode lazily: a damaged one fails on reading, not on parsing
        model = onnx.load(str(path), load_external_data=False)
        return next((p.value for p in model.metadata_props if p.key == "prunec.backend"),
                    None)
    except Exception:  # noqa: BLE001 - any parse failure: claim nothing, the loader explains
        return None


register(BackendSpec(
    "onnx", lower_onnx, requires=ONNX_REQUIREMENTS,
    sniff=lambda path: is_onnx_file(path) and saved_backend(path) == "onnx",
    load=OnnxArtifact.load, sniff_order=40,
    summary="an ONNX graph run by ONNX Runtime with default settings; saves .onnx"))
