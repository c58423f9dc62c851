"""Edits of an ONNX model copy, shared by the write-back steps (tensors, shape constants,
residual blocks, verification).

:class:`GraphEditor` names a node by its first output (unique in a valid graph, unlike node
names) and writes initializers copy-on-write: an initializer read by several nodes is left to
the others and the edited reader gets a new one. It lives below
:mod:`prunec.backends.onnx_original` and the step modules that it calls.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = ["GraphEditor"]


class GraphEditor:
    """Edits of a model copy by node key (first output) with copy-on-write initializers."""

    def __init__(self, model: "onnx.ModelProto") -> None:
        self.model = model
        self.nodes = {n.output[0]: n for n in model.graph.node if n.output}
        self.inits = {t.name: t for t in model.graph.initializer}
        self.used_before = self._used()
        self._count = 0

    def _used(self) -> set[str]:
        used = {i for n in self.model.graph.node for i in n.input}
        return used | {o.name for o in self.model.graph.output}

    def readers(self, name: str) -> int:
        outputs = sum(o.name == name for o in self.model.graph.output)
        return outputs + sum(list(n.input).count(name) for n in self.model.graph.node)

    def fresh(self, base: str) -> str:
        names = set(self.inits) | {o for n in self.model.graph.node for o in n.output}
        while True:
            self._count += 1
            name = f"{base}__prunec{self._count}"
            if name not in names:
                return name

    def value(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        tensor = self.inits.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def set_input(self, key: str, index: int, value: np.ndarray) -> None:
        """Make input ``index`` of node ``key`` the constant ``value``: in place when the
        initializer has no other reader, else in a new initializer (copy on write)."""
        from onnx import numpy_helper

        node = self.nodes[key]
        name = node.input[index] if index < len(node.input) else ""
        via = self.nodes.get(name)
        if via is not None and via.op_type == "Identity" and self.readers(name) == 1 \
                and via.input[0] in self.inits:  # keep the exporter's Identity node
            self.set_input(name, 0, value)
            return
        old = self.inits.get(name)
        if old is not None:
            value = value.astype(numpy_helper.to_array(old).dtype, copy=False)
        if old is not None and self.readers(name) == 1:
            old.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))
            return
        new = self.fresh(name or f"{node.name or key}_input{index}")
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), new)
        self.model.graph.initializer.append(tensor)
        self.inits[new] = self.model.graph.initializer[-1]
        while len(node.input) <= index:
            node.input.append("")
        node.input[index] = new

    def insert_after(self, key: str, op: str, other: str, name: str) -> str:
        """``y = op(x, other)`` after node ``key``'s first output ``x``; readers of ``x``
        (and a graph output named ``x``) then read ``y``."""
        from onnx import helper

        source = self.nodes[key]
        x = source.output[0]
        is_output = any(o.name == x for o in self.model.graph.output)
        inner = self.fresh(x) if is_output else x
        result = x if is_output else self.fresh(x)
        if is_output:  # y takes the output's name, so its readers read y with no rewiring
            source.output[0] = inner
        else:
            for node in self.model.graph.node:
                node.input[:] = [result if i == x else i for i in node.input]
        new = helper.make_node(op, [inner, other], [result], name=name)
        nodes = list(self.model.graph.node)
        at = next(i for i, n in enumerate(nodes) if n is source or (n.output and n.output[0] == inner))
        nodes.insert(at + 1, new)
        del self.model.graph.node[:]
        self.model.graph.node.extend(nodes)
        self.nodes = {n.output[0]: n for n in self.model.graph.node if n.output}
        return result

    def drop_dead(self) -> None:
        """Remove nodes and initializers that the edits left unread (those unread before
        the edits stay, as the user had them)."""
        while True:
            used = self._used()
            dead = {tuple(n.output) for n in self.model.graph.node
                    if all(o not in used and o in self.used_before for o in n.output if o)}
            if not dead:
                break
            keep = [n for n in self.model.graph.node if tuple(n.output) not in dead]
            del self.model.graph.node[:]
            self.model.graph.node.extend(keep)
        used = self._used()
        keep_inits = [t for t in self.model.graph.initializer
                      if t.name in used or t.name not in self.used_before]
        if len(keep_inits) != len(self.model.graph.initializer):
            del self.model.graph.initializer[:]
            self.model.graph.initializer.extend(keep_inits)
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self.nodes = {n.output[0]: n for n in self.model.graph.node if n.output}
