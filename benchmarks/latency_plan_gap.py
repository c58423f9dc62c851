"""Is the plan the latency loop times the program the pass delivers? (digits ResNet, VBP)

One-off check behind a fix in ``prunec/passes/latency.py``: VarianceBasedPruning asked for
90 % of the dense latency at 2 threads, then four programs timed interleaved (40 rounds,
fastest call, each timed call after an untimed one), in two orders: the dense program, the
plan's widths keeping the *first* units without compensation (what the closed loop used to
time), the pass's own units without compensation, and the pass's program (its units and its
mean-folding compensations). Prints the fractions of the dense latency; the numbers are
quoted in ``benchmarks/results/latency_model_check.md``.

Run: ``python benchmarks/latency_plan_gap.py onnxruntime torch``.
"""
from __future__ import annotations

import collections
import sys

import torch

from benchmarks.latency_target import digits_case, vbp
from prunec.passes import PassContext
from prunec.passes import latency_table as tables
from prunec.passes.latency import LatencyTarget
from prunec.rewrite import PruningPlan, apply_plan


def main(backends: list[str]) -> None:
    torch.set_num_threads(1)
    case = digits_case()
    for backend in backends:
        target = LatencyTarget(0.9, backend=backend, threads=2)
        real = case.program.clone()
        result = vbp(case, latency=target)(real, PassContext())
        plan = result.plan
        first = PruningPlan({k: list(range(len(v))) for k, v in plan.keep.items()})
        programs = {"dense": case.program}
        for name, variant in (("first_k", first), ("own_units", PruningPlan(dict(plan.keep)))):
            program = case.program.clone(share_tensors=True)
            apply_plan(program, variant)
            programs[name] = program
        programs["delivered"] = real
        ops = {k: collections.Counter(str(n.target) for n in p.graph.nodes
                                      if n.op == "call_function") for k, p in programs.items()}
        print(backend, "loop", result.stats["latency"]["loop"], "compensations",
              len(plan.compensations), "ops added", dict(ops["delivered"] - ops["first_k"]))
        spec = target.spec()
        fns = {k: tables._bound(tables.lower_for_timing(p, spec),
                                tuple(case.program.example_args), {})
               for k, p in programs.items()}
        with tables._threads_for(spec):
            for order in (list(fns), ["dense", "delivered", "own_units", "first_k"]):
                samples = tables.time_callables({k: fns[k] for k in order}, rounds=40,
                                                round_seconds=0.002)
                dense = tables.undisturbed(samples["dense"])
                print(" ", {k: round(tables.undisturbed(v) / dense, 3)
                            for k, v in samples.items()}, "dense ms", round(dense, 3))


if __name__ == "__main__":
    main(sys.argv[1:] or ["onnxruntime", "torch"])
