"""The ``onnxruntime`` backend: the ``onnx`` lowering run by a tuned ``InferenceSession``.

The ONNX model is the one :func:`~prunec.backends.onnx_backend.export_onnx` produces (same
options, same parity check). The session uses graph optimisation level ``ORT_ENABLE_ALL``,
``intra_op_threads`` threads inside an op (default 2) and ``inter_op_threads`` between ops
(default 1, sequential execution), intra-op spinning as ONNX Runtime's default unless
``spinning=False`` (worth turning off when several sessions share few cores: a session's
spinning workers slow the next one), and ``CUDAExecutionProvider`` when the installed
onnxruntime has it (``onnxruntime-gpu``), else ``CPUExecutionProvider``. Inputs go through
host memory (numpy) on every provider.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.backends.base import IOSpec, require, verify_artifact
from prunec.backends.integrity import load_onnx_file, onnx_io
from prunec.backends.onnx_backend import (
    DEFAULT_OPSET, ONNX_REQUIREMENTS, PIP_HINT, TOLERANCES, OnnxArtifact, export_onnx,
    is_onnx_file, refuse_bfloat16, stamp,
)
from prunec.backends.registry import BackendSpec, register

if TYPE_CHECKING:
    import onnx

    from prunec.ir.program import Program

__all__ = ["OnnxRuntimeArtifact", "lower_onnxruntime", "session_options", "pick_providers"]


def session_options(intra_op_threads: int = 2, inter_op_threads: int = 1,
                    spinning: bool = True) -> Any:
    """``onnxruntime.SessionOptions`` with every graph optimisation enabled."""
    ort = require("onnxruntime", backend="onnxruntime", pip=PIP_HINT)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if inter_op_threads <= 1
                              else ort.ExecutionMode.ORT_PARALLEL)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def pick_providers(available: list[str] | None = None) -> list[str]:
    """CUDA first when onnxruntime offers it, CPU always as the fallback."""
    if available is None:
        ort = require("onnxruntime", backend="onnxruntime", pip=PIP_HINT)
        available = ort.get_available_providers()
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or ["CPUExecutionProvider"]


class OnnxRuntimeArtifact(OnnxArtifact):
    """An ONNX model in a tuned ONNX Runtime session (see the module docstring).

    Args:
        model: The ONNX model written by prunec.
        io: Its flat interface (read from the model's metadata when ``None``).
        intra_op_threads: Threads inside one op.
        inter_op_threads: Threads across independent ops.
        providers: Execution providers; :func:`pick_providers` when ``None``.
        spinning: Let idle intra-op threads spin (ONNX Runtime's default).
    """

    name = "onnxruntime"

    def __init__(self, model: "onnx.ModelProto", io: IOSpec | None = None, *,
                 intra_op_threads: int = 2, inter_op_threads: int = 1,
                 providers: list[str] | None = None, spinning: bool = True) -> None:
        self.settings = {"intra_op_threads": intra_op_threads,
                         "inter_op_threads": inter_op_threads, "spinning": spinning}
        super().__init__(model, io, session_options(intra_op_threads, inter_op_threads, spinning),
                         providers or pick_providers())
        self.settings["providers"] = self.session.get_providers()

    @classmethod
    def load(cls, path: str | Path, **session: Any) -> "OnnxRuntimeArtifact":
        """Load an ``.onnx`` file written by :meth:`save` (options as in ``__init__``)."""

        model = load_onnx_file(Path(path))
        return cls(model, onnx_io(model, path), **session)


def lower_onnxruntime(program: "Program", *, intra_op_threads: int = 2,
                      inter_op_threads: int = 1, providers: list[str] | None = None,
                      opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                      fp16: bool = False, check: bool = True, atol: float | None = None,
                      rtol: float | None = None, spinning: bool = True) -> OnnxRuntimeArtifact:
    """Lower ``program`` to ONNX and serve it with a tuned ONNX Runtime session.

    Args:
        program: The program (not mutated).
        intra_op_threads: Threads inside one op.
        inter_op_threads: Threads across independent ops.
        providers: Execution providers; CUDA when available, else CPU.
        opset: As in :func:`~prunec.backends.onnx_backend.lower_onnx`.
        dynamic_batch: Likewise.
        fp16: Likewise.
        check: Likewise (tolerances from :data:`TOLERANCES` unless given).
        atol: Likewise.
        rtol: Likewise.
        spinning: Intra-op spinning (see the module docstring).

    Raises:
        BackendUnavailable: an ONNX package is missing.
        PrunecError: export failed, or an output is outside the tolerance.
    """
    for module in ("onnx", "onnxruntime", "onnx_graphsurgeon", "onnxscript"):
        require(module, backend="onnxruntime", pip=PIP_HINT)
    refuse_bfloat16(program, "onnxruntime")
    model, io = export_onnx(program, opset=opset, dynamic_batch=dynamic_batch, fp16=fp16)
    stamp(model, program, "onnxruntime")
    artifact = OnnxRuntimeArtifact(model, io, intra_op_threads=intra_op_threads,
                                   inter_op_threads=inter_op_threads, providers=providers,
                                   spinning=spinning)
    if check:
        tol = TOLERANCES["fp16" if fp16 else "fp32"]
        verify_artifact(program, artifact, io, atol=tol[0] if atol is None else atol,
                        rtol=tol[1] if rtol is None else rtol, backend="onnxruntime")
    return artifact


register(BackendSpec(
    "onnxruntime", lower_onnxruntime, requires=ONNX_REQUIREMENTS,
    sniff=is_onnx_file, load=OnnxRuntimeArtifact.load, sniff_order=50,
    summary="an ONNX graph served by a tuned ONNX Runtime session; saves .onnx "
            "(any ONNX file prunec wrote without another backend's mark loads as this)"))
