"""Constant folding of what rewrites add: compensation arithmetic runs once, not per call.

Mean compensation at a zero-padded ``k x k`` convolution adds
``conv2d(new_ones(K, [1, 1, H, W]), K)`` to the consumer's output (see
:mod:`prunec.rewrite.compensation`). When ``H`` and ``W`` are static, every input of that
subgraph is a constant: :func:`fold_constants` evaluates it once and stores the result as a
buffer, so no backend (eager torch included) runs it per call. When the spatial sizes are
dynamic the sizes come from ``sym_size`` of an activation and the subgraph stays (it costs
``1 / C_in`` of the consumer convolution).

What is folded: a ``call_function`` node whose tensor inputs are all prunec-created constants
(buffers named ``prunec_*``) or nodes already folded, and whose other arguments are literals.
Model parameters and the model's own buffers are never folded: a parameter must stay
trainable, and a buffer such as batch-norm running statistics changes in train mode.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from prunec.ir.program import Program

__all__ = ["fold_constants", "PRUNEC_PREFIX"]

PRUNEC_PREFIX = "prunec_"
_IMPURE = {"rand", "randn", "rand_like", "randn_like", "dropout", "bernoulli", "normal",
           "uniform", "empty", "empty_like", "randint", "randperm", "multinomial"}


def fold_constants(program: Program) -> int:
    """Fold every constant subgraph rooted at prunec-created tensors; returns how many
    nodes were replaced by constants."""
    graph = program.graph
    values: dict[fx.Node, torch.Tensor] = {}
    owner: dict[fx.Node, str] = {}  # module path the constant belongs to
    folded = 0
    for node in list(graph.nodes):
        if node.op == "get_attr" and node.target.rpartition(".")[2].startswith(PRUNEC_PREFIX):
            values[node] = program.get_tensor(node.target)
            owner[node] = node.target.rpartition(".")[0]
        elif node.op == "call_function" and _foldable(node, values):
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            with torch.no_grad():
                values[node] = node.target(*args, **kwargs)
            owner[node] = owner[node.all_input_nodes[0]]
    for node in values:
        if node.op != "call_function" or not _feeds_runtime(node, values):
            continue
        _replace_with_constant(program, node, values[node], owner[node])
        folded += 1
    if folded:
        graph.eliminate_dead_code()
        read = {n.target for n in graph.nodes if n.op == "get_attr"}
        for node in values:
            if node.op == "get_attr" and node.target not in read:
                program.remove_tensor(node.target)
        program.finalize()
    return folded


def _foldable(node: fx.Node, values: dict) -> bool:
    name = getattr(getattr(node.target, "overloadpacket", None), "__name__", "")
    if name in _IMPURE or name.endswith("_"):  # random or in place
        return False
    inputs = node.all_input_nodes
    return bool(inputs) and all(n in values for n in inputs)


def _feeds_runtime(node: fx.Node, values: dict) -> bool:
    """Whether some user of ``node`` is not itself folded (only the frontier is stored)."""
    return any(user not in values for user in node.users)


def _replace_with_constant(program: Program, node: fx.Node, value: torch.Tensor,
                           prefix: str) -> None:
    """Store ``value`` as ``<prefix>.prunec_const`` (a name that depends on the module, not on
    node names, so a train-mode replay of the same plan gets the same name)."""
    base = f"{prefix}.{PRUNEC_PREFIX}const" if prefix else f"{PRUNEC_PREFIX}const"
    target, i = base, 0
    while _exists(program, target):
        i += 1
        target = f"{base}_{i}"
    program.add_tensor(target, value, parameter=False)
    with program.graph.inserting_before(node):
        attr = program.graph.get_attr(target)
    attr.meta["val"] = node.meta.get("val")
    node.replace_all_uses_with(attr)


def _exists(program: Program, target: str) -> bool:
    try:
        program.get_tensor(target)
    except AttributeError:
        return False
    return True
