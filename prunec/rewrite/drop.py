"""Dropping residual branches: ``y = x + f(x)`` becomes ``y = x`` or ``y = x + mu``.

For a block of :mod:`prunec.ir.blocks` with skip ``s`` and branch output ``f``:

* without compensation the add is replaced by ``s`` (``act(s + f)`` becomes ``act(s)``);
* with a mean ``mu`` (per channel of the branch output on the block's channel axis, positions
  pooled, over calibration data) the add becomes ``s + mu``, ``mu`` a constant buffer
  ``<module>.prunec_block_mean`` shaped to broadcast on that axis (``[C, 1, 1]`` for
  ``[B, C, H, W]``, ``[C]`` for ``[B, N, C]``). Of all constants, ``mu`` minimises the
  expected squared error ``E||f - c||^2`` at the residual, as a mean-folded neuron does in VBP.

Either way the branch's nodes are erased, the tensors only it read are unregistered, and the
program's MACs fall by exactly the branch's own, its parameters by the branch's own less the
``C`` values of ``mu`` when compensated (counted: the deployed model stores them). An in-place ``add_`` that
wrote into the skip stays in place (later readers of the skip see the same values).

:func:`block_overrides` gives the reference a verification instrument needs: the program
*before* the drop, run with each dropped branch's output replaced by its mean (or zero), must
equal the program after it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx

from prunec.errors import PlanError
from prunec.ir.blocks import Block, analyze_blocks
from prunec.ir.program import Program

__all__ = ["drop_blocks", "block_overrides", "broadcast_shape"]

aten = torch.ops.aten


def broadcast_shape(block: Block, rank: int, channels: int) -> list[int]:
    """Shape of the constant that broadcasts per channel on ``block.channel_axis``."""
    if block.channel_axis is None or channels == 1:
        return []
    axis = block.channel_axis % rank
    return [channels] + [1] * (rank - 1 - axis)


def _resolve(program: Program, drops) -> list[tuple[Block, object]]:
    blocks = analyze_blocks(program).by_key()
    resolved, seen = [], set()
    for drop in drops:
        block = blocks.get(drop.key)
        if block is None:
            raise PlanError(f"plan drops block '{drop.key}', which this program does not have "
                            f"(its blocks: {', '.join(list(blocks)[:6])}...); plans replay only "
                            f"on a capture of the same model.")
        if not block.removable:
            raise PlanError(f"block '{drop.key}' is not removable: {block.reason}.")
        if set(block.nodes) & seen:
            raise PlanError(f"block '{drop.key}' overlaps another dropped block (nested "
                            f"residuals): drop only the outer one.")
        seen.update(block.nodes)
        resolved.append((block, drop))
    return resolved


def _check_mean(program: Program, block: Block, mean: torch.Tensor) -> list[int]:
    nodes = {n.name: n for n in program.graph.nodes}
    val = nodes[block.output].meta["val"]
    channels = 1 if block.channel_axis is None else int(val.shape[block.channel_axis])
    if mean.numel() != channels:
        raise PlanError(f"block '{block.key}': the mean has {mean.numel()} entries but the "
                        f"branch output has {channels} channels on axis {block.channel_axis}.")
    return broadcast_shape(block, val.dim(), channels)


def drop_blocks(program: Program, drops) -> list[str]:
    """Erase the branches of ``drops`` (:class:`~prunec.rewrite.plan.BlockDrop`) in place.

    Returns:
        Fully qualified names of the parameters and buffers removed with the branches.

    Raises:
        PlanError: a key this program does not have, an unremovable block, nested drops, or
            a mean whose size is not the branch's channel count.
    """
    resolved = _resolve(program, drops)
    nodes = {n.name: n for n in program.graph.nodes}
    # A block's skip may be the add of a block dropped before it (consecutive blocks of a
    # stage: the skip of layer 1 is layer 0's add): read it through what replaced that add.
    replaced: dict[fx.Node, fx.Node] = {}
    for block, drop in resolved:
        skip = nodes[block.skip]
        while skip in replaced:
            skip = replaced[skip]
        replacement = skip
        if drop.mean is not None:
            shape = _check_mean(program, block, drop.mean)
            replacement = _add_mean(program, block, nodes, skip, drop.mean.reshape(shape))
        add = nodes[block.add]
        add.replace_all_uses_with(replacement)
        replaced[add] = replacement
        for name in (block.add, *reversed(block.nodes)):
            program.graph.erase_node(nodes[name])
    program.graph.eliminate_dead_code()
    read = {n.target for n in program.graph.nodes if n.op == "get_attr"}
    removed = [t for block, _ in resolved for t in block.params if t not in read]
    for target in dict.fromkeys(removed):
        program.remove_tensor(target)
    # No remaining value changes shape (the skip has the block's output shape), and new
    # nodes got their metadata on insertion: no fake-tensor re-propagation is needed.
    program.finalize(sizes={})
    return removed


def _add_mean(program: Program, block: Block, nodes: dict, skip: fx.Node,
              mean: torch.Tensor) -> fx.Node:
    """Insert ``skip + mean`` (in place when the add wrote into the skip) before the add."""
    add = nodes[block.add]
    target = _free_name(program, block.module, "prunec_block_mean")
    dtype = nodes[block.output].meta["val"].dtype
    program.add_tensor(target, mean.to(dtype), parameter=False)
    inplace = add.target is aten.add_.Tensor and add.args[0] is skip
    with program.graph.inserting_before(add):
        attr = program.graph.get_attr(target)
        new = program.graph.call_function(aten.add_.Tensor if inplace else aten.add.Tensor,
                                          (skip, attr))
    new.meta.update(add.meta)  # same value shape and dtype as the add it replaces
    attr.meta["val"] = add.meta["val"].new_empty(mean.shape)
    program.bump()
    return new


def _free_name(program: Program, module: str, attr: str) -> str:
    """``module.attr`` (``attr_1``, ... when taken), under the deepest existing module."""
    parts = module.split(".") if module else []
    while parts:
        try:
            program.gm.get_submodule(".".join(parts))
            break
        except AttributeError:
            parts.pop()
    prefix = ".".join(parts)
    base = f"{prefix}.{attr}" if prefix else attr
    name, k = base, 0
    while _exists(program, name):
        k += 1
        name = f"{base}_{k}"
    return name


def _exists(program: Program, target: str) -> bool:
    try:
        program.get_tensor(target)
        return True
    except AttributeError:
        return False


def block_overrides(program: Program, plan) -> dict[str, Callable]:
    """``{branch output node: f}`` replacing each dropped branch by its mean (or zeros).

    Running the program *before* ``plan`` with these overrides
    (:func:`prunec.ir.interpret.run_with_overrides`) gives the outputs of the program after
    it: what a verification instrument compares for passes whose guarantee is ``"mean"`` or
    ``"zeroing"``.
    """
    if not getattr(plan, "blocks", None):
        return {}
    overrides: dict[str, Callable] = {}
    for block, drop in _resolve(program, plan.blocks):
        overrides[block.output] = _replacer(program, block, drop.mean)
    return overrides


def _replacer(program: Program, block: Block, mean: torch.Tensor | None) -> Callable:
    if mean is None:
        return torch.zeros_like
    shape = _check_mean(program, block, mean)
    constant = mean.reshape(shape)
    return lambda v: constant.to(v.dtype).expand_as(v).clone()
