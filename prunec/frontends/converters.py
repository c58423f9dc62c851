"""Converters that onnx2torch lacks or gets wrong for prunec's stand-in.

The ONNX frontend (:mod:`prunec.frontends.onnx`) turns a file frozen at the example shapes
into a torch module with `onnx2torch <https://github.com/ENOT-AutoDL/onnx2torch>`_ and
captures that module with ``torch.export``. Export traces with fake tensors, so every value
that decides a *shape* (a Reshape's shape, a Slice's bounds, a Reduce's axes) must be a Python
constant at conversion time, not a buffer read at run time. The frontend folds every shape
computation into initializers first; the converters here read those initializers once and
bake them into the module:

* ``Reshape`` (5-21, ``allowzero`` honoured), ``Expand`` (8, 13), ``Slice`` (10-13, positive
  and negative steps), ``Tile`` (6, 13), ``Squeeze`` (13, 21: axes as input), ``CumSum``
  (11, 14: axis as input), ``Split`` (13, 18: sizes as input),
  ``ReduceMean`` / ``ReduceMax`` / ``ReduceMin`` / ``ReduceSumSquare`` / ``ReduceProd`` /
  ``ReduceL2`` (18: axes as input), ``ReduceSum`` (13: axes as input);
* ``Flatten`` (all versions: ``axis`` equal to the rank);
* ``GreaterOrEqual`` / ``LessOrEqual`` (12, 16), which onnx2torch maps but does not register;
* ``Resize`` (11-19: nearest and linear, wherever ``F.interpolate`` samples exactly the
  pixels the ONNX definition does; see :class:`ResizeModule`; any other Resize raises
  :class:`InexactConversion` and runs opaque);
* ``Gelu`` (20), and newer versions of ops whose change only widened their types
  (``Cast`` 19/21, ``Shape`` 19/21, ``Identity``, ``Constant``, ``Transpose`` 21 ...: see
  :data:`_ALIASES`);
* ``prunec.Linear``: a ``MatMul`` by a 2-D weight (and the ``Add`` of a bias after it) that the
  frontend fused, converted to ``torch.nn.functional.linear`` so that the analysis and mean
  folding see a linear layer (``W`` is held transposed: ``weight = W^T``).

They are registered in onnx2torch's own registry (:func:`register`), which is not a fork: an
onnx2torch upgrade keeps them working as long as its registry keeps its shape.

onnx2torch imports ``torchvision`` for two detection ops (NMS, RoIAlign). torchvision must
not be installed next to prunec's torch, so :func:`import_onnx2torch` imports onnx2torch with
a placeholder ``torchvision`` whose functions raise, and removes it again: a file with those
ops fails to convert with a message naming them, everything else converts.
"""
from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prunec.errors import UnsupportedOpError
from prunec.frontends.opaque import OPAQUE_DOMAIN, OPAQUE_OP, opaque_converter

__all__ = ["import_onnx2torch", "register", "LINEAR_DOMAIN", "LinearModule", "torchvision_missing",
           "InexactConversion"]

LINEAR_DOMAIN = "prunec"
"""Domain of the fused ``Linear`` nodes the frontend writes into its working copy."""

_REGISTERED = False
_TORCHVISION_MISSING = False


def torchvision_missing() -> bool:
    """Whether onnx2torch was imported with the placeholder ``torchvision``."""
    return _TORCHVISION_MISSING


def import_onnx2torch() -> types.ModuleType:
    """Import onnx2torch without torchvision, with prunec's converters registered.

    Raises:
        ImportError: onnx2torch is not installed (the caller turns it into
            :class:`~prunec.errors.BackendUnavailable`).
    """
    global _TORCHVISION_MISSING
    if "onnx2torch" not in sys.modules:
        added = _placeholder_torchvision()
        _TORCHVISION_MISSING = bool(added)
        try:
            import onnx2torch  # noqa: F401
        finally:
            for name in added:
                sys.modules.pop(name, None)
    register()
    return sys.modules["onnx2torch"]


def _placeholder_torchvision() -> list[str]:
    try:
        import torchvision  # noqa: F401
        return []
    except ImportError:
        pass

    def missing(*_args: Any, **_kwargs: Any) -> None:
        raise NotImplementedError("this op needs torchvision, which prunec does not install")

    package, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.box_convert = ops.roi_align = missing  # type: ignore[attr-defined]
    package.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = package, ops
    return ["torchvision", "torchvision.ops"]


# ---------------------------------------------------------------------------- modules
class ReshapeModule(torch.nn.Module):
    """ONNX Reshape with a constant shape: ``0`` copies the input's size unless ``allowzero``."""

    def __init__(self, shape: list[int], allowzero: bool) -> None:
        super().__init__()
        self.shape, self.allowzero = list(shape), allowzero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[i] if s == 0 and not self.allowzero else s
                 for i, s in enumerate(self.shape)]
        return torch.reshape(x, shape)


class ExpandModule(torch.nn.Module):
    """ONNX Expand: bidirectional broadcast of ``x`` with a constant shape."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = list(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target = torch.broadcast_shapes(tuple(x.shape), tuple(self.shape))
        return x.expand(target)


class SliceModule(torch.nn.Module):
    """ONNX Slice with constant starts, ends, axes and steps (negative steps via flip)."""

    def __init__(self, starts: list[int], ends: list[int], axes: list[int],
                 steps: list[int]) -> None:
        super().__init__()
        self.spec = list(zip(axes, starts, ends, steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, start, end, step in self.spec:
            axis = axis % x.dim()
            size = x.shape[axis]
            if step > 0:
                lo, hi = _clamp(start, size, 0, size), _clamp(end, size, 0, size)
                x = x.narrow(axis, lo, max(hi - lo, 0))[_step_index(x.dim(), axis, step)]
            else:  # walk backwards: flip, then slice forwards
                lo = _clamp(start, size, -1, size - 1)
                hi = _clamp(end, size, -1, size - 1)
                flipped = x.flip(axis)
                first, count = size - 1 - lo, max(lo - hi, 0)
                x = flipped.narrow(axis, first, count)[_step_index(x.dim(), axis, -step)]
        return x


def _clamp(value: int, size: int, low: int, high: int) -> int:
    value = value + size if value < 0 else value
    return min(max(value, low), high)


def _step_index(rank: int, axis: int, step: int) -> tuple:
    return tuple(slice(None) if i != axis else slice(None, None, step) for i in range(rank))


class FlattenModule(torch.nn.Module):
    """ONNX Flatten: ``[prod(shape[:axis]), prod(shape[axis:])]``, ``axis`` may equal the rank
    (onnx2torch fails there)."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis % (x.dim() + 1) if self.axis < 0 else self.axis
        outer = 1
        for size in x.shape[:axis]:
            outer = outer * size
        return torch.reshape(x, (outer, -1)) if x.numel() else torch.reshape(x, (outer, 0))


class SqueezeModule(torch.nn.Module):
    """ONNX Squeeze (13, 21) with constant axes (none: every axis of size 1)."""

    def __init__(self, axes: list[int]) -> None:
        super().__init__()
        self.axes = list(axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.axes:
            return torch.squeeze(x)
        for axis in sorted({a % x.dim() for a in self.axes}, reverse=True):
            x = torch.squeeze(x, dim=axis)
        return x


class TileModule(torch.nn.Module):
    def __init__(self, repeats: list[int]) -> None:
        super().__init__()
        self.repeats = list(repeats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(*self.repeats)


class SplitModule(torch.nn.Module):
    """ONNX Split: constant sizes, or ``parts`` chunks of ceil(size / parts) (the last smaller)."""

    def __init__(self, sizes: list[int] | None, axis: int, parts: int) -> None:
        super().__init__()
        self.sizes, self.axis, self.parts = sizes, axis, parts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.sizes is None:
            return tuple(torch.chunk(x, self.parts, dim=self.axis))
        return tuple(torch.split(x, self.sizes, dim=self.axis))


_REDUCERS = {
    "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
    "ReduceProd": lambda x, d, k: _prod(x, d, k),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)),
}


def _prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


class ReduceModule(torch.nn.Module):
    """ONNX Reduce* with constant axes (empty: all axes, or identity with
    ``noop_with_empty_axes``)."""

    def __init__(self, op: str, axes: list[int], keepdims: bool, noop: bool) -> None:
        super().__init__()
        self.op, self.axes, self.keepdims, self.noop = op, list(axes), keepdims, noop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.axes and self.noop:
            return x
        axes = self.axes or list(range(x.dim()))
        return _REDUCERS[self.op](x, axes, self.keepdims)


class CumSumModule(torch.nn.Module):
    """ONNX CumSum with a constant axis (``exclusive`` and ``reverse`` honoured)."""

    def __init__(self, axis: int, exclusive: bool, reverse: bool) -> None:
        super().__init__()
        self.axis, self.exclusive, self.reverse = axis, exclusive, reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reverse:
            x = x.flip(self.axis)
        out = torch.cumsum(x, dim=self.axis)
        if self.exclusive:
            out = out - x
        return out.flip(self.axis) if self.reverse else out


class CompareModule(torch.nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.fn = torch.greater_equal if op == "GreaterOrEqual" else torch.less_equal

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fn(x, y)


class LinearModule(torch.nn.Module):
    """``y = x @ W (+ b)`` held as ``F.linear(x, W^T, b)``: ``weight`` is ``W`` transposed."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.t().contiguous(), requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.clone(),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


# ---------------------------------------------------------------------------- converters
def _const(graph: Any, name: str) -> np.ndarray:
    """The value of an initializer the frontend folded; KeyError when it is not constant."""
    return graph.initializers[name].to_torch().numpy()


def _ints(graph: Any, node: Any, index: int, default: list[int] | None = None) -> list[int]:
    names = node.input_values
    if index >= len(names) or not names[index]:
        if default is None:
            raise KeyError(f"input {index} of {node.operation_type} is missing")
        return default
    try:
        return [int(v) for v in _const(graph, names[index]).reshape(-1)]
    except KeyError:
        raise NotImplementedError(
            f"{node.operation_type} input {index} ({names[index]!r}) is computed at run time "
            f"even at fixed input shapes; prunec needs it constant") from None


def _result(module: torch.nn.Module, node: Any, inputs: tuple[str, ...]) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=OnnxMapping(inputs=inputs,
                                                             outputs=node.output_values))


def _reshape(node: Any, graph: Any) -> Any:
    module = ReshapeModule(_ints(graph, node, 1), bool(node.attributes.get("allowzero", 0)))
    return _result(module, node, (node.input_values[0],))


def _expand(node: Any, graph: Any) -> Any:
    return _result(ExpandModule(_ints(graph, node, 1)), node, (node.input_values[0],))


def _slice(node: Any, graph: Any) -> Any:
    starts, ends = _ints(graph, node, 1), _ints(graph, node, 2)
    axes = _ints(graph, node, 3, list(range(len(starts))))
    steps = _ints(graph, node, 4, [1] * len(starts))
    return _result(SliceModule(starts, ends, axes, steps), node, (node.input_values[0],))


def _flatten(node: Any, graph: Any) -> Any:  # noqa: ARG001 - the registry's signature
    module = FlattenModule(int(node.attributes.get("axis", 1)))
    return _result(module, node, (node.input_values[0],))


def _squeeze(node: Any, graph: Any) -> Any:
    return _result(SqueezeModule(_ints(graph, node, 1, [])), node, (node.input_values[0],))


def _tile(node: Any, graph: Any) -> Any:
    return _result(TileModule(_ints(graph, node, 1)), node, (node.input_values[0],))


def _split(node: Any, graph: Any) -> Any:
    axis = int(node.attributes.get("axis", 0))
    has_sizes = len(node.input_values) > 1 and bool(node.input_values[1])
    sizes = _ints(graph, node, 1) if has_sizes else None
    module = SplitModule(sizes, axis, len(node.output_values))
    return _result(module, node, (node.input_values[0],))


def _reduce(node: Any, graph: Any) -> Any:
    axes = _ints(graph, node, 1, [])
    module = ReduceModule(node.operation_type, axes, bool(node.attributes.get("keepdims", 1)),
                          bool(node.attributes.get("noop_with_empty_axes", 0)))
    return _result(module, node, (node.input_values[0],))


def _cumsum(node: Any, graph: Any) -> Any:
    (axis,) = _ints(graph, node, 1)
    module = CumSumModule(axis, bool(node.attributes.get("exclusive", 0)),
                          bool(node.attributes.get("reverse", 0)))
    return _result(module, node, (node.input_values[0],))


def _compare(node: Any, graph: Any) -> Any:  # noqa: ARG001 - the registry's signature
    return _result(CompareModule(node.operation_type), node, tuple(node.input_values))


def _linear(node: Any, graph: Any) -> Any:
    names = node.input_values
    weight = torch.from_numpy(_const(graph, names[1]).copy())
    bias = torch.from_numpy(_const(graph, names[2]).copy()) if len(names) > 2 and names[2] \
        else None
    return _result(LinearModule(weight, bias), node, (names[0],))


def _floats(graph: Any, node: Any, index: int) -> list[float] | None:
    names = node.input_values
    if index >= len(names) or not names[index]:
        return None
    try:
        values = [float(v) for v in _const(graph, names[index]).reshape(-1)]
    except KeyError:
        raise NotImplementedError(
            f"Resize input {index} ({names[index]!r}) is computed at run time even at fixed "
            f"input shapes; prunec needs it constant") from None
    return values or None


class InexactConversion(UnsupportedOpError):
    """No torch module computes what this ONNX node does: the frontend runs the node with
    ONNX Runtime instead (:mod:`prunec.frontends.opaque`), or refuses the file by name."""


def _unsupported_resize(what: str) -> InexactConversion:
    return InexactConversion(
        f"ONNX op 'Resize' {what}: no torch interpolation samples the pixels it does, so "
        f"prunec cannot analyse this model (re-export it with nearest or linear resizing)")


def _static_shape(graph: Any, name: str) -> list[int] | None:
    value = graph.value_info.get(name)
    ttype = value.type.tensor_type if value is not None else None
    if ttype is None or not ttype.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
    return None if any(d is None for d in dims) or len(dims) < 3 else dims


def _resize(node: Any, graph: Any) -> Any:
    attributes = {k: (v.decode() if isinstance(v, bytes) else v)
                  for k, v in node.attributes.items()}
    if attributes.get("coordinate_transformation_mode") == "tf_crop_and_resize" or \
            attributes.get("antialias", 0):  # roi is read only by tf_crop_and_resize
        raise _unsupported_resize("with tf_crop_and_resize or antialias")
    if attributes.get("axes") or attributes.get("keep_aspect_ratio_policy",
                                                  "stretch") != "stretch":
        raise _unsupported_resize("with axes or a keep_aspect_ratio_policy")
    sizes = _ints(graph, node, 3, [])
    module = ResizeModule(attributes, _floats(graph, node, 2), sizes or None)
    shape = _static_shape(graph, node.input_values[0])
    if shape is not None:  # decide now, so an inexact Resize can run opaque instead
        module._choose(shape[1], shape[2:])  # noqa: SLF001 - its own module
    return _result(module, node, (node.input_values[0],))


_TABLE: list[tuple[str, tuple[int, ...], Any, str]] = [
    ("Resize", (11, 13, 18, 19), _resize, ""),
    ("Reshape", (5, 13, 14, 19, 21), _reshape, ""),
    ("Expand", (8, 13), _expand, ""),
    ("Slice", (10, 11, 13), _slice, ""),
    ("Tile", (6, 13), _tile, ""),
    ("Squeeze", (13, 21), _squeeze, ""),
    ("Flatten", (1, 9, 11, 13, 21), _flatten, ""),
    ("CumSum", (11, 14), _cumsum, ""),
    ("Split", (13, 18), _split, ""),
    ("ReduceSum", (13,), _reduce, ""),
    ("GreaterOrEqual", (12, 16), _compare, ""),
    ("LessOrEqual", (12, 16), _compare, ""),
    ("Linear", (1,), _linear, LINEAR_DOMAIN),
    (OPAQUE_OP, (1,), opaque_converter, OPAQUE_DOMAIN),
] + [(op, (18,), _reduce, "") for op in
     ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL2")]


_ALIASES: list[tuple[str, tuple[int, ...], int]] = [
    ("Cast", (19, 21), 13), ("Constant", (19, 21), 13), ("ConstantOfShape", (20, 21), 9),
    ("Equal", (19,), 13), ("Identity", (19, 21), 16), ("IsNaN", (20,), 13),
    ("IsInf", (20,), 10), ("Shape", (19, 21), 15), ("Transpose", (21,), 13),
    ("Unsqueeze", (21,), 13), ("ReduceMax", (20,), 18), ("ReduceMin", (20,), 18),
]
"""Newer opset versions that only widen the types an op takes: onnx2torch's (or prunec's)
converter of the older version serves them."""


class ResizeModule(torch.nn.Module):
    """ONNX ``Resize`` (11-19) of the spatial axes as ``F.interpolate``, only where the two
    agree exactly: the source coordinate of every output pixel is worked out by the ONNX
    definition (``coordinate_transformation_mode``, ``nearest_mode``) and by torch's for
    each candidate (``nearest``, ``nearest-exact``; linear with ``align_corners`` off or
    on), at the stand-in's fixed sizes; the first candidate whose coordinates equal ONNX's
    is used, and none is an :class:`InexactConversion` naming the attributes, raised while
    converting: the node then runs opaque, by ONNX Runtime (never converted into something
    else). Cubic resizing and resizing the batch or channel axis go the same way."""

    def __init__(self, attributes: dict, scales: list[float] | None,
                 sizes: list[int] | None) -> None:
        super().__init__()
        self.mode = str(attributes.get("mode", "nearest"))
        self.transform = str(attributes.get("coordinate_transformation_mode", "half_pixel"))
        self.nearest = str(attributes.get("nearest_mode", "round_prefer_floor"))
        self.scales, self.sizes = scales, sizes

    def _target(self, channels: int, shape: list[int]) -> tuple[list[int], list[float]]:
        """Output sizes and scales of the spatial axes ``shape`` (batch and channels stay:
        the batch may be symbolic, so sizes' batch entry, the example's, is not compared)."""
        if self.sizes is not None:
            if len(self.sizes) != len(shape) + 2 or self.sizes[1] != channels:
                raise _unsupported_resize("of the channel axis")
            out = list(self.sizes[2:])
            scales = [o / i for o, i in zip(out, shape)]
        elif self.scales is not None:
            if list(self.scales[:2]) != [1.0, 1.0] or len(self.scales) != len(shape) + 2:
                raise _unsupported_resize("of the batch or channel axis")
            scales = list(self.scales[2:])
            out = [int(np.floor(i * s)) for i, s in zip(shape, scales)]
        else:
            raise _unsupported_resize("without scales or sizes")
        return out, scales

    def _onnx_source(self, out: int, size: int, scale: float) -> np.ndarray:
        x = np.arange(out, dtype=np.float64)
        if self.transform == "asymmetric":
            return x / scale
        if self.transform == "align_corners":
            return x * (size - 1) / (out - 1) if out > 1 else np.zeros(out)
        if self.transform == "half_pixel" or (self.transform == "pytorch_half_pixel" and out > 1):
            return (x + 0.5) / scale - 0.5
        if self.transform == "pytorch_half_pixel":
            return np.zeros(out)
        raise _unsupported_resize(f"coordinate_transformation_mode={self.transform}")

    def _onnx_index(self, source: np.ndarray, size: int) -> np.ndarray:
        rounding = {"round_prefer_floor": lambda v: np.ceil(v - 0.5),
                    "round_prefer_ceil": lambda v: np.floor(v + 0.5),
                    "floor": np.floor, "ceil": np.ceil}.get(self.nearest)
        if rounding is None:
            raise _unsupported_resize(f"nearest_mode={self.nearest}")
        return np.clip(rounding(source), 0, size - 1)

    def _choose(self, channels: int, shape: list[int]) -> dict:
        out, scales = self._target(channels, shape)
        by_scale = self.sizes is None  # torch then computes with 1 / scale_factor too
        candidates: list[dict] = []
        for size, o, sc in zip(shape, out, scales):
            ratio = 1.0 / sc if by_scale else size / o
            x = np.arange(o, dtype=np.float64)
            onnx_source = self._onnx_source(o, size, sc)
            if self.mode == "nearest":
                want = self._onnx_index(onnx_source, size)
                torch_ways = {"nearest": np.minimum(np.floor(x * ratio), size - 1),
                              "nearest-exact": np.minimum(np.floor((x + 0.5) * ratio), size - 1)}
            elif self.mode == "linear":
                want = np.clip(onnx_source, 0, size - 1)
                corners = x * (size - 1) / (o - 1) if o > 1 else np.zeros(o)
                torch_ways = {"linear:False": np.clip((x + 0.5) * ratio - 0.5, 0, size - 1),
                              "linear:True": corners}
            else:
                raise _unsupported_resize(f"mode={self.mode}")
            candidates.append({k for k, v in torch_ways.items() if np.allclose(v, want,
                                                                                atol=1e-9)})
        agreed = set.intersection(*candidates) if candidates else set()
        if not agreed:
            raise _unsupported_resize(
                f"mode={self.mode}, coordinate_transformation_mode={self.transform}, "
                f"nearest_mode={self.nearest} at sizes {shape} -> {out}")
        way = sorted(agreed)[0]
        mode, _, corners = way.partition(":")
        if mode == "linear":
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(out)]
        options: dict = {"mode": mode}
        if corners:
            options["align_corners"] = corners == "True"
        if by_scale:
            options.update(scale_factor=tuple(scales), recompute_scale_factor=False)
        else:
            options["size"] = tuple(out)
        return options

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = [int(d) for d in x.shape[2:]]  # the stand-in is frozen at fixed sizes
        return F.interpolate(x, **self._choose(int(x.shape[1]), spatial))


class GeluModule(torch.nn.Module):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


def _gelu(node: Any, graph: Any) -> Any:  # noqa: ARG001 - the registry's signature
    return _result(GeluModule(str(node.attributes.get("approximate", "none"))), node,
                   (node.input_values[0],))


def register() -> None:
    """Put prunec's converters into onnx2torch's registry (once; they replace its own)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from onnx2torch.node_converters import registry

    for op, versions, converter, domain in _TABLE:
        for version in versions:
            key = registry.OperationDescription(domain=domain, operation_type=op,
                                                version=version)
            registry._CONVERTER_REGISTRY[key] = converter  # noqa: SLF001 - its registry
    table = registry._CONVERTER_REGISTRY  # noqa: SLF001
    for op, versions, older in _ALIASES:
        base = table.get(registry.OperationDescription(domain="", operation_type=op,
                                                       version=older))
        for version in versions if base is not None else ():
            table.setdefault(registry.OperationDescription(domain="", operation_type=op,
                                                           version=version), base)
    table[registry.OperationDescription(domain="", operation_type="Gelu", version=20)] = _gelu
    _REGISTERED = True
