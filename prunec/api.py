"""``prunec.compile`` and ``prunec.analyze``: the public entry points.

``compile`` captures the model (the caller's module is never mutated), replays saved plans,
runs the passes in order through a :class:`~prunec.passes.base.PassManager` (each pass
verified numerically by default), lowers the result to the chosen backend and reports MACs
and parameters before and after, with one entry per pass. ``load`` restores a saved artifact.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from prunec import backends
from prunec.backends.compiled import CompiledModel, lower_program
from prunec.backends.onnx_original import ORIGINAL_BACKENDS
from prunec.frontends.onnx import SOURCE_KEY, is_onnx_model, open_onnx
from prunec.errors import InvalidArgumentError, PrunecError
from prunec.ir.capture import capture
from prunec.ir.blocks import analyze_blocks
from prunec.ir.channels import ChannelAnalysis, analyze_channels
from prunec.ir.program import Program
from prunec.passes.base import PassManager, record_unchanged
from prunec.passes.instruments import CheckOutputs
from prunec.passes.latency import achieved_latency, bind_backend, latency_targets
from prunec.report import PassStats, Report
from prunec.rewrite import PruningPlan, apply_plan
from prunec.ir.capture_checks import check_dynamic, check_example_inputs, check_model
from prunec.passes.base import check_passes

__all__ = ["compile", "analyze", "load", "CompiledModel", "Report"]


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
            ``PruningPlan.from_json``) replayed, in order, before the passes. A plan that
            says which pass made it (``plan.source``, saved in its JSON since this version)
            is recorded under that pass and its config, so the report names it and that
            pass is a no-op when also run; an older plan is recorded as ``"replay"``.
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

    passes = bind_backend(list(passes), backend, backend_options)  # latency=0.6: this backend
    program = capture(model, example_inputs, example_kwargs, train=train, dynamic=dynamic)
    program.donated = donate
    sizes = ({n: t.numel() for n, t in _named_tensors(model)}
             if donate and isinstance(model, torch.nn.Module) else {})
    if source is not None:
        program.gm.meta[SOURCE_KEY] = source
        program.capture_notes += source.opaque  # nodes ONNX Runtime runs, channels kept
    report = Report.start(program, model=source.name if source else model, backend=backend)
    for plan in plans:
        _replay(program, plan)
    # The program before the passes, kept (sharing its tensors) to time the achieved latency.
    dense = program.clone(share_tensors=True) if latency_targets(passes) and not donate else None
    chain = ([CheckOutputs()] if verify else []) + list(instruments or ())
    manager = PassManager(passes, chain)
    program = manager.run(program)
    report.read_lineage(program)  # every replay and pass run, as the lineage records them
    if sizes:
        _refuse_calls_once_donated(model, sizes)
    options = dict(backend_options or {})
    if backend == "module":  # the write-back needs the model the program was captured from
        options.setdefault("model", model)
    artifact = lower_program(program, backend, options)
    if dense is not None:
        report.latency = achieved_latency(dense, program, latency_targets(passes)[-1])
    report.finish(program, seconds=time.perf_counter() - start)
    return CompiledModel(program, report, backend, options, artifact)


def _replay(program: Program, plan: PruningPlan) -> None:
    """Apply a saved ``plan``, recorded in the lineage under the pass that made it when the
    plan says so (``plan.source``: then running that pass again is a no-op), else as
    ``"replay"``; a plan that changes nothing is recorded as a step that changed nothing."""
    stats = PassStats(plan_groups=len(plan.keep), plan_blocks=[b.key for b in plan.blocks],
                      plan_compensations=len(plan.compensations))
    config = dict(plan.source) or None
    steps = len(program.lineage)
    apply_plan(program, plan, config=config, stats=stats)
    if len(program.lineage) == steps:
        record_unchanged(program, (config or {}).get("pass", "replay"), config or {}, stats)


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


def check_compile(model: Any, example_inputs: Any, passes: Any, *, example_kwargs: Any = None,
                  backend: Any = "torch", backend_options: Any = None, train: Any = False,
                  dynamic: Any = True, verify: Any = True, instruments: Any = None,
                  plans: Any = None, donate: Any = False) -> tuple[tuple, dict, list, dict]:
    """Every argument of :func:`prunec.compile`, before capture.

    Returns:
        ``(args, kwargs, passes, backend_options)``: the example inputs cloned, the passes as
        a list, the options as a dict.

    Raises:
        InvalidArgumentError / CaptureError: see the individual checks.
    """
    check_model(model)
    if any(t.is_meta for t in model.parameters()):
        raise InvalidArgumentError(
            "model has parameters on the meta device (no values): prunec checks the pruned "
            "model's outputs against the original's. Materialise the weights first "
            "(model.to_empty(device='cpu') and load a state dict).")
    args, kwargs = check_example_inputs(model, example_inputs, example_kwargs)
    passes = check_passes(passes)
    if plans is not None:
        _check_plans(plans)
    options = backends.registry.check_backend(backend, backend_options)
    for argument, flag in (("train", train), ("verify", verify), ("donate", donate)):
        if not isinstance(flag, bool):
            raise InvalidArgumentError(f"{argument} must be True or False, got {flag!r}.")
    if donate and verify:
        raise InvalidArgumentError(
            "donate=True releases the original weights as they are sliced, and verify=True "
            "checks every pass against them: pass verify=False with donate=True (or keep "
            "donate=False to verify).")
    if donate and train:
        raise InvalidArgumentError(
            "donate=True applies to eval-mode captures, which share the model's weights; a "
            "train=True capture copies them, so there is nothing to donate: drop donate.")
    check_dynamic(dynamic)
    if instruments is not None:
        if isinstance(instruments, (str, bytes)) or not isinstance(instruments, Iterable):
            raise InvalidArgumentError(f"instruments must be a list of instrument objects, got "
                                       f"{type(instruments).__name__}.")
    return args, kwargs, passes, options


def _check_plans(plans: Any) -> None:
    if isinstance(plans, PruningPlan) or not isinstance(plans, (list, tuple)):
        raise InvalidArgumentError(f"plans must be a list of PruningPlan, got "
                                   f"{type(plans).__name__}; wrap one plan in a list.")
    for i, plan in enumerate(plans):
        if not isinstance(plan, PruningPlan):
            raise InvalidArgumentError(f"plans[{i}] is {type(plan).__name__}, not a "
                                       f"PruningPlan (load saved ones with "
                                       f"PruningPlan.from_json).")


def _onnx_stand_in(model: Any, example_inputs: Any, backend: str, train: bool,
                   passes: Sequence = ()) -> tuple:
    """``(source, stand-in module, its example args, dynamic=False, passes)`` for an ONNX
    model; passes with calibration items are copied with the items in the stand-in's form
    (numpy -> torch; dicts by input name as keywords, or in input order where names are not
    identifiers). The caller's pass objects are left as they are."""

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

    if is_onnx_model(model):  # the stand-in of the file, at the example shapes

        source = open_onnx(model, example_inputs)
        model, example_inputs, example_kwargs = source.module, source.example_args, None
        capture_options = {"dynamic": False}
    program = capture(model, example_inputs, example_kwargs, **capture_options)
    analysis = analyze_channels(program)
    analysis.blocks = analyze_blocks(program)
    return analysis
