"""``prunec.compile`` and ``prunec.analyze``: the public entry points.

``compile`` captures the model (the caller's module is never mutated), replays saved plans,
runs the passes in order through a :class:`~prunec.passes.base.PassManager` (each pass
verified numerically by default), lowers the result to the chosen backend and reports MACs
and parameters before and after, with one entry per pass. ``load`` restores a saved artifact.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from prunec import backends
from prunec.frontends.onnx import SOURCE_KEY, is_onnx_model, onnx_source
from prunec.errors import PrunecError
from prunec.ir.capture import capture
from prunec.ir.channels import ChannelAnalysis, analyze_channels
from prunec.ir.program import Program
from prunec.passes.base import PassManager
from prunec.passes.instruments import CheckOutputs
from prunec.report import Report
from prunec.rewrite import PruningPlan, apply_plan
from prunec.validate import check_compile

__all__ = ["compile", "analyze", "load", "CompiledModel", "Report"]


class CompiledModel:
    """The result of :func:`compile`: the pruned program and its lowered artifact.

    Attributes:
        program: The pruned Program (graph, parameters, lineage in ``program.lineage``).
        report: Costs before/after and one entry per pass.
        backend: The backend name; ``backend_options`` its options.

    The artifact always reflects the program's current weights: when the program changes
    after lowering (``prunec.finetune``), the next use of :attr:`artifact` (a call, a save)
    lowers it again.
    """

    def __init__(self, program: Program, report: Report, backend: str = "torch",
                 backend_options: dict | None = None, artifact: Any = None):
        self.program = program
        self.report = report
        self.backend = backend
        self.backend_options = dict(backend_options or {})
        self._artifact = artifact
        self._lowered_version = program.version if artifact is not None else -1

    @property
    def module(self) -> torch.nn.Module:
        """The pruned model: with ``backend="module"`` a pruned copy of the caller's module
        (same class, its own forward; see :mod:`prunec.backends.module`), otherwise the
        pruned graph module, called exactly like the original model (eval mode)."""
        if self.backend == "module":
            return self.artifact.module
        return self.program.gm

    @property
    def plans(self) -> list[PruningPlan]:
        """Every plan applied, in order: replay them with ``prunec.compile(model, x,
        plans=compiled.plans)`` or save them with ``plan.to_json()``."""
        return list(self.program.plans)

    @property
    def artifact(self) -> Any:
        """The backend's artifact, lowered again if the program changed since."""
        if self._artifact is None or self._lowered_version != self.program.version:
            self._artifact = _lower(self.program, self.backend, self.backend_options)
            self._lowered_version = self.program.version
        return self._artifact

    def __call__(self, *args, **kwargs):
        return self.artifact(*args, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Save the artifact (``.pt2`` for torch and inductor, ``.onnx``, a TensorRT plan);
        :func:`prunec.load` restores it without the model's code."""
        from prunec.validate import check_save_path

        return self.artifact.save(check_save_path(path))

    def __repr__(self) -> str:
        return (f"<CompiledModel backend={self.backend!r} plans={len(self.program.plans)} "
                f"MACs {self.report.macs_before} -> {self.report.macs_after}>")


def compile(  # noqa: A001 - the public name the design asks for
    model: torch.nn.Module,
    example_inputs: Any,
    passes: Sequence = (),
    *,
    plans: Sequence[PruningPlan] = (),
    example_kwargs: dict | None = None,
    backend: str = "torch",
    backend_options: dict | None = None,
    train: bool = False,
    dynamic: bool | str | tuple | dict = True,
    verify: bool = True,
    instruments: Sequence | None = None,
    donate: bool = False,
) -> CompiledModel:
    """Capture ``model``, replay ``plans``, run ``passes``, lower to ``backend``.

    Args:
        model: The trained model; never mutated (unless ``donate=True``).
        example_inputs: A tensor or tuple of positional inputs.
        passes: Pass objects, e.g. ``[prunec.passes.MagnitudePruning(0.5)]``, run in order by
            a :class:`~prunec.passes.base.PassManager`, each on the program the previous
            one returned. A pass with a latency target and no backend of its own
            (``MagnitudePruning(latency=0.6)``) times on ``backend`` with
            ``backend_options``; the achieved latency against the program before the passes
            is then measured there and reported (``report.latency``; not with ``donate``).
        plans: Saved :class:`PruningPlan` objects (``compiled.plans``,
            ``PruningPlan.from_json``) replayed, in order, before the passes.
        example_kwargs: Keyword example inputs (``attention_mask``...).
        backend: ``torch`` (default), ``onnx``, ``onnxruntime``, ``tensorrt`` or ``inductor``.
        backend_options: Keyword options of the backend's lowering (each
            ``prunec.backends.<name>_backend.lower_<name>`` documents all of its own), e.g.
            ``onnxruntime``: ``intra_op_threads``, ``inter_op_threads``, ``providers``,
            ``fp16``, ``opset``, ``dynamic_batch``; ``onnx``: ``opset``, ``fp16``,
            ``dynamic_batch``; ``tensorrt``: ``fp16``, ``max_batch_size``,
            ``workspace_gb``; ``inductor``: ``mode``, ``aot``; ``torch`` takes none.
        train: Capture in train mode (for pruning during training).
        dynamic: See :func:`prunec.ir.capture.capture`.
        verify: Check every pass numerically against the program before it
            (:class:`~prunec.passes.instruments.CheckOutputs`; about four extra forward
            passes per pass).
        instruments: Extra instruments run around every pass (``Timing``, ``DumpIR``...).
        donate: Give up ``model``'s weights to save memory (for models near the machine's
            memory): every parameter a rewrite slices has its storage released as soon as
            its pruned copy exists, so peak memory grows by little more than one tensor
            instead of by the pruned copies. ``model`` is consumed: its sliced parameters
            become empty tensors (do not call it afterwards). Needs ``verify=False``: the
            checks compare against the released weights. The one exception to "the model is
            never mutated", taken only on request.

    Raises:
        PrunecError: invalid arguments, a failing pass (named, with the passes before it),
            a rewrite that fails verification, or a backend that is not available.
    """
    start = time.perf_counter()
    source = None
    if is_onnx_model(model):  # ONNX in, ONNX out: passes run on a stand-in of the file
        source, model, example_inputs, dynamic, passes = _onnx_stand_in(
            model, example_inputs, backend, train, passes)
    # Every argument is checked before capture, the expensive part (DESIGN contract 9).
    example_inputs, example_kwargs, passes, backend_options = check_compile(
        model, example_inputs, passes, example_kwargs=example_kwargs, backend=backend,
        backend_options=backend_options, train=train, dynamic=dynamic, verify=verify,
        instruments=instruments, plans=plans, donate=donate)
    from prunec.passes.latency import achieved_latency, bind_backend, latency_targets

    passes = bind_backend(list(passes), backend, backend_options)  # latency=0.6: this backend
    program = capture(model, example_inputs, example_kwargs, train=train, dynamic=dynamic)
    program.donated = donate
    sizes = ({n: t.numel() for n, t in _named_tensors(model)}
             if donate and isinstance(model, torch.nn.Module) else {})
    if source is not None:
        program.gm.meta[SOURCE_KEY] = source
    report = Report.start(program, model=source.name if source else model, backend=backend)
    for plan in plans:
        apply_plan(program, plan)
        report.passes.append({"pass": "replay", "modified": True, "plan_groups": len(plan.keep)})
    # The program before the passes, kept (sharing its tensors) to time the achieved latency.
    dense = program.clone(share_tensors=True) if latency_targets(passes) and not donate else None
    chain = ([CheckOutputs()] if verify else []) + list(instruments or ())
    manager = PassManager(passes, chain)
    program = manager.run(program)
    for pass_, result in zip(manager.passes, manager.results):
        report.add_pass(pass_, result)
    if sizes:
        _refuse_calls_once_donated(model, sizes)
    options = dict(backend_options or {})
    if backend == "module":  # the write-back needs the model the program was captured from
        options.setdefault("model", model)
    artifact = _lower(program, backend, options)
    if dense is not None:
        report.latency = achieved_latency(dense, program, latency_targets(passes)[-1])
    report.finish(program, seconds=time.perf_counter() - start)
    return CompiledModel(program, report, backend, options, artifact)


def _named_tensors(model: torch.nn.Module):
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def _refuse_calls_once_donated(model: torch.nn.Module, sizes: dict[str, int]) -> None:
    """A donated model whose weights were released says so when called (instead of a
    shape error from an empty weight)."""
    released = [n for n, t in _named_tensors(model) if t.numel() == 0 and sizes.get(n)]
    if not released:
        return

    def refuse(*_: Any) -> None:
        raise PrunecError(
            f"This model was donated to prunec.compile(..., donate=True): its sliced weights "
            f"({', '.join(released[:3])}{', ...' if len(released) > 3 else ''}) were released "
            f"to save memory, so it can no longer run. Call the compiled model instead, or "
            f"compile without donate=True to keep the original.")

    model.register_forward_pre_hook(refuse)


def _lower(program: Program, backend: str, options: dict):
    if onnx_source(program) is not None:  # the plan written back into the user's file
        from prunec.backends.onnx_original import lower_original

        return lower_original(program, backend, **options)
    return backends.lower(program, backend, **options)


def _onnx_stand_in(model: Any, example_inputs: Any, backend: str, train: bool,
                   passes: Sequence = ()) -> tuple:
    """``(source, stand-in module, its example args, dynamic=False, passes)`` for an ONNX
    model; passes with calibration items are copied with the items in the stand-in's form
    (numpy -> torch; dicts by input name as keywords, or in input order where names are not
    identifiers). The caller's pass objects are left as they are."""
    from prunec.backends.onnx_original import ORIGINAL_BACKENDS
    from prunec.errors import InvalidArgumentError
    from prunec.frontends.onnx import open_onnx

    if backend not in ORIGINAL_BACKENDS:
        raise InvalidArgumentError(f"backend {backend!r} cannot take an ONNX model; use one "
                                   f"of {list(ORIGINAL_BACKENDS)}.")
    if train:
        raise InvalidArgumentError("train=True needs an nn.Module; an ONNX file is pruned "
                                   "in eval mode.")
    source = open_onnx(model, example_inputs)
    if isinstance(passes, (list, tuple)):
        passes = [_with_calibration(p, source) for p in passes]
    return source, source.module, source.example_args, False, passes


def _with_calibration(pass_: Any, source: Any) -> Any:
    if not isinstance(getattr(pass_, "calibration", None), (list, tuple)):
        return pass_
    import copy

    pass_ = copy.copy(pass_)
    pass_.calibration = source.calibration_items(pass_.calibration)
    return pass_


def load(path: str | Path, *, trust: bool = False) -> Any:
    """Load an artifact saved by ``compiled.save(path)`` or ``artifact.save(path)``, without
    the model's code: a ``.pt2`` (torch export or AOTInductor package), an ``.onnx`` file, or
    a TensorRT plan with its ``.json`` sidecar.

    Loading never runs code from the file: nothing is unpickled, nothing imported, and a
    torch ``.pt2`` or ONNX file is checked before it is read (README, "Trust model").
    An AOTInductor package or a TensorRT engine is native code by nature: loading one
    needs ``trust=True``, which says you trust whoever made the file.

    Raises:
        PrunecError: the file is not a prunec artifact, is damaged or crafted (the message
            says how), or holds native code and ``trust`` is not set.
        OSError: the file cannot be read (naming it).
    """
    return backends.load(path, trust=trust)


def analyze(model: torch.nn.Module, example_inputs: Any, example_kwargs: dict | None = None,
            **capture_options) -> ChannelAnalysis:
    """The channel groups of ``model`` (an ``nn.Module``, or an ``.onnx`` path / ``ModelProto``
    with ``example_inputs`` by graph-input name); ``print()`` it for a table. Its ``blocks`` attribute
    lists the residual blocks (:class:`~prunec.ir.blocks.BlockAnalysis`: which branches can
    be removed whole, their MACs, or why not): ``print(analysis.blocks)``."""
    from prunec.ir.blocks import analyze_blocks

    if is_onnx_model(model):  # the stand-in of the file, at the example shapes
        from prunec.frontends.onnx import open_onnx

        source = open_onnx(model, example_inputs)
        model, example_inputs, example_kwargs = source.module, source.example_args, None
        capture_options = {"dynamic": False}
    program = capture(model, example_inputs, example_kwargs, **capture_options)
    analysis = analyze_channels(program)
    analysis.blocks = analyze_blocks(program)
    return analysis
