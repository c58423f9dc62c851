"""The pass contract (DESIGN.md contract 3) and the score -> select -> plan skeleton.

A pass is configured in its constructor (keyword-only options) and called as
``pass_(program, ctx) -> PassResult(program, modified, plan, stats)`` with typed
statistics (:class:`~prunec.report.PassStats`) that the report reads. :class:`PassContext` runs
passes and the instruments around them (verification, timing, IR dumps: contract 8).

:class:`PruningPass` fixes the order of work for every pruning method:
``score`` (a tensor of importances per group) -> ``select`` (a :class:`PruningPlan`) ->
``apply_plan`` (the only rewrite). :class:`PassManager` runs a list of passes. Ratios count units against the program's *original*
group sizes, so a pass that already reached its target is a no-op when run again.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

import torch

from prunec import validate
from prunec.errors import InvalidArgumentError, PassError, PrunecError
from prunec.ir.channels import UNCHOOSABLE, ChannelAnalysis, ChannelGroup, analyze_channels
from prunec.ir.program import Program, Step
from prunec.passes.latency import check_latency, width_counts
from prunec.passes.sensitivity import OutputProbe, output_sensitivity
from prunec.report import PassStats
from prunec.rewrite import PruningPlan, apply_plan

__all__ = ["Pass", "PassBase", "PassResult", "PassStats", "PassContext", "PassManager", "PruningPass", "Timing", "candidate_groups",
           "check_ratio", "check_passes", "pass_signature"]


@dataclass
class PassResult:
    """What a pass returns.

    Attributes:
        program: The program after the pass (passes rewrite in place and return it; a pass
            may also return another Program, which the next pass then receives).
        modified: Whether the program changed. Honest: ``False`` means nothing was rewritten.
        plan: The plan the pass applied, if it pruned (also recorded in ``program.lineage``).
        stats: What the pass did, typed (:class:`~prunec.report.PassStats`: counts, seconds,
            verification...), which the report reads by attribute. A mapping given here
            (a pass written against the plain dict) is read into one.
    """

    program: Program
    modified: bool
    plan: PruningPlan | None = None
    stats: PassStats = field(default_factory=PassStats)

    def __post_init__(self) -> None:
        if not isinstance(self.stats, PassStats):
            self.stats = PassStats.of(self.stats)


class Pass(Protocol):
    """A pass: configured in its constructor, called as ``pass_(program, ctx)``.

    ``guarantee`` states what must hold between the program before and after the pass when it
    modifies it, for :class:`~prunec.passes.instruments.CheckOutputs`: ``"zeroing"`` (the
    pruned program equals the program before with the removed units' parameter slices set to
    zero), ``"mean"`` (equals it with each compensated value's removed channels replaced by
    their means), or ``None`` (nothing checkable, e.g. a pass that trains).
    """

    guarantee: str | None

    def __call__(self, program: Program, ctx: "PassContext") -> PassResult: ...


def pass_signature(pass_) -> str:
    """``ClassName(option=value, ...)`` from the pass's ``config()`` when it has one: how a
    pass is named in timings and errors (what it *did*, in words, is
    :func:`prunec.report.describe_pass`)."""
    config = pass_.config() if hasattr(pass_, "config") else {}
    options = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "pass")
    return f"{type(pass_).__name__}({options})"


class PassBase:
    """What every pass shares (DESIGN.md contract 3): its identity and the lineage check.

    A pass is configured in its constructor and called as ``pass_(program, ctx)``. Its
    identity, :meth:`config`, is its class name and its scalar options: the lineage records
    it with every plan the pass applies (``apply_plan(..., config=self.config())``), and
    :meth:`already_applied` reads it back, so a pass whose target is reached is a no-op when
    run again, on the same program or on a replay of it (:func:`prunec.rewrite.recapture`).
    A run that changes nothing records a no-op step (:meth:`unchanged`), which the report
    reads (why it kept everything) and idempotence does not count (see
    :mod:`prunec.ir.program`, "Idempotence").

    ``guarantee``: what holds between the program before and after the pass when it
    modifies it (see :class:`Pass`).
    """

    guarantee: str | None = None

    def config(self) -> dict:
        """The pass's identity: its class and constructor options (scalars)."""
        config = {"pass": type(self).__name__, **{k: v for k, v in vars(self).items()
                                                 if isinstance(v, (int, float, str, bool))}}
        if getattr(self, "latency_target", None) is not None:
            config.pop("ratio", None)  # a latency target replaces the ratio: no "ratio=0.0"
        return config

    def already_applied(self, program: Program) -> bool:
        """Whether this pass, with these options, is in ``program``'s lineage as a step that
        changed the program (a recorded no-op step does not count: the pass runs again)."""
        return self.config() in program.history

    def unchanged(self, program: Program, stats: PassStats) -> "PassResult":
        """Record this run in ``program``'s lineage as a step that changed nothing (empty
        plan, ``stats`` saying why) and return the matching result."""
        record_unchanged(program, type(self).__name__, self.config(), stats)
        return PassResult(program, False, stats=stats)

    def __call__(self, program: Program, ctx: "PassContext | None" = None) -> PassResult:
        raise NotImplementedError


class Timing:
    """Wall time of every pass, in ``result.stats.seconds`` and :attr:`seconds`.

    Every :class:`PassContext` runs one (the caller's, when it passes one): its ``before``
    runs last and its ``after`` first, so it times the pass alone, not the other
    instruments around it.
    """

    def __init__(self):
        self.seconds: list[tuple[str, float]] = []
        self._start = 0.0

    def before(self, pass_, program) -> None:
        self._start = time.perf_counter()

    def after(self, pass_, program, result) -> None:
        elapsed = time.perf_counter() - self._start
        result.stats.seconds = elapsed
        self.seconds.append((pass_signature(pass_), elapsed))


class PassContext:
    """What a running pass sees, and the runner of passes: it owns the instruments.

    Instruments are objects with any of ``should_run(pass_, program) -> bool``,
    ``before(pass_, program)`` and ``after(pass_, program, result)``; ``before`` hooks run in
    order, ``after`` hooks in reverse order (each instrument wraps the ones after it). A
    :class:`Timing` instrument is always among them (appended when not given), so every
    result has its ``seconds``.

    When a pass raises, the error is re-raised as a :class:`~prunec.errors.PrunecError`
    (the same subclass when it already was one, else :class:`~prunec.errors.PassError`)
    whose message names the failing pass with its options and the passes run before it in
    this context; the original exception is chained (``__cause__``). An exception raised by
    the caller's own data iterator passes through unchanged.
    """

    def __init__(self, instruments: Iterable = ()):
        self.instruments = list(instruments)
        if not any(isinstance(i, Timing) for i in self.instruments):
            self.instruments.append(Timing())
        self.done: list = []

    def run(self, pass_: Pass, program: Program) -> PassResult:
        """Run one pass with the instruments around it; the run is in the lineage of the
        program it returns (a pass that recorded no step of its own gets one: a no-op step
        when it changed nothing, a skipped one when an instrument skipped it)."""
        earlier = list(self.done)
        self.done.append(pass_)
        steps = len(program.lineage)
        if not all(getattr(i, "should_run", _yes)(pass_, program) for i in self.instruments):
            result = PassResult(program, False, stats=PassStats(skipped=True))
            _ensure_recorded(pass_, steps, program, result)
            return result
        try:
            for inst in self.instruments:
                getattr(inst, "before", _noop)(pass_, program)
            result = pass_(program, self)
            if not isinstance(result, PassResult):
                raise TypeError(f"a pass must return a PassResult, got {type(result).__name__}")
            for inst in reversed(self.instruments):
                getattr(inst, "after", _noop)(pass_, program, result)
        except Exception as exc:  # every failure is re-raised with the pipeline's context
            if validate.is_user_error(exc):  # the caller's own data loader failed: theirs
                raise
            raise _failure(pass_, earlier, exc) from exc
        _ensure_recorded(pass_, steps, program, result)
        return result


def record_unchanged(program: Program, name: str, config: dict, stats: PassStats | None) -> None:
    """Append a step that changed nothing (``modified=False``, an empty plan) for a pass run
    called ``name`` with ``config`` and ``stats``."""
    program.record(Step(name, dict(config), PruningPlan(), {}, stats, modified=False))


def _ensure_recorded(pass_, steps: int, program: Program, result: PassResult) -> None:
    """Record ``result`` in the lineage when the pass did not: a pass written against the
    :class:`Pass` protocol alone (no :class:`PassBase`) or a skipped one. A step it recorded
    through ``apply_plan`` without statistics gets the result's."""
    target = result.program
    if target is program:
        new = target.lineage[steps:]
    else:  # a program of its own (a clone shares the steps it started from)
        known = {id(s) for s in program.lineage}
        new = [s for s in target.lineage if id(s) not in known]
    if new:
        if new[-1].stats is None:
            new[-1].stats = result.stats
        return
    config = dict(pass_.config()) if hasattr(pass_, "config") else {}
    name = type(pass_).__name__
    if result.modified:  # changed outside apply_plan: recorded, though replay cannot redo it
        target.record(Step(name, config, result.plan or PruningPlan(), {}, result.stats))
    else:
        record_unchanged(target, name, config, result.stats)


class PassManager:
    """Runs passes in order, each on the program the previous one returned, through one
    :class:`PassContext` (which runs the instruments and names a failing pass).

    Args:
        passes: Pass objects (instances, not classes).
        instruments: Instruments run around every pass (verification, timing, IR dumps).
    """

    def __init__(self, passes, instruments=()):
        self.passes = check_passes(passes)
        self.instruments = list(instruments)
        self.results: list[PassResult] = []

    def run(self, program: Program) -> Program:
        """Run every pass; returns the final program (results in :attr:`results`)."""
        ctx = PassContext(self.instruments)
        self.results = []
        for pass_ in self.passes:
            result = ctx.run(pass_, program)
            self.results.append(result)
            program = result.program
        return program


def _failure(pass_, earlier: list, exc: Exception) -> PrunecError:
    done = [pass_signature(p) for p in earlier]
    before = f" after {', '.join(done)}" if done else " (the first pass)"
    message = f"pass {pass_signature(pass_)} failed{before}: {exc}"
    if isinstance(exc, PrunecError):
        try:
            return type(exc)(message)
        except TypeError:  # a subclass with another constructor
            pass
    return PassError(f"{message} ({type(exc).__name__}). If the model and options are "
                     f"valid, please report this with the model's class.")


def check_passes(passes: Any, argument: str = "passes") -> list:
    """A list (or tuple) of pass instances.

    Raises:
        InvalidArgumentError: a single pass not in a list, a pass class instead of an
            instance, or an element that is not callable.
    """
    if passes is None:
        return []
    if callable(passes) and not isinstance(passes, (list, tuple)):
        shown = passes.__name__ if isinstance(passes, type) else type(passes).__name__
        raise InvalidArgumentError(
            f"{argument} must be a list of passes, got a single {shown}; wrap it in a list: "
            f"{argument}=[{shown}(...)].")
    if isinstance(passes, (str, bytes, Mapping)) or not isinstance(passes, Iterable):
        raise InvalidArgumentError(f"{argument} must be a list of pass objects, e.g. "
                                   f"[prunec.passes.MagnitudePruning(0.5)], got "
                                   f"{type(passes).__name__}.")
    items = list(passes)
    for i, p in enumerate(items):
        if isinstance(p, type):
            raise InvalidArgumentError(
                f"{argument}[{i}] is the class {p.__name__}, not a pass: configure an "
                f"instance, e.g. {p.__name__}(0.5).")
        if not callable(p):
            raise InvalidArgumentError(
                f"{argument}[{i}] is {type(p).__name__} {p!r}, not a pass; passes are objects "
                f"such as prunec.passes.MagnitudePruning(0.5).")
    return items


def _noop(*_args) -> None:
    return None


def _yes(*_args) -> bool:
    return True


def check_ratio(ratio: float, where: str) -> float:
    """A ratio in ``[0, 1)`` (see :func:`prunec.validate.check_ratio`)."""
    return validate.check_ratio(ratio, where)


def candidate_groups(analysis: ChannelAnalysis, targets: str) -> list[ChannelGroup]:
    """``"all"``: every prunable group; ``"mlp"``: hidden groups of MLP/FFN blocks and conv
    bottlenecks (groups that cross no residual add and are not attention heads)."""
    if targets == "all":
        return analysis.prunable()
    if targets == "mlp":
        return [g for g in analysis.prunable() if g.is_mlp()]
    raise PrunecError(f"targets must be 'all' or 'mlp', got {targets!r}.")


def _keep_plan(groups: list[ChannelGroup], scores: dict[str, torch.Tensor],
               counts: dict[str, int]) -> PruningPlan:
    """Keep the ``counts[g]`` highest-scoring units of every group (in index order)."""
    keep = {}
    for g in groups:
        k = counts[g.key]
        if k < g.size:
            order = torch.argsort(scores[g.key].double(), descending=True, stable=True)
            keep[g.key] = sorted(order[:k].tolist())
    return PruningPlan(keep)


def unit_step(group: ChannelGroup, round_to: int) -> int:
    """Units to keep in multiples of, so that the kept channel count ``k * width`` of the
    group's widest axis is a multiple of ``round_to``.

    The widest axis carries the channels that a matmul or conv sees (``heads * head_dim``);
    a narrower axis of the same units (the head axis of ``[B, H, N, D]``, width 1) counts
    heads, which need no alignment: with ``head_dim = 64`` and ``round_to = 8`` any number
    of heads may be kept.
    """
    width = max((s.width for s in group.slots), default=1)
    return max(1, round_to // math.gcd(round_to, width))


class PruningPass(PassBase):
    """Base of pruning passes: subclasses implement :meth:`score`.

    Args:
        ratio: Fraction of candidate units removed, in ``[0, 1)``.
        scope: ``"global"`` ranks all candidate units together (scores normalised by their
            group's mean so that layers compare); ``"local"`` removes ``ratio`` of every group.
        targets: ``"all"`` or ``"mlp"`` (see :func:`candidate_groups`).
        round_to: Kept channel counts are multiples of this (or the group's full size).
        latency: Instead of ``ratio``: a latency target, a fraction of the dense latency or
            a :class:`~prunec.passes.latency.LatencyTarget`; the kept widths then come from
            an exact knapsack over measured latency tables (:mod:`prunec.passes.latency`).
    """

    name = "pruning"
    normalize_global = True
    guarantee: str | None = "zeroing"

    def __init__(self, *, ratio: float | None, scope: str = "global", targets: str = "all",
                 round_to: int = 8, latency=None):
        where = type(self).__name__
        if (ratio is None) == (latency is None):
            raise InvalidArgumentError(f"{where}: pass exactly one of ratio (fraction of units removed) "
                              f"and latency (fraction of the dense latency), got ratio={ratio!r}, "
                              f"latency={latency!r}.")
        self.latency_target = None
        if latency is not None:
            self.latency_target = check_latency(latency, where)
            self.latency = self.latency_target.fraction  # in config(): a reached target is a no-op
        self.ratio = check_ratio(ratio, where) if ratio is not None else 0.0
        scope = validate.check_choice(scope, ("global", "local"), where, "scope")
        targets = validate.check_choice(targets, ("all", "mlp"), where, "targets")
        round_to = validate.check_round_to(round_to, where)
        self.scope, self.targets, self.round_to = scope, targets, round_to

    # -- to implement ------------------------------------------------------------------
    def score(self, program: Program, groups: list[ChannelGroup], ctx: PassContext) -> dict[str, torch.Tensor]:
        """Importance of every unit of every group (higher = keep)."""
        raise NotImplementedError

    def compensate(self, program, groups, plan: PruningPlan, ctx: PassContext) -> None:
        """Add compensations to ``plan`` (mean folding); none by default."""

    def candidates(self, analysis: ChannelAnalysis) -> list[ChannelGroup]:
        """The groups this pass may prune (by default :func:`candidate_groups`)."""
        return candidate_groups(analysis, self.targets)

    def kept_because(self, program: Program, analysis: ChannelAnalysis,
                     groups: list[ChannelGroup]) -> list[str]:
        """Why a run removed nothing, as ``"<group>: <reason>"`` lines for the report: the
        blocked groups this pass would otherwise target (their analysis reason names the op:
        ``cumsum``, a reshape it cannot follow...). Model inputs/outputs and single units
        are left out (never a choice). Subclasses add their own reasons."""
        out = []
        for g in analysis.groups:
            if g.prunable or g.reason.startswith(UNCHOOSABLE) \
                    or (self.targets == "mlp" and {"residual", "attention"} & g.tags):
                continue
            out.append(f"{g.key}: {g.reason}")
        return out

    # -- fixed skeleton ----------------------------------------------------------------
    def __call__(self, program: Program, ctx: PassContext | None = None) -> PassResult:
        ctx = ctx or PassContext()
        analysis = analyze_channels(program)
        groups = self.candidates(analysis)
        stats = PassStats(targets=self.targets, groups=len(groups),
                          units_total=sum(g.size for g in groups))
        heads = [g for g in groups if "attention" in g.tags]  # units that are heads
        if heads:  # the report counts heads apart from channels
            stats.heads_total = sum(g.size for g in heads)
        if self.already_applied(program):  # its target is already reached
            stats.already_applied = True
            return self.unchanged(program, stats)
        self.latency_stats = None
        active = self.ratio > 0 or self.latency_target is not None
        plan = self.plan(program, groups, ctx) if active and groups else PruningPlan()
        if self.latency_stats is not None:
            stats.latency = self.latency_stats
        if not plan:
            stats.pruned_groups, stats.units_removed = 0, 0
            if active:  # the report says why nothing went, naming the op that keeps it
                stats.kept_because = self.kept_because(program, analysis, groups)
            return self.unchanged(program, stats)
        self.compensate(program, groups, plan, ctx)
        apply_plan(program, plan, config=self.config(), stats=stats)
        if heads:
            stats.heads_removed = sum(g.size - len(plan.keep[g.key]) for g in heads
                                      if g.key in plan.keep)
        stats.pruned_groups = len(plan.keep)
        stats.units_removed = sum(g.size - len(plan.keep[g.key]) for g in groups
                                  if g.key in plan.keep)
        return PassResult(program, True, plan, stats)

    def plan(self, program: Program, groups: list[ChannelGroup], ctx: PassContext) -> PruningPlan:
        # Ratios count against each group's size at first sight (from the lineage).
        origin = program.origin
        origin = {g.key: origin.get(g.key, g.size) for g in groups}
        scores = self.score(program, groups, ctx)
        if self.latency_target is not None:
            counts = self._latency_keep(program, groups, scores, ctx)
        elif self.scope == "local":
            counts = {g.key: self._local_keep(g, origin[g.key]) for g in groups}
        else:
            counts = self._global_keep(groups, scores, origin)
        return self.settle(_keep_plan(groups, scores, counts), groups, scores)

    def settle(self, plan: PruningPlan, groups: list[ChannelGroup],
               scores: dict[str, torch.Tensor]) -> PruningPlan:
        """The pass's last word on a plan made from kept counts (a subclass's floor, e.g.
        HeadPruning's ``min_heads``); the latency loop times the settled plan too."""
        return plan

    def _latency_keep(self, program, groups, scores, ctx) -> dict[str, int]:
        def realize(counts: dict[str, int]) -> PruningPlan:
            # The closed loop times the program this pass delivers: its own units kept and
            # its compensations (mean folding adds ops that cost time too).
            plan = self.settle(_keep_plan(groups, scores, counts), groups, scores)
            if plan:
                self.compensate(program, groups, plan, ctx)
            return plan

        steps = {g.key: unit_step(g, self.round_to) for g in groups}
        probe = self.output_probe(program)
        if probe is not None and probe.blind:  # nothing to measure: the scores as they are
            probe = None

        def calibrate(widths: dict[str, list[int]]) -> dict[str, float]:
            return output_sensitivity(probe, groups, scores, widths, realize,
                                      progress=getattr(self, "progress", None))

        def judge(counts: dict[str, int]) -> float:
            return probe.distortion(realize(counts))

        counts, self.latency_stats = width_counts(
            program, groups, scores, self.latency_target, steps,
            normalize=self.normalize_global, where=type(self).__name__, realize=realize,
            calibrate=calibrate if probe is not None else None,
            judge=judge if probe is not None else None,
            floors={g.key: self.floor(g) for g in groups})
        return counts

    def floor(self, group: ChannelGroup) -> int:
        """The fewest units :meth:`settle` lets ``group`` keep; a latency target's knapsack
        offers no fewer, so that it prices the plan the pass applies (default 0: none)."""
        return 0

    def output_probe(self, program: Program) -> OutputProbe | None:
        """For a latency target: the program's outputs on the pass's calibration items, to
        scale the groups' scores by their measured sensitivity and to choose between plans
        by their output distortion (:mod:`prunec.passes.sensitivity`); None (the default,
        for passes without data): the knapsack takes the scores as they are."""
        return None

    def _local_keep(self, group: ChannelGroup, origin: int) -> int:
        return _round_keep(group, origin * (1.0 - self.ratio), self.round_to)

    def _global_keep(self, groups, scores, origin) -> dict[str, int]:
        """Kept counts under a global ratio of the groups' sizes at first sight (``origin``:
        group key -> that size, for every group)."""
        first = origin
        total = sum(first.values())
        to_remove = round(self.ratio * total) - sum(first[g.key] - g.size for g in groups)
        if to_remove <= 0:
            return {g.key: g.size for g in groups}
        flat, owner = [], []
        for i, g in enumerate(groups):
            s = scores[g.key].double()
            if self.normalize_global:
                s = s / s.mean().clamp_min(1e-12)
            # A group never loses its last step of units: those are not candidates.
            s = s.clone()
            s[torch.argsort(s, descending=True)[:unit_step(g, self.round_to)]] = float("inf")
            flat.append(s)
            owner.append(torch.full((g.size,), i))
        flat, owner = torch.cat(flat), torch.cat(owner)
        chosen = owner[torch.argsort(flat, stable=True)[:to_remove]]
        removed = torch.bincount(chosen, minlength=len(groups))
        return {g.key: _round_keep(g, g.size - int(removed[i]), self.round_to) for i, g in enumerate(groups)}


def _round_keep(group: ChannelGroup, keep: float, round_to: int) -> int:
    """Nearest allowed kept count to ``keep``.

    The allowed counts are the positive multiples of the unit step below the group's size,
    and the full size. A group whose size is not a multiple of the step can therefore still
    be pruned down to its largest multiple (10 or 12 channels at ``round_to=8`` keep 8); a
    group no larger than one step is never pruned.
    """
    step = unit_step(group, round_to)
    if group.size <= step or keep >= group.size:
        return group.size
    k = min(max(int(round(keep / step)) * step, step), group.size)
    if group.size % step == 0:
        return k
    largest = group.size // step * step  # the largest multiple below the size
    if k < largest:
        return k
    # Between the largest multiple and the full size the nearer one wins; a tie prunes.
    return group.size if group.size - keep < keep - largest else largest
