"""Capture: ``nn.Module`` + example inputs -> :class:`~prunec.ir.program.Program`.

Nothing of the caller's is touched, and the weights are not copied:

- **Structure copied, parameters shared (eval mode).** The module tree is copied with every
  parameter mapped to itself (``copy.deepcopy`` with a pre-filled memo), so capture costs no
  weight memory and the program's parameters *are* the caller's tensors until a rewrite
  slices them (slicing makes new tensors). Buffers are copied: a train-mode program updates
  batch-norm statistics in place, and those must never reach the caller's buffers. The copy
  gets the train/eval flag; the caller's flag is never set.
- **Parameters copied (train mode).** A program captured with ``train=True`` exists to be
  trained, and an optimizer writes its parameters in place: they are copies, so training it
  (``OneCyclePruner``, a user's loop) never writes into the caller's model.
- **Inputs never written.** Example inputs are cloned at the boundary, and when the forward
  writes in place into an input (``x.mul_(2)``), the captured graph clones that input first:
  the program computes the same outputs and never changes the tensors it is called with
  (a deployed artifact could not write into its inputs either). The capture notes say so.

Dynamic shapes (``dynamic=True``): axis 0 of every tensor input whose size equals the first
input's is the **batch**, declared explicitly as one ``Dim("batch", min=1)`` shared by those
inputs, even for a batch-1 example (size-1 axes are otherwise specialised by export); every
other axis of size > 1 is ``Dim.AUTO``. When that fails because the model cannot take a
symbolic size (window partitioning: ``SymIntArrayRef expected to contain only concrete
integers``; an LSTM: ``Cannot call numel() on tensor with symbolic sizes``; a batch the model
fixes), capture retries with fewer dynamic axes, in this order: batch dynamic with the other
axes static; fully static. Each retry is recorded in ``program.capture_notes`` for the
report. Every attempt traces fresh copies of the examples (a failed attempt can leave
dynamic-dimension marks on the tensors it traced), and what torch logs at warning level or
above during an attempt that is then retried (a fake kernel's 40-line error block) goes to
the ``prunec`` log (``-v``) and a capture note instead of standard error. Any failure is
a :class:`~prunec.errors.CaptureError` naming the module (and the ``torch.nn.functional``
op) where tracing stopped.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import re
import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from prunec.errors import CaptureError, PrunecError
from prunec.ir.capture_checks import check_dynamic, check_example_inputs, check_model, clone_inputs
from prunec.ir.interpret import is_written
from prunec.ir.program import BATCH_SYMBOLS, Program, refresh_meta, rehint
from prunec.progress import log

__all__ = ["capture", "auto_dynamic_shapes", "share_weights_copy", "clone_inputs"]

aten = torch.ops.aten

# Messages of failures that come from symbolic sizes: only these are worth a retry with
# fewer dynamic axes (any other failure would fail the same way with static shapes).
_SHAPE_FAILURES = re.compile(
    r"symbolic|SymInt|SymBool|Constraints violated|specializ|guard|"
    r"Dim\(|dynamic_shapes|concrete integers|"
    # torch.export 2.13 cannot match any dynamic-shapes spec against a non-tensor keyword
    # input that reaches the forward through ``**kwargs`` (``output_hidden_states=True`` of
    # a transformers model): an AssertionError of its spec walk; static shapes capture it.
    r"Must provide a tree_name", re.IGNORECASE)


@dataclass(frozen=True)
class _Attempt:
    """One ``torch.export`` try: the dynamic-shapes layout and how to describe it."""

    label: str
    batch: bool  # axis 0 of the batch inputs declared Dim("batch", min=1)
    other: bool  # every other axis of size > 1 Dim.AUTO


_LADDER = (
    _Attempt("batch axis dynamic, other axes automatic", True, True),
    _Attempt("batch axis dynamic, other axes static", True, False),
    _Attempt("all axes static", False, False),
)


# ---------------------------------------------------------------------------- boundary copies
def share_weights_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model``'s module tree that shares its parameters and copies its buffers.

    Every parameter (tied ones included) maps to itself in the deepcopy memo, so no weight
    is duplicated; modules, hooks, buffers and other attributes are copied, so setting the
    copy's train flag or updating its buffers never reaches ``model``.
    """
    memo: dict[int, Any] = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return copy.deepcopy(model, memo)


# ---------------------------------------------------------------------------- dynamic shapes
def auto_dynamic_shapes(args: tuple, kwargs: dict, *, batch: bool = True,
                        other: bool = True) -> tuple[tuple, dict]:
    """The ``(args, kwargs)`` dynamic-shape specs of one capture attempt.

    Args:
        args: Positional example inputs.
        kwargs: Keyword example inputs.
        batch: Declare axis 0 of every tensor whose axis-0 size equals the first tensor's
            as one shared ``Dim("batch", min=1)``.
        other: ``Dim.AUTO`` on every other axis of size > 1 (size-1 axes stay static).

    Returns:
        Specs shaped like ``(args, kwargs)``: a ``{axis: Dim}`` dict per tensor, ``None``
        for other leaves.
    """
    tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    batch_size = next((t.shape[0] for t in tensors if t.dim() > 0), None)
    batch_dim = torch.export.Dim("batch", min=1)

    def spec(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return None
        axes: dict[int, Any] = {}
        for i in range(x.dim()):
            if i == 0 and batch and x.shape[0] == batch_size:
                axes[0] = batch_dim
            elif other and x.shape[i] > 1:
                axes[i] = torch.export.Dim.AUTO
        return axes

    return pytree.tree_map(spec, tuple(args)), pytree.tree_map(spec, dict(kwargs))


def _named_shapes(model: torch.nn.Module, args: tuple, kwargs: dict,
                  specs: tuple[tuple, dict]) -> dict:
    """Specs keyed by the forward's parameter names (``*args`` / ``**kwargs`` included), the
    form export takes for any mix of positional and keyword inputs."""
    signature = inspect.signature(model.forward)
    bound = signature.bind(*specs[0], **specs[1])
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        named[name] = tuple(value) if kind is inspect.Parameter.VAR_POSITIONAL else value
    return named


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    leaves = pytree.tree_leaves((args, kwargs))
    return next((x.shape[0] for x in leaves if isinstance(x, torch.Tensor) and x.dim() > 0), None)


# ---------------------------------------------------------------------------- capture
def capture(
    model: torch.nn.Module,
    example_inputs: Any,
    example_kwargs: dict | None = None,
    *,
    train: bool = False,
    dynamic: bool | str | tuple | dict = True,
) -> Program:
    """Capture ``model`` as a Program without touching it or copying its weights.

    Args:
        model: The user's module. In eval mode its parameters are shared with the program
            (until a rewrite slices them), in train mode copied; nothing of it is written,
            its train flag included.
        example_inputs: A tensor or a tuple of positional inputs (cloned at the boundary).
        example_kwargs: Keyword inputs (e.g. ``attention_mask``).
        train: Capture in train mode (dropout, batch-norm statistics updates) instead of eval.
        dynamic: ``True``: batch axis dynamic (minimum 1) and ``Dim.AUTO`` elsewhere, with
            the retries described in the module docstring; ``"batch"``: only the batch axis
            dynamic (then fully static if that fails) - much faster to export for models
            whose image sizes go through window partitioning (a 2-layer Swin: 3 s static
            against 130 s with symbolic image axes, almost all of it torch.export's symbolic
            shape reasoning); ``False``: fully static; or an explicit ``dynamic_shapes`` spec
            as ``torch.export`` takes it (one attempt).

    Returns:
        The Program; ``program.capture_notes`` lists what capture had to give up (axes made
        static, inputs written in place by the forward).

    Raises:
        CaptureError: naming the module and op where tracing failed, and what to try.
    """
    check_model(model)
    check_dynamic(dynamic)
    args, kwargs = check_example_inputs(model, example_inputs, example_kwargs)
    kwargs, cache_note = _kv_cache_off(model, kwargs)
    work = copy.deepcopy(model) if train else share_weights_copy(model)
    work.train(train)
    gm, notes = _export_with_retries(work, args, kwargs, train=train, dynamic=dynamic,
                                     name=type(model).__name__)
    _check_dtypes(gm, type(model).__name__)
    notes += cache_note + _clone_written_inputs(gm)
    program = Program(gm, args, kwargs, training=train, capture_options={"dynamic": dynamic})
    program.capture_notes = notes
    return program


def _kv_cache_off(model: torch.nn.Module, kwargs: dict) -> tuple[dict, list[str]]:
    """A Hugging Face model whose config turns its KV cache on returns a ``Cache`` object,
    which is no tensor and which torch.export cannot flatten: capture it with
    ``use_cache=False`` unless the caller chose. The program then returns the outputs without
    the cache (a call may leave ``use_cache`` out: captured constants fill in); the model's
    config is not touched, so a module written back keeps generating with its cache."""
    config = getattr(model, "config", None)
    if "use_cache" in kwargs or getattr(config, "use_cache", None) is not True:
        return kwargs, []
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return kwargs, []
    if "use_cache" not in parameters:
        return kwargs, []
    return {**kwargs, "use_cache": False}, [
        f"captured with use_cache=False: {type(model).__name__} returns its KV cache when "
        f"use_cache is on, and a cache is not a tensor output (the model's config is "
        f"unchanged; pass example_kwargs={{'use_cache': ...}} to choose)"]


def _export_with_retries(work: torch.nn.Module, args: tuple, kwargs: dict, *, train: bool,
                         dynamic: bool | tuple | dict, name: str) -> tuple[fx.GraphModule, list]:
    """Export along the retry ladder; return the graph module and the notes.

    A failure that does not come from symbolic sizes is raised at once (static shapes would
    fail the same way). A failure that names the batch skips the attempts that keep the
    batch dynamic.
    """
    if isinstance(dynamic, str):  # "batch"
        attempts = list(_LADDER[1:])
    elif isinstance(dynamic, bool):
        attempts = list(_LADDER if dynamic else _LADDER[-1:])
    else:
        attempts = [None]
    notes: list[str] = []
    first: BaseException | None = None
    hidden: list[logging.LogRecord] = []  # torch's error logs of attempts that were retried
    while attempts:
        attempt = attempts.pop(0)
        with _held_torch_logs() as records:
            try:
                gm = _export_once(work, args, kwargs, attempt, dynamic, train)
            except Exception as exc:  # export raises many unrelated types; we re-raise one.
                failure = exc
            else:
                failure = None
        if failure is None:
            _release(records)
            break
        if isinstance(failure, PrunecError):  # the model's own clear refusal (a stand-in's)
            _release(records)
            raise failure
        first = first or failure
        text = f"{type(failure).__name__} {failure}"
        if not attempts or not _SHAPE_FAILURES.search(text):
            _release(records)
            raise _capture_error(name, work, failure, first) from failure
        hidden += _demote(records, attempt)
        if "(batch)" in text:  # the model fixes the batch size
            attempts = [a for a in attempts if not a.batch]
    if first is not None:
        notes.append(f"captured with {attempt.label}: {_first_line(first)}")
        if not attempt.batch and (dynamic is True or isinstance(dynamic, str)):
            notes.append(f"the batch size is fixed to {_batch_size(args, kwargs)}: the "
                         f"model does not trace with a symbolic batch axis")
    if hidden:
        notes.append(f"torch logged {len(hidden)} error(s) during the attempts that failed "
                     f"(first: {hidden[0].getMessage()[:120]}); kept in the 'prunec' log "
                     f"(-v), not printed")
    return gm, notes


# ---------------------------------------------------------------------------- torch's logs
class _Holder(logging.Handler):
    """Keeps the records torch logs during one export attempt instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _held_torch_logs():
    """Hold every record torch's loggers emit while the block runs (yields the list).

    torch logs a fake kernel's failure at ERROR with its traceback (``E1205 ...
    fake_tensor.py ... SymIntArrayRef expected to contain only concrete integers``, some 40
    lines) before raising it; when the static retry then succeeds, that block on standard
    error reads like a crash. Each torch logger that has handlers gets the holder instead
    (they do not propagate), and ``torch`` itself stops propagating to the root for the
    duration; the caller releases or demotes the records afterwards.
    """
    holder = _Holder()
    manager = logging.Logger.manager
    loggers = [logging.getLogger("torch")] + [
        lg for name, lg in list(manager.loggerDict.items())
        if name.startswith("torch.") and isinstance(lg, logging.Logger) and lg.handlers]
    saved = [(lg, lg.handlers, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers = [holder]
    loggers[0].propagate = False
    try:
        yield holder.records
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate


def _release(records: list[logging.LogRecord]) -> None:
    """Emit held records as torch would have (the attempt that counts: its logs stand)."""
    for record in records:
        logging.getLogger(record.name).handle(record)


def _demote(records: list[logging.LogRecord], attempt: _Attempt | None) -> list:
    """Move warnings and errors of a failed attempt that is retried to the ``prunec`` log
    (a summary at info, ``-v``; the full record at debug, ``-vv``); release the rest
    (debug output the user asked torch for). Returns the demoted records."""

    kept = [r for r in records if r.levelno >= logging.WARNING]
    _release([r for r in records if r.levelno < logging.WARNING])
    label = attempt.label if attempt is not None else "the given dynamic shapes"
    for record in kept:
        log.info("capture: torch logged during the failed attempt (%s), retried: %s", label,
                 record.getMessage())
        log.debug("%s", _FORMAT.format(record))
    return kept


_FORMAT = logging.Formatter("%(name)s %(levelname)s: %(message)s")


def _export_once(work: torch.nn.Module, args: tuple, kwargs: dict, attempt: _Attempt | None,
                 explicit: Any, train: bool) -> fx.GraphModule:
    # Every attempt traces fresh copies: a failed attempt can leave dynamic-dimension marks
    # (``_dynamo_weak_dynamic_indices`` / ``_dynamo_dynamic_indices``) on the tensors it
    # traced, and export would read them as symbolic axes in the static retry.
    args, kwargs = clone_inputs((args, kwargs))
    trace_args, trace_kwargs = args, kwargs
    if attempt is None:
        shapes = explicit
    elif not attempt.batch and not attempt.other:
        shapes = None
    else:
        specs = auto_dynamic_shapes(args, kwargs, batch=attempt.batch, other=attempt.other)
        shapes = _named_shapes(work, args, kwargs, specs)
        if attempt.batch and _batch_size(args, kwargs) == 1:
            # Export specialises size-1 axes: trace a batch of 2 (the example twice), so the
            # graph holds for every batch size >= 1, the example's included.
            trace_args, trace_kwargs = _doubled_batch((args, kwargs))
    with torch.no_grad() if not train else contextlib.nullcontext():
        ep = torch.export.export(work, trace_args, trace_kwargs, dynamic_shapes=shapes,
                                 strict=False)
        gm = ep.module()
        if trace_args is not args:
            _rehint_batch(gm, args, kwargs)
        refresh_meta(gm)  # fails here for ops that cannot take the symbolic sizes (LSTM)
    return gm


def _rehint_batch(gm: fx.GraphModule, args: tuple, kwargs: dict) -> None:
    """Make the batch symbols' example values (hints) those of the real example, 1, after a
    trace on the doubled example: MACs and every size read from a hint (cost model, report)
    must describe the caller's example, not the trace's.

    Every symbolic size, stride or offset in the graph's metadata that depends on a batch
    symbol gets its hint recomputed with the batch at 1 (``SymNode._hint``: the shape
    environment itself is left alone, its ranges and guards describe the trace). The symbols
    are kept in ``gm.meta`` so that a later fake propagation can run at the traced batch and
    re-apply the hints (:func:`~prunec.ir.program.refresh_meta`).
    """
    leaves = pytree.tree_leaves((args, kwargs))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    symbols: set = set()
    for node, leaf in zip(placeholders, leaves):
        val = node.meta.get("val")
        if isinstance(leaf, torch.Tensor) and leaf.dim() and leaf.shape[0] == 1 \
                and isinstance(val, torch.Tensor) and isinstance(val.shape[0], torch.SymInt):
            expr = val.shape[0].node.expr
            if expr.is_Symbol:
                symbols.add(expr)
    if symbols:
        gm.meta[BATCH_SYMBOLS] = frozenset(symbols)
        rehint(gm, symbols, 1)


def _doubled_batch(tree: Any) -> Any:
    """Every tensor whose axis 0 has size 1, concatenated with itself along axis 0."""
    return pytree.tree_map(
        lambda x: torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() > 0
        and x.shape[0] == 1 else x, tree)


# ---------------------------------------------------------------------------- input writes
def _clone_written_inputs(gm: fx.GraphModule) -> list[str]:
    """Insert ``aten.clone`` after every placeholder that an in-place op writes into
    (directly or through a view), so running the program never changes its inputs."""
    notes = []
    for ph in [n for n in gm.graph.nodes if n.op == "placeholder"]:
        if not is_written(ph):
            continue
        with gm.graph.inserting_after(_last_placeholder(gm)):
            copy_node = gm.graph.call_function(aten.clone.default, (ph,))
        copy_node.meta = {k: v for k, v in ph.meta.items() if k == "val"}
        ph.replace_all_uses_with(copy_node, delete_user_cb=lambda u: u is not copy_node
                                 and u.op != "call_module")
        notes.append(f"forward writes in place into input {ph.name!r}; the program works on a "
                     f"copy of it (same outputs, the caller's tensor is never changed)")
    if notes:
        gm.graph.lint()
        gm.recompile()
    return notes


def _last_placeholder(gm: fx.GraphModule) -> fx.Node:
    return [n for n in gm.graph.nodes if n.op == "placeholder"][-1]


# ---------------------------------------------------------------------------- dtypes
# Ops that take no mixed floating dtypes (no type promotion), whose fake kernels do not check
# it: a float64 input reaching a float32 linear traces fine and fails only when run.
# (Norms are left out: they accept e.g. bfloat16 inputs with float32 affine parameters.)
_SAME_DTYPE_OPS = {
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "mm", "bmm", "addmm", "baddbmm", "matmul",
}


def _check_dtypes(gm: fx.GraphModule, name: str) -> None:
    """Refuse a graph where an op without type promotion gets tensors of mixed dtypes.

    Raises:
        CaptureError: naming the op, its module and the dtypes (usually an example input of
            another dtype than the model's parameters).
    """
    for node in gm.graph.nodes:
        packet = getattr(getattr(node.target, "overloadpacket", None), "__name__", None)
        if node.op != "call_function" or packet not in _SAME_DTYPE_OPS:
            continue
        dtypes = {a.meta["val"].dtype for a in node.args if isinstance(a, fx.Node)
                  and isinstance(a.meta.get("val"), torch.Tensor)
                  and a.meta["val"].dtype is not torch.bool}  # boolean masks are fine
        if len(dtypes) > 1:
            shown = " and ".join(sorted(str(d) for d in dtypes))
            raise CaptureError(
                f"torch.export could not capture {name}: aten.{packet} in {_module_of(node)} "
                f"gets {shown} tensors and does not convert between them. Check the example "
                f"inputs' dtypes: they must match the model's parameters (x.to(dtype)).")


def _module_of(node: fx.Node) -> str:
    """``"module 'fc1' (Linear)"``: the innermost user module that produced ``node``."""
    stack = [v for v in (node.meta.get("nn_module_stack") or {}).values() if v[0]]
    if not stack:
        return "the model's own forward"
    path, cls = stack[-1]
    cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", "")
    return f"module '{path}' ({cls_name})"


# ---------------------------------------------------------------------------- errors
def _capture_error(name: str, work: torch.nn.Module, exc: BaseException,
                   first: BaseException | None) -> CaptureError:
    where = _failing_place(work, exc) or f"{name}.forward"
    reason = f"{type(exc).__name__}: {_first_line(exc)}"
    remedy = _remedy(exc)
    tried = ""
    if first is not None and first is not exc:
        tried = f" (first attempt, with dynamic axes: {type(first).__name__}: {_first_line(first)})"
    return CaptureError(f"torch.export could not capture {name} at {where}: {reason}{tried}. "
                        f"{remedy}")


def _remedy(exc: BaseException) -> str:
    text = str(exc)
    found = re.search(r"Found <class '([\w.]+)'> in output", text)
    if found:  # an output pytree export cannot flatten, e.g. a KV cache
        cls = found.group(1).rsplit(".", 1)[-1]
        hint = (" A Hugging Face model returns its KV cache when use_cache is on: pass "
                "example_kwargs={'use_cache': False} (or set model.config.use_cache = False)."
                if "Cache" in cls else "")
        return (f"The forward returns a {cls}, which torch.export cannot flatten into "
                f"tensors.{hint} Otherwise return tensors, tuples, lists or dicts of them, "
                f"or register {cls} with torch.utils._pytree.register_pytree_node.")
    if re.search(r"scalar type|dtype|to have one of the following|expected .*(Long|Float)",
                 text, re.IGNORECASE):
        return ("Check the example inputs' dtypes: token ids must be integer (torch.long), "
                "images and features floating point, and of the model's parameter dtype.")
    if re.search(r"size mismatch|shape|must match|cannot be multiplied|expected input",
                 text, re.IGNORECASE):
        return "Check the example inputs' shapes against what the model expects."
    return ("Make the forward traceable (no data-dependent Python control flow, no "
            ".item()/.tolist() on activations), or pass dynamic=False if the failure concerns "
            "dynamic shapes.")


def _failing_place(work: torch.nn.Module, exc: BaseException) -> str:
    """``"module 'encoder.emb' (Embedding), in torch.nn.functional.embedding"``: the
    innermost module of ``work`` whose forward is on the traceback, and the functional op."""
    names = {id(m): n for n, m in work.named_modules()}
    module, op = None, None
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and id(owner) in names:
            module = owner
        if frame.f_code.co_filename.replace("\\", "/").endswith("torch/nn/functional.py"):
            op = op or frame.f_code.co_name
        tb = tb.tb_next
    if module is None:
        return ""
    path = names[id(module)] or "<root>"
    text = f"module '{path}' ({type(module).__name__})"
    return text + (f", in torch.nn.functional.{op}" if op else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # torch's C++ errors start with the build path ("/__w/pytorch/.../X.cpp:4963: "): noise
    return re.sub(r"^\S+\.(?:cpp|h|hpp):\d+: ", "", text[0])[:300] if text else ""
