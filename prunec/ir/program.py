"""Program: the captured graph prunec analyses and rewrites.

A Program wraps the ``torch.fx.GraphModule`` that ``torch.export`` (non-strict) returns from
``ExportedProgram.module()``: ATen ops at the level of ``aten.linear`` / ``aten.conv2d`` /
``aten.scaled_dot_product_attention`` (no decomposition), parameters reachable as ``get_attr``
nodes under their fully qualified names, and every node annotated with ``meta["val"]``.

Only the helpers in this file mutate a Program, and each mutation bumps ``version`` so that
cached analyses (see :meth:`Program.analysis`) are never read stale.

**Lineage.** ``Program.lineage`` is the one record of what was done to a program: a list of
:class:`Step`, in the order done, appended only by :meth:`Program.record`.
:func:`prunec.rewrite.apply_plan` records a step for every plan that changes the program, and
every pass run that changes nothing records one too (``modified=False``, an empty plan, its
statistics: why it kept everything), so the lineage lists every pass that ran. Each step holds

* ``name``: the pass class that made it (``"MagnitudePruning"``), or ``"replay"`` for a plan
  replayed without a pass (``prunec.compile(..., plans=...)`` with a plan that does not say
  which pass made it, a resumed OCSPruner state);
* ``config``: the pass's identity (``pass.config()``: ``{"pass": name, option: value}``),
  ``{}`` for a replay of unknown origin;
* ``plan``: the :class:`~prunec.rewrite.plan.PruningPlan`, which names things only by what
  survives a fresh capture, a saved file and a module tree:

  - channel groups by ``"<parameter>:<axis>"`` (``"layer1.0.conv1.weight:0"``: the group
    whose units are axis 0 of that parameter), in ``plan.keep`` with the kept unit indices;
  - residual blocks by module path (``"layer2.1"``), in ``plan.blocks``
    (:class:`~prunec.rewrite.plan.BlockDrop`);
  - mean compensations by the consumer's weight parameter and its input axis
    (``MeanCompensation(consumer="layer1.0.conv2.weight", axis=1, mean=...)``): the removed
    input channels of that layer are replaced by ``mean`` and folded into its bias;

* ``changed``: ``{tensor name: shape after}`` for every parameter or buffer the step sliced;
* ``stats``: the pass's typed statistics (:class:`~prunec.report.PassStats`, the object its
  result carries: the timing and check instruments fill it in after the step) or ``None``;
* ``modified``: whether the step changed the program (``False``: a pass that kept
  everything; the report says why from its ``stats``);
* ``before``: ``{group key: size before the step}`` for every channel group the plan keeps
  units of.

**Idempotence.** A pass whose config is in the lineage *as a step that changed the program*
(``program.history``) has reached its target: run again, it is a no-op. A recorded no-op step
does not count: a pass that kept everything is run again in full (it finds nothing again, or
something, when the program or its non-scalar inputs such as calibration data changed since),
and re-running it only appends another no-op step.

**Views.** ``program.plans`` (the plans of the steps that changed the program),
``program.history`` (their pass configs) and ``program.origin`` (each channel group's size at
first sight, which pruning ratios count against: the ``before`` size of the first step that
changed the group, else its size now) are read-only views computed from the lineage.
:func:`prunec.rewrite.recapture` replays the lineage on a fresh capture of the model (in eval
or train mode), so training, saving and write-backs need nothing else.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx

from prunec.ir.state import scratch_state

__all__ = ["Program", "Step", "param_nodes", "node_module_path", "OUTPUT_SWITCHES",
           "with_output_switches"]

OUTPUT_SWITCHES = frozenset({"use_cache", "return_dict", "output_attentions",
                             "output_hidden_states"})
"""Keywords that only choose which outputs a (Hugging Face) model returns, never what it
computes: a call may leave them out, and the captured value stands (capture turns
``use_cache`` off for a model whose config turns its KV cache on)."""


def with_output_switches(example_kwargs: dict, kwargs: dict) -> dict:
    """``kwargs`` with the output switches (:data:`OUTPUT_SWITCHES`) it leaves out taken from
    the capture's ``example_kwargs``, to which the graph is specialised. Other keywords are
    never filled in: a left-out ``temperature`` would silently differ from the model's own
    default."""
    missing = {k: v for k, v in example_kwargs.items()
               if k in OUTPUT_SWITCHES and k not in kwargs and not isinstance(v, torch.Tensor)}
    return {**kwargs, **missing} if missing else kwargs


@dataclass
class Step:
    """One entry of :attr:`Program.lineage` (see the module docstring for the names).

    Attributes:
        name: The pass class that made the step, or ``"replay"``.
        config: The pass's ``config()`` (``{}`` for a replay of unknown origin);
            idempotence compares it (steps with ``modified`` only).
        plan: The :class:`~prunec.rewrite.plan.PruningPlan` carried out (empty for a step
            that changed nothing).
        changed: ``{tensor name: shape after}`` of every parameter or buffer sliced.
        stats: The pass's typed statistics, when a pass made the step.
        modified: Whether the step changed the program.
        before: ``{group key: size before the step}`` of every group ``plan.keep`` names.
    """

    name: str
    config: dict
    plan: Any
    changed: dict = field(default_factory=dict)
    stats: Any = None
    modified: bool = True
    before: dict = field(default_factory=dict)


@dataclass
class Program:
    """A captured model plus what prunec knows about it.

    Attributes:
        gm: The graph module; callable exactly like the captured model.
        example_args: Positional example inputs used for capture.
        example_kwargs: Keyword example inputs used for capture.
        training: Whether the program was captured in train mode.
        version: Bumped by every mutation; analyses are cached per version.
        lineage: The steps applied to this program, in order (:class:`Step`; see the
            module docstring). Replaying them on a fresh capture of the same model (in eval
            or train mode, :func:`prunec.rewrite.recapture`) rebuilds this program's
            structure; saving, training and the report read them.
        capture_options: The capture's options other than the inputs (``dynamic``), so a
            recapture traces the model the same way.
        capture_notes: What capture had to give up, in words for the report (axes made
            static after a failed dynamic attempt, inputs the forward writes in place).
        donated: The caller gave up the captured model's weights (``compile(...,
            donate=True)``): a rewrite that replaces a parameter releases the old one's
            storage, so the pruned copy does not live next to the original. Cloning with
            shared tensors turns it off (the clone still reads them).
    """

    gm: fx.GraphModule
    example_args: tuple = ()
    example_kwargs: dict = field(default_factory=dict)
    training: bool = False
    version: int = 0
    lineage: list = field(default_factory=list)
    capture_notes: list = field(default_factory=list)
    donated: bool = False
    capture_options: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ lineage views
    @property
    def plans(self) -> list:
        """The plans of the steps that changed the program, in order (a copy: record steps
        with :meth:`record`)."""
        return [step.plan for step in self.lineage if step.modified]

    @property
    def history(self) -> list[dict]:
        """The configs of the passes whose steps changed the program, in order (what
        idempotence compares; replays of unknown origin and no-op steps have none here)."""
        return [step.config for step in self.lineage if step.config and step.modified]

    @property
    def origin(self) -> dict[str, int]:
        """Group key -> size at first sight, which pruning ratios count against: the size
        before the first step that changed the group. Groups no step changed are absent
        (their size now is their original one: read ``origin.get(key, size)``)."""
        origin: dict[str, int] = {}
        for step in self.lineage:
            for key, size in step.before.items():
                origin.setdefault(key, size)
        return origin

    def record(self, step: Step) -> None:
        """Append ``step`` to the lineage (called by :func:`prunec.rewrite.apply_plan`, and
        for a pass run that changed nothing, by the pass skeleton or the pass runner)."""
        self.lineage.append(step)

    # ------------------------------------------------------------------ analyses
    def analysis(self, name: str, fn: Callable[["Program"], Any]) -> Any:
        """Return ``fn(self)``, cached under ``name`` for the current version."""
        key = (name, self.version)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[1] == self.version}
            self._cache[key] = fn(self)
        return self._cache[key]

    # ------------------------------------------------------------------ reading
    @property
    def graph(self) -> fx.Graph:
        return self.gm.graph

    def get_tensor(self, target: str) -> torch.Tensor:
        """The parameter, buffer or constant behind a ``get_attr`` target."""
        mod_path, _, attr = target.rpartition(".")
        mod = self.gm.get_submodule(mod_path) if mod_path else self.gm
        return getattr(mod, attr)

    def run(self, *args, **kwargs):
        """Call the program like the original model (output switches such as ``use_cache``
        may be left out: :func:`with_output_switches`)."""
        return self.gm(*args, **with_output_switches(self.example_kwargs, kwargs))

    def clone(self, *, share_tensors: bool = False) -> "Program":
        """A copy whose graph and module mutations never reach this program.

        Args:
            share_tensors: ``False`` (default): parameters and buffers are copied too, so the
                clone can be trained on its own (recipes' candidates). ``True``: the clone has
                its own graph and modules but holds the *same* tensor objects; cheap, and safe
                for rewrites (which make new tensors, never write in place), not for training.
        """
        memo: dict = {}
        if share_tensors:
            self.donated = False  # the clone reads the same tensors: never release them
            for tensor in list(self.gm.parameters()) + list(self.gm.buffers()):
                memo[id(tensor)] = tensor
            for value in vars(self.gm).values():  # constants registered as plain attributes
                if isinstance(value, torch.Tensor):
                    memo[id(value)] = value
        gm = copy.deepcopy(self.gm, memo)
        return Program(gm, self.example_args, dict(self.example_kwargs), self.training,
                       self.version, lineage=list(self.lineage),
                       capture_notes=list(self.capture_notes),
                       capture_options=dict(self.capture_options))

    # ------------------------------------------------------------------ mutating
    def set_tensor(self, target: str, value: torch.Tensor) -> None:
        """Replace the tensor behind a ``get_attr`` target, keeping its kind.

        A parameter stays a parameter (with its ``requires_grad``), a buffer a buffer.
        """
        mod_path, _, attr = target.rpartition(".")
        mod = self.gm.get_submodule(mod_path) if mod_path else self.gm
        old = getattr(mod, attr)
        value = value.detach().contiguous()  # callers pass fresh tensors (index_select, sums)
        if isinstance(old, torch.nn.Parameter):
            mod._parameters[attr] = torch.nn.Parameter(value, requires_grad=old.requires_grad)
        elif attr in getattr(mod, "_buffers", {}):
            mod._buffers[attr] = value
        else:
            setattr(mod, attr, value)
        self.bump()

    def add_tensor(self, target: str, value: torch.Tensor, *, parameter: bool = True) -> None:
        """Register a new tensor under ``target`` (e.g. a bias created by mean folding)."""
        mod_path, _, attr = target.rpartition(".")
        mod = self.gm.get_submodule(mod_path) if mod_path else self.gm
        value = value.detach().clone().contiguous()
        if parameter:
            mod.register_parameter(attr, torch.nn.Parameter(value))
        else:
            mod.register_buffer(attr, value)
        self.bump()

    def remove_tensor(self, target: str) -> None:
        """Unregister the parameter, buffer or constant behind ``target`` (no node may
        still read it)."""
        if any(n.op == "get_attr" and n.target == target for n in self.graph.nodes):
            raise ValueError(f"'{target}' is still read by the graph")
        mod_path, _, attr = target.rpartition(".")
        mod = self.gm.get_submodule(mod_path) if mod_path else self.gm
        for table in (mod._parameters, mod._buffers):
            table.pop(attr, None)
        if attr in vars(mod):
            delattr(mod, attr)
        self.bump()

    def set_args(self, node: fx.Node, args: tuple, kwargs: dict | None = None) -> None:
        """Replace a node's arguments (shape constants, group counts...)."""
        node.args = tuple(args)
        if kwargs is not None:
            node.kwargs = dict(kwargs)
        self.bump()

    def bump(self) -> None:
        self.version += 1

    def finalize(self, sizes: dict | None = None) -> None:
        """Recompile the code and refresh ``meta["val"]`` after a rewrite.

        Args:
            sizes: ``{(node name, axis): new size}`` for every static axis, as the channel
                analysis computed them. When given, fake values are re-made with those sizes
                (fast: no op is re-run); otherwise fake tensors are re-propagated through every
                op. Tests check that both give the same shapes.
        """
        self.gm.graph.lint()
        self.gm.recompile()
        if sizes is None:
            refresh_meta(self.gm)
        else:
            resize_meta(self.gm, sizes)
        self.bump()


# ``gm.meta`` key: the batch symbols of a capture traced on a doubled batch-1 example, whose
# hints were set to 1 (see ``prunec.ir.capture``).
BATCH_SYMBOLS = "prunec_batch_symbols"


def refresh_meta(gm: fx.GraphModule) -> None:
    """Re-propagate fake tensors so every ``meta["val"]`` matches the rewritten graph.

    Placeholders keep their (possibly symbolic) fake values from capture; parameters are
    re-faked from the real tensors. For a capture traced on a doubled batch-1 example, the
    propagation runs at the traced batch (the shape environment's guards were recorded
    there: an op whose fake kernel needs a concrete size would contradict them at 1) and the
    batch hints are set back to 1 afterwards.
    """
    from torch._guards import detect_fake_mode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fake_mode = detect_fake_mode([n.meta.get("val") for n in phs])
    if fake_mode is None:
        return
    symbols = gm.meta.get(BATCH_SYMBOLS)
    if symbols:
        rehint(gm, symbols, None, nodes=phs)
    # The in/out pytree codegen is bypassed: propagate over the flat placeholders.
    interp = FakeTensorProp(gm, mode=fake_mode)
    try:  # fake propagation runs in-place ops on the real buffers: give it copies
        with scratch_state(gm):
            interp.propagate_dont_convert_inputs(*[n.meta.get("val") for n in phs])
    finally:
        if symbols:
            rehint(gm, symbols, 1)


def rehint(gm: fx.GraphModule, symbols, value: int | None, nodes=None) -> None:
    """Recompute the hint of every symbolic size, stride or offset in the metadata of
    ``nodes`` (default: all) that depends on ``symbols``, with those symbols at ``value``
    (``None``: their value in the shape environment, i.e. the traced one)."""
    import torch.utils._pytree as pytree

    for node in (gm.graph.nodes if nodes is None else nodes):
        for val in pytree.tree_leaves(node.meta.get("val")):
            for size in _sym_sizes(val):
                free = size.node.expr.free_symbols
                if free & symbols:
                    shape_env = size.node.shape_env
                    env = getattr(shape_env, "backed_var_to_val", None) or shape_env.var_to_val
                    values = {s: (value if s in symbols and value is not None else env[s])
                              for s in free}
                    size.node._hint = size.node.pytype(size.node.expr.xreplace(values))


def _sym_sizes(value) -> list:
    if isinstance(value, torch.Tensor):
        sizes = [*value.shape, *value.stride(), value.storage_offset()]
    else:
        sizes = [value]
    return [s for s in sizes if isinstance(s, (torch.SymInt, torch.SymFloat))]


def resize_meta(gm: fx.GraphModule, sizes: dict) -> None:
    """Re-make every ``meta["val"]`` whose static sizes changed (contiguous fake tensors)."""
    from torch._guards import detect_fake_mode

    fake_mode = detect_fake_mode([n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"])
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            node.meta["val"] = _resized(val, node.name, sizes, fake_mode)
        elif isinstance(val, (list, tuple)) and node.op == "call_function":
            outs = {u.args[1]: u.name for u in node.users if u.op == "call_function" and len(u.args) > 1}
            node.meta["val"] = type(val)(
                _resized(v, outs[i], sizes, fake_mode) if isinstance(v, torch.Tensor) and i in outs else v
                for i, v in enumerate(val))


def _resized(val: torch.Tensor, name: str, sizes: dict, fake_mode) -> torch.Tensor:
    # One read of the shape: each read of a symbolic shape makes new SymInt objects, so
    # comparing against a second read by identity found every symbolic node changed and
    # re-made it (1118 fake tensors, 1.2 s, where the 1B Llama's rewrite changes 112).
    old = tuple(val.shape)
    shape = [sizes.get((name, ax), s) for ax, s in enumerate(old)]
    if all(a is b or (isinstance(b, int) and a == b) for a, b in zip(shape, old)):
        return val
    with fake_mode:
        return torch.empty(shape, dtype=val.dtype, device=val.device, requires_grad=val.requires_grad)


def param_nodes(program: Program) -> dict[str, fx.Node]:
    """``get_attr`` nodes by target."""
    return {n.target: n for n in program.graph.nodes if n.op == "get_attr"}


def node_module_path(node: fx.Node) -> str:
    """The user's module path that produced ``node`` (``"blocks.0.mlp.fc1"``), or ``""``."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _cls in reversed(list(stack.values())):
        if path and not path.startswith("_empty"):
            return path
    return ""
