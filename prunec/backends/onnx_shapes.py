"""Shape constants of a written-back ONNX graph: Reshape / Expand shapes after pruning.

In the stand-in, a Reshape's shape is a constant frozen at the example; in the original it
is a constant (``[0, 0, 12, 64]``) or computed at run time (``Concat(Gather(Shape(x), 0),
Gather(Shape(x), 1), [12], [64])``) so that it holds at every batch size and sequence
length. When pruning changes a Reshape's or Expand's output size at position ``p`` from
``old`` to ``new`` (heads 12 -> 8; GQA's repeat), the shape input is patched there:

* a constant holding ``old`` at ``p`` gets ``new`` (copy on write: exporters share one shape
  constant between many Reshapes); ``0`` (copy the input's size) and ``-1`` (inferred) are
  left alone - they follow the pruned input by themselves;
* a ``Concat`` of 1-D pieces: the piece covering ``p`` is patched the same way, recursively
  (through ``Cast``, ``Identity``, ``Unsqueeze`` of a scalar);
* a value computed from another tensor's shape (``Gather(Shape(x))``) follows ``x``: it is
  left alone, and verification checks the file at other shapes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from prunec.errors import UnsupportedOpError
from prunec.frontends.onnx import _evaluate
from prunec.ir.program import node_module_path

if TYPE_CHECKING:
    from prunec.backends.onnx_graph import GraphEditor
    from prunec.frontends.onnx import OnnxSource
    from prunec.ir.program import Program

__all__ = ["patch_shapes", "changed_shapes"]

_SHAPED = {"Reshape": 1, "Expand": 1, "Resize": 3}
"""Op -> the input holding the output shape (Resize: its ``sizes``, when it has them)."""
_PASS_THROUGH = ("Cast", "Identity", "Unsqueeze", "Squeeze")


def changed_shapes(source: "OnnxSource", program: "Program") -> dict[str, tuple[list, list]]:
    """ONNX node key -> (old shape, new shape) for stand-in modules whose output changed."""
    from torch.fx.passes.shape_prop import ShapeProp

    gm = source.module
    with torch.no_grad():
        ShapeProp(gm).propagate(*source.example_args)
    old = {n.target: list(n.meta["tensor_meta"].shape) for n in gm.graph.nodes
           if n.op == "call_module" and hasattr(n.meta.get("tensor_meta"), "shape")}
    new: dict[str, list] = {}
    for node in program.graph.nodes:  # the last value each module computes is its output
        val = node.meta.get("val")
        path = node_module_path(node) if node.op == "call_function" else ""
        if path and isinstance(val, torch.Tensor):
            new[path] = [int(s) for s in val.shape]
    return {source.modules[m]: (old[m], new[m]) for m in old
            if m in new and m in source.modules and old[m] != new[m]}


def patch_shapes(editor: "GraphEditor", source: "OnnxSource", program: "Program") -> None:
    """Patch the shape input of every Reshape / Expand whose output changed size."""
    producers = {o: n for n in editor.model.graph.node for o in n.output}
    patches = []
    for key, (old, new) in changed_shapes(source, program).items():
        node = editor.nodes.get(key)
        if node is None or node.op_type not in _SHAPED or len(old) != len(new):
            continue
        if len(node.input) <= _SHAPED[node.op_type] or not node.input[_SHAPED[node.op_type]]:
            continue  # a Resize by scales: its output follows the input
        for pos, (a, b) in enumerate(zip(old, new)):
            if a != b:
                patches.append((key, _SHAPED[node.op_type], pos, a, b))
    if not patches:
        return
    values = _computed_values(editor, source, producers, patches)
    for key, index, pos, old, new in patches:
        _patch(editor, producers, values, key, index, pos, old, new)


def _computed_values(editor: "GraphEditor", source: "OnnxSource", producers: dict,
                     patches: list) -> dict[str, np.ndarray]:
    """Values (at the example) of every non-constant tensor a patch may walk through."""
    names: set[str] = set()
    todo = [editor.nodes[key].input[index] for key, index, *_ in patches]
    while todo:
        name = todo.pop()
        if name in names or name in editor.inits or name not in producers:
            continue
        names.add(name)
        node = producers[name]
        if node.op_type == "Concat" or node.op_type in _PASS_THROUGH:
            todo.extend(i for i in node.input if i)
    names = {n for n in names if producers[n].op_type != "Constant"}
    if not names:
        return {}

    return _evaluate(source.model, source.feeds, sorted(names))  # the original's values


def _constant(editor: "GraphEditor", producers: dict, name: str) -> np.ndarray | None:
    value = editor.value(name)
    if value is not None:
        return value
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        from onnx import numpy_helper

        attr = next((a for a in node.attribute if a.name == "value"), None)
        return None if attr is None else numpy_helper.to_array(attr.t)
    return None


def _patch(editor: "GraphEditor", producers: dict, values: dict, key: str, index: int,
           pos: int, old: int, new: int) -> None:
    node = editor.nodes[key]
    name = node.input[index]
    const = _constant(editor, producers, name)
    if const is not None:
        flat = const.reshape(-1).copy()
        if flat[pos] == old:
            flat[pos] = new
            editor.set_input(key, index, flat.reshape(const.shape))
        elif flat[pos] not in (0, -1, new):  # new: a reader sharing this shape patched it
            raise UnsupportedOpError(
                f"Shape input {name!r} of node {node.name or key!r} holds {flat[pos]} at "
                f"position {pos}, where the pruned model needs {old} -> {new}: it cannot be "
                f"patched.")
        return
    producer = producers.get(name)
    if producer is None or name not in values:
        return  # computed from a tensor's shape: follows the pruned tensor by itself
    if producer.op_type == "Concat":
        offset = 0
        for i, piece in enumerate(producer.input):
            size = _size(editor, producers, values, piece)
            if offset <= pos < offset + size:
                _patch(editor, producers, values, producer.output[0], i, pos - offset, old, new)
                return
            offset += size
    elif producer.op_type in _PASS_THROUGH and producer.input:
        _patch(editor, producers, values, producer.output[0], 0, pos, old, new)


def _size(editor: "GraphEditor", producers: dict, values: dict, name: str) -> int:
    const = _constant(editor, producers, name)
    value = const if const is not None else values.get(name)
    return int(np.asarray(value).size) if value is not None else 1

