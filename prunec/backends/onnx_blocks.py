"""Dropped residual branches (DepthPruning) written back into an ONNX graph.

A block ``y = skip + branch(x)`` of the stand-in is an ONNX ``Add`` whose inputs are the skip
value and the branch's output. Dropping the branch rewires that Add, keeping its name:

* without compensation: ``Add(skip, branch)`` becomes ``Identity(skip)``;
* with compensation (the branch replaced by its per-channel mean ``mu``): it becomes
  ``Add(skip, mu)`` with ``mu`` a new initializer shaped to broadcast on the channel axis.

The branch's nodes and initializers, now unread, are removed with the other dead code
(:meth:`~prunec.backends.onnx_graph.GraphEditor.drop_dead`). Block keys are resolved on
a fresh capture of the stand-in, replaying the plans before them, so each drop sees the
program its plan was made for.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunec.errors import UnsupportedOpError
from prunec.ir.blocks import analyze_blocks
from prunec.ir.capture import capture
from prunec.ir.program import node_module_path
from prunec.rewrite.apply import apply_plan
from prunec.rewrite.drop import broadcast_shape

if TYPE_CHECKING:
    from prunec.backends.onnx_graph import GraphEditor
    from prunec.frontends.onnx import OnnxSource
    from prunec.ir.program import Program

__all__ = ["drop_blocks_in_file", "BLOCK_MEAN"]

BLOCK_MEAN = "prunec_block_mean"
"""Attribute name of the means :func:`prunec.rewrite.drop.drop_blocks` adds (written here)."""


def drop_blocks_in_file(editor: "GraphEditor", source: "OnnxSource", program: "Program") -> None:
    """Rewire the Add of every block the program's plans dropped (module docstring)."""
    if not any(plan.blocks for plan in program.plans):
        return

    base = capture(source.module, source.example_args, dynamic=False)
    for plan in program.plans:
        if plan.blocks:
            blocks = analyze_blocks(base).by_key()
            nodes = {n.name: n for n in base.graph.nodes}
            for drop in plan.blocks:
                _rewire(editor, source, nodes, blocks[drop.key], drop.mean)
        apply_plan(base, plan)  # the next plan was made for the program after this one


def _onnx_key(source: "OnnxSource", node: torch.fx.Node) -> str | None:
    return source.modules.get(node_module_path(node))


def _rewire(editor: "GraphEditor", source: "OnnxSource", nodes: dict, block, mean) -> None:
    from onnx import numpy_helper

    add_key, branch_key = _onnx_key(source, nodes[block.add]), _onnx_key(source, nodes[block.output])
    add = editor.nodes.get(add_key) if add_key else None
    branch = editor.nodes.get(branch_key) if branch_key else None
    if add is None or add.op_type != "Add" or branch is None or branch.output[0] not in add.input:
        raise UnsupportedOpError(
            f"Residual block '{block.key}' has no ONNX Add reading its branch output: it cannot "
            f"be dropped in the file.")
    skip = next(i for i in add.input if i != branch.output[0])
    if mean is None:
        add.op_type = "Identity"
        add.input[:] = [skip]
        return
    val = nodes[block.output].meta["val"]
    channels = 1 if block.channel_axis is None else int(val.shape[block.channel_axis])
    shape = broadcast_shape(block, val.dim(), channels)
    value = mean.to(val.dtype).reshape(shape).numpy()
    name = editor.fresh(f"{add.name or add_key}_{BLOCK_MEAN}")
    editor.model.graph.initializer.append(numpy_helper.from_array(value, name))
    editor.inits[name] = editor.model.graph.initializer[-1]
    add.input[:] = [skip, name]
