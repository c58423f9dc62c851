"""Opaque stand-ins: ONNX nodes that no converter turns into torch, run by ONNX Runtime.

A file with one op that onnx2torch cannot convert, or not exactly (``LSTM``, ``GRU``,
``RNN``, ``If``, a ``com.microsoft`` op, ``RoiAlign`` without torchvision, a cubic
``Resize`` ...) is not refused whole. The frontend replaces each such node in its
working copy by a ``prunec.Opaque`` node whose ``spec`` attribute holds, as JSON:

* ``model``: a one-node ONNX model (base64), the node itself with its attributes, its
  small non-weight initializers (folded shape constants, ``K`` of ``TopK`` ...) inside, every
  other input a graph input typed by element type only (no shape, so any size runs); the
  values of the main graph that its subgraphs read (an ``If`` branch, a ``Loop`` body) are
  inputs too;
* ``inputs`` / ``outputs``: the static shapes shape inference (onnx's, else ONNX Runtime's
  symbolic one, which knows its contrib ops) gave the node's inputs and outputs at the
  example shapes, and the outputs' element types.

The converter turns that node into an :class:`OpaqueModule`, whose forward calls the torch
custom op ``prunec_onnx::run_node(Tensor[] inputs, str spec) -> Tensor[]``:

* its real implementation runs the one-node model with ONNX Runtime (the runtime the user
  already trusts with this file; nothing from the file is imported or compiled): used by
  calibration and by every check that runs the stand-in;
* its fake implementation gives the recorded output shapes and dtypes (``torch.export``
  traces with it). The stand-in is captured at fixed shapes; tracing it at other input
  shapes than those recorded is an error naming the node, never a guessed shape.

The node's other initializers (floating weights, large tables) are passed as tensors,
so the stand-in holds them as buffers that the channel analysis sees: an op without a
coupling rule blocks every axis it reads or writes (DESIGN contract 5), so the channels
that reach the node and its outputs stay, its weights are never sliced, and the write-back
leaves the node as the file has it. Everything else in the file prunes as before.

A node is refused (:class:`~prunec.errors.UnsupportedOpError`, naming the op, its domain,
opset and node) when ONNX Runtime cannot run it either, when an output's shape is not
known from shape inference at the example shapes (its size depends on the data, as
``NonMaxSuppression``'s does, or neither onnx's nor ONNX Runtime's inference knows the op, as
``com.microsoft.FusedMatMul``), or when a value is not a tensor of a numeric type.
"""
from __future__ import annotations

import base64
import functools
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prunec.errors import UnsupportedOpError

if TYPE_CHECKING:
    import onnx

__all__ = ["OPAQUE_DOMAIN", "OPAQUE_OP", "OpaqueModule", "OpaqueRunError", "make_opaque",
           "opaque_converter", "run_node", "opaque_labels"]

OPAQUE_DOMAIN = "prunec"
OPAQUE_OP = "Opaque"


class OpaqueRunError(UnsupportedOpError, RuntimeError):
    """ONNX Runtime failed running an opaque node on the data it got (another dtype than the
    file declares ...). A ``RuntimeError`` as a torch op's failure is, so that calibration
    names the item's input whose dtype differs from the example's."""


# ---------------------------------------------------------------------------- the torch op
@functools.lru_cache(maxsize=256)
def _parsed(spec: str) -> dict:
    return json.loads(spec)


@functools.lru_cache(maxsize=1024)
def _session(spec: str) -> Any:
    """The node's session, made once: a stand-in calls every opaque node at each run, so the
    cache holds more nodes than a file has (an ONNX Runtime-optimised transformer has several
    contrib ops per layer); a smaller one would make a session per call."""
    return _new_session(base64.b64decode(_parsed(spec)["model"]))


def _new_session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # untyped outputs warn at every run otherwise
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _check_shapes(inputs: list[torch.Tensor], spec: dict) -> None:
    got = [list(t.shape) for t in inputs]
    if got != spec["inputs"]:
        raise UnsupportedOpError(
            f"ONNX node {spec['node']!r} ({spec['op']}) runs opaque at the shapes of the "
            f"example inputs, {spec['inputs']}; it was called with {got}. Capture the file "
            f"at these shapes instead.")


@torch.library.custom_op("prunec_onnx::run_node", mutates_args=(),
                         schema="(Tensor[] inputs, str spec) -> Tensor[]")
def run_node(inputs: list[torch.Tensor], spec: str) -> list[torch.Tensor]:
    """Run the one-node ONNX model of ``spec`` with ONNX Runtime on ``inputs``."""
    parsed = _parsed(spec)
    session = _session(spec)
    names = [i.name for i in session.get_inputs()]
    feeds = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(names, inputs)}
    try:
        results = session.run(None, feeds)
    except Exception as exc:  # onnxruntime's own exception types
        got = ", ".join(f"{str(t.dtype).split('.')[-1]}{list(t.shape)}" for t in inputs)
        raise OpaqueRunError(
            f"ONNX node {parsed['node']!r} ({parsed['op']}), run by ONNX Runtime, failed on "
            f"inputs {got}: {str(exc).strip().splitlines()[0][:300]}. Pass inputs of the "
            f"element types the file declares.") from exc
    outs = [torch.from_numpy(np.ascontiguousarray(o)) for o in results]
    for out, (_, dtype) in zip(outs, parsed["outputs"]):
        if out.dtype != getattr(torch, dtype):  # the traced graph holds the inferred type
            raise UnsupportedOpError(
                f"ONNX node {parsed['node']!r} ({parsed['op']}) gave {out.dtype} in ONNX "
                f"Runtime where shape inference said {dtype}; it cannot run opaque.")
    device = inputs[0].device if inputs else torch.device("cpu")
    return [out.to(device) for out in outs]


@run_node.register_fake
def _run_node_fake(inputs: list[torch.Tensor], spec: str) -> list[torch.Tensor]:
    parsed = _parsed(spec)
    _check_shapes(inputs, parsed)
    device = inputs[0].device if inputs else torch.device("cpu")
    return [torch.empty(shape, dtype=getattr(torch, dtype), device=device)
            for shape, dtype in parsed["outputs"]]


class OpaqueModule(torch.nn.Module):
    """One ONNX node the stand-in runs with ONNX Runtime (module docstring).

    Attributes:
        spec: The JSON spec (one-node model, shapes, dtypes).
        op_type: The ONNX op, for messages.
    """

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec
        self.op_type = _parsed(spec)["op"]
        self.positions = list(_parsed(spec)["positions"])

    def forward(self, *inputs: torch.Tensor) -> Any:
        outs = torch.ops.prunec_onnx.run_node(list(inputs), self.spec)
        if self.positions == [0]:
            return outs[0]
        # An output the file omits is never read: its position holds another output.
        result = [outs[0]] * (max(self.positions) + 1)
        for position, value in zip(self.positions, outs):
            result[position] = value
        return tuple(result)


def opaque_converter(node: Any, graph: Any) -> Any:  # noqa: ARG001 - the registry's signature
    """onnx2torch converter of a ``prunec.Opaque`` node (inputs: the non-empty ones that are
    not embedded in the spec, in the node's order)."""
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    spec = node.attributes["spec"]
    spec = spec.decode() if isinstance(spec, bytes) else str(spec)
    module = OpaqueModule(spec)
    inputs = tuple(n for n in dict.fromkeys(node.input_values)
                   if n and n not in _parsed(spec)["embedded"])
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=OnnxMapping(inputs=inputs,
                                                             outputs=node.output_values))


def opaque_labels(gm: torch.fx.GraphModule) -> list[str]:
    """``'<node>' (<op>)`` for every opaque ONNX node a captured graph calls, for messages
    (a re-export of such a graph has no ONNX translation of the custom op)."""
    labels = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and str(node.target).startswith("prunec_onnx."):
            spec = next((a for a in node.args if isinstance(a, str)), None)
            if spec is not None:
                parsed = _parsed(spec)
                labels.append(f"{parsed['node']!r} ({parsed['op']})")
    return labels


# ---------------------------------------------------------------------------- the rewrite
def make_opaque(work: "onnx.ModelProto", nodes: list, reasons: dict[str, str]) -> list[str]:
    """Replace ``nodes`` of ``work`` (shape-inferred) by ``prunec.Opaque`` nodes.

    Args:
        work: The frontend's working copy, frozen at the example shapes and shape-inferred.
        nodes: Its nodes without a converter.
        reasons: Node key -> why it has no converter, for messages.

    Returns:
        One note per node for the report: which node is kept opaque and what that means.

    Raises:
        UnsupportedOpError: a node ONNX Runtime cannot run, or whose output shapes are not
            known at the example shapes (module docstring).
    """
    from onnx import helper

    if not nodes:
        return []
    types = _value_types(work)
    inits = {t.name: t for t in work.graph.initializer}
    opsets = {o.domain or "": o.version for o in work.opset_import}
    replaced, notes = {}, []
    for node in nodes:  # in graph order: an opaque node's output types serve the next ones
        if any(n and n not in inits and _static(types.get(n)) is None for n in node.input):
            types = _propagated(work, types)
        spec = _spec(work, node, types, inits, opsets, reasons)
        outputs = _named_outputs(node)
        replaced[id(node)] = helper.make_node(OPAQUE_OP, _all_inputs(node), outputs,
                                              name=node.name, domain=OPAQUE_DOMAIN, spec=spec)
        notes.append(f"ONNX node {node.name or node.output[0]!r} ({_op_label(node)}) kept "
                     f"opaque: ONNX Runtime runs it, the channels it reads and writes are not "
                     f"pruned")
    _declare(work, _propagated(work, types))
    kept = [replaced.get(id(n), n) for n in work.graph.node]
    del work.graph.node[:]
    work.graph.node.extend(kept)
    if not any(o.domain == OPAQUE_DOMAIN for o in work.opset_import):
        work.opset_import.add(domain=OPAQUE_DOMAIN, version=1)
    return notes


def _op_label(node: Any) -> str:
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    return f"{domain}.{node.op_type}" if domain else node.op_type


def _where(node: Any, opsets: dict) -> str:
    domain = node.domain if node.domain != "ai.onnx" else ""
    return (f"ONNX op {node.op_type!r} (domain {domain or 'ai.onnx'!r}, opset "
            f"{opsets.get(domain, '?')}) at node {node.name or node.output[0]!r}")


def _value_types(work: "onnx.ModelProto") -> dict[str, Any]:
    types = {}
    for value in list(work.graph.input) + list(work.graph.value_info) + list(work.graph.output):
        if value.type.HasField("tensor_type"):
            types.setdefault(value.name, value.type.tensor_type)
    return types


def _propagated(work: "onnx.ModelProto", types: dict[str, Any]) -> dict[str, Any]:
    """``types`` completed by onnx's shape inference run again with every type known so far
    (the outputs of the opaque nodes already specified, which onnx cannot infer) declared:
    the values computed from them (an ``Add`` between two contrib ops) get theirs too."""
    import onnx
    from onnx.shape_inference import infer_shapes

    probe = onnx.ModelProto()
    probe.CopyFrom(work)
    _declare(probe, types)
    try:
        probe = infer_shapes(probe, data_prop=True)
    except Exception:  # then the node's own checks name what is missing
        return types
    return {**_value_types(probe), **types}


def _declare(work: "onnx.ModelProto", types: dict[str, Any]) -> None:
    """Write ``types`` into ``work``'s value_info, so that converters of the nodes after an
    opaque one see their input shapes (a ``Resize`` decides at conversion whether torch
    mirrors it; onnx's own inference stopped at the opaque node)."""
    declared = ({v.name for v in work.graph.input} | {v.name for v in work.graph.output}
                | {t.name for t in work.graph.initializer})
    del work.graph.value_info[:]
    for name, ttype in types.items():
        if name not in declared:
            value = work.graph.value_info.add(name=name)
            value.type.tensor_type.CopyFrom(ttype)


def _static(ttype: Any) -> list[int] | None:
    if ttype is None or not ttype.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
    return None if any(d is None for d in dims) else dims


def _torch_dtype(elem_type: int) -> str | None:
    from onnx import helper

    try:
        np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
        name = str(torch.from_numpy(np.zeros(0, np_dtype)).dtype).split(".")[-1]
    except (KeyError, TypeError, ValueError):
        return None
    return name


_EMBED_LIMIT = 1 << 16
"""Largest constant (bytes) written into the spec; larger ones are passed as tensors."""


def _embedded(tensor: Any) -> bool:
    """Whether an initializer the node reads goes into its one-node model: a constant that
    is no floating weight (folded shapes, axes, ``K``: ONNX Runtime's shape inference reads
    them) and small. Weights (float, more than one element) and large tables (quantised
    weights) are passed as tensors, so the stand-in holds them as buffers."""
    weight = tensor.data_type in (1, 10, 11, 16) and int(np.prod(tensor.dims)) > 1
    return not weight and tensor.ByteSize() <= _EMBED_LIMIT


def _all_inputs(node: Any) -> list[str]:
    """The node's inputs, then the outer values its subgraphs read (an ``If`` branch or a
    ``Loop`` body reading a tensor of the main graph): the one-node model takes those as
    inputs too."""
    declared = list(node.input)
    implicit = [n for graph in _subgraphs(node) for n in _outer_names(graph)]
    return declared + [n for n in dict.fromkeys(implicit) if n not in declared]


def _subgraphs(node: Any) -> list[Any]:
    graphs: list[Any] = []
    for attribute in node.attribute:
        if attribute.type == 5:  # GRAPH
            graphs.append(attribute.g)
        elif attribute.type == 10:  # GRAPHS
            graphs.extend(attribute.graphs)
    return graphs


def _outer_names(graph: Any) -> list[str]:
    """Names a subgraph (and the subgraphs inside it) reads without defining them."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    outer: list[str] = []
    for inner in graph.node:
        reads = list(inner.input) + [n for g in _subgraphs(inner) for n in _outer_names(g)]
        outer += [n for n in reads if n and n not in defined]
        defined.update(inner.output)
    outer += [v.name for v in graph.output if v.name not in defined]
    return list(dict.fromkeys(outer))


def _named_outputs(node: Any) -> list[str]:
    """The node's outputs; an omitted one before a present one gets a private name (the
    stand-in's module returns a value at every position; nothing reads those)."""
    outputs = list(node.output)
    while outputs and not outputs[-1]:
        outputs.pop()
    key = next((o for o in outputs if o), "opaque")
    return [o or f"{key}__prunec_unused_{i}" for i, o in enumerate(outputs)]


def _spec(work: "onnx.ModelProto", node: Any, types: dict, inits: dict, opsets: dict,
          reasons: dict) -> str:
    """The JSON spec of ``node`` (module docstring); ONNX Runtime is asked first whether it
    runs the node at all, then shape inference for the static shapes."""
    import onnx
    from onnx import helper

    where = _where(node, opsets)
    why = reasons.get(node.output[0], "has no converter to torch")
    inputs, shapes, embedded, inner = [], [], [], []
    for name in (n for n in dict.fromkeys(_all_inputs(node)) if n):
        tensor = inits.get(name)
        if tensor is not None and _embedded(tensor):
            embedded.append(name)
            inner.append(tensor)
            continue
        ttype = types.get(name)
        elem = tensor.data_type if tensor is not None else (ttype.elem_type if ttype else 0)
        if not elem or _torch_dtype(elem) is None:
            raise _refused(where, why, f"its input {name!r} is not a tensor of a known "
                                       f"numeric type")
        inputs.append(helper.make_tensor_value_info(name, elem, None))
        shapes.append(list(tensor.dims) if tensor is not None else _static(ttype))
    present = [(i, n) for i, n in enumerate(node.output) if n]
    graph = helper.make_graph([node], f"prunec_opaque_{node.op_type}", inputs,
                              [onnx.ValueInfoProto(name=n) for _, n in present], inner)
    domain = node.domain if node.domain != "ai.onnx" else ""
    imports = [helper.make_opsetid("", opsets.get("", 17))]
    if domain:
        imports.append(helper.make_opsetid(domain, opsets.get(domain, 1)))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = work.ir_version
    encoded = base64.b64encode(model.SerializeToString()).decode()
    try:
        _new_session(model.SerializeToString())  # a trial: not kept in the cache
    except Exception as exc:  # onnxruntime's own exception types
        raise _refused(where, why, f"ONNX Runtime cannot run it either: "
                                   f"{str(exc).strip().splitlines()[0][:300]}") from exc
    for name, shape in zip((i.name for i in inputs), shapes):
        if shape is None:
            raise _refused(where, why, f"ONNX shape inference gives no static shape for its "
                                       f"input {name!r} at the example inputs")
    outputs = []
    inferred = None
    for index, name in present:
        ttype = types.get(name)
        if _static(ttype) is None or not ttype.elem_type:
            inferred = _runtime_inference(model, shapes) if inferred is None else inferred
            ttype = inferred.get(name)
        shape = _static(ttype)
        dtype = _torch_dtype(ttype.elem_type) if ttype is not None and ttype.elem_type else None
        if shape is None or dtype is None:
            raise _refused(where, why, f"ONNX shape inference gives no static shape and "
                                       f"numeric type for its output {index} ({name!r}) at the "
                                       f"example inputs, nor does ONNX Runtime's (a size that "
                                       f"depends on the data, or an op neither inference "
                                       f"knows)")
        outputs.append([shape, dtype])
        types[name] = ttype  # for the opaque nodes after this one (make_opaque)
    return json.dumps({"model": encoded, "node": node.name or node.output[0],
                       "op": _op_label(node), "inputs": shapes, "outputs": outputs,
                       "positions": [i for i, _ in present], "embedded": embedded})


def _runtime_inference(model: "onnx.ModelProto", shapes: list) -> dict[str, Any]:
    """Output types of the one-node ``model`` at static input ``shapes`` by ONNX Runtime's
    symbolic shape inference, which knows its contrib (``com.microsoft``) ops that onnx does
    not; empty when it cannot tell."""
    import onnx

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value, shape in zip(probe.graph.input, shapes):
        dims = value.type.tensor_type.shape
        dims.Clear()
        for size in shape:
            dims.dim.add().dim_value = int(size)
    try:
        inferred = SymbolicShapeInference.infer_shapes(probe)
    except Exception:  # its own assertions on ops it does not know
        return {}
    if inferred is None:
        return {}
    return _value_types(inferred)


def _refused(where: str, why: str, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"{where} {why}, and prunec cannot keep it opaque: {what}. Export the model with "
        f"another opset or without that op, or add a converter in "
        f"prunec/frontends/converters.py.")
