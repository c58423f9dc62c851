"""onnx2torch conversion of the frozen working copy, and the stand-in -> ONNX name map.

A stand-in tensor is either a buffer ``initializers.onnx_initializer_K`` (onnx2torch makes
one per reader of an initializer: the ``K``-th tensor input it met) or a parameter of a
converted module (``<module>.weight``: Conv, Gemm as ``nn.Linear``, LayerNormalization,
BatchNormalization, prunec's fused ``Linear``). :data:`PARAMETER_INPUTS` says which node input
each such parameter holds and how (transposed for Gemm without ``transB`` and for a MatMul
weight, scaled by Gemm's ``alpha`` / ``beta``).

A node no converter takes (none registered, torchvision needed, a converter raising
``NotImplementedError`` for its attributes, or a Resize no torch interpolation mirrors) is
replaced by a ``prunec.Opaque`` node that ONNX Runtime runs (:mod:`prunec.frontends.opaque`);
the notes naming those nodes go to ``source.opaque``.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from prunec.errors import BackendUnavailable, UnsupportedOpError
from prunec.frontends.converters import (
    LINEAR_DOMAIN, InexactConversion, import_onnx2torch, torchvision_missing,
)
from prunec.frontends.opaque import make_opaque
from prunec.frontends.source import PIP_HINT, Use

if TYPE_CHECKING:
    import onnx

    from prunec.frontends.source import OnnxSource

__all__ = ["convert", "PARAMETER_INPUTS"]

PARAMETER_INPUTS: dict[str, dict[str, int]] = {
    "Conv": {"weight": 1, "bias": 2},
    "ConvTranspose": {"weight": 1, "bias": 2},
    "Gemm": {"weight": 1, "bias": 2},
    "LayerNormalization": {"weight": 1, "bias": 2},
    "BatchNormalization": {"weight": 1, "bias": 2, "running_mean": 3, "running_var": 4},
    "InstanceNormalization": {"weight": 1, "bias": 2},
    "Linear": {"weight": 1, "bias": 2},
}
"""ONNX op -> converted module's parameter -> the node input it holds."""


def convert(work: "onnx.ModelProto", source: "OnnxSource"
            ) -> tuple[torch.fx.GraphModule, dict[str, Use], dict[str, str]]:
    """The stand-in module, its tensors' :class:`Use` map and module -> node key map."""
    try:
        o2t = import_onnx2torch()
    except ImportError as exc:
        raise BackendUnavailable(f"ONNX input needs onnx2torch; install {PIP_HINT}.") from exc
    source.opaque = _check_converters(work)
    names = source.input_names
    plain = all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in names) and len(set(names)) == len(names)
    try:
        module = o2t.convert(work, save_input_names=plain, attach_onnx_mapping=True)
    except Exception as exc:  # a converter failed on a node: keep it opaque, or name it
        failed = [(n, e) for n, e in _failing_nodes(work) if isinstance(e, _OPAQUE_INSTEAD)]
        if not failed:
            raise _conversion_error(work, exc) from exc
        source.opaque += make_opaque(work, [n for n, _ in failed],
                                     {n.output[0]: f"cannot be converted to torch exactly ({e})"
                                      for n, e in failed})
        try:  # a node failing for another reason is named by the second attempt
            module = o2t.convert(work, save_input_names=plain, attach_onnx_mapping=True)
        except Exception as again:
            raise _conversion_error(work, again) from again
    module.eval()
    _readable_names(module, work)
    uses, modules = _map(module, work, source)
    return module, uses, modules


def _readable_names(module: torch.fx.GraphModule, work: "onnx.ModelProto") -> None:
    """Name stand-in tensors after what they hold, so plans read in the file's own names.

    onnx2torch calls the buffer of the ``K``-th initializer read ``onnx_initializer_K`` and
    prefixes a custom domain to module names (``prunec//fc1/MatMul``): buffers become
    ``initializers.<initializer name>`` (``__2``, ``__3`` for further readers of a shared
    one), fused linear modules take their MatMul node's name. Non-identifier characters
    become ``_``; names are deterministic, so plans replay on a fresh stand-in of the file.
    """
    container = getattr(module, "initializers", None)
    if container is None:  # every weight lives in a converted module
        _rename_fused_modules(module)
        module.recompile()
        return
    inits = {t.name for t in work.graph.initializer}
    renamed: dict[str, str] = {}
    taken = set(dict(container.named_buffers()))
    for fx_node in module.graph.nodes:
        if fx_node.op != "call_module":
            continue
        mapping = getattr(module.get_submodule(fx_node.target), "onnx_mapping", None)
        attrs = [a for a in list(fx_node.args) + list(fx_node.kwargs.values())
                 if isinstance(a, torch.fx.Node) and a.op == "get_attr"
                 and a.target.startswith("initializers.") and a.target not in renamed]
        consts = [n for n in (mapping.inputs if mapping else ()) if n in inits]
        for attr, name in zip(attrs, consts):
            base = re.sub(r"[^0-9A-Za-z_/]", "_", name).strip("_") or "tensor"
            new, count = base, 1
            while new in taken:
                count += 1
                new = f"{base}__{count}"
            taken.add(new)
            renamed[attr.target] = f"initializers.{new}"
    for old, new in renamed.items():
        old_attr, new_attr = old.split(".", 1)[1], new.split(".", 1)[1]
        container.register_buffer(new_attr, container._buffers.pop(old_attr))  # noqa: SLF001
    for fx_node in module.graph.nodes:
        if fx_node.op == "get_attr" and fx_node.target in renamed:
            fx_node.target = renamed[fx_node.target]
    _rename_fused_modules(module)
    module.recompile()


def _rename_fused_modules(module: torch.fx.GraphModule) -> None:
    prefix = f"{LINEAR_DOMAIN}/"
    names = {name for name, _ in module.named_children()}
    for fx_node in module.graph.nodes:
        if fx_node.op != "call_module" or not fx_node.target.startswith(prefix):
            continue
        new = fx_node.target[len(prefix):].lstrip("/") or fx_node.target
        if new in names:
            continue
        sub = module.get_submodule(fx_node.target)
        delattr(module, fx_node.target)
        module.add_module(new, sub)
        names.add(new)
        fx_node.target = new


_OPAQUE_INSTEAD = (NotImplementedError, InexactConversion)
"""A converter raising these lacks the node's attributes, or would compute something else:
ONNX Runtime runs the node instead. Other errors name the node and stop."""

_NEEDS_TORCHVISION = {("", "NonMaxSuppression"), ("", "RoiAlign")}
"""onnx2torch converts these with torchvision, which prunec does not install."""


def _opsets(work: "onnx.ModelProto") -> dict[str, int]:
    return {o.domain or "": o.version for o in work.opset_import}


def _check_converters(work: "onnx.ModelProto") -> list[str]:
    """Every node without a converter becomes a ``prunec.Opaque`` node that ONNX Runtime
    runs (:mod:`prunec.frontends.opaque`); returns the notes saying which.

    Raises:
        UnsupportedOpError: a node without a converter that cannot be kept opaque either.
    """
    from onnx2torch.node_converters import get_converter

    opsets = _opsets(work)
    missing, reasons = [], {}
    for node in work.graph.node:
        domain = node.domain if node.domain != "ai.onnx" else ""
        if (domain, node.op_type) in _NEEDS_TORCHVISION and torchvision_missing():
            missing.append(node)
            reasons[node.output[0]] = "has a converter that needs torchvision"
            continue
        try:
            get_converter(domain=domain, operation_type=node.op_type,
                          version=opsets.get(domain, 1))
        except NotImplementedError:
            missing.append(node)
    return make_opaque(work, missing, reasons)


def _failing_nodes(work: "onnx.ModelProto") -> list[tuple[Any, Exception]]:
    """The nodes whose converter raises, with what it raised."""
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_graph import OnnxGraph

    graph, opsets = OnnxGraph(work.graph), _opsets(work)
    protos = {n.output[0]: n for n in work.graph.node if n.output}
    failed = []
    for node in graph.nodes.values():
        try:
            get_converter(domain=node.domain, operation_type=node.operation_type,
                          version=opsets.get(node.domain, 1))(node, graph)
        except Exception as exc:  # the converter's own message says what it lacks
            failed.append((protos[node.output_values[0]], exc))
    return failed


def _conversion_error(work: "onnx.ModelProto", exc: Exception) -> UnsupportedOpError:
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_graph import OnnxGraph

    graph, opsets = OnnxGraph(work.graph), _opsets(work)
    for node in graph.nodes.values():
        try:
            get_converter(domain=node.domain, operation_type=node.operation_type,
                          version=opsets.get(node.domain, 1))(node, graph)
        except Exception as inner:  # the converter's own message says what it lacks
            return UnsupportedOpError(
                f"ONNX node {node.name or node.output_values[0]!r} ({node.operation_type}, "
                f"opset {opsets.get(node.domain, '?')}) cannot be converted to torch: "
                f"{type(inner).__name__}: {inner}")
    return UnsupportedOpError(f"onnx2torch could not convert the model: "
                              f"{type(exc).__name__}: {exc}")


def _map(module: torch.fx.GraphModule, work: "onnx.ModelProto", source: "OnnxSource"
         ) -> tuple[dict[str, Use], dict[str, str]]:
    original = {t.name for t in source.model.graph.initializer}
    work_inits = {t.name for t in work.graph.initializer}
    nodes = {n.output[0]: n for n in work.graph.node}
    uses: dict[str, Use] = {}
    modules: dict[str, str] = {}
    for fx_node in module.graph.nodes:
        if fx_node.op != "call_module":
            continue
        sub = module.get_submodule(fx_node.target)
        mapping = getattr(sub, "onnx_mapping", None)
        if mapping is None or not mapping.outputs:
            continue
        key = mapping.outputs[0]
        node = nodes.get(key)
        if node is None:
            continue
        modules[fx_node.target] = key
        attrs = [a for a in list(fx_node.args) + list(fx_node.kwargs.values())
                 if isinstance(a, torch.fx.Node) and a.op == "get_attr"]
        consts = [n for n in mapping.inputs if n in work_inits]
        for attr, name in zip(attrs, consts):
            if name in original:
                uses[attr.target] = _node_use(source, key, list(node.input).index(name))
        _map_parameters(sub, fx_node.target, node, key, source, original, uses)
    return uses, modules


def _node_use(source: "OnnxSource", key: str, index: int) -> Use:
    """A Use on the original graph: a fused Linear's inputs go back to MatMul / Add."""
    fused = source.fused.get(key)
    if fused is None:
        return Use(key, index)
    matmul, add, bias_at = fused
    if index == 2:
        return Use(add, bias_at)
    return Use(matmul, index, transpose=index == 1)


def _map_parameters(sub: torch.nn.Module, name: str, node: Any, key: str,
                    source: "OnnxSource", original: set, uses: dict[str, Use]) -> None:
    table = PARAMETER_INPUTS.get(node.op_type)
    if table is None:
        return
    attrs = {a.name: a for a in node.attribute}
    for attr, index in table.items():
        if getattr(sub, attr, None) is None or index >= len(node.input) \
                or node.input[index] not in original:
            continue
        if node.op_type == "Linear":
            uses[f"{name}.{attr}"] = _node_use(source, key, index)
        elif node.op_type == "Gemm":
            trans_b = attrs["transB"].i if "transB" in attrs else 0
            alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
            beta = attrs["beta"].f if "beta" in attrs else 1.0
            uses[f"{name}.{attr}"] = Use(key, index, transpose=(index == 1 and not trans_b),
                                         scale=alpha if index == 1 else beta)
        else:
            uses[f"{name}.{attr}"] = Use(key, index)
