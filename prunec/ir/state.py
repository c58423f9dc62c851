"""Which tensors a captured forward writes, and running it without keeping those writes.

A graph may write into its inputs or its own state (``aten.add_`` into a buffer, a batch norm
in training updating its running statistics). Runs that only observe a program
(calibration, verification, shape propagation, a backend's example run) go through
:func:`scratch_state`, so the caller's state is where it was afterwards. Below the Program
(:mod:`prunec.ir.program` uses it when it re-propagates shapes), so it imports nothing of ir.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch
import torch.fx as fx

__all__ = ["is_written", "written_attributes", "scratch_state", "has_mutation"]


# Ops whose schema does not mark the arguments they write: batch norm in training (its
# argument 5, ``training`` / ``use_input_stats``) updates its running mean and variance
# (positions 3 and 4) inside a composite kernel.
_UNDECLARED_WRITES = {
    "batch_norm": (3, 4), "native_batch_norm": (3, 4), "_native_batch_norm_legit": (3, 4),
    "_batch_norm_impl_index": (3, 4), "cudnn_batch_norm": (3, 4), "miopen_batch_norm": (3, 4),
    "instance_norm": (3, 4),
}


def is_written(source: fx.Node) -> bool:
    """Whether a mutable op writes into ``source`` (a placeholder or a ``get_attr`` tensor)
    or into a view of it (``aten.add_``, ``aten.copy_`` after ``aten.select``...)."""
    stack, seen = [source], set()
    while stack:
        node = stack.pop()
        for user in node.users:
            schema = getattr(user.target, "_schema", None)
            if user.op != "call_function" or schema is None or user in seen:
                continue
            seen.add(user)
            if any(_writes(schema, i, arg, node) for i, arg in enumerate(user.args)):
                return True
            packet = getattr(getattr(user.target, "overloadpacket", None), "__name__", "")
            training = len(user.args) <= 5 or user.args[5] is not False
            if training and any(i < len(user.args) and user.args[i] is node
                                for i in _UNDECLARED_WRITES.get(packet, ())):
                return True
            returns = schema.returns
            if returns and returns[0].alias_info is not None:  # a view: follow it
                stack.append(user)
    return False


def _writes(schema: Any, index: int, arg: Any, node: fx.Node) -> bool:
    if arg is not node or index >= len(schema.arguments):
        return False
    alias = schema.arguments[index].alias_info
    return alias is not None and alias.is_write


def written_attributes(gm: fx.GraphModule) -> list[str]:
    """The ``get_attr`` targets (buffers, parameters, constants) the forward writes into."""
    if not _writes_state(gm):
        return []
    return list(dict.fromkeys(n.target for n in gm.graph.nodes
                              if n.op == "get_attr" and is_written(n)))


@contextlib.contextmanager
def scratch_state(gm: fx.GraphModule, targets: Iterable[str] | None = None):
    """Run ``gm`` on copies of the tensors its forward writes, then restore the originals.

    Inside the block every written attribute (``targets``, default
    :func:`written_attributes`) is replaced by a detached clone of the same kind (buffer,
    parameter with its ``requires_grad``, plain attribute); on exit the original tensor
    objects are put back untouched. Runs that only observe the program (calibration,
    verification, shape recording, a backend's example run) go through this, so a forward
    that updates its own state (``steps += 1``) leaves that state where the caller had it.
    Training does not: its updates (batch-norm statistics) are the point.
    """
    saved = []
    try:
        for target in (written_attributes(gm) if targets is None else targets):
            mod_path, _, attr = target.rpartition(".")
            mod = gm.get_submodule(mod_path) if mod_path else gm
            old = getattr(mod, attr)
            if not isinstance(old, torch.Tensor):
                continue
            new = old.detach().clone()
            if isinstance(old, torch.nn.Parameter):
                new = torch.nn.Parameter(new, requires_grad=old.requires_grad)
            _put(mod, attr, new)
            saved.append((mod, attr, old))
        yield gm
    finally:
        for mod, attr, old in reversed(saved):
            _put(mod, attr, old)


def _put(mod: torch.nn.Module, attr: str, value: torch.Tensor) -> None:
    if attr in mod._parameters:
        mod._parameters[attr] = value
    elif attr in mod._buffers:
        mod._buffers[attr] = value
    else:
        setattr(mod, attr, value)


def has_mutation(gm: fx.GraphModule) -> bool:
    """Whether any op writes into one of its inputs (``aten.relu_``, ``aten.add_`` ...)."""
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if schema is not None and schema.is_mutable:
            return True
    return False


def _writes_state(gm: fx.GraphModule) -> bool:
    """Whether any op may write into a tensor: a mutable schema or a batch norm's
    running statistics."""
    return has_mutation(gm) or any(
        getattr(getattr(n.target, "overloadpacket", None), "__name__", "") in _UNDECLARED_WRITES
        for n in gm.graph.nodes if n.op == "call_function")
