"""Run a Program node by node: record chosen values, or replace them before consumers see them.

The runner is a ``torch.fx.Interpreter`` over ``program.gm``. The graph module that
``torch.export`` returns begins with a pytree flatten of ``(args, kwargs)`` by
``gm._in_spec`` and ends with an unflatten by ``gm._out_spec``; the interpreter sees only the
flat placeholders and the flat output tuple, so this module does both ends itself:

    item --split_inputs--> (args, kwargs) --flatten_inputs--> placeholder values
    flat outputs --unflatten_outputs--> what ``program.gm(*args, **kwargs)`` returns

Cases handled:

- ``record_values``: the values of named nodes, as consumers saw them (after any override).
  Graphs captured from modules with in-place ops (``nn.ReLU(inplace=True)`` becomes
  ``aten.relu_``) mutate earlier values later in the run, so recorded values are cloned
  whenever the graph contains a mutating op.
- ``run_with_overrides``: ``value <- f(value)`` at each named node (zeroing channels,
  replacing pruned activations ``h_P`` by their means ``mu_P``, ...). A replacement must keep
  the original shape and dtype: broadcasting a ``[C]`` mean into a ``[B, N, C]`` consumer
  would silently compute something else.
- The ``_guards_fn`` ``call_module`` node that export inserts (it checks the input shapes
  against the captured constraints) runs like any other node; the module's forward
  pre-hooks do not, because the interpreter bypasses ``__call__``.

- State the forward writes (a step counter ``self.steps += 1``, a cache, batch-norm running
  statistics in train mode) is not advanced by prunec's own runs: :meth:`ProgramInterpreter.call`
  runs inside :func:`scratch_state`, which gives the graph copies of the tensors it writes
  and puts the originals back afterwards. The compiled model therefore starts from the
  caller's values, however many analysis, calibration or verification runs compile made.

Everything runs under ``torch.no_grad()`` unless ``grad=True``.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.fx as fx
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree

from prunec.errors import CalibrationError
from prunec.ir.program import Program, node_module_path, with_output_switches
from prunec.ir.state import has_mutation, is_written, scratch_state, written_attributes

__all__ = [
    "ProgramInterpreter",
    "split_inputs",
    "flatten_inputs",
    "unflatten_outputs",
    "resolve_nodes",
    "describe_node",
    "record_values",
    "run_with_overrides",
    "is_written",
    "written_attributes",
    "scratch_state",
]

Override = Callable[[Any], Any]
Observer = Callable[[Any], None]


# ---------------------------------------------------------------------------- inputs / outputs
def split_inputs(item: Any) -> tuple[tuple, dict]:
    """One calibration item as ``(args, kwargs)``.

    A tensor is the single positional input, a tuple or list the positional inputs, and a
    dict (any mapping) the keyword inputs.

    Raises:
        CalibrationError: for any other item type.
    """
    if isinstance(item, torch.Tensor):
        return (item,), {}
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    if isinstance(item, Mapping):
        return (), dict(item)
    raise CalibrationError(
        f"a calibration item must be a tensor, a tuple/list of positional inputs or a dict of "
        f"keyword inputs, got {type(item).__name__}; map your data loader's items to one of "
        f"these forms."
    )


def flatten_inputs(program: Program, args: tuple, kwargs: dict) -> list:
    """The placeholder values for ``program.gm(*args, **kwargs)``, in placeholder order.

    Mirrors the code export generates: bind ``(args, kwargs)`` to the graph module's
    ``forward`` signature, rebuild the ``(args, kwargs)`` structure that ``gm._in_spec``
    describes, and flatten it with ``fx_pytree.tree_flatten_spec``.

    Raises:
        CalibrationError: when the inputs do not fit the captured signature.
    """
    gm = program.gm
    in_spec = getattr(gm, "_in_spec", None)
    if in_spec is None:  # a plain graph module: placeholders are the inputs in order
        return list(pytree.arg_tree_leaves(*args, **kwargs))
    values = _bind(gm, args, with_output_switches(program.example_kwargs, kwargs))
    if _is_args_kwargs_spec(in_spec):
        count = in_spec.child(0).num_children
        structure: Any = (list(values[:count]), dict(zip(in_spec.child(1).context, values[count:])))
    else:
        structure = list(values)
    try:
        flat = fx_pytree.tree_flatten_spec(structure, in_spec)
    except Exception as exc:  # pytree raises assorted types for a structure mismatch
        raise CalibrationError(
            f"the inputs do not match the captured input structure {in_spec}: {exc}; pass "
            f"inputs with the same nesting as the example inputs used for capture."
        ) from exc
    _check_placeholder_count(gm, flat)
    return list(flat)


def unflatten_outputs(program: Program, flat: Any) -> Any:
    """The flat output tuple of the graph in the structure the model returns."""
    out_spec = getattr(program.gm, "_out_spec", None)
    if out_spec is None:
        return flat
    if not isinstance(flat, (list, tuple)):
        flat = [flat]
    return pytree.tree_unflatten(list(flat), out_spec)


def _is_args_kwargs_spec(in_spec: pytree.TreeSpec) -> bool:
    return (
        in_spec.type is tuple
        and in_spec.num_children == 2
        and in_spec.child(0).type is tuple
        and in_spec.child(1).type is dict
    )


def _bind(gm: fx.GraphModule, args: tuple, kwargs: dict) -> list:
    signature = inspect.signature(gm.forward)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        names = ", ".join(signature.parameters)
        raise CalibrationError(
            f"the inputs do not fit the captured forward({names}): {exc}. Items are a tensor, "
            f"a tuple of positional inputs or a dict of keyword inputs; if your loader yields "
            f"(input, label) pairs, pass (x for x, _ in loader) instead."
        ) from exc
    return [bound.arguments[name] for name in signature.parameters]


def _check_placeholder_count(gm: fx.GraphModule, flat: list) -> None:
    expected = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    if len(flat) != expected:
        raise CalibrationError(
            f"the inputs flatten to {len(flat)} values but the program has {expected} "
            f"placeholders; pass inputs structured like the example inputs used for capture."
        )


# ---------------------------------------------------------------------------- nodes
def resolve_nodes(program: Program, names: Iterable[str]) -> dict[str, fx.Node]:
    """The nodes called ``names``.

    Raises:
        CalibrationError: naming each unknown node and the closest existing names.
    """
    by_name = {n.name: n for n in program.graph.nodes}
    found: dict[str, fx.Node] = {}
    for name in names:
        if name not in by_name:
            near = difflib.get_close_matches(str(name), list(by_name), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in near)}?" if near else ""
            raise CalibrationError(
                f"the program has no node named {name!r}.{hint} Node names are those of "
                f"program.graph.nodes (e.g. 'linear_1'), not module paths."
            )
        found[name] = by_name[name]
    return found


def describe_node(node: fx.Node) -> str:
    """``"node 'linear_1' (aten.linear.default in blocks.0.mlp.fc2)"`` for messages."""
    where = node_module_path(node)
    op = node.target if node.op in ("call_function", "call_method", "call_module") else node.op
    return f"node {node.name!r} ({op}{' in ' + where if where else ''})"


# ---------------------------------------------------------------------------- interpreter
class ProgramInterpreter(fx.Interpreter):
    """An ``fx.Interpreter`` over ``program.gm`` with per-node overrides and observers.

    For each node ``n``: ``v = run(n)``; if ``n`` has an override ``v <- f(v)``; every
    observer of ``n`` is then called with ``v``; consumers see ``v``. Observers run while the
    value is fresh, before any later in-place op can touch it.

    Build one per program version and call :meth:`call` once per item; overrides and
    observers can be swapped between calls through the ``overrides`` / ``observers`` dicts.
    """

    def __init__(
        self,
        program: Program,
        *,
        overrides: Mapping[str, Override] | None = None,
        observers: Mapping[str, Observer] | None = None,
    ) -> None:
        super().__init__(program.gm, garbage_collect_values=True)
        self.program = program
        self.nodes = {n.name: n for n in program.graph.nodes}
        self.mutating = has_mutation(program.gm)
        self.written = written_attributes(program.gm)
        self.overrides: dict[str, Override] = dict(overrides or {})
        self.observers: dict[str, Observer] = dict(observers or {})
        resolve_nodes(program, list(self.overrides) + list(self.observers))

    def call(self, args: tuple, kwargs: dict | None = None) -> Any:
        """Run like ``program.gm(*args, **kwargs)`` and return the structured outputs."""
        flat = flatten_inputs(self.program, tuple(args), dict(kwargs or {}))
        with scratch_state(self.program.gm, self.written):
            out = self.run(*flat, enable_io_processing=False)
        return unflatten_outputs(self.program, out)

    def call_item(self, item: Any) -> Any:
        """Run one calibration item (see :func:`split_inputs`)."""
        args, kwargs = split_inputs(item)
        return self.call(args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        override = self.overrides.get(n.name)
        observer = self.observers.get(n.name)
        if override is not None and n.op == "get_attr" and observer is None and len(n.users) == 1:
            # A weight's override (zeroing pruned channels) yields a full-size copy. Weights'
            # get_attr nodes often all come first in the graph, so replacing them here would
            # keep one copy of every overridden weight alive at once (the whole MLP of a
            # model); the copy is made when its one consumer runs and dropped after it.
            return _Deferred(n, value, override)
        if override is not None:
            value = self._replace(n, value, override)
        if observer is not None:
            observer(value)
        return value

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if not any(isinstance(self.env.get(a), _Deferred) for a in n.all_input_nodes):
            return args, kwargs
        resolve = lambda v: (self._replace(v.node, v.value, v.override)  # noqa: E731
                             if isinstance(v, _Deferred) else v)
        return fx.node.map_aggregate(args, resolve), fx.node.map_aggregate(kwargs, resolve)

    def _replace(self, node: fx.Node, value: Any, override: Override) -> Any:
        new = override(value)
        if isinstance(value, torch.Tensor):
            if not isinstance(new, torch.Tensor):
                raise CalibrationError(
                    f"the override of {describe_node(node)} returned "
                    f"{type(new).__name__}; return a tensor shaped like its value."
                )
            if new.shape != value.shape or new.dtype != value.dtype:
                raise CalibrationError(
                    f"the override of {describe_node(node)} returned {new.dtype} "
                    f"{tuple(new.shape)} for a {value.dtype} {tuple(value.shape)} value; "
                    f"return the same shape and dtype (e.g. mu.to(v.dtype).expand_as(v))."
                )
            if self.mutating and new is not value:
                new = new.clone()  # a later in-place op must not write into the caller's tensor
        return new


class _Deferred:
    """An overridden ``get_attr`` value not yet replaced: ``override(value)`` is computed once,
    when the node's single consumer runs, so the replacement lives only while it is needed."""

    __slots__ = ("node", "value", "override")

    def __init__(self, node: fx.Node, value: Any, override: Override) -> None:
        self.node, self.value, self.override = node, value, override


def _grad_context(grad: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if grad else torch.no_grad()


def record_values(
    program: Program,
    inputs: Any,
    node_names: Iterable[str],
    *,
    overrides: Mapping[str, Override] | None = None,
    grad: bool = False,
) -> dict[str, Any]:
    """The values of ``node_names`` for one input item.

    Args:
        program: The program to run.
        inputs: One item: a tensor, a tuple/list of positional inputs or a dict of keyword
            inputs.
        node_names: Names of ``program.graph`` nodes to record.
        overrides: Optional replacements applied during the same run (see
            :func:`run_with_overrides`); recorded values are those consumers saw.
        grad: Keep autograd enabled instead of running under ``torch.no_grad()``.

    Returns:
        ``{name: value}``; values are cloned when the graph holds in-place ops.

    Raises:
        CalibrationError: for unknown node names or inputs that do not fit the program.
    """
    names = list(dict.fromkeys(node_names))
    recorded: dict[str, Any] = {}
    copy = has_mutation(program.gm)  # clone now: a later in-place op would change the value

    def observer(name: str) -> Observer:
        def keep(value: Any) -> None:
            recorded[name] = _clone(value) if copy else value
        return keep

    interp = ProgramInterpreter(
        program, overrides=overrides, observers={name: observer(name) for name in names}
    )
    with _grad_context(grad):
        interp.call_item(inputs)
    return recorded


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def run_with_overrides(
    program: Program,
    inputs: Any,
    overrides: Mapping[str, Override],
    *,
    grad: bool = False,
) -> Any:
    """Run ``program`` on one item with ``value <- overrides[name](value)`` at named nodes.

    With no overrides this equals ``program.gm(*args, **kwargs)``.

    Args:
        program: The program to run.
        inputs: One item (see :func:`split_inputs`).
        overrides: ``{node name: f}``; ``f`` receives the node's value and returns its
            replacement, of the same shape and dtype, e.g. ``lambda v: v * keep_mask`` to zero
            channels or ``lambda v: mu.to(v.dtype).expand_as(v)`` to substitute means.
        grad: Keep autograd enabled instead of running under ``torch.no_grad()``.

    Returns:
        The outputs, structured as the captured model returns them.

    Raises:
        CalibrationError: for unknown node names, replacements of the wrong shape or dtype,
            or inputs that do not fit the program.
    """
    interp = ProgramInterpreter(program, overrides=overrides)
    with _grad_context(grad):
        return interp.call_item(inputs)
