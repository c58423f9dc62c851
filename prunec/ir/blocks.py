"""Residual blocks: branches ``y = x + f(x)`` that can be removed whole (depth pruning).

Found from the graph alone, with no model-specific code. A *block* is an ``aten.add`` (or
in-place ``add_``) of two activations where one operand, the *skip*, is the block input
``x`` (or a parameter-free transform of it, e.g. ``alpha * x``) and the other, the
*branch output*, is computed from ``x`` through ops that read parameters. This covers

- ``y = x + f(x)`` and ``y = act(x + f(x))`` (basic and bottleneck ResNet blocks: the
  activation after the add stays in the graph);
- scaled or gated residuals ``x + gamma * f(x)`` (layer scale, ConvNeXt) and
  ``x + g(.) * f(x)``: the scale is part of the branch;
- the attention and the MLP sub-blocks of pre-norm (``x + attn(norm(x))``: ViT, DeiT,
  Llama) and post-norm (``norm(x + attn(x))``: BERT) transformers, each a block of its own.

Which nodes are the branch: with data-ancestor sets (edges from tensor-valued nodes only,
so shape reads such as ``sym_size`` do not make a node "depend" on ``x``),

    branch = {n : x is an ancestor of n, n is an ancestor of (or is) the branch output}
             minus the skip operand and its ancestors,

plus every node whose users all lie in the branch (its parameters, masks or positions built
only for it). A branch whose values escape (a node used outside the branch, the branch output
also returned by the model), that mutates a value outside itself in place, or whose skip has
a shape other than the block's output, is listed but not removable, with the reason. An add
whose two operands both compute with parameters from a common input is a *projection
shortcut* (downsampling blocks): listed, not removable, because the skip is not the identity.

Each :class:`Block` is keyed by the module path of its branch (the longest common module path
of its ops; when two branches share one, as a transformer layer's attention and MLP do, the
child modules they use are appended: ``model.layers.0/input_layernorm+self_attn``). Keys
depend only on the model's module names, so plans replay on a fresh capture, in eval or
train mode.

Blocks are grouped into *stages*: maximal runs of consecutive blocks (graph order) whose
outputs have the same shape. ``first_in_stage`` marks the first block of each run (PEEAO never
removes it). ``channel_axis`` is the axis of the branch output that is coupled to the branch's
own parameters in the channel analysis (1 for ``[B, C, H, W]`` convolutions, the last axis
for ``[B, N, C]`` transformers): mean compensation is per channel on that axis.

Results are cached per program version (``program.analysis("blocks", ...)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.fx as fx

from prunec.ir.channels import analyze_channels
from prunec.ir.cost import macs_by_node
from prunec.ir.program import Program, node_module_path

__all__ = ["Block", "BlockAnalysis", "analyze_blocks"]

aten = torch.ops.aten
_ADDS = (aten.add.Tensor, aten.add_.Tensor)


@dataclass(frozen=True)
class Block:
    """One residual branch.

    Attributes:
        key: Stable name (module path of the branch), used by plans.
        add: Name of the add node ``y = skip + branch``.
        output: Name of the branch output node (the add's operand that goes away).
        skip: Name of the add's other operand (kept).
        input: Name of the block input ``x`` (the skip, or the value it is computed from).
        nodes: Names of the branch's nodes, in graph order (erased on removal).
        params: Fully qualified names of the parameters and buffers only the branch reads.
        param_count: Elements of those that are ``nn.Parameter`` objects.
        module: Module path of the branch.
        macs: MACs of the branch's ops (what removal saves).
        removable: Whether the branch can be removed whole.
        reason: Why not, when not removable.
        channel_axis: Axis of the branch output carrying its channels (None if unknown).
        stage: Index of the run of same-shaped blocks this one belongs to.
        first_in_stage: First block of its stage (graph order).
    """

    key: str
    add: str
    output: str
    skip: str
    input: str
    nodes: tuple
    params: tuple
    param_count: int
    module: str
    macs: int
    removable: bool
    reason: str = ""
    channel_axis: int | None = None
    stage: int = 0
    first_in_stage: bool = False


@dataclass
class BlockAnalysis:
    """The result of :func:`analyze_blocks`: every residual block, in graph order."""

    blocks: list[Block]

    def by_key(self) -> dict[str, Block]:
        return {b.key: b for b in self.blocks}

    def removable(self) -> list[Block]:
        return [b for b in self.blocks if b.removable]

    def stages(self) -> dict[int, list[Block]]:
        """Blocks per stage index, in graph order."""
        found: dict[int, list[Block]] = {}
        for b in self.blocks:
            found.setdefault(b.stage, []).append(b)
        return found

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def table(self) -> str:
        """A readable table: block, stage, MACs, parameters, removable or why not."""
        rows = [("block", "stage", "MACs", "params", "removable")]
        for b in self.blocks:
            stage = f"{b.stage}{'*' if b.first_in_stage else ''}"
            rows.append((b.key, stage, _si(b.macs), _si(b.param_count),
                         "yes" if b.removable else f"no: {b.reason}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
        if not self.blocks:
            lines.append("(no residual blocks)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def analyze_blocks(program: Program) -> BlockAnalysis:
    """The residual blocks of ``program`` (cached per program version)."""
    return program.analysis("blocks", _analyze)


# --------------------------------------------------------------------------- graph facts
def _is_data(node: fx.Node) -> bool:
    """Tensor-valued (or tuple-of-tensors) nodes and parameters: edges that carry data."""
    if node.op == "get_attr":
        return True
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return True
    return isinstance(val, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in val)


def _is_float_activation(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return node.op != "get_attr" and isinstance(val, torch.Tensor) and val.is_floating_point()


class _Graph:
    """Topological indices and data-ancestor bitsets (Python ints) of every node."""

    def __init__(self, program: Program):
        self.program = program
        self.nodes = list(program.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.anc: list[int] = []
        for node in self.nodes:
            bits = 0
            for inp in node.all_input_nodes:
                if _is_data(inp):
                    bits |= self.anc[self.index[inp]] | (1 << self.index[inp])
            self.anc.append(bits)
        self.float_act = sum(1 << i for i, n in enumerate(self.nodes) if _is_float_activation(n))

    def is_ancestor(self, a: fx.Node, b: fx.Node) -> bool:
        return bool(self.anc[self.index[b]] >> self.index[a] & 1)

    def path(self, x: fx.Node, t: fx.Node) -> list[fx.Node]:
        """Nodes that descend from ``x`` and lead to (or are) ``t``, in graph order."""
        ix, it = self.index[x], self.index[t]
        reach = self.anc[it] | (1 << it)
        return [n for n in self.nodes[ix + 1:it + 1]
                if reach >> self.index[n] & 1 and self.anc[self.index[n]] >> ix & 1]

    def params_of(self, nodes) -> list[fx.Node]:
        """``get_attr`` inputs of ``nodes`` that are ``nn.Parameter`` objects."""
        found = []
        for n in nodes:
            for inp in n.all_input_nodes:
                if inp.op == "get_attr" and isinstance(
                        self.program.get_tensor(inp.target), torch.nn.Parameter):
                    found.append(inp)
        return found


# --------------------------------------------------------------------------- detection
@dataclass
class _Candidate:
    add: fx.Node
    output: fx.Node
    skip: fx.Node
    input: fx.Node
    core: list
    projection: bool


def _candidate(g: _Graph, add: fx.Node) -> _Candidate | None:
    """Classify one add as a residual block, or None when it is not one."""
    if add.target not in _ADDS or len(add.args) < 2 or add.kwargs.get("alpha", 1) != 1:
        return None
    a, b = add.args[0], add.args[1]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return None
    if not (_is_float_activation(a) and _is_float_activation(b)):
        return None
    for skip, out in ((a, b), (b, a)):
        if g.is_ancestor(skip, out):
            core = g.path(skip, out)
            return _Candidate(add, out, skip, skip, core, False) if g.params_of(core) else None
    common = g.anc[g.index[a]] & g.anc[g.index[b]] & g.float_act
    if not common:
        return None
    x = g.nodes[common.bit_length() - 1]  # the nearest common input
    path_a, path_b = g.path(x, a), g.path(x, b)
    shared = set(path_a) & set(path_b)
    path_a = [n for n in path_a if n not in shared]
    path_b = [n for n in path_b if n not in shared]
    pa, pb = bool(g.params_of(path_a)), bool(g.params_of(path_b))
    if not (pa or pb) or shared:
        return None
    if pa and pb:  # both sides compute: a projection shortcut; the costlier side is the branch
        macs = _macs(g.program)
        cost = lambda p: sum(macs.get(n.name, 0) for n in p)  # noqa: E731
        out, skip, core = (a, b, path_a) if cost(path_a) >= cost(path_b) else (b, a, path_b)
        return _Candidate(add, out, skip, x, core, True)
    out, skip, core = (a, b, path_a) if pa else (b, a, path_b)
    return _Candidate(add, out, skip, x, core, False)


def _macs(program: Program) -> dict[str, int]:
    return macs_by_node(program)


def _close_branch(g: _Graph, cand: _Candidate) -> list[fx.Node]:
    """The core plus every node used only by the branch, and sinks (asserts) fed only by it."""
    branch = set(cand.core)
    keep_out = {cand.skip, cand.input, cand.add}
    for n in reversed(g.nodes[:g.index[cand.output]]):
        if n in branch or n in keep_out or n.op == "placeholder" or not n.users:
            continue
        if all(u in branch for u in n.users):
            branch.add(n)
    lo = min((g.index[n] for n in branch), default=g.index[cand.output])
    for n in g.nodes[lo:g.index[cand.add]]:
        if n.op == "call_function" and not n.users and n not in branch and n.all_input_nodes \
                and all(i in branch for i in n.all_input_nodes):
            branch.add(n)
    return sorted(branch, key=g.index.__getitem__)


def _why_not(g: _Graph, cand: _Candidate, branch: list[fx.Node]) -> str:
    """Why the branch cannot be removed whole, or ``""``."""
    if cand.projection:
        where = node_module_path(cand.skip) or cand.skip.name
        return (f"projection shortcut: the skip path computes with parameters ({where}), so "
                f"the block is not y = x + f(x); removing the branch would leave the "
                f"projection alone")
    inside = set(branch)
    out_val, skip_val = cand.add.meta.get("val"), cand.skip.meta.get("val")
    if tuple(out_val.shape) != tuple(skip_val.shape):
        return (f"removing the branch would change the shape from {list(out_val.shape)} to "
                f"{list(skip_val.shape)} (a downsampling block)")
    for n in branch:
        outside = [u for u in n.users if u not in inside and not (n is cand.output and u is cand.add)]
        if outside:
            return (f"the branch value '{n.name}' is also used outside it, by '{outside[0].name}'"
                    + (f" in {node_module_path(outside[0])}" if node_module_path(outside[0]) else ""))
        schema = getattr(n.target, "_schema", None)
        if schema is not None and schema.is_mutable and n.args and isinstance(n.args[0], fx.Node) \
                and n.args[0] not in inside:
            return f"'{n.name}' writes in place into '{n.args[0].name}', outside the branch"
    if cand.add.target is aten.add_.Tensor and cand.add.args[0] is cand.skip and \
            cand.skip.op == "placeholder":
        return "the add writes in place into a model input"
    return ""


def _analyze(program: Program) -> BlockAnalysis:
    g = _Graph(program)
    macs = _macs(program)
    found = []
    for node in g.nodes:
        if node.op != "call_function":
            continue
        cand = _candidate(g, node)
        if cand is None:
            continue
        branch = _close_branch(g, cand)
        found.append((cand, branch, _why_not(g, cand, branch)))
    keys = _keys(found)
    axes = _channel_axes(program, found)
    blocks, stage, last_shape = [], -1, None
    for (cand, branch, why), key, axis in zip(found, keys, axes):
        shape = str(tuple(cand.add.meta["val"].shape))
        first = shape != last_shape
        stage, last_shape = stage + first, shape
        blocks.append(_make_block(program, cand, branch, why, key, axis, stage, first, macs))
    return BlockAnalysis(blocks)


def _make_block(program, cand, branch, why, key, axis, stage, first, macs) -> Block:
    tensors = tuple(dict.fromkeys(n.target for n in branch if n.op == "get_attr"))
    count = sum(t.numel() for t in dict.fromkeys(map(program.get_tensor, tensors))
                if isinstance(t, torch.nn.Parameter))
    return Block(key, cand.add.name, cand.output.name, cand.skip.name, cand.input.name,
                 tuple(n.name for n in branch), tensors, int(count), _common_path(branch),
                 int(sum(macs.get(n.name, 0) for n in branch)), not why, why, axis, stage, first)


# --------------------------------------------------------------------------- names
def _paths(branch: list[fx.Node]) -> list[list[str]]:
    return [node_module_path(n).split(".") for n in branch
            if n.op == "call_function" and node_module_path(n)]


def _common_path(branch: list[fx.Node]) -> str:
    paths = _paths(branch)
    if not paths:
        return ""
    common = paths[0]
    for p in paths[1:]:
        k = 0
        while k < min(len(common), len(p)) and common[k] == p[k]:
            k += 1
        common = common[:k]
    return ".".join(common)


def _keys(found: list) -> list[str]:
    """Module paths; shared ones get the child modules they use, then ``#k`` if still equal."""
    base = [_common_path(branch) or cand.add.name for cand, branch, _ in found]
    keys = list(base)
    for i, key in enumerate(base):
        if base.count(key) < 2:
            continue
        depth = len(key.split(".")) if key else 0
        children = dict.fromkeys(p[depth] for p in _paths(found[i][1]) if len(p) > depth)
        keys[i] = f"{key}/{'+'.join(children)}"
    for i, key in enumerate(list(keys)):
        same = [j for j, k in enumerate(keys) if k == key]
        if len(same) > 1:
            for n, j in enumerate(same):
                keys[j] = f"{key}#{n}"
    return keys


# --------------------------------------------------------------------------- channel axis
def _channel_axes(program: Program, found: list) -> list[int | None]:
    """Per block, the axis of the branch output coupled to one of the branch's parameters."""
    if not found:
        return []

    analysis = analyze_channels(program)
    comp, offsets, shapes = analysis.component, analysis.offsets, analysis.shapes

    def components(name: str, ax: int) -> np.ndarray:
        start = offsets[(name, ax)]
        return comp[start:start + shapes[name][ax]]

    axes = []
    for cand, branch, _ in found:
        param_comps = [components(n.name, ax) for n in branch if n.op == "get_attr"
                       for ax in range(len(shapes.get(n.name, ()))) if (n.name, ax) in offsets]
        pool = np.unique(np.concatenate(param_comps)) if param_comps else np.zeros(0, np.int64)
        out = cand.output.name
        hits = [ax for ax in range(len(shapes.get(out, ())))
                if (out, ax) in offsets and np.isin(components(out, ax), pool).any()]
        axes.append(hits[-1] if hits else None)
    return axes
