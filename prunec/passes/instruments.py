"""Instruments: checks and dumps that run around passes (DESIGN.md contract 8).

An instrument has optional ``before(pass_, program)`` and ``after(pass_, program, result)``
hooks; :class:`~prunec.passes.base.PassContext` calls them. Pass code never verifies itself.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.utils._pytree as pytree

from prunec.backends.base import _batch_inputs, max_abs_diff
from prunec.errors import VerificationError
from prunec.fileio import atomic_write_text
from prunec.ir.interpret import ProgramInterpreter, scratch_state
from prunec.ir.program import Program
from prunec.passes.base import pass_signature, Timing
from prunec.rewrite.reference import reference_program

__all__ = ["CheckOutputs", "DumpIR", "Timing", "random_inputs"]


class CheckOutputs:
    """Numerical verification of every pass against the program before it.

    Before a pass, the program is copied cheaply (:meth:`Program.clone` with shared tensors:
    the graph and modules are new, no weight is copied). After it:

    * a pass that reports ``modified=False`` must not have changed the program (its version);
    * a pass that modified the program is checked by its ``guarantee`` (see
      :class:`~prunec.passes.base.Pass`): the program after must equal the reference built
      from the program before and the pass's plan (:func:`prunec.rewrite.reference_program`:
      removed units zeroed, or compensated channels replaced by their means);
    * outputs must keep their structure, shapes and dtypes, and be finite where the
      reference is.

    Inputs: the example inputs, and one random batch of another batch size when the batch
    axis is dynamic (else of the same shape): floating inputs are drawn from N(0, 1), integer
    inputs (token ids, masks) reuse the example values. The caller's tensors are never passed
    (a model writing into its input cannot change them).

    Tolerance by output dtype, scale-aware (``max|ref - out| <= atol + rtol * max|ref|``):
    :data:`TOLERANCES`. Cost: one graph copy plus four forward passes (two inputs, before
    and after) per modifying pass; ``verify=False`` in :func:`prunec.compile` turns it off.

    A pass with no guarantee, a train-mode program (dropout and batch statistics are not
    deterministic) and a plan pruning groups that are normalised over (where zeroing is not
    removal) are recorded as unchecked with the reason, in ``result.stats.verified``.

    Raises:
        VerificationError: naming the pass, the input set, the output and the error.
    """

    TOLERANCES = {torch.float64: (1e-7, 1e-6), torch.float32: (1e-5, 1e-4),
                  torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2)}

    def __init__(self, *, random_batch: bool = True, seed: int = 0):
        self.random_batch = random_batch
        self.seed = seed
        self._before: Program | None = None
        self._version = -1

    def before(self, pass_, program: Program) -> None:
        self._version = program.version
        self._before = None if program.training else program.clone(share_tensors=True)
        if self._before is not None:
            _share_channel_analysis(program, self._before)

    def after(self, pass_, program: Program, result) -> None:
        before, self._before = self._before, None
        name = pass_signature(pass_)
        if not result.modified:
            if program.version != self._version:
                raise VerificationError(f"{name} reported modified=False but changed the program.")
            return
        why = self._why_unchecked(pass_, program, result)
        if not why:
            reference, overrides, why = reference_program(before, result.plan)
        if why:
            result.stats.verified = f"not checked: {why}"
            return
        worst = 0.0
        for label, (args, kwargs) in self._input_sets(program):
            with torch.no_grad():
                expected = ProgramInterpreter(reference, overrides=overrides).call(
                    *_fresh(args, kwargs))
                fresh_args, fresh_kwargs = _fresh(args, kwargs)
                with scratch_state(program.gm):  # state the forward writes stays as it was
                    got = program.run(*fresh_args, **fresh_kwargs)
            worst = max(worst, _compare(expected, got, f"{name}, {label}", self.TOLERANCES,
                                        pass_.guarantee))
        result.stats.verified = f"{pass_.guarantee} equivalence, max abs diff {worst:.2g}"

    @staticmethod
    def _why_unchecked(pass_, program: Program, result) -> str:
        if program.training:
            return "train-mode program (dropout and batch statistics are not deterministic)"
        if getattr(pass_, "guarantee", None) is None:
            return "the pass declares no guarantee"
        if result.plan is None:
            return "the pass reported no plan"
        return ""

    def _input_sets(self, program: Program) -> list:
        sets = [("example inputs", (program.example_args, program.example_kwargs))]
        if self.random_batch:
            sets.append(random_inputs(program, seed=self.seed))
        return sets


def _share_channel_analysis(program: Program, clone: Program) -> None:
    """Give ``clone`` the channel analysis ``program`` already holds for its version.

    The clone has the same graph (same node names, same version), so the analysis is the
    same; it names nodes and parameters by string, so sharing it is safe. Without this the
    reference of every verified pass analyses the whole graph again (on a Llama-shaped 1B:
    about 4 s and 0.1 GiB held through the check).
    """
    key = ("channels", program.version)
    if key in program._cache:  # noqa: SLF001 - the per-version cache of Program.analysis
        clone._cache[key] = program._cache[key]  # noqa: SLF001


def _fresh(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Clones of the inputs, so that a model writing into its input changes nothing outside."""
    clone = lambda x: x.clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
    return pytree.tree_map(clone, tuple(args)), pytree.tree_map(clone, dict(kwargs))


def random_inputs(program: Program, seed: int = 0) -> tuple[str, tuple[tuple, dict]]:
    """``(label, (args, kwargs))``: a random batch shaped like the examples, one larger along
    a dynamic batch axis. Floating inputs ~ N(0, 1); integer and boolean inputs (token ids,
    masks) reuse the example values (random ids could be out of range)."""
    leaves, spec = pytree.tree_flatten((tuple(program.example_args), dict(program.example_kwargs)))
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    tensor_leaves = [x for x in leaves if isinstance(x, torch.Tensor)]
    batched = iter(_batch_inputs(placeholders, leaves))
    batch = next((x.shape[0] + 1 for x in tensor_leaves if x.dim()), None)
    gen = torch.Generator().manual_seed(seed)
    new, resized = [], False
    for x in leaves:
        if isinstance(x, torch.Tensor):
            if next(batched) and batch is not None:
                x, resized = x[torch.arange(batch, device=x.device) % x.shape[0]], True
            x = torch.randn(x.shape, generator=gen).to(x) if x.is_floating_point() else x.clone()
        new.append(x)
    label = f"a random batch of {batch}" if resized else "a random batch"
    return label, pytree.tree_unflatten(new, spec)


def _compare(expected, got, where: str, tolerances: dict, kind: str) -> float:
    exp_leaves, exp_spec = pytree.tree_flatten(expected)
    got_leaves, got_spec = pytree.tree_flatten(got)
    if exp_spec != got_spec or len(exp_leaves) != len(got_leaves):
        raise VerificationError(f"{where}: the outputs changed structure ({got_spec} != {exp_spec}).")
    worst = 0.0
    for i, (e, g) in enumerate(zip(exp_leaves, got_leaves)):
        if not isinstance(e, torch.Tensor):
            continue
        if e.shape != g.shape or e.dtype != g.dtype:
            raise VerificationError(f"{where}: output {i} is {tuple(g.shape)} {g.dtype}, expected "
                                    f"{tuple(e.shape)} {e.dtype}.")
        if not e.is_floating_point():
            if not torch.equal(e, g):
                raise VerificationError(f"{where}: integer output {i} differs from the reference.")
            continue
        atol, rtol = tolerances.get(e.dtype, tolerances[torch.float32])
        finite = torch.isfinite(e)
        if not torch.equal(finite, torch.isfinite(g)):
            raise VerificationError(f"{where}: output {i} has NaN/inf where the reference has none.")
        err = max_abs_diff(e[finite], g[finite]) if finite.any() else 0.0
        bound = atol + rtol * (float(e[finite].abs().max()) if finite.any() else 0.0)
        if not err <= bound:
            raise VerificationError(
                f"{where}: output {i} differs from the {kind}-equivalent reference by max abs "
                f"diff {err:.3g} (allowed {bound:.3g}). The rewrite is wrong for this model: "
                f"please report it; verify=False skips the check.")
        worst = max(worst, err)
    return worst


class DumpIR:
    """Write the graph's code after every pass to ``directory/NN_<pass>.py``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._count = 0

    def after(self, pass_, program, result) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        path = self.directory / f"{self._count:02d}_{type(pass_).__name__}.py"
        atomic_write_text(path, program.gm.code)
