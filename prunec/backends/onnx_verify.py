"""Verification of a written-back ONNX file, run by ONNX Runtime on the file itself.

1. ``onnx.checker.check_model(full_check=True)``.
2. At the example feeds, the pruned file's outputs equal the pruned program's (DESIGN
   contract 12: write-back equals the program).
3. The *reference*: the original file with the removed units zeroed (their weight slices set
   to 0, as :func:`~prunec.rewrite.reference.reference_program` defines it) or, for
   compensated groups, the removed activations replaced by their means (``y = x * keep +
   mu * (1 - keep)``, inserted after the producing node). The pruned file must equal it at
   the example and at another batch size and sequence length (every ``dim_param`` axis
   changed), which is what shows that the shape constants were patched right.
   Where no reference is defined (a plan that cuts a layer-normalised width: removing is not
   zeroing there; several plans in a row), the file is compared at the other shapes with the
   plans replayed on a stand-in of the original frozen at those shapes (the plans name
   things the same way there), and :func:`verify_file` says which check ran.

Tolerance: ``|pruned - ref| <= atol + rtol * max|ref|`` per output, ``atol = rtol = 1e-4``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prunec.backends.onnx_graph import GraphEditor
from prunec.errors import PrunecError, VerificationError
from prunec.frontends.onnx import graph_inputs, open_onnx
from prunec.ir.capture import capture
from prunec.ir.program import node_module_path
from prunec.rewrite.replay import replay as replay_lineage
from prunec.rewrite.reference import reference_program

if TYPE_CHECKING:
    import onnx

    from prunec.frontends.onnx import OnnxSource
    from prunec.ir.program import Program

__all__ = ["verify_file", "other_feeds", "zeroed_reference", "TOLERANCE"]

TOLERANCE = (1e-4, 1e-4)


def _session(model: "onnx.ModelProto") -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model: "onnx.ModelProto", feeds: dict, what: str) -> list[np.ndarray]:
    try:
        return _session(model).run(None, feeds)
    except Exception as exc:  # onnxruntime's own exception types
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        raise VerificationError(f"ONNX Runtime cannot run the {what} with inputs {shapes}: "
                                f"{str(exc).strip()[:500]}") from exc


def verify_file(source: "OnnxSource", model: "onnx.ModelProto", program: "Program") -> str:
    """Check ``model`` (the written-back file) as the module docstring says; returns a line
    saying what was checked.

    Raises:
        VerificationError: naming the check and the output that failed.
    """
    import onnx

    if model.ByteSize() < 2**31 - 2**24:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # ValidationError / InferenceError
            raise VerificationError(f"The pruned ONNX model fails the checker: "
                                    f"{str(exc).strip()[:500]}") from exc
    names = [o.name for o in model.graph.output]
    pruned = _run(model, source.feeds, "pruned model")
    with torch.no_grad():
        out = program.gm(*source.example_args)
    expected = [t.numpy() for t in torch.utils._pytree.tree_leaves(out)
                if isinstance(t, torch.Tensor)]
    by_node = _outputs_by_producer(model)
    for got_index, ref in zip(by_node, expected):
        _compare(names[got_index], pruned[got_index], ref, "the pruned program")
    reference, why = zeroed_reference(source, program)
    shapes = [source.feeds, other_feeds(source)]
    replayed = 0
    for index, feeds in enumerate(shapes):
        got = _run(model, feeds, "pruned model")
        if reference is None:
            _check_plausible(source, names, got, feeds)
            if index and _compare_replayed(source, program, model, names, got, feeds):
                replayed += 1
            continue
        want = _run(reference, feeds, "zeroed original")
        for name, g, w in zip(names, got, want):
            _compare(name, g, w, "the original with removed units zeroed at inputs "
                     + str({k: list(v.shape) for k, v in feeds.items()}))
    shown = ", ".join(str({k: list(v.shape) for k, v in f.items()}) for f in shapes)
    if reference is None:
        other = {k: list(v.shape) for k, v in shapes[1].items()}
        also = (f"; equal to the plans replayed on a stand-in frozen at {other}" if replayed
                else f"; ran at {shown}")
        return f"equal to the pruned program at the example; no zeroed reference ({why}){also}"
    return f"equal to the pruned program at the example and to the zeroed original at {shown}"


def _compare_replayed(source: "OnnxSource", program: "Program", model: "onnx.ModelProto",
                      names: list[str], got: list, feeds: dict) -> bool:
    """Where no zeroed reference exists: the plans replayed on a stand-in of the original
    frozen at ``feeds`` must compute what the pruned file does there. Returns False (and
    checks nothing more) when that stand-in cannot be built at those shapes."""

    try:
        other = open_onnx(source.model, feeds)
        replay = replay_lineage(capture(other.module, other.example_args, dynamic=False),
                                program)
    except PrunecError:
        return False
    with torch.no_grad():
        out = replay.gm(*other.example_args)
    expected = [t.numpy() for t in torch.utils._pytree.tree_leaves(out)
                if isinstance(t, torch.Tensor)]
    shown = {k: list(v.shape) for k, v in feeds.items()}
    for got_index, ref in zip(_outputs_by_producer(model), expected):
        _compare(names[got_index], got[got_index], ref,
                 f"the plans replayed on the original frozen at {shown}")
    return True


def _outputs_by_producer(model: "onnx.ModelProto") -> list[int]:
    """Graph-output indices whose producers come first (the stand-in returns one value per
    producing node, in graph-output order)."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    seen, order = set(), []
    for i, out in enumerate(model.graph.output):
        node = producer.get(out.name)
        if node not in seen:
            seen.add(node)
            order.append(i)
    return order


def _compare(name: str, got: np.ndarray, want: np.ndarray, against: str) -> None:
    if got.shape != want.shape:
        raise VerificationError(f"Output {name!r} of the pruned ONNX model has shape "
                                f"{list(got.shape)}, {against} gives {list(want.shape)}.")
    if got.dtype.kind not in "fc":
        if not np.array_equal(got, want):
            raise VerificationError(f"Output {name!r} of the pruned ONNX model differs from "
                                    f"{against}.")
        return
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    bound = TOLERANCE[0] + TOLERANCE[1] * (float(np.max(np.abs(want))) if want.size else 0.0)
    if not err <= bound:
        raise VerificationError(f"Output {name!r} of the pruned ONNX model differs from "
                                f"{against} by max abs diff {err:.3g} (allowed {bound:.3g}).")


def _check_plausible(source: "OnnxSource", names: list[str], got: list, feeds: dict) -> None:
    ranks = {o.name: len(o.type.tensor_type.shape.dim) for o in source.model.graph.output}
    for name, value in zip(names, got):
        if value.ndim != ranks.get(name, value.ndim):
            raise VerificationError(f"Output {name!r} has rank {value.ndim} at inputs "
                                    f"{ {k: list(v.shape) for k, v in feeds.items()} }, the "
                                    f"original's is {ranks[name]}.")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise VerificationError(f"Output {name!r} is not finite at other input shapes.")


# ---------------------------------------------------------------------------- other shapes
def other_feeds(source: "OnnxSource", seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds with every dynamic axis resized: the first ``dim_param`` (the batch) +1, the
    others -1 (or +1 when at most 2). Integer and boolean inputs reuse the example's values
    (cropped or repeated, so token ids stay valid); floating inputs are N(0, 1)."""

    sizes: dict[str, int] = {}
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in graph_inputs(source.model):
        example = source.feeds[spec.name]
        shape = list(example.shape)
        for axis, dim in enumerate(spec.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") or axis >= len(shape):
                continue
            symbol = dim.dim_param or f"{spec.name}:{axis}"
            if symbol not in sizes:
                first = not sizes
                size = shape[axis]
                sizes[symbol] = size + 1 if first or size <= 2 else size - 1
            shape[axis] = sizes[symbol]
        feeds[spec.name] = _resized(example, shape, rng)
    return feeds


def _resized(example: np.ndarray, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if example.dtype.kind == "f":
        return rng.standard_normal(shape).astype(example.dtype)
    value = example
    for axis, size in enumerate(shape):
        index = np.arange(size) % max(value.shape[axis], 1)
        value = np.take(value, index, axis=axis)
    return np.ascontiguousarray(value)


# ---------------------------------------------------------------------------- reference
def zeroed_reference(source: "OnnxSource", program: "Program"
                     ) -> tuple["onnx.ModelProto | None", str]:
    """The original model with the plan's removed units zeroed or mean-replaced, or
    ``(None, why)`` where that reference is not defined."""
    import onnx

    if len(program.plans) != 1:
        return None, f"{len(program.plans)} plans applied in a row"
    base = capture(source.module, source.example_args, dynamic=False)
    ref, overrides, why = reference_program(base, program.plans[0])
    if ref is None:
        return None, why
    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    editor = GraphEditor(model)
    nodes = {n.name: n for n in base.graph.nodes}
    for name, override in overrides.items():
        node = nodes[name]
        if node.op == "get_attr":
            use = source.uses.get(node.target)
            if use is None:
                return None, f"tensor '{node.target}' has no initializer"
            value = override(base.get_tensor(node.target).detach())
            editor.set_input(use.node, use.input, use.to_onnx(value.numpy()))
        elif not _replace_value(editor, source, base, node, override):
            return None, f"value '{name}' has no ONNX node"
    return model, ""


def _replace_value(editor: Any, source: "OnnxSource", base: "Program", node: torch.fx.Node,
                   override: Any) -> bool:
    """``x -> x * keep + fill`` after the ONNX node computing ``node`` (mean replacement)."""
    from onnx import numpy_helper

    path = node_module_path(node)
    last = [n for n in base.graph.nodes if n.op == "call_function" and node_module_path(n) == path]
    key = source.modules.get(path)
    val = node.meta.get("val")
    if key is None or not last or last[-1] is not node or not isinstance(val, torch.Tensor):
        return False
    rank = val.dim()
    probes = []
    for fill in (0.0, 1.0):  # replace(v) = where(pruned, mu, v): read keep and mu off it
        probes.append(override(torch.full(tuple(val.shape), fill, dtype=val.dtype)))
    keep = (probes[1] - probes[0]).numpy()
    fill = probes[0].numpy()
    axes = [ax for ax in range(rank) if not _constant_along(keep, ax) or
            not _constant_along(fill, ax)]
    shape = [val.shape[ax] if ax in axes else 1 for ax in range(rank)]
    index = tuple(slice(None) if ax in axes else slice(0, 1) for ax in range(rank))
    keep, fill = keep[index].reshape(shape), fill[index].reshape(shape)
    names = []
    for label, value in (("keep", keep), ("mean", fill)):
        name = editor.fresh(f"{key}_prunec_{label}")
        editor.model.graph.initializer.append(numpy_helper.from_array(value, name))
        editor.inits[name] = editor.model.graph.initializer[-1]
        names.append(name)
    masked = editor.insert_after(key, "Mul", names[0], f"{key}/prunec_keep")
    editor.insert_after(masked, "Add", names[1], f"{key}/prunec_mean")
    return True


def _constant_along(value: np.ndarray, axis: int) -> bool:
    first = np.take(value, [0], axis=axis)
    return bool(np.all(value == first))
