"""Prune for a latency target: ``MagnitudePruning(latency=0.6)``, ``LatencyTarget``.

A latency target asks for a fraction of the dense latency on one backend, at given input
shapes: ``LatencyTarget(0.6, backend="onnxruntime", threads=1)`` means "60 % of the
latency of the program this pass receives, on ONNX Runtime with one intra-op thread, at the
example inputs' shapes". A bare number (``latency=0.6``) takes the backend that
``prunec.compile`` lowers to, with its options (outside ``compile``: torch, at the current
torch thread count).

How a pass meets it (:func:`width_counts` for width passes, :func:`drop_blocks` for
:class:`~prunec.passes.prune_depth.DepthPruning`):

1. **Tables** (:mod:`prunec.passes.latency_table`): the dense program and every candidate
   structure are timed on the backend, each group's structure at its candidate widths
   (multiples of the group's unit step, at most ``max_widths`` of them), each block's branch
   dense. Repeated structures are timed once; tables are cached on disk.
2. **Model**: the latency of a plan is predicted additively,
   ``T(plan) = T_dense (1 + sum_g share_g (r_g(k_g) - 1))`` with ``r_g(k) = T_g(k)/T_g(full)``
   from the isolated table (the shape of the curve) and ``share_g`` from the program itself
   (the scale): the dense program and, per distinct structure, the program with all ``n``
   of its groups at their smallest width are timed together; if that saves a fraction
   ``s`` of the dense latency, ``share_g = s / (n (1 - r_g(k_min)))``. A structure timed
   alone runs with its weights in cache and without the rest of the model around it
   (on the development machine MiniLM's MLP timed alone suggested 21 % of the latency
   where pruning it in the model saved about 45 %); measuring the scale in context removes
   that bias. A dropped block saves ``s / n`` of the program, from the program with all
   ``n`` blocks of its shape dropped (the branch timed alone when that drop is declined).
3. **Selection** (:mod:`prunec.passes.latency_knapsack`): an exact multiple-choice knapsack
   maximises the importance kept, ``sum_g sum_{u in top k_g} s_gu`` with the pass's own
   scores ``s`` (normalised per group as the pass's global ranking does), under
   ``T(plan) <= fraction * T_dense``. Depth: per stage, dropping ``j`` blocks drops the
   ``j`` lowest-scoring ones and keeps the importance of the others. A pass with
   calibration data (VBP) solves twice, with its scores as they are and with each group's
   scores scaled by its measured output sensitivity (:mod:`prunec.passes.sensitivity`), and
   keeps the plan whose measured output distortion on calibration items is lower.
4. **Closed loop** (:func:`closed_loop`): the plan chosen is built (cheap: a rewrite of the
   program) and timed against the dense program on the backend. The tables' additive model
   is exact only where the backend is additive; when the measured fraction is farther than
   ``tolerance`` from the asked one, the knapsack is solved again for a corrected budget
   (:func:`corrected_budget`), at most ``iterations`` plans in all, and the measured plan
   closest to the target (the most important one within the tolerance) is kept.
5. **Unreachable**: when even the fastest option of every class is over the target (the
   tables' price, or the fastest plan measured), a :class:`~prunec.errors.PlanError` names
   the best latency reachable.

``prunec.compile`` then measures the achieved latency of the pruned program against the
dense one on the same backend, interleaved, and reports it (``report.latency``).
"""
from __future__ import annotations

import copy
import hashlib
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from prunec.errors import InvalidArgumentError, PlanError
from prunec.ir.channels import ChannelGroup
from prunec.ir.interpret import ProgramInterpreter
from prunec.ir.program import Program
from prunec.passes import latency_table as tables
from prunec.passes.latency_knapsack import plan_cost, plan_value, select_options
from prunec.rewrite import PruningPlan, apply_plan
from prunec.rewrite.plan import BlockDrop

__all__ = ["LatencyTarget", "check_latency", "bind_backend", "latency_targets",
           "width_counts", "WidthModel", "drop_blocks", "achieved_latency", "measurement_inputs",
           "closed_loop", "corrected_budget"]

TIMED_BACKENDS = ("torch", "onnxruntime", "onnx", "inductor", "tensorrt")


@dataclass(frozen=True)
class LatencyTarget:
    """A fraction of the dense latency on a backend, at given shapes.

    Args:
        fraction: Target latency over the dense program's, in ``(0, 1]``.
        backend: ``"torch"``, ``"onnxruntime"``, ``"inductor"`` or ``"tensorrt"``; None:
            the backend ``prunec.compile`` lowers to (torch outside ``compile``).
        batch: Batch size to time at (default: the example inputs').
        threads: Intra-op threads (default: ONNX Runtime's ``intra_op_threads`` option or
            2; torch's current thread count).
        shapes: Input shapes to time at, instead of the example inputs': a tuple of shapes
            for the positional inputs or a dict ``{keyword: shape}`` (token ids are drawn
            below the largest example id, floats from a normal distribution).
        options: Backend options (default: ``compile``'s ``backend_options`` when the
            backend is the one compile lowers to).
        max_widths: Candidate widths measured per structure (evenly spread multiples of the
            unit step, smallest and full width always included).
        rounds: Interleaved timing rounds per candidate (the fastest taken, see
            :func:`~prunec.passes.latency_table.undisturbed`).
        cache: Read and write the on-disk table cache.
        progress: Progress bar while measuring (None: when standard error is a terminal).
        iterations: Plans measured at most by the closed loop (:func:`closed_loop`): the
            plan the tables predict is built, timed against the dense program and, when its
            latency is off by more than ``tolerance``, the knapsack is solved again with a
            corrected budget. 0: the tables' plan, unmeasured.
        tolerance: How far from the asked fraction a measured plan may land, relative to it
            (0.05: 60 % asked accepts 57-63 %).
    """

    fraction: float
    backend: str | None = None
    batch: int | None = None
    threads: int | None = None
    shapes: Any = None
    options: dict | None = field(default=None, hash=False)
    max_widths: int = 16
    rounds: int = 30
    cache: bool = True
    progress: bool | None = None
    iterations: int = 4
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        where = "LatencyTarget"
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, numbers.Real) \
                or not 0.0 < float(self.fraction) <= 1.0:
            raise InvalidArgumentError(f"{where}: fraction must be a number in (0, 1] (0.6 = "
                                       f"60 % of the dense latency), got {self.fraction!r}.")
        object.__setattr__(self, "fraction", float(self.fraction))
        if self.backend is not None and self.backend not in TIMED_BACKENDS:
            raise InvalidArgumentError(f"{where}: backend must be one of {TIMED_BACKENDS} or "
                                       f"None (the backend compile lowers to), got "
                                       f"{self.backend!r}.")
        lows = {"batch": 1, "threads": 1, "max_widths": 2, "rounds": 1, "iterations": 0}
        for name, low in lows.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise InvalidArgumentError(f"{where}: {name} must be an integer >= {low}, "
                                           f"got {value!r}.")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, numbers.Real) \
                or not 0.0 < float(self.tolerance) < 1.0:
            raise InvalidArgumentError(f"{where}: tolerance must be a number in (0, 1) (0.05: "
                                       f"within 5 % of the asked fraction), got "
                                       f"{self.tolerance!r}.")
        if self.options is not None and not isinstance(self.options, dict):
            raise InvalidArgumentError(f"{where}: options must be a dict of backend options.")
        if self.shapes is not None and not isinstance(self.shapes, (tuple, list, dict)):
            raise InvalidArgumentError(f"{where}: shapes must be a tuple of shapes (positional "
                                       f"inputs) or a dict {{keyword: shape}}.")

    def bound(self, backend: str, options: dict | None) -> "LatencyTarget":
        """This target with the compile backend filled in where none was named."""
        if self.backend is not None:
            return self
        return replace(self, backend=backend, options=dict(options or {}))

    def spec(self) -> tables.MeasureSpec:
        """Where and how to time (see :class:`~prunec.passes.latency_table.MeasureSpec`)."""
        backend = self.backend or "torch"
        options = dict(self.options or {})
        threads = self.threads
        if threads is None:
            threads = int(options.get("intra_op_threads", 2)) \
                if backend in ("onnxruntime", "onnx") else torch.get_num_threads()
        if backend in ("onnxruntime", "onnx"):
            options["intra_op_threads"] = threads
        for unused in ("check", "atol", "rtol"):  # parity checks are not timed
            options.pop(unused, None)
        return tables.MeasureSpec(backend, tuple(sorted(options.items())), threads, self.rounds)

    def describe(self) -> str:
        spec = self.spec()
        return f"{self.fraction:.0%} of dense on {spec.backend} ({spec.threads} threads)"


def check_latency(latency: Any, where: str) -> LatencyTarget:
    """A :class:`LatencyTarget` from ``latency=`` (a number in ``(0, 1]`` or a target)."""
    if isinstance(latency, LatencyTarget):
        return latency
    if isinstance(latency, bool) or not isinstance(latency, numbers.Real):
        raise InvalidArgumentError(f"{where}: latency must be a fraction of the dense latency "
                                   f"in (0, 1] or a prunec.LatencyTarget, got "
                                   f"{type(latency).__name__} {latency!r}.")
    try:
        return LatencyTarget(float(latency))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from None


def latency_targets(passes: list) -> list[LatencyTarget]:
    """The latency targets of ``passes``, in order."""
    return [p.latency_target for p in passes if getattr(p, "latency_target", None) is not None]


def bind_backend(passes: list, backend: str, options: dict | None) -> list:
    """``passes`` with every target that names no backend bound to ``compile``'s (a shallow
    copy of such a pass; the caller's pass objects are left as they are)."""
    bound = []
    for pass_ in passes:
        target = getattr(pass_, "latency_target", None)
        if target is not None and target.backend is None:
            pass_ = copy.copy(pass_)
            pass_.latency_target = target.bound(backend, options)
        bound.append(pass_)
    return bound


# ---------------------------------------------------------------------------- inputs
def measurement_inputs(program: Program, target: LatencyTarget) -> tuple[tuple, dict]:
    """The example inputs at the target's batch and shapes."""
    args, kwargs = tuple(program.example_args), dict(program.example_kwargs)
    if target.shapes is not None:
        if isinstance(target.shapes, dict):
            kwargs = {k: _reshaped(v, target.shapes.get(k)) for k, v in kwargs.items()}
        else:
            shapes = list(target.shapes) + [None] * len(args)
            args = tuple(_reshaped(a, s) for a, s in zip(args, shapes))
    if target.batch is not None:
        args = tuple(_rebatched(a, target.batch) for a in args)
        kwargs = {k: _rebatched(v, target.batch) for k, v in kwargs.items()}
    return args, kwargs


def _reshaped(value: Any, shape: Any) -> Any:
    if shape is None or not isinstance(value, torch.Tensor):
        return value
    gen = torch.Generator().manual_seed(0)
    shape = tuple(int(s) for s in shape)
    if value.dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    if value.dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(value.dtype)
    high = int(value.max()) + 1 if value.numel() else 2
    return torch.randint(0, max(high, 1), shape, generator=gen, dtype=value.dtype)


def _rebatched(value: Any, batch: int) -> Any:
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    index = torch.arange(batch) % value.shape[0]
    return value.index_select(0, index).contiguous()


def _record(program: Program, args: tuple, kwargs: dict, names: list[str]) -> dict[str, Any]:
    recorded: dict[str, Any] = {}
    observers = {n: (lambda v, n=n: recorded.__setitem__(n, v)) for n in names}
    with torch.no_grad():
        ProgramInterpreter(program, observers=observers).call(args, kwargs)
    return recorded


# ---------------------------------------------------------------------------- widths
def width_counts(program: Program, groups: list[ChannelGroup], scores: dict[str, torch.Tensor],
                 target: LatencyTarget, steps: dict[str, int], *, normalize: bool,
                 where: str, realize=None, calibrate=None, judge=None,
                 floors: dict[str, int] | None = None) -> tuple[dict[str, int], dict]:
    """Kept unit count per group meeting ``target`` with the most importance kept.

    Args:
        program: The program the pass receives.
        groups: Candidate groups.
        scores: The pass's importance per unit of every group (higher = keep).
        target: The latency target (bound to a backend).
        steps: Per group key, the unit step (kept counts are its multiples, or the size).
        normalize: Divide each group's scores by their mean (the pass's global ranking).
        where: The pass's name, for errors.
        realize: Takes ``{group key: kept count}``, returns the plan the pass would apply
            (its units, its compensations): what the closed loop times. None: the first
            units of each group, no compensation.
        calibrate: Takes ``{group key: candidate widths}``, returns a factor per group key
            that puts the groups' scores on one scale (the pass's measured output
            sensitivity, :mod:`prunec.passes.sensitivity`): a second set of values.
        judge: Takes ``{group key: kept count}``, returns the plan's measured output
            distortion; with ``calibrate``, decides between the two sets' plans
            (:func:`closed_loop`).
        floors: Per group key, the fewest units the pass lets it keep (options below are
            not offered).

    Returns:
        ``{group key: kept count}`` and the statistics for the report (``latency``).

    Raises:
        PlanError: the target cannot be met; the message names the best latency reachable.
    """
    model = WidthModel.build(program, groups, target, steps)
    dense_ms = model.dense_ms
    # Every allowed width is an option, priced between the measured ones by interpolation
    # (the closed loop times what is chosen): the knapsack is not limited to the few
    # widths measured, as a ratio plan is not.
    floors = floors or {}
    widths = {g.key: [w for w in tables.candidate_widths(g.size, steps[g.key], g.size)
                      if w >= floors.get(g.key, 0) or w == g.size] for g in groups}

    def kept_values(scale) -> list[list[float]]:
        out = []
        for g in groups:
            s = scale(g, scores[g.key].double())
            kept = torch.sort(s, descending=True).values.cumsum(0)
            out.append([float(kept[w - 1]) for w in widths[g.key]])
        return out

    option_values = kept_values(lambda g, s: s / s.mean().clamp_min(1e-12) if normalize else s)
    option_costs = [[float(c) for c in np.interp(widths[g.key], model.widths[g.key],
                                                 model.costs[g.key])] for g in groups]
    scales = calibrate(model.widths) if calibrate is not None else None
    alternatives = () if scales is None else (kept_values(lambda g, s: s * scales[g.key]),)
    target_ms = target.fraction * dense_ms
    sizes = {g.key: g.size for g in groups}
    lowered: dict = {}

    def measure(picked: list[int]) -> float:
        counts = {g.key: widths[g.key][j] for g, j in zip(groups, picked)}
        plan = realize(counts) if realize is not None else PruningPlan(
            {k: list(range(c)) for k, c in counts.items() if c < sizes[k]})
        return _measure_plan(program, model.dense, plan, target, lowered)

    def judged(picked: list[int]) -> float:
        return judge({g.key: widths[g.key][j] for g, j in zip(groups, picked)})

    picked, loop = closed_loop(target, option_values, option_costs, dense_ms, measure,
                               where=where, alternatives=alternatives,
                               judge=judged if judge is not None else None)
    counts = {g.key: widths[g.key][j] for g, j in zip(groups, picked)}
    predicted = dense_ms + plan_cost(option_costs, picked)
    stats = _stats(target, model.spec, dense_ms, target_ms, predicted, model.tables,
                   model.reference)
    stats.update(loop)
    if scales is not None:  # which value set each plan came from, by name
        names = ("pass scores", "sensitivity-scaled")
        for point in stats["loop"]:
            point["scores"] = names[point["scores"]]
        if "scores" in stats:
            stats["scores"] = names[stats["scores"]]
        stats["sensitivity"] = dict(scales)
    stats["structures"] = len({s.signature for s in model.structures})
    stats["isolated"] = sum(s.isolated for s in model.structures)
    return counts, stats


@dataclass
class WidthModel:
    """The latency model of a set of groups: tables measured (or read from the cache) and
    the ms each candidate width adds to the dense latency (negative: saved).

    Attributes:
        dense_ms: The dense program's latency (the reference session's).
        widths: Per group key, the candidate kept counts measured.
        costs: Per group key, ``share_g * dense_ms * (r_g(k) - 1)`` for each candidate.
    """

    spec: tables.MeasureSpec
    dense_ms: float
    widths: dict[str, list[int]]
    costs: dict[str, list[float]]
    structures: list
    tables: list
    reference: dict
    dense: tables.Structure | None = None

    @classmethod
    def build(cls, program: Program, groups: list[ChannelGroup], target: LatencyTarget,
              steps: dict[str, int]) -> "WidthModel":
        spec = target.spec()
        args, kwargs = measurement_inputs(program, target)
        widths = {g.key: tables.candidate_widths(g.size, steps[g.key], target.max_widths)
                  for g in groups}
        names = {g.key: tables.structure_nodes(program, g) for g in groups}
        outside = list(dict.fromkeys(e for g in groups
                                     for e in tables.external_inputs(program, names[g.key])))
        values = _record(program, args, kwargs, outside)
        structures = [tables.group_structure(program, g, values, args, kwargs) for g in groups]
        found = tables.measure_tables([(s, widths[g.key]) for s, g in zip(structures, groups)],
                                      spec, progress=target.progress, use_cache=target.cache)
        dense = tables.program_structure(program, args, kwargs)
        members: dict[str, list[ChannelGroup]] = {}
        for g, structure in zip(groups, structures):
            members.setdefault(structure.signature, []).append(g)
        # In context: the program with every group of one structure at its smallest width.
        variants = {sig: _variant(program, dense, PruningPlan(
            {g.key: list(range(widths[g.key][0])) for g in gs}), sig)
            for sig, gs in members.items()}
        reference = tables.measure_reference(dense, list(variants.values()), spec,
                                             use_cache=target.cache)
        dense_ms = reference["program"]
        costs = {}
        for g, structure, table in zip(groups, structures, found):
            saved = max(0.0, 1.0 - reference[variants[structure.signature].signature])
            drop = 1.0 - table.ratio(widths[g.key][0])
            count = len(members[structure.signature])
            # The isolated table gives the shape of the curve, the program the scale:
            # at the smallest width every group of the structure saves saved / count.
            share = saved / (count * drop) if drop > 1e-6 else 0.0
            costs[g.key] = [(table.ratio(w) - 1.0) * share * dense_ms for w in widths[g.key]]
        return cls(spec, dense_ms, widths, costs, structures, found, reference, dense)

    def predict_ms(self, counts: dict[str, int]) -> float:
        """Predicted latency of a plan keeping ``counts[g]`` units of each group (a count
        between two measured widths is interpolated linearly; groups absent stay full)."""
        total = self.dense_ms
        for key, count in counts.items():
            total += float(np.interp(count, self.widths[key], self.costs[key]))
        return total


def _stats(target: LatencyTarget, spec: tables.MeasureSpec, dense_ms: float,
           target_ms: float, predicted_ms: float, found: list, reference: dict) -> dict:
    return {"backend": spec.backend, "threads": spec.threads, "fraction": target.fraction,
            "dense_ms": dense_ms, "target_ms": target_ms, "predicted_ms": predicted_ms,
            "predicted_fraction": predicted_ms / dense_ms,
            "tables": len({t.signature for t in found}) + 1,
            "tables_cached": len({t.signature for t in found if t.cached})
            + int(reference["cached"])}


def _variant(program: Program, dense: tables.Structure, plan: PruningPlan,
             label: str) -> tables.Structure:
    """``program`` with ``plan`` applied (tensors shared), as a structure timed in context."""
    variant = program.clone(share_tensors=True)
    apply_plan(variant, plan)
    signature = hashlib.sha256(f"{dense.signature} {label} {plan.to_json()}".encode()
                               ).hexdigest()[:32]
    return tables.Structure(variant, dense.args, dense.kwargs, None, signature, isolated=False)


# ---------------------------------------------------------------------------- closed loop
def corrected_budget(asked: float, points: list[dict]) -> float:
    """The budget (a fraction of the dense latency, as the tables price it) to solve for
    next, from the plans measured so far.

    Each point holds the ``budget`` solved for, the tables' ``predicted`` fraction of the
    plan found and its ``measured`` fraction on the backend. With no plan measured on each
    side of ``asked``, the tables' saving is rescaled by the last plan's error: that plan
    saved ``1 - m`` where the tables said ``1 - p``, so a measured saving of ``1 - asked``
    needs a predicted one of ``(1 - asked)(1 - p) / (1 - m)``::

        budget = 1 - (1 - asked) (1 - p) / (1 - m)

    (``m >= 1``, nothing saved: the budget moves down by ``m - asked``). Once plans on both
    sides are measured, the budget is interpolated linearly between the closest one on each
    side (the measured latency is close to monotone in the budget; where noise makes it
    not, the two budgets' midpoint).

    Returns:
        A budget in ``[0, 1]``.
    """
    last = points[-1]
    slow = [q for q in points if q["measured"] > asked]
    fast = [q for q in points if q["measured"] <= asked]
    if slow and fast:
        hi = min(slow, key=lambda q: q["measured"])
        lo = max(fast, key=lambda q: q["measured"])
        if hi["budget"] > lo["budget"] and hi["measured"] > lo["measured"]:
            t = (asked - lo["measured"]) / (hi["measured"] - lo["measured"])
            budget = lo["budget"] + t * (hi["budget"] - lo["budget"])
        else:
            budget = (hi["budget"] + lo["budget"]) / 2
    elif last["measured"] < 1.0 and last["predicted"] < 1.0:
        budget = 1.0 - (1.0 - asked) * (1.0 - last["predicted"]) / (1.0 - last["measured"])
    else:
        budget = last["budget"] - (last["measured"] - asked)
    return min(1.0, max(0.0, budget))


def closed_loop(target: LatencyTarget, values: list[list[float]], costs: list[list[float]],
                dense_ms: float, measure, *, where: str, alternatives: tuple = (),
                judge=None) -> tuple[list[int], dict]:
    """Solve the knapsack, measure the plan on the backend, correct the budget, repeat.

    The tables price a plan additively; a backend is not additive (kernels chosen per width,
    caches, fused ops), so the plan they choose may run faster or slower than asked. Building
    and timing a plan is cheap next to a table, so the plan is built and timed against the
    dense program (interleaved, :func:`~prunec.passes.latency_table.measure_reference`,
    cached like a table) and, when its measured fraction ``m`` is farther than
    ``tolerance * asked`` from ``asked``, the knapsack is solved again for the budget of
    :func:`corrected_budget`, at most ``target.iterations`` plans in all. A plan found twice
    is not timed twice: the budget then moves past it (below its predicted fraction by
    ``|m - asked|`` when it was too slow, above when too fast).

    With ``alternatives`` (other value sets for the same options) and a ``judge``, every
    budget is solved for each value set and, when they disagree, the plan the judge scores
    lowest is taken (the pass's measured output distortion: which notion of importance to
    trust is decided on the model, not assumed); plans are then compared by that score.

    Of the measured plans, the one keeping the most importance (with a judge: the lowest
    judged score) among those within the tolerance is taken; if none is, the slowest of
    those faster than asked (the target is met, with more pruned); if every plan measured
    is slower than asked, a :class:`~prunec.errors.PlanError` names the fastest one
    measured (a model that misses the latency asked is not delivered).

    Args:
        target: The latency target (``fraction``, ``iterations``, ``tolerance``).
        values: Per class, the importance kept by each option.
        costs: Per class, the ms each option adds to the dense latency (tables' prices).
        dense_ms: The dense program's latency.
        measure: Takes the option per class, returns the plan's measured fraction.
        where: The pass's name, for errors.
        alternatives: Other value sets (each like ``values``), solved too when ``judge`` is
            given.
        judge: Takes the option per class, returns a score to minimise (lower = better).

    Returns:
        The option per class, and the statistics: ``measured_fraction`` (None when nothing
        was measured) and ``loop`` (per plan measured: budget, predicted, measured, and with
        a judge the value set it came from, ``scores``, and its ``judged`` score).

    Raises:
        PlanError: the target cannot be met: the tables say so and ``iterations`` is 0, or
            every plan measured (the fastest plan, when it was) is slower than the target by
            more than the tolerance.
    """
    asked, tol = target.fraction, target.tolerance * target.fraction
    fastest = [int(np.argmin(c)) for c in costs]
    fastest_ms = dense_ms + plan_cost(costs, fastest)

    sets = [values, *alternatives] if judge is not None else [values]
    judged: dict[tuple, float] = {}
    source: dict[tuple, int] = {}

    def score(picked: list[int]) -> float:
        key = tuple(picked)
        if key not in judged:
            judged[key] = float(judge(picked))
        return judged[key]

    def solve(budget: float) -> list[int] | None:
        found = []
        for i, vals in enumerate(sets):
            picked = select_options(vals, costs, budget * dense_ms - dense_ms)
            if picked is not None and tuple(picked) not in source:
                source[tuple(picked)] = i
            found.append(picked)
        unique = list(dict.fromkeys(tuple(p) for p in found if p is not None))
        if not unique:
            return None
        if len(unique) == 1 or judge is None:
            return list(unique[0])
        return list(min(unique, key=lambda key: (score(list(key)), source[key])))

    def value(picked: list[int]) -> float:
        return -score(picked) if judge is not None else plan_value(values, picked)

    if target.iterations == 0:
        picked = solve(asked)
        if picked is None:
            tables.check_reachable(fastest_ms, dense_ms, asked * dense_ms, where)
        return picked, {"measured_fraction": None, "loop": []}
    points: list[dict] = []
    measured: dict[tuple, dict] = {}
    budget = asked
    for _ in range(target.iterations):
        picked = solve(budget) or fastest
        key = tuple(picked)
        if key in measured:  # the budget did not change the plan: move past it
            point = measured[key]
            step = abs(point["measured"] - asked)
            budget = point["predicted"] + (-step if point["measured"] > asked else step)
            picked = solve(min(1.0, max(0.0, budget))) or fastest
            key = tuple(picked)
            if key in measured:
                break
        point = {"budget": budget, "predicted": (dense_ms + plan_cost(costs, picked)) / dense_ms,
                 "measured": float(measure(picked)), "value": value(picked),
                 "fastest": picked == fastest, "picked": picked}
        if judge is not None:
            point["scores"] = source.get(key, 0)
            point["judged"] = score(picked)
        measured[key] = point
        points.append(point)
        if abs(point["measured"] - asked) <= tol:
            break
        budget = corrected_budget(asked, points)
    within = [q for q in points if abs(q["measured"] - asked) <= tol]
    faster = [q for q in points if q["measured"] < asked - tol]
    if within:
        best = max(within, key=lambda q: (q["value"], -q["measured"]))
    elif faster:  # the target is met, with more pruned than asked: the least pruned of them
        best = max(faster, key=lambda q: q["measured"])
    else:  # every plan measured is slower than the target: none is delivered
        floor = min(points, key=lambda q: q["measured"])
        if any(q["fastest"] for q in points):
            floor = next(q for q in points if q["fastest"])
            tables.check_reachable(floor["measured"] * dense_ms, dense_ms,
                                   asked * dense_ms, where, measured=True)
        raise PlanError(
            f"{where}: the latency target {asked:.0%} of the dense {dense_ms:.3f} ms was not "
            f"met by the {len(points)} plans measured (iterations={target.iterations}): the "
            f"best reachable is {floor['measured'] * dense_ms:.3f} ms "
            f"({floor['measured']:.0%}) so far, where the tables predicted "
            f"{floor['predicted']:.0%}. Raise iterations=, ask for at least "
            f"{math.ceil(floor['measured'] * 100)} %, or let pruning reach more of the model "
            f"(targets='all' for a width pass, depth pruning).")
    loop = [{k: q[k] for k in ("budget", "predicted", "measured", "scores", "judged") if k in q}
            for q in points]
    stats = {"measured_fraction": best["measured"], "loop": loop}
    if judge is not None:
        stats["scores"], stats["judged"] = best["scores"], best["judged"]
    return best["picked"], stats


def _measure_plan(program: Program, dense: tables.Structure, plan: PruningPlan,
                  target: LatencyTarget, lowered: dict) -> float:
    """The measured latency of ``program`` with ``plan`` applied over the dense one's."""
    if not plan:
        return 1.0
    variant = _variant(program, dense, plan, "plan")
    found = tables.measure_reference(dense, [variant], target.spec(), use_cache=target.cache,
                                     lowered=lowered)
    return float(found[variant.signature])


# ---------------------------------------------------------------------------- depth
def drop_blocks(program: Program, candidates: list, scores: dict[str, float],
                room: dict[int, int], target: LatencyTarget, *, where: str, realize=None,
                drops=None) -> tuple[list, dict]:
    """Blocks to drop meeting ``target`` with the most block importance kept.

    Per stage, dropping ``j`` blocks (``j`` up to the stage's room) drops its ``j``
    lowest-scoring candidates: cost ``-sum T_b``, value ``-sum score_b``. (Blocks of a stage
    have the same shapes, so the same latency; otherwise this order is a heuristic.)

    ``realize`` takes the blocks to drop and returns the plan the pass would apply (with
    its stored means): what the closed loop times (None: the drops without means).
    ``drops`` maps a candidate to the :class:`BlockDrop` entries that remove it (default:
    its own key; a whole decoder layer is a candidate of several blocks).

    Returns:
        The blocks to drop and the statistics for the report (``latency``).

    Raises:
        PlanError: the target cannot be met (the message names the best reachable).
    """
    drops = drops or (lambda b: [BlockDrop(b.key, None)])
    spec = target.spec()
    args, kwargs = measurement_inputs(program, target)
    outside = list(dict.fromkeys(e for b in candidates
                                 for e in tables.external_inputs(program, list(b.nodes))))
    values = _record(program, args, kwargs, outside)
    structures = [tables.block_structure(program, list(b.nodes), values) for b in candidates]
    dense = tables.program_structure(program, args, kwargs)
    members: dict[str, list] = {}
    for b, structure in zip(candidates, structures):
        members.setdefault(structure.signature, []).append(b)
    variants = {}
    for sig, blocks in members.items():  # in context: every block of one shape dropped
        try:
            variants[sig] = _variant(program, dense, PruningPlan(
                blocks=[d for b in blocks for d in drops(b)]), sig)
        except Exception:  # noqa: BLE001 - a drop the rewrite declines: the branch alone
            pass
    reference = tables.measure_reference(dense, structures + list(variants.values()), spec,
                                         use_cache=target.cache)
    dense_ms = reference["program"]
    block_ms = {}
    for b, s in zip(candidates, structures):
        if s.signature in variants:
            saved = 1.0 - reference[variants[s.signature].signature]
            block_ms[b.key] = max(0.0, saved) * dense_ms / len(members[s.signature])
        else:
            block_ms[b.key] = reference[s.signature] * dense_ms
    stages: dict[int, list] = {}
    for b in sorted(candidates, key=lambda b: (scores[b.key], b.key)):
        stages.setdefault(b.stage, []).append(b)
    option_values, option_costs, order = [], [], []
    for stage, blocks in stages.items():
        blocks = blocks[:max(0, min(room.get(stage, len(blocks)), len(blocks)))]
        dropped_score = np.concatenate([[0.0], np.cumsum([scores[b.key] for b in blocks])])
        saved = np.concatenate([[0.0], np.cumsum([block_ms[b.key] for b in blocks])])
        option_values.append([-float(v) for v in dropped_score])
        option_costs.append([-float(v) for v in saved])
        order.append(blocks)
    target_ms = target.fraction * dense_ms
    if not order:
        tables.check_reachable(dense_ms, dense_ms, target_ms, where)
        return [], _stats(target, spec, dense_ms, target_ms, dense_ms, [], reference)
    lowered: dict = {}

    def measure(picked: list[int]) -> float:
        chosen = [b for blocks, j in zip(order, picked) for b in blocks[:j]]
        plan = realize(chosen) if realize is not None else PruningPlan(
            blocks=[d for b in chosen for d in drops(b)])
        return _measure_plan(program, dense, plan, target, lowered)

    picked, loop = closed_loop(target, option_values, option_costs, dense_ms, measure,
                               where=where)
    chosen = [b for blocks, j in zip(order, picked) for b in blocks[:j]]
    predicted = dense_ms + plan_cost(option_costs, picked)
    stats = _stats(target, spec, dense_ms, target_ms, predicted, [], reference)
    stats.update(loop)
    stats["block_ms"] = block_ms
    return chosen, stats


# ---------------------------------------------------------------------------- achieved
def achieved_latency(dense: Program, pruned: Program, target: LatencyTarget) -> dict:
    """The pruned program's latency against the dense one's on ``target``'s backend, timed
    interleaved at the target's shapes over twice the target's rounds: the fastest timings
    (see :func:`~prunec.passes.latency_table.undisturbed`) and, for reference, the medians."""
    spec = target.spec()
    args, kwargs = measurement_inputs(dense, target)
    fns = {name: tables._bound(tables.lower_for_timing(p, spec), args, kwargs)
           for name, p in (("dense", dense), ("pruned", pruned))}
    with tables._threads_for(spec):
        samples = tables.time_callables(fns, rounds=2 * spec.rounds,
                                        round_seconds=spec.round_seconds)
    dense_ms, pruned_ms = (tables.undisturbed(samples[k]) for k in ("dense", "pruned"))
    return {"backend": spec.backend, "threads": spec.threads, "fraction": target.fraction,
            "dense_ms": dense_ms, "achieved_ms": pruned_ms,
            "achieved_fraction": pruned_ms / dense_ms,
            "dense_median_ms": float(np.median(samples["dense"])),
            "achieved_median_ms": float(np.median(samples["pruned"]))}
