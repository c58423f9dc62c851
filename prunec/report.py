"""The report of a compile, written for the person who runs it.

A :class:`Report` holds what ``prunec.compile`` did: the model and its example inputs, the
passes with their options and what each removed, the backend, costs before and after, and
per-layer widths before and after. It prints as text (``print(report)``), renders as
Markdown (:meth:`Report.to_markdown`) and JSON (:meth:`Report.to_json`), and draws per-layer
widths and MACs as a PNG (:meth:`Report.plot`).

**Passes** are read from the program's lineage (:attr:`~prunec.ir.program.Program.lineage`,
:meth:`Report.read_lineage`): one entry per step, so a replayed plan and a pass that removed
nothing are listed too (the latter with the op that kept its channels), each with the typed
statistics the step holds (:class:`PassStats`, :class:`LatencyStats`).

**MACs are per sample.** ``macs_before`` / ``macs_after`` count one forward on the example
inputs (the cost model of :mod:`prunec.ir.cost`); the readable forms divide by the example
batch size (the first axis of the first example tensor), so an example batch of 128 items
does not make a model look 128 times as costly. Parameters do not depend on the batch.

**Layers** are the ops that own a weight and multiply with it (``linear`` and the
convolutions) plus attention (``scaled_dot_product_attention``, whose width is its number
of heads). A layer is named by its module path (``layer1.0.conv1``) and keyed by its weight
(``layer1.0.conv1.weight``), which pruning never renames.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunec.errors import PrunecError
from prunec.fileio import atomic_path, atomic_write_text
from prunec.ir.channels import analyze_channels
from prunec.ir.cost import count_macs, count_params, mac_kind, macs_by_node
from prunec.ir.program import node_module_path
from prunec.progress import format_seconds

if TYPE_CHECKING:
    from prunec.ir.program import Program

__all__ = ["Report", "PassStats", "LatencyStats", "pass_entry", "step_entry", "LayerWidth", "LayerRow", "layer_widths", "format_count",
           "describe_pass", "activation_product_macs"]

_LAYER_KINDS = ("linear", "conv", "conv_transpose", "attention")


# ---------------------------------------------------------------------------- numbers
def format_count(value: float, unit: str = "") -> str:
    """``950``, ``12.3K``, ``6.29M``, ``4.09G``: three significant digits, adaptive unit."""
    value = float(value)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{_three_digits(value / scale)}{suffix}{unit}"
    return f"{_three_digits(value)}{unit}" if value != int(value) else f"{int(value)}{unit}"


def _three_digits(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _percent_fewer(before: float, after: float) -> str:
    return f"{100 * (1 - after / before):.1f}% fewer" if before else "-"


def _seconds(value: float) -> str:
    return format_seconds(value)


# ---------------------------------------------------------------------------- layers
@dataclass
class LayerWidth:
    """One layer of a program: its op kind, input and output width, and MACs per sample."""

    name: str
    kind: str
    inputs: int
    outputs: int
    macs: float


@dataclass
class LayerRow:
    """A layer before and after pruning (``after`` is None when the layer is gone)."""

    name: str
    kind: str
    before: LayerWidth
    after: LayerWidth | None

    @property
    def changed(self) -> bool:
        a, b = self.after, self.before
        return a is None or (a.inputs, a.outputs) != (b.inputs, b.outputs)


def _weight_width(node, kind: str, program: "Program") -> tuple[str, int, int] | None:
    weight = node.args[1] if len(node.args) > 1 else None
    if getattr(weight, "op", None) != "get_attr":
        return None
    shape = tuple(program.get_tensor(weight.target).shape)
    groups = node.args[-1] if kind.startswith("conv") and isinstance(node.args[-1], int) else 1
    if kind == "conv_transpose":
        return weight.target, shape[0], shape[1] * groups
    if kind == "conv":
        return weight.target, shape[1] * groups, shape[0]
    return weight.target, shape[-1], shape[0]


def _attention_width(node) -> tuple[int, int] | None:
    q = node.args[0].meta.get("val") if node.args else None
    if q is None or q.dim() != 4 or not isinstance(q.shape[1], int):
        return None
    return int(q.shape[1]), int(q.shape[1])


def layer_widths(program: "Program", batch_size: int = 1) -> dict[str, LayerWidth]:
    """Every layer of ``program`` by key (weight name, or ``<module>.attention``).

    Widths count channels (``linear`` features, conv channels, grouped convs' full input
    width) or heads (attention); MACs are per sample (divided by ``batch_size``), summed
    over every use of a weight.
    """

    macs = macs_by_node(program)
    layers: dict[str, LayerWidth] = {}
    for node in program.graph.nodes:
        kind = mac_kind(node)
        if kind not in _LAYER_KINDS:
            continue
        path = node_module_path(node)
        if kind == "attention":
            width = _attention_width(node)
            key, sizes = f"{path or node.name}.attention", width
        else:
            found = _weight_width(node, kind, program)
            key, sizes = (found[0], found[1:]) if found else (None, None)
        if key is None or sizes is None:
            continue
        per_sample = macs.get(node.name, 0) / max(batch_size, 1)
        if key in layers:
            layers[key].macs += per_sample
            continue
        name = path or key.removesuffix(".weight")
        layers[key] = LayerWidth(name, kind, sizes[0], sizes[1], per_sample)
    return layers


def batch_size_of(args: tuple, kwargs: dict | None = None) -> int:
    """The first axis of the first example tensor (1 when there is none)."""
    import torch.utils._pytree as pytree

    for leaf in pytree.tree_leaves((args, kwargs or {})):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    return 1


def describe_inputs(args: tuple, kwargs: dict | None = None) -> str:
    """``float32[8, 1, 8, 8]`` / ``input_ids=int64[1, 128], attention_mask=int64[1, 128]``."""
    def one(t: Any) -> str:
        if isinstance(t, torch.Tensor):
            return f"{str(t.dtype).removeprefix('torch.')}[{', '.join(map(str, t.shape))}]"
        if isinstance(t, (tuple, list)):
            return "(" + ", ".join(one(x) for x in t) + ")"
        if isinstance(t, dict):
            return "{" + ", ".join(f"{k}: {one(v)}" for k, v in t.items()) + "}"
        return type(t).__name__
    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in (kwargs or {}).items()]
    return ", ".join(parts) or "(none)"


# ---------------------------------------------------------------------------- pass statistics
class _FieldMapping(MutableMapping):
    """A dataclass that is also a mapping of its fields that are not ``None`` (then of
    :attr:`extra`), so code written against a plain dict keeps working: ``obj["key"]``,
    ``dict(obj)``, ``obj["key"] = value``; a key that is no field lands in ``extra``."""

    extra: dict

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "extra")

    @classmethod
    def of(cls, value: "Mapping[str, Any] | None"):
        """A new object from another one or a mapping of its keys (``None``: empty);
        unknown keys go to :attr:`extra`."""
        obj = cls()
        if value is not None:
            obj.update(value)
        return obj

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            value = getattr(self, key)
            if value is None:
                raise KeyError(key)
            return value
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._names():
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._names():
            if getattr(self, key) is None:
                raise KeyError(key)
            setattr(self, key, None)
        else:
            del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from (k for k in self._names() if getattr(self, k) is not None)
        yield from self.extra

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def to_dict(self) -> dict:
        """The reported fields and ``extra`` as a plain dict (what JSON holds)."""
        return {k: v.to_dict() if isinstance(v, _FieldMapping) else v for k, v in self.items()}

    __eq__ = MutableMapping.__eq__  # equal to a dict of the same keys and values


@dataclass(eq=False)
class LatencyStats(_FieldMapping):
    """A latency target's numbers, typed (``PassStats.latency``): the report reads them by
    attribute; they serialise to the same JSON object as before (a mapping of the fields the
    pass reported, see :class:`_FieldMapping`).

    Attributes:
        backend: Where the tables were timed (``"onnxruntime"``...).
        threads: Threads the timing used.
        fraction: The asked fraction of the dense latency.
        dense_ms: Measured latency of the program before the pass.
        target_ms: ``fraction * dense_ms``.
        predicted_ms: What the latency model predicts for the chosen widths or blocks.
        predicted_fraction: ``predicted_ms / dense_ms``.
        tables: Latency tables used (one per distinct structure, plus the program's).
        tables_cached: Of those, tables read from the cache.
        structures: Distinct layer structures timed (width targets).
        isolated: Structures timed on their own (width targets).
        block_ms: Measured saving of each candidate block (depth targets).
        extra: Anything else the target reports.
    """

    backend: str | None = None
    threads: int | None = None
    fraction: float | None = None
    dense_ms: float | None = None
    target_ms: float | None = None
    predicted_ms: float | None = None
    predicted_fraction: float | None = None
    tables: int | None = None
    tables_cached: int | None = None
    structures: int | None = None
    isolated: int | None = None
    block_ms: dict | None = None
    extra: dict = field(default_factory=dict)

    # The closed loop reports these even when it measured nothing (``None``), which the
    # mapping view keeps as reported: they live in ``extra``, read here by attribute.
    @property
    def measured_fraction(self) -> float | None:
        """The chosen plan's latency as measured on the backend, as a fraction of
        ``dense_ms`` (the closed loop); ``None`` when nothing was measured."""
        return self.extra.get("measured_fraction")

    @property
    def loop(self) -> list:
        """One ``{"budget", "predicted", "measured"}`` row per plan the closed loop timed."""
        return list(self.extra.get("loop") or [])


@dataclass(eq=False)
class PassStats(_FieldMapping):
    """What one pass did, typed: a pass returns it in ``PassResult.stats`` and the report
    reads it by attribute. A field left ``None`` was not reported by the pass.

    It is also a mapping of the reported fields (``stats["units_removed"]``, ``dict(stats)``,
    ``stats["key"] = value``) so code written against the plain dict keeps working; a key
    that is no field lands in :attr:`extra`.

    Attributes:
        targets: Which groups a channel pass targets (``"all"`` or ``"mlp"``).
        groups: Candidate channel groups.
        units_total: Units (channels, neurons, heads) in the candidate groups.
        heads_total: Of those, units that are attention heads (counted apart).
        already_applied: The pass's target was already reached (it ran before).
        latency: The latency target's numbers (:class:`LatencyStats`; a mapping given here
            is read into one).
        pruned_groups: Groups that lost units.
        units_removed: Units removed, heads included.
        kept_because: ``"<group>: <reason>"`` lines where a pass removed nothing.
        heads_removed: Of ``units_removed``, attention heads.
        compensations: Mean compensations folded (from the plan).
        unit: What a depth pass drops (``"layer"``; blocks when ``None``).
        blocks: Residual blocks in the program.
        removable: Of those, blocks that can be dropped.
        layers: Layers in the program (``unit="layer"``).
        candidates: Blocks or layers the pass could drop.
        dropped_before: Blocks or layers dropped by earlier passes.
        dropped: Blocks or layers dropped by this pass.
        dropped_layers: Module paths of the layers dropped.
        dropped_keys: Keys of the blocks dropped.
        macs_removed: MACs of the dropped blocks.
        scores: Score of every candidate block or layer (higher = keep).
        plan_groups: A replayed plan's channel groups.
        plan_blocks: A replayed plan's dropped blocks.
        plan_compensations: A replayed plan's compensations.
        skipped: An instrument skipped the pass.
        seconds: Wall time of the pass (the timing instrument).
        verified: What the output check found (the check instrument).
        extra: Anything else a pass reports, by name.
    """

    targets: str | None = None
    groups: int | None = None
    units_total: int | None = None
    heads_total: int | None = None
    already_applied: bool | None = None
    latency: LatencyStats | None = None
    heads_removed: int | None = None
    pruned_groups: int | None = None
    units_removed: int | None = None
    kept_because: list | None = None
    unit: str | None = None
    blocks: int | None = None
    removable: int | None = None
    layers: int | None = None
    candidates: int | None = None
    dropped_before: int | None = None
    dropped: int | None = None
    dropped_layers: list | None = None
    dropped_keys: list | None = None
    macs_removed: int | None = None
    scores: dict | None = None
    plan_groups: int | None = None
    plan_blocks: list | None = None
    plan_compensations: int | None = None
    skipped: bool | None = None
    seconds: float | None = None
    verified: str | None = None
    compensations: int | None = None
    extra: dict = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "latency" and value is not None and not isinstance(value, LatencyStats):
            value = LatencyStats.of(value)  # a pass that still reports a dict
        object.__setattr__(self, name, value)


_STAT_FIELDS = PassStats._names()


def _stats_of(entry: Mapping[str, Any]) -> PassStats:
    """The typed statistics of a report entry: the pass's own, or (an entry written by hand)
    its keys read once into a :class:`PassStats`."""
    stats = entry.get("stats")
    return stats if isinstance(stats, PassStats) else PassStats.of(
        {k: v for k, v in entry.items() if k in _STAT_FIELDS})


# ---------------------------------------------------------------------------- passes in words
def _unit_word(entry: Mapping[str, Any], stats: PassStats, kinds: dict[str, str] | None,
               tags: dict[str, list] | None = None) -> str:
    """What the pass's units are, from its targets, the tags of the pruned groups and the
    kinds of their anchor weights (group keys are ``<weight>:<axis>``)."""
    if stats.extra.get("unit_name"):  # the pass names its own units (GQA heads)
        return stats.extra["unit_name"]
    targets = stats.targets or _options_dict(entry).get("targets")
    plan = entry.get("plan")
    keys = list(getattr(plan, "keep", {}))
    if keys and tags and all("attention" in tags.get(k, ()) for k in keys):
        return "attention heads"
    found = {kinds.get(key.rpartition(":")[0]) for key in getattr(plan, "keep", {})} \
        if kinds and plan is not None else set()
    found.discard(None)
    if targets == "mlp":
        if found == {"linear"}:
            return "MLP neurons"
        if found and found <= {"conv", "conv_transpose"}:
            return "bottleneck channels"
        return "hidden units (MLP neurons, conv bottleneck channels)"
    return "channels" if targets == "all" else "units"


def describe_pass(entry: Mapping[str, Any], kinds: dict[str, str] | None = None,
                  tags: dict[str, list] | None = None) -> str:
    """What a pass did, in words: ``removed 112 of 240 MLP neurons in 6 of 9 groups``.

    Reads the entry's :class:`PassStats` (``groups``, ``pruned_groups``, ``units_removed``,
    ``units_total`` when the pass reports it, ``compensations``, ``already_applied``; an
    entry written by hand has its keys read into one) and its options (``targets``);
    ``kinds`` (weight name -> layer kind) and ``tags`` (group key -> tags) name the units.
    """
    stats = _stats_of(entry)
    modified = entry.get("modified")
    unmodified = not entry.get("modified", True)
    if stats.already_applied:
        return "nothing: its target was already reached (the pass ran before)"
    if entry.get("pass") == "replay" or stats.plan_groups is not None:
        return _replay_words(stats)
    if stats.dropped:
        return _dropped_words(entry, stats)
    if not stats.units_removed:
        if stats.kept_because and unmodified:
            return "removed nothing: " + _kept_because(stats.kept_because)
        if stats.groups is not None and unmodified:
            return (f"removed nothing: none of the {stats.groups} candidate groups "
                    f"could be pruned at this ratio")
        return "changed the program" if modified else "left the program unchanged"
    total = stats.units_total
    of_total = f" of {total}" if total else ""
    groups = stats.groups
    pruned = "?" if stats.pruned_groups is None else stats.pruned_groups
    in_groups = f" in {pruned} of {groups} groups" if groups else ""
    heads = stats.heads_total
    if heads and total and heads != total:  # heads and channels: never one mixed count
        other = "channels" if stats.targets == "all" else "units"
        removed_heads = stats.heads_removed or 0
        text = (f"removed {removed_heads} of {heads} attention heads and "
                f"{stats.units_removed - removed_heads} of {total - heads} {other}"
                f"{in_groups}")
    else:
        text = (f"removed {stats.units_removed}{of_total} "
                f"{_unit_word(entry, stats, kinds, tags)}{in_groups}")
    if stats.compensations:
        text += "; their mean outputs are folded into the next layers"
    return text


_PRODUCT_KINDS = ("attention", "matmul", "einsum")


def activation_product_macs(program: "Program") -> int:
    """MACs of products whose operands are both activations: attention's ``Q K^T`` and
    ``A V`` (``scaled_dot_product_attention`` or explicit ``matmul``/``bmm``/``einsum``).

    prunec counts them (they are real work, quadratic in the sequence); Torch-Pruning's
    counter (module hooks on conv and linear layers) does not, so its MACs of a transformer
    are lower by this amount. A product with a parameter operand (``x @ W``) is a layer and
    not included here.
    """

    per_node = macs_by_node(program)
    total = 0
    for node in program.graph.nodes:
        if node.name in per_node and mac_kind(node) in _PRODUCT_KINDS \
                and not any(a.op == "get_attr" for a in node.all_input_nodes):
            total += per_node[node.name]
    return int(total)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _names(keys: list[str], shown: int = 6) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _dropped_words(entry: Mapping[str, Any], stats: PassStats) -> str:
    """``dropped 2 of 4 residual blocks (stages.0.layers.1, stages.1.layers.1); each is
    replaced by its mean output``."""
    layers = stats.dropped_layers is not None
    keys = list(stats.dropped_layers or stats.dropped_keys or [])
    blocks = list(getattr(entry.get("plan"), "blocks", None) or [])
    keys = keys or [b.key for b in blocks]
    of = stats.layers if layers else stats.blocks
    noun = "layers" if layers else "residual blocks"
    text = f"dropped {stats.dropped}{f' of {of}' if of else ''} {noun}"
    text += f" ({_names(keys)})" if keys else ""
    if any(getattr(b, "mean", None) is not None for b in blocks):
        text += "; each is replaced by its mean output"
    return text


def _replay_words(stats: PassStats) -> str:
    """``replayed a saved plan: pruned 3 channel groups and dropped 2 residual blocks (...)``."""
    did = []
    if stats.plan_groups:
        did.append(f"pruned {_count(stats.plan_groups, 'channel group')}")
    blocks = stats.plan_blocks or []
    if blocks:
        did.append(f"dropped {_count(len(blocks), 'residual block')} ({_names(blocks)})")
    if stats.plan_compensations:
        did.append(f"folded {_count(stats.plan_compensations, 'mean compensation')}")
    return "replayed a saved plan: " + (" and ".join(did) if did else "it was empty (no change)")


def _kept_because(reasons: list[str], shown: int = 3) -> str:
    """``group fc1.weight:0 is kept: aten.softmax at node 'softmax' normalises...``: the
    pass's ``"<group>: <reason>"`` lines, groups with the same reason together, the first
    few reasons."""
    by_reason: dict[str, list[str]] = {}
    for line in reasons:
        key, _, why = line.partition(": ")
        by_reason.setdefault(why, []).append(key)
    lines = [f"group {keys[0]} is kept: {why}" if len(keys) == 1
             else f"groups {', '.join(keys)} are kept: {why}"
             for why, keys in list(by_reason.items())[:shown]]
    more = f"; and {len(by_reason) - shown} more reasons" if len(by_reason) > shown else ""
    return "; ".join(lines) + more


def _options_dict(entry: dict) -> dict:
    options = entry.get("options")
    return options if isinstance(options, dict) else {}


def _pass_text(entry: dict) -> str:
    """``MagnitudePruning(ratio=0.5, ...)``: the entry's options, a dict or already text; a
    replayed plan says so, and whether it is known which pass made it."""
    options = entry.get("options")
    if isinstance(options, str):
        return options
    replayed = entry.get("pass") == "replay" or _stats_of(entry).plan_groups is not None
    if entry.get("pass") == "replay" and not options:
        return "replay of a saved plan (the plan does not say which pass made it)"
    text = f"{entry['pass']}({', '.join(f'{k}={v}' for k, v in (options or {}).items())})"
    return f"{text}, replayed from a saved plan" if replayed else text


def latency_line(latency: dict, passes: list) -> str:
    """``latency on onnxruntime (1 threads)  4.1 ms -> 2.5 ms (61 % asked 60 %, predicted
    59 %)``: the achieved latency against the dense one, and what the passes predicted."""
    found = [_stats_of(p).latency for p in passes]
    predicted = [f.predicted_fraction for f in found
                 if f is not None and f.predicted_fraction is not None]
    guess = f", predicted {predicted[-1]:.0%}" if predicted else ""
    # Which value set the knapsack's plan came from, when the pass judged two on the output.
    scores = [f.extra["scores"] for f in found if f is not None and f.extra.get("scores")]
    which = f"; scores: {scores[-1]}" if scores else ""
    return (f"latency on {latency['backend']} ({latency['threads']} threads)  "
            f"{latency['dense_ms']:.3f} ms -> {latency['achieved_ms']:.3f} ms "
            f"({latency['achieved_fraction']:.0%}, asked {latency['fraction']:.0%}{guess}"
            f"{which})")


def pass_entry(name: str, options: Any, modified: bool, stats: PassStats,
               plan: Any = None) -> dict:
    """A :attr:`Report.passes` entry: ``pass``, ``options``, ``modified``, the statistics by
    name (and ``plan`` when there is one) for readers of the dict, and the typed
    :class:`PassStats` under ``"stats"`` (which :meth:`Report.to_dict` leaves out). A plan
    sets ``compensations`` when the pass did not."""
    if plan is not None and stats.compensations is None:
        stats.compensations = len(getattr(plan, "compensations", ()) or ())
    entry = {"pass": name, "options": options, "modified": bool(modified)}
    if plan is not None:
        entry["plan"] = plan
    entry.update(stats)
    entry["stats"] = stats
    return entry


def step_entry(step: Any) -> dict:
    """The :attr:`Report.passes` entry of one :class:`~prunec.ir.program.Step` of a
    program's lineage: its pass name, its config as ``options`` (without the ``pass`` name
    and ``progress``, how it ran), ``modified``, its plan when it changed the program, and
    its typed statistics (the step's own object, so what the instruments add shows)."""
    options = {k: v for k, v in (step.config or {}).items() if k not in ("pass", "progress")}
    stats = step.stats if isinstance(step.stats, PassStats) else PassStats.of(step.stats)
    if step.stats is None:  # keep the object the entry reads in the step
        step.stats = stats
    return pass_entry(step.name, options, step.modified, stats,
                      step.plan if step.modified else None)


# ---------------------------------------------------------------------------- the report
@dataclass
class Report:
    """What a compile did (see the module docstring).

    Attributes:
        macs_before: MACs of one forward on the example inputs, before the passes.
        params_before: Parameters before the passes.
        macs_after: MACs after the passes (same inputs).
        params_after: Parameters after the passes.
        passes: One dict per step of the program's lineage (:meth:`read_lineage`: every
            pass run, replayed plans and passes that changed nothing included): ``pass``
            (class name), ``options``, ``modified``, ``seconds`` and the pass's own
            statistics by name, with the typed :class:`PassStats` under ``stats`` (``plan``
            and ``stats`` are kept out of :meth:`to_dict`). See :func:`step_entry`.
        backend: The backend the program was lowered to.
        model: The model's class name (or a description).
        inputs: The example inputs, e.g. ``float32[8, 1, 8, 8]``.
        batch_size: Example batch size; MACs are shown per sample.
        seconds: Wall time of the whole compile, when measured.
        layers_before: Per-layer widths before the passes (see :func:`layer_widths`).
        layers_after: Per-layer widths after the passes.
        group_tags: Tags of the channel groups at capture (``attention``, ``residual``...).
        capture_notes: What capture gave up (axes made static after a failed dynamic
            attempt, inputs the forward writes in place).
    """

    macs_before: int
    params_before: int
    macs_after: int = 0
    params_after: int = 0
    passes: list = field(default_factory=list)
    backend: str = "torch"
    model: str = ""
    inputs: str = ""
    batch_size: int = 1
    seconds: float | None = None
    layers_before: dict = field(default_factory=dict, repr=False)
    layers_after: dict = field(default_factory=dict, repr=False)
    iterations: list = field(default_factory=list)  # recipes (PEEAO): one dict per iteration
    group_tags: dict = field(default_factory=dict, repr=False)
    capture_notes: list = field(default_factory=list)  # what capture made static, and why
    latency: dict = field(default_factory=dict)  # latency target: dense and achieved ms
    product_macs_before: int = 0  # of the MACs: products of two activations (attention)
    product_macs_after: int = 0

    # -- filling it (called by prunec.compile) -----------------------------------------
    @classmethod
    def start(cls, program: "Program", *, model: Any = None, backend: str = "torch") -> "Report":
        """A report with the program's costs and layers before any pass."""

        batch = batch_size_of(program.example_args, program.example_kwargs)
        # Cached per program version: the first pass reuses this analysis.
        tags = {g.key: sorted(g.tags) for g in analyze_channels(program).groups}
        name = model if isinstance(model, str) else type(model).__name__ if model is not None else ""
        return cls(count_macs(program), count_params(program), backend=backend, model=name,
                   inputs=describe_inputs(program.example_args, program.example_kwargs),
                   batch_size=batch, layers_before=layer_widths(program, batch),
                   group_tags=tags, capture_notes=list(program.capture_notes),
                   product_macs_before=activation_product_macs(program))

    def read_lineage(self, program: "Program") -> "Report":
        """Fill :attr:`passes` from ``program``'s lineage, one entry per step
        (:func:`step_entry`): the report lists exactly what the lineage records."""
        self.passes = [step_entry(step) for step in program.lineage]
        return self

    def add_pass(self, pass_: Any, result: Any, **extra: Any) -> dict:
        """Record one pass run and its result (for a caller that runs passes itself;
        ``prunec.compile`` reads the whole lineage with :meth:`read_lineage`).

        The entry is the one of the lineage step the run recorded in ``result.program``
        (found by its statistics), so it reads as :meth:`read_lineage` would; ``extra``
        statistics join the typed ones. A result with no step (a caller without a pass
        result) gets an entry from the pass's ``config()`` and ``extra`` (``plan``,
        ``modified``).
        """
        step = _step_of(result)
        if step is not None:
            extra.pop("plan", None)
            extra.pop("modified", None)
            entry = step_entry(step)
            entry["stats"].update(extra)
            entry.update(extra)
            self.passes.append(entry)
            return entry
        config = dict(pass_.config()) if hasattr(pass_, "config") else {}
        config.pop("pass", None)
        config.pop("progress", None)  # how it ran, not what it did
        plan = extra.pop("plan", None) or getattr(result, "plan", None)
        modified = extra.pop("modified", bool(getattr(result, "modified", False)))
        stats = PassStats.of(getattr(result, "stats", None))
        stats.update(extra)
        entry = pass_entry(type(pass_).__name__, config, modified, stats, plan)
        self.passes.append(entry)
        return entry

    def finish(self, program: "Program", *, seconds: float | None = None) -> "Report":
        """Record the costs and layers after the passes (and the total time)."""

        self.macs_after, self.params_after = count_macs(program), count_params(program)
        self.product_macs_after = activation_product_macs(program)
        self.layers_after = layer_widths(program, self.batch_size)
        if seconds is not None:
            self.seconds = seconds
        return self

    # -- reading it --------------------------------------------------------------------
    @property
    def macs_ratio(self) -> float:
        """``macs_before / macs_after``: the ideal speedup."""
        return self.macs_before / max(self.macs_after, 1)

    @property
    def macs_per_sample_before(self) -> float:
        return self.macs_before / max(self.batch_size, 1)

    @property
    def macs_per_sample_after(self) -> float:
        return self.macs_after / max(self.batch_size, 1)

    def _kinds(self) -> dict[str, str]:
        return {key: layer.kind for key, layer in self.layers_before.items()}

    def layers(self) -> list[LayerRow]:
        """Every layer before, and after (None when gone), in graph order."""
        after = self.layers_after
        return [LayerRow(b.name, b.kind, b, after.get(key)) for key, b in self.layers_before.items()]

    def layers_markdown(self, changed_only: bool = False) -> str:
        """The per-layer table: width in -> out before and after, MACs per sample."""
        rows = [r for r in self.layers() if r.changed or not changed_only]
        lines = ["| layer | kind | before (in -> out) | after (in -> out) | MACs before | MACs after |",
                 "|---|---|---|---|---|---|"]
        for r in rows:
            a = r.after
            after = f"{a.inputs} -> {a.outputs}" if a else "removed"
            lines.append(f"| {r.name} | {r.kind} | {r.before.inputs} -> {r.before.outputs} | "
                         f"{after} | {format_count(r.before.macs)} | "
                         f"{format_count(a.macs) if a else '0'} |")
        return "\n".join(lines)

    def header(self) -> list[tuple[str, str]]:
        """``(label, value)`` pairs: model, example inputs, passes with options, backend."""
        items = [("model", self.model or "(unnamed)"),
                 ("example inputs", f"{self.inputs} (MACs below are per sample of "
                                    f"{self.batch_size})" if self.batch_size > 1 else self.inputs),
                 ("backend", self.backend)]
        for i, p in enumerate(self.passes):
            items.append((f"pass {i + 1}" if len(self.passes) > 1 else "pass",
                          _pass_text(p)))
        if not self.passes:
            items.append(("passes", "none"))
        for note in self.capture_notes:
            items.append(("capture", note))
        return items

    def summary_lines(self) -> list[str]:
        mb, ma = self.macs_per_sample_before, self.macs_per_sample_after
        lines = [f"MACs per sample  {format_count(mb):>7} -> {format_count(ma):>7}  "
                 f"({_percent_fewer(mb, ma)}, ideal speedup {self.macs_ratio:.2f}x)",
                 *self._convention_lines(),
                 f"parameters       {format_count(self.params_before):>7} -> "
                 f"{format_count(self.params_after):>7}  "
                 f"({_percent_fewer(self.params_before, self.params_after)})"]
        for p in self.passes:
            stats = _stats_of(p)
            took = f" ({_seconds(stats.seconds)})" if isinstance(stats.seconds, (int, float)) else ""
            lines.append(f"{p['pass']}: {describe_pass(p, self._kinds(), self.group_tags)}{took}")
            if stats.verified:
                lines.append(f"  verified: {stats.verified}")
        if self.latency:
            lines.append(latency_line(self.latency, self.passes))
        if self.seconds is not None:
            lines.append(f"compile took {_seconds(self.seconds)}")
        return lines

    def _convention_lines(self) -> list[str]:
        """Where MACs are compared, the share that other counters leave out."""
        if not self.product_macs_before:
            return []
        b = max(self.batch_size, 1)
        return [f"  attention/matmul {format_count(self.product_macs_before / b):>7} -> "
                f"{format_count(self.product_macs_after / b):>7}  (products of two "
                f"activations: included above, Torch-Pruning's MACs leave them out)"]

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.header())
        head = [f"{k.ljust(width)}  {v}" for k, v in self.header()]
        return "\n".join(head + [""] + self.summary_lines())

    def to_markdown(self, *, title: str = "prunec report", layers: bool = True) -> str:
        """The report as Markdown: header, summary, per-pass lines, per-layer table."""
        lines = [f"# {title}", ""]
        lines += [f"- **{k}**: {v}" for k, v in self.header()]
        lines += ["", "## Result", "", "```", *self.summary_lines(), "```"]
        if layers and self.layers_before:
            lines += ["", "## Layers (widths before and after)", "",
                      self.layers_markdown()]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """Plain data (JSON-ready): everything but the plans (see ``compiled.plans``)."""
        passes = []
        for p in self.passes:
            entry = {k: _plain(v) for k, v in p.items() if k not in ("plan", "stats")}
            entry["summary"] = describe_pass(p, self._kinds(), self.group_tags)
            passes.append(entry)
        return {"model": self.model, "inputs": self.inputs, "batch_size": self.batch_size,
                "backend": self.backend,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "macs_per_sample_before": self.macs_per_sample_before,
                "macs_per_sample_after": self.macs_per_sample_after,
                "product_macs_before": self.product_macs_before,
                "product_macs_after": self.product_macs_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "seconds": self.seconds, "passes": passes, "iterations": _plain(self.iterations),
                "capture_notes": list(self.capture_notes), "latency": _plain(self.latency),
                "layers": [{"name": r.name, "kind": r.kind, "before": asdict(r.before),
                            "after": asdict(r.after) if r.after else None} for r in self.layers()]}

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def plot(self, path: str | Path) -> Path:
        """PNG: per-layer output width (top) and MACs per sample (bottom), before and after.

        The legend sits above the panels, outside the data. Needs matplotlib.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from matplotlib.ticker import FuncFormatter
        except ImportError as exc:
            raise PrunecError("Report.plot needs matplotlib: pip install matplotlib") from exc
        rows = self.layers()
        if not rows:
            raise PrunecError("Report.plot: this report has no per-layer widths to draw.")
        fig = Figure(figsize=(max(6.0, 0.28 * len(rows) + 2), 6), layout="constrained")
        FigureCanvasAgg(fig)
        top, bottom = fig.subplots(2, 1, sharex=True)
        x = range(len(rows))
        for ax, field_name, label in ((top, "outputs", "output width"),
                                      (bottom, "macs", "MACs per sample")):
            before = [getattr(r.before, field_name) for r in rows]
            after = [getattr(r.after, field_name) if r.after else 0 for r in rows]
            ax.bar([i - 0.2 for i in x], before, 0.4, label="before", color="#9aa5b1")
            ax.bar([i + 0.2 for i in x], after, 0.4, label="after", color="#2f6fb0")
            ax.set_ylabel(label)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_count(v)))
            ax.grid(axis="y", alpha=0.3)
        bottom.set_xticks(list(x), [r.name for r in rows], rotation=90, fontsize=7)
        top.set_title(f"{self.model or 'model'}: per-layer width and MACs", loc="left")
        fig.legend(*top.get_legend_handles_labels(), loc="outside upper right", ncols=2,
                   frameon=False)

        path = Path(path)
        with atomic_path(path) as temp:  # a reader sees the old picture or the new one
            fig.savefig(temp, format="png", dpi=110)
        return path


def _step_of(result: Any) -> Any:
    """The lineage step that recorded ``result`` (a pass result): the last step of
    ``result.program`` whose statistics are the result's, or ``None``."""
    stats, program = getattr(result, "stats", None), getattr(result, "program", None)
    if stats is None or program is None:
        return None
    return next((s for s in reversed(getattr(program, "lineage", ())) if s.stats is stats), None)


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):  # dicts and the typed statistics (LatencyStats)
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)
