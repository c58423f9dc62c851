"""MACs and parameter counts of a Program, read from the graph's shapes.

Convention (the one pruning papers report, as fvcore / ptflops / thop count it):

- one multiply-accumulate is **1 MAC** (``FLOPs ~= 2 * MACs``);
- only products are counted: convolutions, linear layers and matrix products, and the two
  products inside attention. Norms, activations, softmax, element-wise ops, pooling, biases
  and embeddings count 0. (fvcore also charges norms, about 5 per element: its 17.58 G for
  DeiT-B holds some 0.02 G of layer norms that this module leaves out, giving 17.56 G.)

Per op, with ``numel`` the element count of a shape:

- convolution ``W: [C_out, C_in / g, *k]``: ``numel(out) * C_in / g * prod(k)``;
- transposed convolution ``W: [C_in, C_out / g, *k]``: ``numel(in) * C_out / g * prod(k)``
  (every input element is scattered through one kernel slice);
- ``linear``, ``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``matmul``, ``mv``, ``dot``:
  ``numel(out) * K`` with ``K`` the contracted size (last axis of the first operand);
- ``scaled_dot_product_attention`` with ``q: [..., L, E]``, ``k: [..., S, E]``,
  ``v: [..., S, Ev]``: ``prod(q[:-1]) * S * (E + Ev)`` (``Q K^T`` plus ``A V``; with equal
  head sizes ``2 * B * H * L * S * D``; grouped-query attention counts query heads);
- ``einsum`` with two operands: the product of the sizes of all its indices.

Symbolic sizes (dynamic batch, sequence, resolution) are evaluated at the example inputs: each
``meta["val"]`` size carries the example value as its shape-environment hint. When a size has
no hint (an unbacked size from a data-dependent op), shapes are instead recorded by running
the graph once on ``program.example_args`` / ``example_kwargs``.

Results are cached per program version (see :meth:`Program.analysis`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from prunec.ir.interpret import scratch_state
from prunec.ir.program import Program

__all__ = [
    "count_macs", "count_params", "cost_report", "macs_by_node", "node_macs", "mac_kind",
    "ShapeOf", "concrete_shapes",
]

Shape = tuple[int, ...]
ShapeOf = Callable[[Any], Optional[Shape]]
"""Concrete shape of a node argument (an ``fx.Node``), or ``None`` when it is no tensor."""

aten = torch.ops.aten


# --------------------------------------------------------------------------- per-op rules
def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _conv_macs(node: fx.Node, shape_of: ShapeOf, transposed: bool) -> int:
    weight = shape_of(node.args[1])
    seen = shape_of(node.args[0]) if transposed else shape_of(node)
    return _numel(seen) * _numel(weight[1:])


def _is_transposed(node: fx.Node) -> bool:
    """``aten.convolution(input, weight, bias, stride, padding, dilation, transposed, ...)``."""
    return bool(node.args[6] if len(node.args) > 6 else node.kwargs.get("transposed", False))


def _convolution_macs(node: fx.Node, shape_of: ShapeOf) -> int:
    return _conv_macs(node, shape_of, _is_transposed(node))


def _contraction_macs(node: fx.Node, shape_of: ShapeOf, first: int = 0) -> int:
    """``numel(out) * K``, ``K`` the last axis of the first matrix operand."""
    left = shape_of(node.args[first])
    return _numel(shape_of(node)) * left[-1]


def _attention_macs(node: fx.Node, shape_of: ShapeOf) -> int:
    q, k, v = (shape_of(a) for a in node.args[:3])
    return _numel(q[:-1]) * k[-2] * (q[-1] + v[-1])


def _einsum_macs(node: fx.Node, shape_of: ShapeOf) -> int:
    """Two operands: product of all index sizes; one operand moves data and counts 0."""
    equation, operands = node.args[0], node.args[1]
    if len(operands) < 2:
        return 0
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, operand in zip(lhs, operands):
        shape = shape_of(operand)
        letters = _expand_ellipsis(term, len(shape))
        for letter, size in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), size)
    return _numel(sizes.values())


def _expand_ellipsis(term: str, ndim: int) -> list[str]:
    """Index labels of one operand; ``...`` axes are labelled from the right, as they
    broadcast (``"...ij"`` on a 4-d operand -> ``["...1", "...0", "i", "j"]``)."""
    if "..." not in term:
        return list(term)
    head, tail = term.split("...")
    n = ndim - len(head) - len(tail)
    return list(head) + [f"...{n - 1 - i}" for i in range(n)] + list(tail)


_RULES: dict[Any, tuple[str, Callable[[fx.Node, ShapeOf], int]]] = {}


def _register(kind: str, fn: Callable[[fx.Node, ShapeOf], int], *ops: Any) -> None:
    for op in ops:
        if op is not None:
            _RULES[op] = (kind, fn)


def _op(packet: str, overload: str = "default") -> Any:
    return getattr(getattr(aten, packet, None), overload, None)


_register("conv", lambda n, s: _conv_macs(n, s, False),
          _op("conv1d"), _op("conv2d"), _op("conv3d"),
          _op("conv1d", "padding"), _op("conv2d", "padding"), _op("conv3d", "padding"))
_register("conv_transpose", lambda n, s: _conv_macs(n, s, True),
          _op("conv_transpose1d"), _op("conv_transpose2d", "input"),
          _op("conv_transpose3d", "input"))
_register("conv", _convolution_macs, _op("convolution"), _op("_convolution"))
_register("linear", _contraction_macs, _op("linear"))
_register("linear", lambda n, s: _contraction_macs(n, s, first=1), _op("addmm"))
_register("matmul", _contraction_macs,
          _op("mm"), _op("bmm"), _op("matmul"), _op("mv"), _op("dot"))
_register("matmul", lambda n, s: _contraction_macs(n, s, first=1), _op("baddbmm"))
_register("attention", _attention_macs,
          _op("scaled_dot_product_attention"),
          _op("_scaled_dot_product_flash_attention_for_cpu"),
          _op("_scaled_dot_product_flash_attention"),
          _op("_scaled_dot_product_efficient_attention"))
_register("einsum", _einsum_macs, _op("einsum"))


def mac_kind(node: fx.Node) -> str | None:
    """The kind (``"conv"``, ``"linear"``, ``"matmul"``, ``"attention"``...) under which
    ``node`` is counted, or ``None`` when it costs 0 MACs by convention."""
    if node.op != "call_function":
        return None
    rule = _RULES.get(node.target)
    if rule and rule[1] is _convolution_macs and _is_transposed(node):
        return "conv_transpose"
    return rule[0] if rule else None


def node_macs(node: fx.Node, shape_of: ShapeOf) -> int:
    """MACs of one node, given the concrete shape of each of its tensor arguments and of
    itself. Passing a ``shape_of`` with shrunk channels gives the MACs of a pruned graph
    without rewriting it."""
    rule = _RULES.get(node.target) if node.op == "call_function" else None
    return int(rule[1](node, shape_of)) if rule else 0


# --------------------------------------------------------------------------- shapes
def _hint(size: Any) -> int | None:
    """A concrete size: ints as they are, symbolic sizes by their example-value hint."""
    if isinstance(size, int):
        return size
    node = getattr(size, "node", None)
    hint = getattr(node, "hint", None)
    if hint is None and node is not None and node.expr.is_number:
        hint = node.expr
    return int(hint) if hint is not None else None


def _hinted_shapes(program: Program) -> dict[fx.Node, Shape] | None:
    """Concrete shapes of every tensor-valued node (parameters from the tensors themselves,
    the rest from ``meta["val"]``); ``None`` when a counted node or one of its tensor
    arguments has a size without a hint."""
    shapes: dict[fx.Node, Shape] = {}
    for node in program.graph.nodes:
        if node.op == "get_attr":
            tensor = program.get_tensor(node.target)
            if isinstance(tensor, torch.Tensor):
                shapes[node] = tuple(tensor.shape)
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            shape = tuple(_hint(s) for s in val.shape)
            if None not in shape:
                shapes[node] = shape
    for node in program.graph.nodes:
        if mac_kind(node) and any(n not in shapes for n in (node, *_tensor_args(node))):
            return None
    return shapes


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes
            if a.op == "get_attr" or isinstance(a.meta.get("val"), torch.Tensor)]


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph on real inputs and records every tensor result's shape."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, Shape] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n] = tuple(result.shape)
        return result


def _recorded_shapes(program: Program) -> dict[fx.Node, Shape]:
    """Shapes from one run on the example inputs, flattened as the graph's placeholders are."""
    import torch.fx._pytree as fx_pytree
    import torch.utils._pytree as pytree

    inputs = (tuple(program.example_args), dict(program.example_kwargs))
    spec = getattr(program.gm, "_in_spec", None)
    flat = fx_pytree.tree_flatten_spec(inputs, spec) if spec is not None \
        else pytree.tree_leaves(inputs)
    recorder = _ShapeRecorder(program.gm)
    with torch.no_grad(), scratch_state(program.gm):
        recorder.run(*flat)
    return recorder.shapes


def concrete_shapes(program: Program) -> dict[fx.Node, Shape]:
    shapes = _hinted_shapes(program)
    return shapes if shapes is not None else _recorded_shapes(program)


# --------------------------------------------------------------------------- public API
def _compute_macs_by_node(program: Program) -> dict[str, int]:
    shapes = concrete_shapes(program)
    shape_of: ShapeOf = lambda a: shapes.get(a) if isinstance(a, fx.Node) else None  # noqa: E731
    return {n.name: node_macs(n, shape_of) for n in program.graph.nodes if mac_kind(n)}


def macs_by_node(program: Program) -> dict[str, int]:
    """MACs of every counted node (conv, linear, matmul, attention, einsum), by node name."""
    return dict(program.analysis("cost.macs_by_node", _compute_macs_by_node))


def count_macs(program: Program) -> int:
    """Total MACs of one forward on the example inputs (see the module docstring)."""
    return sum(macs_by_node(program).values())


# Tensors a rewrite adds are buffers named ``prunec_*`` (``prunec.rewrite.fold.PRUNEC_PREFIX``;
# ir sits below rewrite): compensation biases, dropped blocks' means, their folded constants.
_ADDED_PREFIX = "prunec_"


def _compute_params(program: Program) -> int:
    seen: set[int] = set()
    total = 0
    for node in program.graph.nodes:
        if node.op != "get_attr":
            continue
        tensor = program.get_tensor(node.target)
        added = node.target.rpartition(".")[2].startswith(_ADDED_PREFIX)
        if isinstance(tensor, torch.Tensor) and (isinstance(tensor, torch.nn.Parameter) or added) \
                and id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel()
    return total


def count_params(program: Program) -> int:
    """Elements of the parameters the graph reads, each tensor counted once (tied weights
    once), plus the tensors pruning added in their place: compensation biases of consumers
    that had none, the means of dropped blocks, and the constants folded from them
    (buffers named ``prunec_*``; a deployed model stores them like biases). Other buffers
    (batch-norm statistics) and constants are not counted."""
    return program.analysis("cost.params", _compute_params)


def cost_report(program: Program) -> dict[str, Any]:
    """A summary: ``{"macs", "params", "macs_by_kind", "macs_by_op", "counted_nodes"}``.

    ``macs_by_kind`` is keyed by :func:`mac_kind` (``"conv"``, ``"conv_transpose"``,
    ``"linear"``, ``"matmul"``, ``"attention"``, ``"einsum"``), ``macs_by_op`` by the ATen
    op name (``"aten.conv2d.default"``).
    """
    per_node = macs_by_node(program)
    by_kind: dict[str, int] = defaultdict(int)
    by_op: dict[str, int] = defaultdict(int)
    for node in program.graph.nodes:
        if node.name in per_node:
            by_kind[mac_kind(node)] += per_node[node.name]
            by_op[str(node.target)] += per_node[node.name]
    return {
        "macs": sum(per_node.values()),
        "params": count_params(program),
        "macs_by_kind": dict(by_kind),
        "macs_by_op": dict(by_op),
        "counted_nodes": len(per_node),
    }
