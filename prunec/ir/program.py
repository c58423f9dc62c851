"""Program: the captured graph prunec analyses and rewrites.

A Program wraps the ``torch.fx.GraphModule`` that ``torch.export`` (non-strict) returns from
``ExportedProgram.module()``: ATen ops at the level of ``aten.linear`` / ``aten.conv2d`` /
``aten.scaled_dot_product_attention`` (no decomposition), parameters reachable as ``get_attr``
nodes under their fully qualified names, and every node annotated with ``meta["val"]``.

Only the helpers in this file mutate a Program, and each mutation bumps ``version`` so that
cached analyses (see :meth:`Program.analysis`) are never read stale.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx

__all__ = ["Program", "param_nodes", "node_module_path"]


@dataclass
class Program:
    """A captured model plus what prunec knows about it.

    Attributes:
        gm: The graph module; callable exactly like the captured model.
        example_args: Positional example inputs used for capture.
        example_kwargs: Keyword example inputs used for capture.
        training: Whether the program was captured in train mode.
        version: Bumped by every mutation; analyses are cached per version.
    """

    gm: fx.GraphModule
    example_args: tuple = ()
    example_kwargs: dict = field(default_factory=dict)
    training: bool = False
    version: int = 0
    origin: dict = field(default_factory=dict)  # group key -> size at capture (set by passes)
    history: list = field(default_factory=list)  # configurations of the passes applied
    _cache: dict = field(default_factory=dict, repr=False)

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
        """Call the program like the original model."""
        return self.gm(*args, **kwargs)

    def clone(self) -> "Program":
        """A deep copy whose mutations never reach this program."""
        return Program(copy.deepcopy(self.gm), self.example_args, dict(self.example_kwargs),
                       self.training, self.version, dict(self.origin), list(self.history))

    # ------------------------------------------------------------------ mutating
    def set_tensor(self, target: str, value: torch.Tensor) -> None:
        """Replace the tensor behind a ``get_attr`` target, keeping its kind.

        A parameter stays a parameter (with its ``requires_grad``), a buffer a buffer.
        """
        mod_path, _, attr = target.rpartition(".")
        mod = self.gm.get_submodule(mod_path) if mod_path else self.gm
        old = getattr(mod, attr)
        value = value.detach().clone().contiguous()
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

    def set_args(self, node: fx.Node, args: tuple, kwargs: dict | None = None) -> None:
        """Replace a node's arguments (shape constants, group counts...)."""
        node.args = tuple(args)
        if kwargs is not None:
            node.kwargs = dict(kwargs)
        self.bump()

    def bump(self) -> None:
        self.version += 1

    def finalize(self) -> None:
        """Recompile the code and refresh ``meta["val"]`` after a rewrite."""
        self.gm.graph.lint()
        self.gm.recompile()
        refresh_meta(self.gm)
        self.bump()


def refresh_meta(gm: fx.GraphModule) -> None:
    """Re-propagate fake tensors so every ``meta["val"]`` matches the rewritten graph.

    Placeholders keep their (possibly symbolic) fake values from capture; parameters are
    re-faked from the real tensors.
    """
    from torch._guards import detect_fake_mode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fake_mode = detect_fake_mode([n.meta.get("val") for n in phs])
    if fake_mode is None:
        return
    # The in/out pytree codegen is bypassed: propagate over the flat placeholders.
    interp = FakeTensorProp(gm, mode=fake_mode)
    interp.propagate_dont_convert_inputs(*[n.meta.get("val") for n in phs])


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
