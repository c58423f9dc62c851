"""Channel-dependency analysis: which (tensor, axis, index) channels must go together.

Every static axis of every tensor in the graph (activations, parameters, buffers) is laid out
as a run of *elements*, one per index. Coupling rules (``prunec.ir.rules``) add equalities
between elements; the connected components of that graph are the *units* of pruning: a unit
is removed entirely or not at all. Units that touch the same set of axes form a
:class:`ChannelGroup` (the 64 channels of a conv and its batch norm, the 12 heads of an
attention layer). A unit with any blocked element -- an op without a rule, a model input or
output, an axis whose size a rule cannot change -- makes its group unprunable.

Components are found with ``scipy.sparse.csgraph.connected_components`` over vectorised
edge lists, so the analysis of a ViT-Base graph takes a fraction of a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.fx as fx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from prunec.ir.program import Program, node_module_path
from prunec.ir.rules import rule_for

__all__ = ["ChannelGroup", "Slot", "ChannelAnalysis", "analyze_channels", "static_shape", "outputs_of",
           "UNCHOOSABLE"]

# Reasons a group is never a choice (a pass that removes nothing does not cite them).
UNCHOOSABLE = ("model input/output shape is kept", "a single unit (nothing to choose)",
               "no activation carries these channels")

DimKey = tuple  # (node name, axis)


def static_shape(node) -> tuple | None:
    """The shape of a node's tensor value with ``None`` for symbolic sizes."""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(_static_int(s) for s in val.shape)


def _static_int(size) -> int | None:
    if isinstance(size, int):
        return size
    return size.node.maybe_as_int()  # a SymInt that export specialised to a constant


def outputs_of(node: fx.Node) -> list[tuple[int | None, fx.Node]]:
    """``[(None, node)]`` for a tensor-valued node, else its ``getitem`` users by index."""
    if isinstance(node.meta.get("val"), torch.Tensor):
        return [(None, node)]
    import operator

    return sorted(
        ((u.args[1], u) for u in node.users if u.op == "call_function" and u.target is operator.getitem),
        key=lambda t: t[0],
    )


@dataclass(frozen=True)
class Slot:
    """One axis a group lives on. ``width`` is how many indices of it one unit covers."""

    node: str
    axis: int
    size: int
    width: int
    param: str | None = None  # fully qualified name for parameters and buffers

    def __str__(self) -> str:
        return f"{self.param or self.node}[{self.axis}]"


@dataclass
class ChannelGroup:
    """Channels that are removed together.

    Attributes:
        key: Stable name (anchor parameter and axis), used by plans.
        size: Number of units (channels, or heads for attention groups).
        slots: Every axis the group lives on; ``slot.width`` indices per unit.
        prunable: Whether units of this group may be removed.
        reason: Why not, when not prunable.
        tags: ``residual`` (crosses an add/sub of two activations), ``attention`` (head
            units of scaled_dot_product_attention), ``norm`` (normalised over).
    """

    key: str
    size: int
    slots: list[Slot]
    prunable: bool
    reason: str = ""
    tags: frozenset = frozenset()
    unit_index: dict = field(default_factory=dict, repr=False)  # slot -> int64 [axis size], -1 elsewhere

    @property
    def params(self) -> list[Slot]:
        return [s for s in self.slots if s.param is not None]

    @property
    def step_width(self) -> int:
        """gcd of the slot widths: a kept unit count ``k`` gives ``k * width`` channels."""
        return int(np.gcd.reduce([s.width for s in self.slots]))

    def indices(self, slot: Slot, units) -> torch.Tensor:
        """The indices of ``slot``'s axis that belong to the given units."""
        owner = self.unit_index[slot]
        mask = np.isin(owner, np.asarray(units, dtype=np.int64))
        return torch.from_numpy(np.nonzero(mask)[0])

    def is_mlp(self) -> bool:
        """A hidden group of an MLP/FFN block or conv bottleneck."""
        return self.prunable and not ({"residual", "attention"} & self.tags)


class CoupleContext:
    """What a rule sees while the analysis runs (see ``prunec.ir.rules``)."""

    def __init__(self, space: "_Space"):
        self.space = space
        self.node: fx.Node | None = None
        self.touched: set = set()

    def shape(self, node) -> tuple | None:
        return static_shape(node)

    def outputs(self, node: fx.Node) -> list:
        return outputs_of(node)

    def tie(self, a, ax: int, b, bx: int) -> None:
        sa, sb = self._size(a, ax), self._size(b, bx)
        if sa is None and sb is None and (self.factor(a, ax) or self.factor(b, bx)):
            self._tie_factors(a, ax, b, bx)
            return
        if sa is None or sb is None or sa != sb:
            self.block(a, ax), self.block(b, bx)
            return
        self.tie_range(a, ax, 0, b, bx, 0, sa)

    def tie_range(self, a, ax, a_start, b, bx, b_start, length) -> None:
        ea, eb = self.space.ids(a, ax), self.space.ids(b, bx)
        if ea is None or eb is None:
            self.block(a, ax), self.block(b, bx)
            return
        self.space.edges.append((ea[a_start:a_start + length], eb[b_start:b_start + length]))
        self.touched.update({(_name(a), ax), (_name(b), bx)})

    def tie_blocks(self, merged, mx: int, outer, ox: int, block: int) -> None:
        em, eo = self.space.ids(merged, mx), self.space.ids(outer, ox)
        if em is None or eo is None or len(em) != len(eo) * block:
            self.block(merged, mx), self.block(outer, ox)
            return
        self.space.edges.append((em, np.repeat(eo, block)))
        self.touched.update({(_name(merged), mx), (_name(outer), ox)})

    def tie_tiled(self, merged, mx: int, inner, ix: int, repeats: int, block: int = 1) -> None:
        """Index ``(t * n + e) * block + r`` of the merged axis is index ``e`` of the inner
        axis (size ``n``) for every ``t < repeats``, ``r < block``: the channels (or heads of
        ``block`` channels) of a stack, ``[3E] -> [3, E]`` or ``[3*H*D] -> [3, H, D]``."""
        em, ei = self.space.ids(merged, mx), self.space.ids(inner, ix)
        if em is None or ei is None or len(em) != len(ei) * repeats * block:
            self.block(merged, mx), self.block(inner, ix)
            return
        self.space.edges.append((em, np.tile(np.repeat(ei, block), repeats)))
        self.touched.update({(_name(merged), mx), (_name(inner), ix)})

    def factor(self, node, ax: int, size: int | None = None) -> str | None:
        """The static inner factor of a symbolic axis, as a virtual axis.

        An axis of symbolic size ``B*H`` (heads folded into the batch, ``[B*H, L, D]``) has
        no elements of its own; index ``i`` of it is head ``i % H``. Rules that see ``H``
        enter such an axis (a reshape ``[B, N, H*D] -> [B*H, N, D]``) create the factor with
        ``size=H``; identity ties carry it on (:meth:`tie`) and a reshape that splits ``H``
        out again ties it to a real axis. Blocking the axis blocks its factor.
        """
        key = (_name(node), ax)
        if key not in self.space.factors and size is not None:
            self.space.factors[key] = self.space.add_virtual(size)
        return self.space.factors.get(key)

    def _tie_factors(self, a, ax: int, b, bx: int) -> None:
        fa, fb = self.factor(a, ax), self.factor(b, bx)
        size = self.space.shapes[fa or fb][0]
        same = _sym_expr(a, ax) == _sym_expr(b, bx) and _sym_expr(a, ax) is not None
        fa, fb = self.factor(a, ax, size if same else None), self.factor(b, bx, size if same else None)
        if not same or fa is None or fb is None or self.space.shapes[fa] != self.space.shapes[fb]:
            self.block(a, ax), self.block(b, bx)
            return
        self.space.edges.append((self.space.ids(fa, 0), self.space.ids(fb, 0)))
        self.touched.update({(_name(a), ax), (_name(b), bx)})

    def virtual(self, size: int) -> str:
        """A fresh axis of ``size`` elements that belongs to no tensor (a conv's groups)."""
        return self.space.add_virtual(size)

    def cover(self, node, ax: int) -> None:
        self.touched.add((_name(node), ax))

    def block(self, node, ax: int | None = None, why: str | None = None) -> None:
        why = why or f"kept by {_op_name(self.node)} at node '{self.node.name}'"
        axes = range(len(self._shape(node) or ())) if ax is None else [ax]
        for a in axes:
            self.space.block(node, a, why)
            self.touched.add((_name(node), a))

    def tag(self, node, ax: int, tag: str) -> None:
        self.space.tags.setdefault((_name(node), ax), set()).add(tag)

    def _shape(self, node):
        return self.space.shapes.get(_name(node))

    def _size(self, node, ax):
        shape = self._shape(node)
        return None if shape is None or ax >= len(shape) else shape[ax]


def _sym_expr(node, ax: int):
    """The sympy expression of a symbolic axis size, or None."""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(val, torch.Tensor) or ax >= val.dim() or isinstance(val.shape[ax], int):
        return None
    return val.shape[ax].node.expr


def _name(node) -> str:
    return node if isinstance(node, str) else node.name


def _op_name(node: fx.Node | None) -> str:
    if node is None:
        return "?"
    target = node.target
    return str(getattr(target, "__name__", target)) if node.op == "call_function" else node.op


class _Space:
    """Element ids for every static axis, plus edges and blocks gathered from the rules."""

    def __init__(self, program: Program):
        self.shapes: dict[str, tuple] = {}
        self.offsets: dict[DimKey, int] = {}
        self.total = 0
        for node in program.graph.nodes:
            shape = static_shape(node)
            if shape is None:
                continue
            self.shapes[node.name] = shape
            for ax, size in enumerate(shape):
                if size is not None:
                    self.offsets[(node.name, ax)] = self.total
                    self.total += size
        self.edges: list = []
        self.blocked: list = []
        self.reasons: dict[DimKey, str] = {}
        self.tags: dict[DimKey, set] = {}
        self.factors: dict[DimKey, str] = {}  # symbolic axis -> virtual axis of its static factor
        self._n_virtual = 0

    def add_virtual(self, size: int) -> str:
        name = f"<virtual{self._n_virtual}>"
        self._n_virtual += 1
        self.shapes[name] = (size,)
        self.offsets[(name, 0)] = self.total
        self.total += size
        return name

    def ids(self, node, ax: int):
        key = (_name(node), ax)
        if key not in self.offsets:
            return None
        start = self.offsets[key]
        return np.arange(start, start + self.shapes[key[0]][ax], dtype=np.int64)

    def block(self, node, ax: int, why: str) -> None:
        ids = self.ids(node, ax)
        if ids is None and (_name(node), ax) in self.factors:
            ids = self.ids(self.factors[(_name(node), ax)], 0)
        if ids is not None:
            self.blocked.append(ids)
            self.reasons.setdefault((_name(node), ax), why)


@dataclass
class ChannelAnalysis:
    """The result of :func:`analyze_channels`: groups plus the element layout behind them."""

    groups: list[ChannelGroup]
    offsets: dict
    shapes: dict
    component: np.ndarray  # element -> component id
    factors: dict = field(default_factory=dict)  # (node, symbolic axis) -> its factor's virtual axis

    def by_key(self) -> dict[str, ChannelGroup]:
        return {g.key: g for g in self.groups}

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def table(self) -> str:
        """A readable table: group, size, parameters, prunable or why not."""
        rows = [("group", "size", "tags", "parameters", "prunable")]
        for i, g in enumerate(self.groups):
            if g.size < 2 or all(s.param is not None for s in g.slots):
                continue  # kernel axes, unused buffers: not channels
            params = ", ".join(str(s) for s in g.params[:3]) + (
                f" (+{len(g.params) - 3})" if len(g.params) > 3 else "")
            unit = f"{g.size}" if g.step_width == 1 else f"{g.size}x{g.step_width}"
            rows.append((str(i), unit, ",".join(sorted(g.tags)) or "-", params,
                         "yes" if g.prunable else f"no: {g.reason}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def analyze_channels(program: Program) -> ChannelAnalysis:
    """Build the channel groups of ``program`` (cached per program version)."""
    return program.analysis("channels", _analyze)


def _analyze(program: Program) -> ChannelAnalysis:
    space = _Space(program)
    ctx = CoupleContext(space)
    param_targets: dict[str, str] = {}
    first_attr: dict[str, fx.Node] = {}
    for node in program.graph.nodes:
        _couple_node(ctx, node, first_attr, param_targets)
    comp = _components(space)
    groups = _build_groups(program, space, comp, param_targets)
    return ChannelAnalysis(groups, space.offsets, space.shapes, comp, space.factors)


def _couple_node(ctx: CoupleContext, node: fx.Node, first_attr: dict, param_targets: dict) -> None:
    ctx.node, ctx.touched = node, set()
    if node.op == "get_attr":
        param_targets[node.name] = node.target
        if not node.users:  # an unused buffer is nobody's channel
            ctx.block(node, why=f"'{node.target}' is not used by the graph")
        if node.target in first_attr:  # one tensor, several get_attr nodes
            twin = first_attr[node.target]
            for ax in range(len(ctx.shape(node) or ())):
                ctx.tie(node, ax, twin, ax)
        first_attr.setdefault(node.target, node)
        return
    if node.op in ("placeholder", "output"):
        for arg in _tensor_args(node) if node.op == "output" else [node]:
            ctx.block(arg, why=UNCHOOSABLE[0])
        return
    if node.op == "call_module":  # export's _guards_fn: reads input shapes only
        return
    import operator

    if node.target is operator.getitem and not isinstance(node.args[0].meta.get("val"), torch.Tensor):
        return  # covered by the multi-output producer's rule
    rule = rule_for(node)
    if rule is not None and rule.shape_only:
        return
    if rule is not None:
        rule.couple(ctx, node)
    why = None if rule is not None else (
        f"no coupling rule for {_op_name(node)} at node '{node.name}'"
        + (f" in module '{node_module_path(node)}'" if node_module_path(node) else ""))
    _block_untouched(ctx, node, why)


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return [n for n in found if static_shape(n) is not None]


def _block_untouched(ctx: CoupleContext, node: fx.Node, why: str | None) -> None:
    outs = [o for _, o in outputs_of(node)] if static_shape(node) is None else [node]
    for t in _tensor_args(node) + outs:
        for ax in range(len(static_shape(t) or ())):
            if (t.name, ax) not in ctx.touched:
                ctx.block(t, ax, why)


def _components(space: _Space) -> np.ndarray:
    n = space.total
    if space.edges:
        a = np.concatenate([e[0] for e in space.edges])
        b = np.concatenate([e[1] for e in space.edges])
    else:
        a = b = np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)``: the distinct values in increasing order, by a sort.

    numpy 2.3+ answers ``np.unique`` of integers with a hash table first, which on the
    element-level arrays of a large model (640k (component, axis) codes of a 2-layer
    Llama-shaped 1B) took 0.63 s against 0.06 s for sorting and keeping each value that
    differs from its predecessor.
    """
    ordered = np.sort(values, kind="stable")
    if len(ordered) < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def _unique_inverse(values: np.ndarray) -> np.ndarray:
    """``np.unique(values, return_inverse=True)[1]``: for each entry, the rank of its value
    among the distinct values (0 for the smallest), by one stable sort."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    inverse = np.empty(len(values), dtype=np.int64)
    if len(values):
        inverse[order] = np.cumsum(np.concatenate(([0], ordered[1:] != ordered[:-1])))
    return inverse


def _element_dims(space: _Space) -> np.ndarray:
    """element -> index of its (node, axis) in ``space.offsets`` order."""
    dim_of = np.empty(space.total, dtype=np.int64)
    for i, (key, start) in enumerate(space.offsets.items()):
        dim_of[start:start + space.shapes[key[0]][key[1]]] = i
    return dim_of


def _build_groups(program: Program, space: _Space, comp: np.ndarray, param_targets: dict) -> list[ChannelGroup]:
    keys = list(space.offsets)
    dim_of = _element_dims(space)
    n_comp, n_dims = int(comp.max()) + 1 if len(comp) else 0, len(keys)
    is_param_dim = np.array([k[0] in param_targets for k in keys], dtype=bool)
    # Components that touch a parameter axis are the candidates.
    in_param = np.zeros(n_comp, dtype=bool)
    in_param[comp[is_param_dim[dim_of]]] = True
    blocked = np.zeros(space.total, dtype=bool)
    for ids in space.blocked:
        blocked[ids] = True
    comp_blocked = np.zeros(n_comp, dtype=bool)
    comp_blocked[comp[blocked]] = True
    sel = in_param[comp]
    code = _sorted_unique(comp[sel] * n_dims + dim_of[sel])  # (component, axis) pairs
    pair_comp, pair_dim = code // n_dims, code % n_dims
    # Components with the same set of axes form one group: hash each set, then group.
    salt = np.random.default_rng(0).integers(1, 2**62, size=n_dims, dtype=np.int64)
    sig = np.zeros(n_comp, dtype=np.int64)
    np.add.at(sig, pair_comp, salt[pair_dim])
    cands = _sorted_unique(pair_comp)
    inverse = _unique_inverse(sig[cands])
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    groups = []
    # np.split of an empty array gives one empty piece: a model without parameters has none.
    for members in np.split(cands[order], bounds) if len(cands) else []:
        lo, hi = np.searchsorted(pair_comp, [members[0], members[0] + 1])
        groups.append(_make_group(space, keys, pair_dim[lo:hi].tolist(), members, comp, blocked,
                                  comp_blocked, param_targets))
    groups.sort(key=lambda g: min(space.offsets[(s.node, s.axis)] for s in g.slots))
    _disambiguate_keys(groups)
    return groups


def _disambiguate_keys(groups: list[ChannelGroup]) -> None:
    """Groups sharing an anchor axis (the halves of a chunked tensor) get ``#k`` suffixes,
    numbered by their first index on it -- an order pruning never changes."""
    by_key: dict[str, list[ChannelGroup]] = {}
    for g in groups:
        by_key.setdefault(g.key, []).append(g)
    for key, same in by_key.items():
        if len(same) < 2:
            continue
        anchor = lambda g: next(s for s in g.slots if str(s) == key.replace(":", "[", 1) + "]")
        same.sort(key=lambda g: int(np.argmax(g.unit_index[anchor(g)] >= 0)))
        for k, g in enumerate(same):
            g.key = f"{key}#{k}"


def _make_group(space, keys, dims, comps, comp, blocked, comp_blocked, param_targets) -> ChannelGroup:
    slots, unit_index = [], {}
    comps_arr = np.asarray(comps)
    anchor_key = None
    for d in dims:
        name, ax = keys[d]
        start = space.offsets[keys[d]]
        size = space.shapes[name][ax]
        seg = comp[start:start + size]
        owner = np.full(size, -1, dtype=np.int64)
        hit = np.isin(seg, comps_arr)
        if anchor_key is None and name in param_targets:
            anchor_key = (name, ax)
            # Order units by their first index on the anchor axis: stable across runs.
            order = np.asarray(list(dict.fromkeys(seg[hit].tolist())), dtype=np.int64)
            rank = np.full(int(comp.max()) + 1, -1, dtype=np.int64)
            rank[order] = np.arange(len(order))
        slots.append((name, ax, size, seg, hit, owner))
    result_slots = []
    for name, ax, size, seg, hit, owner in slots:
        if name.startswith("<virtual"):
            continue  # a rule's bookkeeping axis, not a tensor
        owner[hit] = rank[seg[hit]]
        width = int(hit.sum()) // len(comps)
        slot = Slot(name, ax, size, width, param_targets.get(name))
        unit_index[slot] = owner
        result_slots.append(slot)
    is_blocked = bool(comp_blocked[comps_arr].any())
    reason = _block_reason(space, result_slots, blocked) if is_blocked else ""
    tags = frozenset(t for s in result_slots for t in space.tags.get((s.node, s.axis), ()))
    anchor = next(s for s in result_slots if (s.node, s.axis) == anchor_key)
    if not is_blocked and len(comps) < 2:
        is_blocked, reason = True, UNCHOOSABLE[1]
    if not is_blocked and all(s.param is not None for s in result_slots):
        is_blocked, reason = True, UNCHOOSABLE[2]
    return ChannelGroup(f"{anchor.param}:{anchor.axis}", len(comps), result_slots, not is_blocked,
                        reason, tags, unit_index)


def _block_reason(space: _Space, slots: list[Slot], blocked: np.ndarray) -> str:
    for s in slots:
        start = space.offsets[(s.node, s.axis)]
        if blocked[start:start + s.size].any() and (s.node, s.axis) in space.reasons:
            return space.reasons[(s.node, s.axis)]
    for s in slots:
        if (s.node, s.axis) in space.reasons:
            return space.reasons[(s.node, s.axis)]
    return "coupled to a blocked axis"
