"""``prunec.compile`` and ``prunec.analyze``: the public entry points.

``compile`` captures a *copy* of the model (the caller's module is never mutated), runs the
passes in order through a :class:`~prunec.passes.base.PassContext`, lowers the result to the
chosen backend and reports MACs and parameters before and after, with one entry per pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from prunec.ir.capture import capture
from prunec.ir.channels import ChannelAnalysis, analyze_channels
from prunec.ir.program import Program
from prunec.passes.base import PassContext
from prunec.passes.instruments import CheckOutputs
from prunec.report import Report

__all__ = ["compile", "analyze", "CompiledModel", "Report"]


@dataclass
class CompiledModel:
    """The result of :func:`compile`.

    Attributes:
        module: An ``nn.Module`` called exactly like the original model.
        program: The pruned Program (graph, parameters, history).
        artifact: The backend's artifact (the module itself for ``backend="torch"``).
        report: Costs before/after and per-pass statistics.
    """

    module: torch.nn.Module
    program: Program
    artifact: Any
    report: Report

    def __call__(self, *args, **kwargs):
        return self.artifact(*args, **kwargs)

    def save(self, path):
        return self.artifact.save(path)


def compile(  # noqa: A001 - the public name the design asks for
    model: torch.nn.Module,
    example_inputs: Any,
    passes: Sequence = (),
    *,
    example_kwargs: dict | None = None,
    backend: str = "torch",
    backend_options: dict | None = None,
    train: bool = False,
    dynamic: bool | tuple | dict = True,
    instruments: Sequence | None = None,
) -> CompiledModel:
    """Capture ``model``, run ``passes``, lower to ``backend``.

    Args:
        model: The trained model; never mutated.
        example_inputs: A tensor or tuple of positional inputs.
        passes: Pass objects, e.g. ``[prunec.passes.MagnitudePruning(0.5)]``.
        example_kwargs: Keyword example inputs (``attention_mask``...).
        backend: ``torch`` (default), ``onnx``, ``onnxruntime``, ``tensorrt`` or ``inductor``.
        backend_options: Keyword options for the backend (opset, threads, fp16...).
        train: Capture in train mode (for pruning during training).
        dynamic: See :func:`prunec.ir.capture.capture`.
        instruments: Objects with ``before``/``after`` hooks run around every pass; by
            default :class:`~prunec.passes.instruments.CheckOutputs`.
    """
    from prunec.ir.cost import count_macs, count_params

    program = capture(model, example_inputs, example_kwargs, train=train, dynamic=dynamic)
    report = Report(count_macs(program), count_params(program), backend=backend)
    if instruments is None:
        instruments = (CheckOutputs(),)
    ctx = PassContext(tuple(instruments))
    for pass_ in passes:
        result = ctx.run(pass_, program)
        report.passes.append({"pass": type(pass_).__name__, "modified": result.modified,
                              **result.stats})
    report.macs_after, report.params_after = count_macs(program), count_params(program)
    artifact = _lower(program, backend, backend_options or {})
    return CompiledModel(program.gm, program, artifact, report)


def _lower(program: Program, backend: str, options: dict):
    if backend == "torch" and not options:
        return program.gm
    from prunec.backends import lower

    return lower(program, backend, **options)


def analyze(model: torch.nn.Module, example_inputs: Any, example_kwargs: dict | None = None,
            **capture_options) -> ChannelAnalysis:
    """The channel groups of ``model``; ``print()`` it for a table."""
    return analyze_channels(capture(model, example_inputs, example_kwargs, **capture_options))
