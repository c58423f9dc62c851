"""What the ONNX frontend hands on: an :class:`OnnxSource` (the user's model, its feeds and
its stand-in) and the :class:`Use` of each stand-in tensor in the original graph.

These are shared by the frontend's steps (:mod:`prunec.frontends.onnx` opens the file,
:mod:`prunec.frontends.stand_in` converts it) and by the write-back backends, so they live
below both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import onnx

__all__ = ["Use", "OnnxSource", "PIP_HINT", "SOURCE_KEY"]

PIP_HINT = "'prunec[onnx]' (onnx, onnxruntime, onnxscript) and pip install --no-deps onnx2torch"
SOURCE_KEY = "prunec_onnx_source"
"""``program.gm.meta`` key of the :class:`OnnxSource` a stand-in program came from."""


@dataclass(frozen=True)
class Use:
    """Where a stand-in tensor lives in the ONNX graph: input ``input`` of node ``node``
    (a node is named by its first output). The stand-in holds ``scale * T`` of the ONNX
    tensor, transposed when ``transpose`` (Gemm without ``transB``; a MatMul weight)."""

    node: str
    input: int
    transpose: bool = False
    scale: float = 1.0

    def to_onnx(self, value: np.ndarray) -> np.ndarray:
        """The ONNX tensor for a stand-in value (inverse of the mapping)."""
        value = value.T if self.transpose else value
        return value / self.scale if self.scale != 1.0 else value


@dataclass
class OnnxSource:
    """An ONNX model, its example feeds, and its stand-in with the name map.

    Attributes:
        model: The user's model (a private copy, external data loaded).
        path: Its file, or ``None`` for a ``ModelProto``.
        external: The original kept its weights in external data files.
        feeds: Example inputs by graph-input name (numpy).
        input_names: Graph inputs in order (initializers excluded).
        module: The stand-in (a ``torch.fx.GraphModule``), eval mode.
        uses: Stand-in tensor name (``get_attr`` target) -> :class:`Use`.
        modules: Stand-in module name -> ONNX node key (first output).
        fused: Fused ``Linear`` key -> ``(MatMul key, Add key or None, bias input index)``.
        opaque: One note per node that ONNX Runtime runs inside the stand-in (no converter
            to torch): its channels are not pruned (:mod:`prunec.frontends.opaque`).
    """

    model: "onnx.ModelProto"
    path: Path | None
    external: bool
    feeds: dict[str, np.ndarray]
    input_names: list[str]
    module: torch.nn.Module | None = None
    uses: dict[str, Use] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    fused: dict[str, tuple] = field(default_factory=dict)
    opaque: list[str] = field(default_factory=list)

    def __deepcopy__(self, memo: dict) -> "OnnxSource":
        return self  # shared by every clone of a stand-in program: it is never mutated

    @property
    def example_args(self) -> tuple[torch.Tensor, ...]:
        """The feeds as torch tensors in graph-input order (the stand-in's arguments)."""
        return tuple(torch.from_numpy(np.ascontiguousarray(self.feeds[n]))
                     for n in self.input_names)

    @property
    def name(self) -> str:
        """The file's name, or ``ModelProto`` (for the report)."""
        return self.path.name if self.path is not None else "ModelProto"

    def calibration_items(self, items: Any) -> Any:
        """Calibration items as the stand-in takes them: numpy leaves become torch tensors;
        a dict stays a dict (keyword inputs) when every graph input name is an identifier,
        else becomes a tuple in graph-input order. A non-list iterable is returned as is."""
        if not isinstance(items, (list, tuple)):
            return items
        plain = all(n.isidentifier() for n in self.input_names)

        def convert(item: Any) -> Any:
            if isinstance(item, dict):
                values = {k: _as_tensor(v) for k, v in item.items()}
                return values if plain else tuple(values[n] for n in self.input_names
                                                  if n in values)
            if isinstance(item, (list, tuple)):
                return tuple(_as_tensor(v) for v in item)
            return _as_tensor(item)

        return [convert(item) for item in items]

    def node(self, key: str) -> Any:
        """The original graph's node whose first output is ``key``."""
        for node in self.model.graph.node:
            if node.output and node.output[0] == key:
                return node
        raise KeyError(key)


def _as_tensor(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value
