"""The ``onnx-original`` lowering: the plan written back into the user's own ONNX graph.

A program captured from an ONNX file (:mod:`prunec.frontends.onnx`) is a stand-in. Lowering
it to ``onnx`` or ``onnxruntime`` does not export the stand-in: it edits a copy of the
original graph, so the user gets their file back, smaller, with the same graph inputs and
outputs (names, element types, ``dim_param`` names), opset imports, node names and producer
metadata, plus ``prunec.*`` metadata.

1. **Tensors.** Every stand-in tensor the passes changed (sliced weights, biases holding
   folded means ``b' = b + W[:, P] @ mu[P]``) is written into the node input it came from
   (:class:`~prunec.frontends.onnx.Use`: transposed back for MatMul weights and Gemm without
   ``transB``, divided by Gemm's ``alpha`` / ``beta``). An initializer read by several nodes
   (exporters share equal tensors) is copied on write: each changed reader gets its own.
   A bias created by mean folding becomes Gemm's ``C``, Conv's ``B``, or a new ``Add`` after
   a MatMul.
2. **Shape constants** (:mod:`prunec.backends.onnx_shapes`): every Reshape / Expand whose
   output changed size in the stand-in gets its shape input patched at those positions -
   a constant directly, or the constant piece of a computed ``Concat`` shape.
3. **Residual blocks** (:mod:`prunec.backends.onnx_blocks`): a dropped branch's Add becomes
   ``Identity(skip)``, or ``Add(skip, mu)`` with compensation; the branch's nodes go.
4. **Check and verify** (:mod:`prunec.backends.onnx_verify`): the pruned file passes
   ``onnx.checker.check_model(full_check=True)``; ONNX Runtime runs it against the pruned
   program at the example, and against the original with the removed units zeroed (or
   mean-compensated) at the example and at another batch size and sequence length (where
   zeroing is not removal: against the plans replayed on a stand-in frozen at that shape).
   A mismatch is a :class:`~prunec.errors.VerificationError` naming the output.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prunec.backends.artifact import metadata_for
from prunec.backends.base import Artifact, IOSpec
from prunec.backends.onnx_backend import ONNX_REQUIREMENTS, is_onnx_file, saved_backend
from prunec.backends.registry import BackendSpec, register
from prunec.backends.onnx_blocks import BLOCK_MEAN, drop_blocks_in_file
from prunec.backends.onnx_graph import GraphEditor
from prunec.backends.onnx_shapes import patch_shapes
from prunec.backends.onnx_verify import verify_file
from prunec.backends.tensorrt_backend import (
    TensorRTArtifact, _tensorrt, build_plan, parse_version, precision_plan,
)
from prunec.errors import InvalidArgumentError, PrunecError, UnsupportedOpError
from prunec.fileio import fsync_directory
from prunec.frontends.onnx import check_feeds, load_model, onnx_source
from prunec.ir.program import node_module_path

if TYPE_CHECKING:
    import onnx

    from prunec.frontends.onnx import OnnxSource
    from prunec.ir.program import Program

__all__ = ["OriginalOnnxArtifact", "lower_original", "write_back", "GraphEditor",
           "ORIGINAL_BACKENDS"]

ORIGINAL_BACKENDS = ("onnx", "onnxruntime", "tensorrt")
"""Backends a program from an ONNX file lowers to (all from the written-back file)."""

EXTERNAL_LIMIT = 2**31 - 2**24  # protobuf's 2 GB limit, with room for the graph itself


# ---------------------------------------------------------------------------- write-back
def write_back(source: "OnnxSource", program: "Program") -> "onnx.ModelProto":
    """A copy of the original model carrying ``program``'s changes (module docstring)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    editor = GraphEditor(model)
    _check_no_new_ops(program)
    drop_blocks_in_file(editor, source, program)
    original = dict(source.module.named_parameters())
    original.update(dict(source.module.named_buffers()))
    done: set[str] = set()
    for node in program.graph.nodes:
        if node.op != "get_attr" or node.target in done:
            continue
        done.add(node.target)
        _write_tensor(editor, source, program, node, original.get(node.target))
    patch_shapes(editor, source, program)
    editor.drop_dead()
    model = _refresh_value_info(model)
    _stamp(model, program)
    return model


def _refresh_value_info(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Exporters annotate intermediate values with shapes that pruning made stale: re-infer
    them, keeping annotations only for the values the file annotated."""
    from onnx.shape_inference import infer_shapes

    annotated = [v.name for v in model.graph.value_info]
    if not annotated:
        return model
    del model.graph.value_info[:]
    try:
        inferred = infer_shapes(model)
    except Exception:  # inference cannot run: leave the values unannotated (still valid)
        return model
    kept = {v.name: v for v in inferred.graph.value_info}
    model.graph.value_info.extend([kept[n] for n in annotated if n in kept])
    return model


def _check_no_new_ops(program: "Program") -> None:
    import operator

    for node in program.graph.nodes:
        if node.op == "call_function" and not node.meta.get("nn_module_stack") \
                and node.target is not operator.getitem and not _adds_block_mean(node):
            raise UnsupportedOpError(
                f"The pruned program computes '{node.name}' ({node.target}), which has no node "
                f"in the ONNX file (mean folding into a zero-padded convolution adds one): "
                f"it cannot be written back. Use compensate=False.")


def _adds_block_mean(node: torch.fx.Node) -> bool:
    """``skip + mean`` put in place of a dropped branch (written by onnx_blocks)."""
    return any(isinstance(a, torch.fx.Node) and a.op == "get_attr"
               and BLOCK_MEAN in str(a.target) for a in node.args)


def _write_tensor(editor: GraphEditor, source: "OnnxSource", program: "Program",
                  node: torch.fx.Node, old: torch.Tensor | None) -> None:
    if BLOCK_MEAN in str(node.target):
        return  # the Add of a dropped block holds it (onnx_blocks)
    new = program.get_tensor(node.target).detach()
    if old is not None and new.shape == old.shape and torch.equal(new, old.detach()):
        return
    use = source.uses.get(node.target)
    if use is not None:
        editor.set_input(use.node, use.input, use.to_onnx(new.cpu().numpy()))
        _sync_conv_group(editor, use.node, node)
        return
    if old is None:
        _add_bias(editor, source, node, new.cpu().numpy())
        return
    raise UnsupportedOpError(
        f"The pruned program changed tensor '{node.target}', which comes from no initializer "
        f"of the ONNX file (a constant folded at the example shapes): it cannot be written "
        f"back.")


_CONVOLUTIONS = ("conv1d", "conv2d", "conv3d", "convolution")


def _conv_groups(weight: torch.fx.Node) -> int | None:
    """The ``groups`` of the convolution that reads ``weight`` in the pruned program."""
    for user in weight.users:
        name = getattr(user.target, "__name__", str(user.target)).split(".")[0]
        if user.op != "call_function" or name not in _CONVOLUTIONS or user.args[1] is not weight:
            continue
        index = 8 if name == "convolution" else 6
        groups = user.args[index] if len(user.args) > index else user.kwargs.get("groups", 1)
        return int(groups)
    return None


def _sync_conv_group(editor: GraphEditor, key: str, weight: torch.fx.Node) -> None:
    """A grouped (depthwise) Conv whose channels were pruned holds fewer groups: its
    ``group`` attribute follows the pruned program's convolution."""
    onnx_node = editor.nodes.get(key)
    if onnx_node is None or onnx_node.op_type != "Conv":
        return
    groups = _conv_groups(weight)
    attribute = next((a for a in onnx_node.attribute if a.name == "group"), None)
    if groups is None or (attribute is None and groups == 1):
        return
    if attribute is None:
        from onnx import helper

        onnx_node.attribute.append(helper.make_attribute("group", groups))
    else:
        attribute.i = groups


def _add_bias(editor: GraphEditor, source: "OnnxSource", attr: torch.fx.Node,
              bias: np.ndarray) -> None:
    users = list(attr.users)
    key = source.modules.get(node_module_path(users[0])) if users else None
    if key is None:
        raise UnsupportedOpError(f"New tensor '{attr.target}' has no consumer in the ONNX "
                                 f"file; it cannot be written back.")
    fused = source.fused.get(key)
    if fused is not None:  # a MatMul without bias: y = MatMul(x, W) + b
        matmul = fused[0]
        name = editor.fresh(f"{matmul}_prunec_bias")
        from onnx import numpy_helper

        editor.model.graph.initializer.append(numpy_helper.from_array(bias, name))
        editor.inits[name] = editor.model.graph.initializer[-1]
        base = editor.nodes[matmul].name or matmul
        editor.insert_after(matmul, "Add", name, f"{base}/prunec_bias")
        return
    node = editor.nodes[key]
    index = {"Gemm": 2, "Conv": 2}.get(node.op_type)
    if index is None:
        raise UnsupportedOpError(f"Node {node.name!r} ({node.op_type}) cannot take a bias.")
    editor.set_input(key, index, bias)


def _stamp(model: "onnx.ModelProto", program: "Program") -> None:
    """prunec's metadata (version, plans, lineage) next to the user's own entries."""

    meta = metadata_for(program, "onnx-original")
    values = {"prunec.version": meta["prunec_version"], "prunec.backend": "onnx-original",
              "prunec.plans": json.dumps([json.loads(p) for p in meta["plans"]]),
              "prunec.lineage": json.dumps(meta["lineage"], default=str)}
    for key, value in values.items():
        entry = next((p for p in model.metadata_props if p.key == key), None)
        if entry is None:
            entry = model.metadata_props.add()
            entry.key = key
        entry.value = value


# ---------------------------------------------------------------------------- artifact
class OriginalOnnxArtifact(Artifact):
    """The user's ONNX model, pruned, in an ONNX Runtime session.

    Call it with feeds as the original took them (a dict by graph-input name or a tuple in
    order; numpy or torch, any batch size and sequence length the original took); it returns
    ``{output name: array}`` (torch tensors when the inputs were torch tensors).
    """

    name = "onnx-original"
    verified = ""
    """What verification showed (:func:`~prunec.backends.onnx_verify.verify_file`)."""

    def __init__(self, model: "onnx.ModelProto", *, external: bool = False,
                 intra_op_threads: int = 0, inter_op_threads: int = 0,
                 spinning: bool = True, source: Path | None = None) -> None:
        import onnxruntime as ort

        self.model, self.external = model, external
        # The file it was pruned from (absolute, links unresolved, as its data is found):
        # a save never overwrites or removes that file's weights.
        self.source = Path(os.path.abspath(source)) if source is not None else None
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads:
            options.inter_op_num_threads = inter_op_threads
        if not spinning:  # see prunec.backends.onnxruntime_backend
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(_serialize(model), options,
                                            providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in model.graph.output]

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = args[0] if len(args) == 1 and not kwargs else (dict(kwargs) if kwargs else args)
        feeds = _flexible_feeds(self.model, inputs)
        outs = self.session.run(None, feeds)
        as_torch = any(isinstance(v, torch.Tensor) for v in
                       (inputs.values() if isinstance(inputs, dict) else
                        inputs if isinstance(inputs, (tuple, list)) else [inputs]))
        return {n: torch.from_numpy(o) if as_torch else o for n, o in zip(self.output_names, outs)}

    def save(self, path: str | Path) -> Path:
        """Write the pruned model to ``path`` atomically; weights go to ``<name>.data``
        beside it when the original kept them external or the model is over 2 GB."""
        keep = frozenset()
        if self.source is not None and self.source.resolve() != Path(path).resolve():
            keep = external_files(self.source)  # a save over the source itself replaces it
        return save_model(self.model, path, external=self.external, keep=keep)

    @classmethod
    def load(cls, path: str | Path, **options: Any) -> "OriginalOnnxArtifact":
        model, _, external = load_model(path)
        return cls(model, external=external, source=Path(path), **options)


def _serialize(model: "onnx.ModelProto") -> bytes:
    if model.ByteSize() < EXTERNAL_LIMIT:
        return model.SerializeToString()
    raise PrunecError("The model is over 2 GB: save it and load the file instead.")


def _flexible_feeds(model: "onnx.ModelProto", inputs: Any) -> dict[str, np.ndarray]:
    """Feeds checked for names, element types and ranks (dynamic dims take any size)."""
    return check_feeds(model, inputs, what="inputs")


def save_model(model: "onnx.ModelProto", path: str | Path, *, external: bool,
               keep: frozenset[Path] = frozenset()) -> Path:
    """Atomic save: everything goes to a temporary directory beside ``path`` first, then is
    moved into place, so a failure never leaves a partial file.

    External weights go to ``<name>.data``. Two files cannot be replaced in one step, so when
    ``path`` already exists and reads its weights from ``<name>.data``, the new weights go
    to ``<name>.<digest>.data`` instead: the existing model stays whole (its graph and its
    weights) until the new graph replaces it in one rename, and its old weights file is
    removed only after that. A save that fails or is cut off at any point leaves the
    previous model loadable.

    ``keep`` (resolved paths: the external-data files of the model this one was pruned from)
    are never overwritten nor removed: a source graph ``orig.onnx`` reading ``m.onnx.data``
    stays whole when the pruned model is saved as ``m.onnx`` beside it (the new weights then
    take the ``<name>.<digest>.data`` name too).
    """
    import onnx

    path = Path(path)
    external = external or model.ByteSize() >= EXTERNAL_LIMIT
    previous = _external_locations(path)
    with tempfile.TemporaryDirectory(dir=path.parent or ".", prefix=".prunec-") as tmp:
        staged = Path(tmp) / path.name
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if external:  # by hand: onnx.save_model refuses a location that exists in the cwd
            from onnx.external_data_helper import set_external_data, write_external_data_tensors

            data_name = path.name + ".data"
            if data_name in previous or (path.parent / data_name).resolve() in keep:
                digest = hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()
                data_name = f"{path.name}.{digest[:16]}.data"
            for tensor in copy.graph.initializer:
                if tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
                    set_external_data(tensor, data_name)
            copy = write_external_data_tensors(copy, tmp)
        onnx.save_model(copy, str(staged))
        written = set()
        try:
            for produced in sorted(Path(tmp).iterdir(), key=lambda p: p.name == path.name):
                with open(produced, "rb") as handle:
                    os.fsync(handle.fileno())
                os.chmod(produced, 0o644)  # temporary files are private; the result is not
                os.replace(produced, path.parent / produced.name)  # the .onnx last
                written.add(produced.name)
        except BaseException:  # the graph was not replaced: drop the new weights beside it
            for name in written - previous - {path.name}:
                (path.parent / name).unlink(missing_ok=True)
            raise

    fsync_directory(path.parent)  # the renames themselves survive a crash
    for stale in previous - written:  # the previous model's own weights, now unreferenced
        if (stale.startswith(path.name + ".") and stale.endswith(".data") and "/" not in stale
                and (path.parent / stale).resolve() not in keep):
            (path.parent / stale).unlink(missing_ok=True)
    return path


def external_files(path: Path) -> frozenset[Path]:
    """The resolved paths of the external-data files the ONNX file at ``path`` reads (empty
    when there is no file there or it holds its weights inside)."""
    return frozenset((path.parent / name).resolve() for name in _external_locations(path))


def _external_locations(path: Path) -> set[str]:
    """The external-data files an existing ONNX file at ``path`` reads (its graph only is
    parsed; nothing runs); empty when there is none or it cannot be read."""
    import onnx

    if not path.is_file():
        return set()
    try:
        existing = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file: nothing of ours to keep track of
        return set()
    found = set()
    for tensor in existing.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found.update(e.value for e in tensor.external_data if e.key == "location")
    return found


# ---------------------------------------------------------------------------- lowering
def lower_original(program: "Program", backend: str = "onnxruntime", *, check: bool = True,
                   intra_op_threads: int = 0, inter_op_threads: int = 0,
                   spinning: bool = True, **options: Any) -> Any:
    """Write ``program``'s plans back into its source ONNX file and serve it.

    Args:
        program: A program whose stand-in came from an ONNX file.
        backend: ``onnx``, ``onnxruntime`` (both: ONNX Runtime on the written-back file) or
            ``tensorrt`` (an engine built from the written-back file).
        check: Verify the file (see the module docstring).
        intra_op_threads: ONNX Runtime threads inside an op (0: its default).
        inter_op_threads: Threads across ops (0: its default).
        spinning: Let idle intra-op threads spin (ONNX Runtime's default).
        **options: For ``tensorrt``: ``fp16``, ``max_batch_size``, ``workspace_gb``.

    Raises:
        InvalidArgumentError: a backend or option that does not apply to an ONNX file.
        UnsupportedOpError: a change the ONNX graph cannot describe.
        VerificationError: the written-back file does not compute what it must.
        BackendUnavailable: ``tensorrt`` without TensorRT or a CUDA device.
    """
    source = onnx_source(program)
    if backend not in ORIGINAL_BACKENDS:
        raise InvalidArgumentError(
            f"backend {backend!r} cannot take a model that came from an ONNX file; use one of "
            f"{list(ORIGINAL_BACKENDS)}.")
    allowed = {"fp16", "max_batch_size", "workspace_gb"} if backend == "tensorrt" else set()
    if set(options) - allowed:
        raise InvalidArgumentError(
            f"backend {backend!r} for an ONNX file takes check, intra_op_threads and "
            f"inter_op_threads{' and ' + ', '.join(sorted(allowed)) if allowed else ''}; got "
            f"{sorted(set(options) - allowed)} (the file keeps its own opset and dtypes).")
    if backend == "tensorrt":
        _tensorrt()  # BackendUnavailable before any work when TensorRT or CUDA is missing
    model = write_back(source, program)
    verified = "not verified (check=False)"
    if check:
        verified = verify_file(source, model, program)
    if backend == "tensorrt":
        return _tensorrt_engine(source, model, program, **options)
    artifact = OriginalOnnxArtifact(model, external=source.external,
                                    intra_op_threads=intra_op_threads,
                                    inter_op_threads=inter_op_threads, spinning=spinning,
                                    source=source.path)
    artifact.verified = verified
    return artifact


def _tensorrt_engine(source: "OnnxSource", model: "onnx.ModelProto", program: "Program", *,
                     fp16: bool = False, max_batch_size: int | None = None,
                     workspace_gb: float = 4.0) -> Any:
    """A TensorRT engine built from the written-back file (the batch axis dynamic, other
    dynamic axes pinned to the example, as the ``tensorrt`` backend does)."""

    trt = _tensorrt()
    io = IOSpec.from_program(program)
    io.input_names = list(source.input_names)
    dims = {i.name: i.type.tensor_type.shape.dim for i in model.graph.input}
    io.batch_inputs = [bool(dims[n]) and not dims[n][0].HasField("dim_value")
                       for n in io.input_names]
    io.input_shapes = [[None if ax == 0 and b else int(s) for ax, s in enumerate(t.shape)]
                       for t, b in zip(source.example_args, io.batch_inputs)]
    examples = list(source.example_args)
    batch = next((t.shape[0] for t, b in zip(examples, io.batch_inputs) if b), 1)
    serialized = build_plan(model, io, examples,
                            plan=precision_plan(parse_version(trt.__version__), fp16),
                            max_batch=max_batch_size or max(32, 2 * batch),
                            workspace_bytes=int(workspace_gb * 2**30))
    return TensorRTArtifact(serialized, io, metadata_for(program, "tensorrt"))


register(BackendSpec(
    "onnx-original", lower_original, requires=ONNX_REQUIREMENTS,
    sniff=lambda path: is_onnx_file(path) and saved_backend(path) == "onnx-original",
    load=OriginalOnnxArtifact.load, sniff_order=30, selectable=False,
    summary="the plan written back into the user's own ONNX graph (chosen when an .onnx "
            "file is compiled)"))
