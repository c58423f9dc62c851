"""The ONNX frontend: an ``.onnx`` file + example inputs -> a torch stand-in and a name map.

prunec analyses and rewrites torch graphs. For a user who has only an ONNX file, this module
builds a *stand-in*: a torch module that computes what the file computes at the example
shapes, whose tensors map back to the file's initializers. The passes run on the stand-in
unchanged; :mod:`prunec.backends.onnx_original` writes their plan back into the user's file.

Steps (:func:`open_onnx`):

1. **Load and check**: a path or an ``onnx.ModelProto`` (never mutated); external data read
   from beside the file; ``onnx.checker.check_model(full_check=True)``. A missing file is a
   ``FileNotFoundError`` naming it; a truncated file, a failing check or missing external
   data a :class:`~prunec.errors.PrunecError` saying which; a node in prunec's own domain
   (``prunec``, its working nodes) an :class:`~prunec.errors.UnsupportedOpError` naming it.
2. **Feeds**: example inputs as a dict by graph-input name or a tuple in graph-input order
   (numpy arrays or torch tensors); each must have the input's element type and rank and
   match its fixed dims.
3. **Freeze and fold**: a working copy gets the example shapes on its inputs; every node
   whose value depends only on constants and input *shapes* (``Shape``, ``Gather``,
   ``Concat``, ``ConstantOfShape``, ``Range`` ...) is evaluated once by ONNX Runtime at the
   example and becomes an initializer. Nodes that read a weight (a floating initializer with
   more than one element) are never folded, so every weight keeps its initializer name.
   ``Identity`` of an initializer (exporters deduplicate equal tensors that way) is bypassed:
   each reader then reads the initializer itself.
4. **Fuse**: ``MatMul(x, W)`` with a 2-D weight initializer, and the ``Add`` of a 1-D bias
   initializer after it, become one ``prunec.Linear`` node (a linear layer for the analysis
   and for mean folding).
5. **Convert** with onnx2torch and prunec's converters (:mod:`prunec.frontends.converters`).
   A node without a converter (or whose converter raises ``NotImplementedError`` for its
   attributes) is kept *opaque* (:mod:`prunec.frontends.opaque`): ONNX Runtime runs it inside
   the stand-in and its channels are not pruned; one it cannot run either, or whose output
   shapes are unknown at the example, is an :class:`~prunec.errors.UnsupportedOpError`
   naming the op type, the node and the opset.
6. **Map**: every tensor of the stand-in is tied to the ``(node, input)`` it came from
   (:class:`Use`): ``onnx2torch`` keeps one buffer per reader of an initializer, so a shared
   initializer has one stand-in tensor per reader and is copied on write when written back.
   Nodes are named by their first output (unique in a valid graph, unlike node names).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prunec.errors import (
    BackendUnavailable, InvalidArgumentError, PrunecError, UnsupportedOpError,
)
from prunec.frontends.converters import LINEAR_DOMAIN
from prunec.frontends.opaque import OPAQUE_DOMAIN
from prunec.frontends.source import PIP_HINT, SOURCE_KEY, OnnxSource, Use
from prunec.frontends.stand_in import convert

if TYPE_CHECKING:
    import onnx

__all__ = ["Use", "OnnxSource", "open_onnx", "is_onnx_model", "load_model", "check_feeds",
           "onnx_source", "PIP_HINT"]

# Nodes never folded: their value is not a function of their inputs, or holds a subgraph.
_NEVER_FOLD = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
               "Multinomial", "Bernoulli", "If", "Loop", "Scan", "Dropout"}


def is_onnx_model(model: Any) -> bool:
    """Whether ``model`` is an ONNX model: a ``ModelProto`` or a path ending in ``.onnx``."""
    if type(model).__name__ == "ModelProto":
        return True
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx")


def onnx_source(program: Any) -> OnnxSource | None:
    """The :class:`OnnxSource` a stand-in program was captured from, else ``None``."""
    gm = getattr(program, "gm", None)
    return getattr(gm, "meta", {}).get(SOURCE_KEY) if gm is not None else None


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(f"ONNX input needs {exc.name!r}; install {PIP_HINT}.") from exc
    return onnx


# ---------------------------------------------------------------------------- loading
def load_model(model: Any) -> tuple["onnx.ModelProto", Path | None, bool]:
    """``(model, path, external)``: a checked private copy with external data loaded.

    Raises:
        FileNotFoundError: the path does not exist.
        PrunecError: not an ONNX file (truncated, another format), external data missing,
            or the checker rejects it.
    """
    onnx = _require_onnx()
    from google.protobuf.message import DecodeError

    path = None
    if type(model).__name__ == "ModelProto":
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"No ONNX file at '{path}'.")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise PrunecError(f"'{path}' is not a readable ONNX model (truncated or another "
                              f"format): {exc}. Export it again.") from exc
        if not proto.graph.node and not proto.graph.output:
            raise PrunecError(f"'{path}' holds no ONNX graph (truncated or another format).")
    external = _load_external(proto, path)
    _check(proto, path)
    return proto, path, external


def _load_external(proto: "onnx.ModelProto", path: Path | None) -> bool:
    from onnx.external_data_helper import (
        ExternalDataInfo, _get_all_tensors, load_external_data_for_tensor, uses_external_data)

    tensors = [t for t in _get_all_tensors(proto) if uses_external_data(t)]
    if not tensors:
        return False
    if path is None:
        raise PrunecError("This ModelProto keeps weights in external data files but has no "
                          "directory to read them from: pass the .onnx path instead.")
    for tensor in tensors:
        location = path.parent / ExternalDataInfo(tensor).location
        if not location.is_file():
            raise PrunecError(f"'{path}': external data file '{location}' (tensor "
                              f"{tensor.name!r}) is missing; copy it next to the model.")
        try:
            load_external_data_for_tensor(tensor, str(path.parent))
        except Exception as exc:  # onnx raises several types for short or bad files
            raise PrunecError(f"'{path}': external data for tensor {tensor.name!r} cannot be "
                              f"read from '{location}': {exc}") from exc
        tensor.data_location = 0  # now held in the proto (onnx.TensorProto.DEFAULT)
        del tensor.external_data[:]
    return True


def _check(proto: "onnx.ModelProto", path: Path | None) -> None:
    import onnx

    where = f"'{path}'" if path else "the ModelProto"
    try:
        if proto.ByteSize() < 2**31 - 2**20:
            onnx.checker.check_model(proto, full_check=True)
        elif path is not None:
            onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise PrunecError(f"{where} fails onnx.checker.check_model(full_check=True): "
                          f"{str(exc).strip().splitlines()[0][:400]}. Fix or re-export "
                          f"the model first.") from exc


# ---------------------------------------------------------------------------- feeds
def graph_inputs(model: "onnx.ModelProto") -> list[Any]:
    """Graph inputs that are not initializers (old exporters list weights as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def check_feeds(model: "onnx.ModelProto", inputs: Any, what: str = "example_inputs"
                ) -> dict[str, np.ndarray]:
    """Example inputs as ``{graph input name: numpy array}``, checked against the graph.

    Args:
        model: The model.
        inputs: A dict by graph-input name, a tuple/list in graph-input order, or one array
            for a one-input graph; numpy arrays or torch tensors.
        what: The argument's name, for messages.

    Raises:
        InvalidArgumentError: a missing or unknown input, or a wrong type, element type,
            rank or fixed dim (the message names the input and what the graph expects).
    """
    from onnx import helper

    specs = graph_inputs(model)
    names = [s.name for s in specs]
    if isinstance(inputs, dict):
        missing = [n for n in names if n not in inputs]
        extra = [k for k in inputs if k not in names]
        if missing or extra:
            raise InvalidArgumentError(
                f"{what}: the graph's inputs are {names}; missing {missing}, unknown {extra}.")
        values = [inputs[n] for n in names]
    else:
        values = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
        if len(values) != len(names):
            raise InvalidArgumentError(f"{what}: the graph has {len(names)} inputs {names}, "
                                       f"got {len(values)} values; pass a dict by name.")
    feeds = {}
    for spec, value in zip(specs, values):
        array = _as_array(value, spec.name, what)
        ttype = spec.type.tensor_type
        want = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        if array.dtype != want:
            raise InvalidArgumentError(f"{what}: input {spec.name!r} must be {want}, got "
                                       f"{array.dtype}; cast it.")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if ttype.HasField("shape") and (len(dims) != array.ndim or any(
                d is not None and d != s for d, s in zip(dims, array.shape))):
            shown = [d if d is not None else "*" for d in dims]
            raise InvalidArgumentError(f"{what}: input {spec.name!r} must have shape {shown} "
                                       f"(* = any size), got {list(array.shape)}.")
        feeds[spec.name] = array
    return feeds


def _as_array(value: Any, name: str, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().numpy().copy()
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value).copy()
    if isinstance(value, np.generic):
        return np.asarray(value)
    raise InvalidArgumentError(f"{what}: input {name!r} must be a numpy array or a torch "
                               f"tensor, got {type(value).__name__}.")


# ---------------------------------------------------------------------------- stand-in
def open_onnx(model: Any, example_inputs: Any) -> OnnxSource:
    """Load, check and convert ``model`` at the shapes of ``example_inputs`` (see the module
    docstring for the steps and the errors)."""
    proto, path, external = load_model(model)
    _check_reserved_domain(proto)
    feeds = check_feeds(proto, example_inputs)
    source = OnnxSource(proto, path, external, feeds, [i.name for i in graph_inputs(proto)])
    work = _working_copy(proto, feeds)
    _fold_shapes(work, feeds)
    _bypass_identities(work)
    work = _infer_shapes(work)  # before fusing: onnx cannot infer through prunec.Linear
    source.fused = _fuse_linear(work)
    source.module, source.uses, source.modules = convert(work, source)
    return source


def _check_reserved_domain(proto: "onnx.ModelProto") -> None:
    """Refuse a file with nodes in prunec's own domain (its working copy's fused ``Linear``
    and ``Opaque`` nodes): an ``Opaque`` node from the file would run a one-node model the file
    chose, a ``Linear`` one would be taken for a fused layer.

    Raises:
        UnsupportedOpError: naming the first such node.
    """
    pending = [proto.graph]
    while pending:
        graph = pending.pop()
        for node in graph.node:
            if node.domain in (LINEAR_DOMAIN, OPAQUE_DOMAIN):
                raise UnsupportedOpError(
                    f"ONNX node {node.name or node.output[0]!r} ({node.op_type}) is in the "
                    f"domain {node.domain!r}, which is reserved for prunec's own working "
                    f"nodes, so prunec cannot take this file. Export the model again without "
                    f"that node, or rename its domain.")
            for attribute in node.attribute:  # If branches, Loop and Scan bodies
                pending.extend([attribute.g] if attribute.type == 5 else attribute.graphs)


def _working_copy(proto: "onnx.ModelProto", feeds: dict[str, np.ndarray]) -> "onnx.ModelProto":
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(proto)
    inits = {t.name for t in work.graph.initializer}
    keep = [i for i in work.graph.input if i.name not in inits]
    del work.graph.input[:]
    work.graph.input.extend(keep)
    for spec in work.graph.input:
        shape = spec.type.tensor_type.shape
        shape.Clear()
        for size in feeds[spec.name].shape:
            shape.dim.add().dim_value = int(size)
    for out in work.graph.output:
        out.type.tensor_type.ClearField("shape")
    del work.graph.value_info[:]
    return work


def _fold_shapes(work: "onnx.ModelProto", feeds: dict[str, np.ndarray]) -> None:
    """Replace every node computable from constants and input shapes by initializers."""
    from onnx import numpy_helper

    weights = {t.name for t in work.graph.initializer
               if _is_float(t.data_type) and int(np.prod(t.dims)) > 1}
    const = {t.name for t in work.graph.initializer}
    folded = []
    for node in work.graph.node:
        if node.op_type in _NEVER_FOLD or node.domain not in ("", "ai.onnx") or any(
                a.type in (5, 10) for a in node.attribute):  # GRAPH / GRAPHS attributes
            continue
        inputs = [i for i in node.input if i]
        if node.op_type in ("Shape", "Size") or (
                all(i in const for i in inputs) and not any(i in weights for i in inputs)):
            folded.append(node)
            const.update(node.output)
    if not folded:
        return
    ids = {tuple(n.output) for n in folded}
    folded_outputs = {o for n in folded for o in n.output}
    needed = {i for n in work.graph.node if tuple(n.output) not in ids for i in n.input} \
        | {o.name for o in work.graph.output}
    frontier = sorted(folded_outputs & needed)
    values = _evaluate(work, feeds, frontier) if frontier else {}
    keep = [n for n in work.graph.node if tuple(n.output) not in ids]
    del work.graph.node[:]
    work.graph.node.extend(keep)
    for name, value in values.items():
        work.graph.initializer.append(numpy_helper.from_array(value, name))


def _infer_shapes(work: "onnx.ModelProto") -> "onnx.ModelProto":
    from onnx.shape_inference import infer_shapes

    try:
        return infer_shapes(work, data_prop=True)
    except Exception:  # converters needing a shape then name their node
        return work


def _is_float(data_type: int) -> bool:
    return data_type in (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _evaluate(work: "onnx.ModelProto", feeds: dict[str, np.ndarray], names: list[str]
              ) -> dict[str, np.ndarray]:
    """Values of ``names`` at ``feeds``, computed by ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(work)
    del probe.graph.output[:]
    probe.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        outs = session.run(names, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise PrunecError(f"ONNX Runtime cannot run the model at the example shapes: "
                          f"{str(exc).strip()[:400]}") from exc
    return dict(zip(names, outs))


def _bypass_identities(work: "onnx.ModelProto") -> None:
    """Readers of ``Identity(initializer)`` read the initializer itself."""
    inits = {t.name for t in work.graph.initializer}
    outputs = {o.name for o in work.graph.output}
    alias = {n.output[0]: n.input[0] for n in work.graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    if not alias:
        return
    keep = [n for n in work.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del work.graph.node[:]
    work.graph.node.extend(keep)


def _fuse_linear(work: "onnx.ModelProto") -> dict[str, tuple]:
    """``MatMul(x, W) [+ b]`` -> ``prunec.Linear(x, W[, b])``; returns the fused table."""
    from onnx import helper

    inits = {t.name: t for t in work.graph.initializer}
    outputs = {o.name for o in work.graph.output}
    readers: dict[str, list] = {}
    for node in work.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    fused, drop, nodes = {}, set(), []
    for node in work.graph.node:
        if node.output[0] in drop:
            continue
        w = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or len(w.dims) != 2 or not _is_float(w.data_type) \
                or node.input[0] in inits:
            nodes.append(node)
            continue
        inputs, out, add_key, bias_at = [node.input[0], node.input[1]], node.output[0], None, -1
        users = readers.get(out, [])
        if len(users) == 1 and users[0].op_type == "Add" and out not in outputs:
            add = users[0]
            other = 1 - list(add.input).index(out)
            b = inits.get(add.input[other])
            if b is not None and list(b.dims) == [w.dims[1]] and b.data_type == w.data_type:
                inputs.append(add.input[other])
                out, add_key, bias_at = add.output[0], add.output[0], other
                drop.add(add.output[0])
        fused[out] = (node.output[0], add_key, bias_at)
        nodes.append(helper.make_node("Linear", inputs, [out], name=node.name,
                                      domain=LINEAR_DOMAIN))
    if fused:
        del work.graph.node[:]
        work.graph.node.extend(nodes)
        if not any(o.domain == LINEAR_DOMAIN for o in work.opset_import):
            work.opset_import.add(domain=LINEAR_DOMAIN, version=1)
    return fused
