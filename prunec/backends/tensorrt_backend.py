"""The ``tensorrt`` backend: the ``onnx`` lowering built into a TensorRT engine (10.x, 11.x).

Build: the ONNX model from :func:`~prunec.backends.onnx_backend.export_onnx` is parsed by
``trt.OnnxParser``; one optimisation profile covers batch sizes ``1 .. max_batch_size``
(optimised for the example batch) on inputs whose axis 0 is the dynamic batch; the
workspace pool is capped with ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``;
``build_serialized_network`` returns the plan.

Precision (:func:`precision_plan`): TensorRT 10 builds a weakly typed network from the fp32
ONNX and ``fp16`` sets ``BuilderFlag.FP16`` (TensorRT picks half kernels where it likes).
TensorRT 11 removed the precision flags: networks are strongly typed, so ``fp16`` exports the
ONNX in half precision (fp32 interface kept by casts) and TensorRT follows its dtypes.

Run: ``Runtime.deserialize_cuda_engine``, then per call ``set_input_shape`` and
``set_tensor_address`` on torch CUDA tensors and ``execute_async_v3`` on torch's current
stream. Inputs are moved to CUDA; outputs come back on the device of the first input.

Tolerances (:data:`TRT_TOLERANCES`) are looser than ONNX Runtime's because TensorRT uses
TF32 for fp32 matmuls and convolutions by default on Ampere and later GPUs.
"""
from __future__ import annotations

import json

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunec.backends.base import Artifact, IOSpec, require, verify_artifact
from prunec.backends.artifact import metadata_for
from prunec.backends.integrity import parse_metadata, read_io, sha256_hex
from prunec.backends.onnx_backend import DEFAULT_OPSET, ONNX_REQUIREMENTS, export_onnx
from prunec.backends.registry import BackendSpec, Requirement, register
from prunec.errors import BackendUnavailable, PrunecError
from prunec.fileio import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import onnx

    from prunec.ir.program import Program

__all__ = [
    "TensorRTArtifact", "lower_tensorrt", "parse_version", "precision_plan", "PrecisionPlan",
    "profile_shapes", "torch_dtype", "TRT_TOLERANCES",
]

TRT_TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-3, 5e-3), "fp16": (1e-2, 2e-2)}
"""Parity tolerances ``(atol, rtol)`` per precision (fp32 allows for TF32)."""
_PIP = ("tensorrt  (NVIDIA GPU with a CUDA build of torch required; or pip install "
        "'prunec[tensorrt]')")
_TORCH_DTYPES = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
    "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64,
    "BOOL": torch.bool,
}


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; stops at the first non-numeric part
    (``"11.0.0b1"`` -> ``(11, 0, 0)``). Compare the tuples, never the strings."""
    parts = []
    for piece in text.strip().split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"Not a version number: {text!r}")
    return tuple(parts)


@dataclass(frozen=True)
class PrecisionPlan:
    """How a precision request is met by one TensorRT version.

    Attributes:
        onnx_fp16: Export the ONNX model in half precision.
        builder_fp16: Set ``BuilderFlag.FP16`` (weak typing, TensorRT 10 only).
        strongly_typed: Create the network with ``STRONGLY_TYPED``.
    """

    onnx_fp16: bool
    builder_fp16: bool
    strongly_typed: bool


def precision_plan(version: tuple[int, ...], fp16: bool) -> PrecisionPlan:
    """TensorRT 10: fp32 ONNX, weak typing, ``BuilderFlag.FP16`` for fp16. TensorRT 11+:
    strong typing always, half precision comes from the ONNX dtypes."""
    if version[0] < 10:
        raise BackendUnavailable(
            f"TensorRT {'.'.join(map(str, version))} is too old; prunec needs TensorRT 10 "
            f"or later: pip install --upgrade 'tensorrt>=10'")
    if version[0] >= 11:
        return PrecisionPlan(onnx_fp16=fp16, builder_fp16=False, strongly_typed=True)
    return PrecisionPlan(onnx_fp16=False, builder_fp16=fp16, strongly_typed=False)


def profile_shapes(shape: tuple[int, ...], example: tuple[int, ...], batched: bool, *,
                   max_batch: int, min_batch: int = 1, opt_batch: int | None = None
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(min, opt, max)`` shapes of one network input for its optimisation profile.

    Args:
        shape: The network input's dims, ``-1`` where dynamic.
        example: The example input's shape.
        batched: Whether axis 0 is the dynamic batch axis.
        max_batch: Largest batch the engine accepts.
        min_batch: Smallest batch.
        opt_batch: Batch the kernels are tuned for (the example's by default).

    Dynamic axes other than the batch are pinned to the example size.
    """
    if len(shape) != len(example):
        raise PrunecError(f"Network input of rank {len(shape)} fed an example of rank "
                          f"{len(example)}.")
    lo, opt, hi = [], [], []
    for axis, (dim, ex) in enumerate(zip(shape, example)):
        if dim >= 0:
            triple = (dim, dim, dim)
        elif axis == 0 and batched:
            best = ex if opt_batch is None else opt_batch
            if not min_batch <= best <= max_batch:
                raise PrunecError(f"Optimisation batch {best} is outside "
                                  f"[{min_batch}, {max_batch}]; raise max_batch_size.")
            triple = (min_batch, best, max_batch)
        else:
            triple = (ex, ex, ex)
        for acc, value in zip((lo, opt, hi), triple):
            acc.append(int(value))
    return tuple(lo), tuple(opt), tuple(hi)


def torch_dtype(trt_dtype_name: str) -> torch.dtype:
    """The torch dtype of a ``trt.DataType`` member name (``"HALF"`` -> ``float16``)."""
    try:
        return _TORCH_DTYPES[trt_dtype_name]
    except KeyError as exc:
        raise PrunecError(f"No torch dtype for TensorRT type {trt_dtype_name}.") from exc


def _tensorrt() -> Any:
    """Import tensorrt and make sure a CUDA device is there to run it."""
    trt = require("tensorrt", backend="tensorrt", pip=_PIP)
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            "The 'tensorrt' backend needs an NVIDIA GPU and a CUDA build of torch "
            "(torch.cuda.is_available() is False). Use 'onnxruntime' or 'inductor' on CPU.")
    return trt


def build_plan(model: "onnx.ModelProto", io: IOSpec, examples: list[torch.Tensor], *,
               plan: PrecisionPlan, max_batch: int, workspace_bytes: int) -> bytes:
    """Parse ``model`` and build a serialized TensorRT engine."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    _parse(trt, network, logger, model)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if plan.builder_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shapes = {n: (tuple(t.shape), b) for n, t, b in zip(io.input_names, examples,
                                                        io.batch_inputs)}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        example, batched = shapes[tensor.name]
        profile.set_shape(tensor.name, *profile_shapes(tuple(tensor.shape), example, batched,
                                                      max_batch=max_batch))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PrunecError("TensorRT could not build an engine (see its log above); try "
                          "fp16=False, a larger workspace_gb, or the 'onnxruntime' backend.")
    return bytes(serialized)


def _parse(trt: Any, network: Any, logger: Any, model: "onnx.ModelProto") -> None:
    import onnx

    with tempfile.TemporaryDirectory() as tmp:  # a file path also handles > 2 GB models
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 2**31 - 1)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise PrunecError("TensorRT's ONNX parser rejected the model: " + "; ".join(errors))


class TensorRTArtifact(Artifact):
    """A deserialized TensorRT engine run on torch CUDA tensors.

    Args:
        plan: The serialized engine.
        io: The flat interface (input and output tensor names, output structure).
    """

    name = "tensorrt"

    def __init__(self, plan: bytes, io: IOSpec, metadata: dict | None = None) -> None:
        trt = _tensorrt()
        self.plan = plan
        self.io = io
        self.metadata = dict(metadata or {})
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise PrunecError("TensorRT could not deserialize the engine (built by another "
                              "TensorRT version or for another GPU?).")
        self.context = self.engine.create_execution_context()
        self._dtypes = {self.engine.get_tensor_name(i): torch_dtype(
            self.engine.get_tensor_dtype(self.engine.get_tensor_name(i)).name)
            for i in range(self.engine.num_io_tensors)}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tensors = self.io.flatten_inputs(args, kwargs)
        device = tensors[0].device if tensors else torch.device("cpu")
        inputs = [t.to("cuda", self._dtypes[n]).contiguous()
                  for n, t in zip(self.io.input_names, tensors)]
        for name, t in zip(self.io.input_names, inputs):
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = [self._output_buffer(name) for name in self.io.output_names]
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise PrunecError("TensorRT execute_async_v3 failed (see its log above).")
        return self.io.unflatten_outputs([o.to(device) for o in outputs])

    def _output_buffer(self, name: str) -> torch.Tensor:
        shape = tuple(self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise PrunecError(f"Output {name!r} has a data-dependent shape {shape}, which "
                              f"prunec's TensorRT runner does not support.")
        out = torch.empty(shape, dtype=self._dtypes[name], device="cuda")
        self.context.set_tensor_address(name, out.data_ptr())
        return out

    def save(self, path: str | Path) -> Path:
        """Write the serialized plan to ``path`` and prunec's metadata (interface, plans,
        the plan's SHA-256) to the sidecar ``path + '.json'``, each atomically: the
        checksum ties the two, so a pair from two different saves is refused at load."""

        path = Path(path)
        meta = {**self.metadata, "backend": self.name, "io": self.io.to_json(),
                "plan_sha256": sha256_hex(self.plan)}
        atomic_write_bytes(path, self.plan)
        atomic_write_text(_sidecar(path), json.dumps(meta))
        return path

    @classmethod
    def load(cls, path: str | Path, *, trust: bool = False) -> "TensorRTArtifact":
        """Load a plan written by :meth:`save` (same TensorRT version and GPU).

        A TensorRT engine is native code (kernels and plugins that run when it is
        deserialized): it needs ``trust=True``.

        Raises:
            PrunecError: ``trust`` is not set, the sidecar is missing or damaged, or the
                plan does not match the checksum in its sidecar.
        """

        path = Path(path)
        if not trust:
            raise PrunecError(
                f"prunec.load: '{path}' is a TensorRT engine, which is native code run by "
                f"TensorRT when it is loaded. If you trust whoever made the file, call "
                f"prunec.load(path, trust=True).")
        sidecar = _sidecar(path)
        if not sidecar.is_file():
            raise PrunecError(f"prunec.load: the TensorRT plan '{path}' needs its sidecar "
                              f"'{sidecar}' (written beside it by save).")
        metadata = parse_metadata(sidecar.read_bytes(), sidecar, "TensorRT sidecar")
        io = read_io(metadata.get("io"), sidecar)
        if io is None:
            raise PrunecError(f"prunec.load: the sidecar '{sidecar}' has no 'io' entry; it "
                              f"is not the sidecar of a TensorRT plan prunec saved.")
        plan = path.read_bytes()
        recorded = metadata.get("plan_sha256")
        if recorded is not None and recorded != sha256_hex(plan):
            raise PrunecError(f"prunec.load: '{path}' does not match the checksum in its "
                              f"sidecar '{sidecar}' (changed, damaged, or the two come from "
                              f"different saves).")
        return cls(plan, io, metadata)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def lower_tensorrt(program: "Program", *, fp16: bool = False, max_batch_size: int | None = None,
                   workspace_gb: float = 4.0, opset: int = DEFAULT_OPSET,
                   dynamic_batch: bool = True, check: bool = True, atol: float | None = None,
                   rtol: float | None = None) -> TensorRTArtifact:
    """Lower ``program`` to a TensorRT engine.

    Args:
        program: The program (not mutated).
        fp16: Half precision (see :func:`precision_plan`).
        max_batch_size: Largest batch of the optimisation profile (default
            ``max(32, 2 * example batch)``).
        workspace_gb: Cap of TensorRT's workspace memory pool.
        opset: ONNX opset of the intermediate model.
        dynamic_batch: Keep the batch dynamic (within the profile).
        check: Run the parity check (:data:`TRT_TOLERANCES` unless ``atol``/``rtol``).
        atol: Absolute tolerance.
        rtol: Tolerance relative to ``max|ref|``.

    Raises:
        BackendUnavailable: tensorrt, the ONNX packages or a CUDA device are missing.
        PrunecError: parsing, building or the parity check failed.
    """
    trt = _tensorrt()
    plan = precision_plan(parse_version(trt.__version__), fp16)
    model, io = export_onnx(program, opset=opset, dynamic_batch=dynamic_batch,
                            fp16=plan.onnx_fp16)
    examples = io.flatten_inputs(program.example_args, program.example_kwargs)
    batch = next((t.shape[0] for t, b in zip(examples, io.batch_inputs) if b), 1)
    if io.input_shapes:  # the profile keeps only the batch dynamic: other axes are fixed
        io.input_shapes = [[d if d is not None or (ax == 0 and b) else int(t.shape[ax])
                            for ax, d in enumerate(shape)]
                           for shape, t, b in zip(io.input_shapes, examples, io.batch_inputs)]
    serialized = build_plan(model, io, examples, plan=plan,
                            max_batch=max_batch_size or max(32, 2 * batch),
                            workspace_bytes=int(workspace_gb * 2**30))
    artifact = TensorRTArtifact(serialized, io, metadata_for(program, "tensorrt"))
    if check:
        tol = TRT_TOLERANCES["fp16" if fp16 else "fp32"]
        verify_artifact(program, artifact, io, atol=tol[0] if atol is None else atol,
                        rtol=tol[1] if rtol is None else rtol, backend="tensorrt")
    return artifact


def is_tensorrt_plan(path: Path) -> bool:
    """Whether ``path`` has the ``.json`` sidecar that :meth:`TensorRTArtifact.save` writes
    (a JSON object whose ``backend`` is ``"tensorrt"``; any other JSON file beside a model is
    someone else's)."""
    sidecar = _sidecar(path)
    if path.suffix == ".onnx" or not path.is_file() or not sidecar.is_file():
        return False
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("backend") == "tensorrt"


register(BackendSpec(
    "tensorrt", lower_tensorrt,
    requires=(Requirement("tensorrt", "tensorrt"), *ONNX_REQUIREMENTS),
    sniff=is_tensorrt_plan, load=TensorRTArtifact.load, sniff_order=5, native_code=True,
    summary="an NVIDIA TensorRT engine (CUDA GPU); saves the plan and a .json sidecar"))
