"""Is the plan the latency loop times the program the pass delivers? (digits ResNet, VBP)

One-off check behind a fix in ``prunec/passes/latency.py``: VarianceBasedPruning asked for
90 % of the dense latency at 2 threads, then four programs timed interleaved (40 rounds,
fastest call, each timed call after an untimed one), in two orders: the dense program, the
plan's widths keeping the *first* units without compensation (what the closed loop used to
time), the pass's own units without compensation, and the pass's program (its units and its
mean-folding compensations). Prints the fractions of the dense latency; the numbers are
quoted in ``benchmarks/results/latency_model_check.md``.

``sessions``: the same structure (one bottleneck of the first stage at 8 of 16 channels)
with six different sets of kept channels, each its own ONNX Runtime session, timed with the
dense program at 2 and 1 threads, twice: whether the kept channels or the session decide
the latency (``sessions spinning``: at 2 threads with ONNX Runtime's spinning on, as
``prunec.compile`` lowers by default, then off, as the timing harness has it).

Run: ``python benchmarks/latency_plan_gap.py onnxruntime torch`` or ``... sessions``.
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


def sessions(spinning: bool = False, thread_counts: tuple = (2, 1)) -> None:
    case = digits_case()
    key = "layer1.1.conv1.weight:0"
    gen = torch.Generator().manual_seed(0)
    keeps = {"first": list(range(8)), "last": list(range(8, 16)),
             "odd": list(range(1, 16, 2)), "even": list(range(0, 16, 2)),
             "rand1": sorted(torch.randperm(16, generator=gen)[:8].tolist()),
             "rand2": sorted(torch.randperm(16, generator=gen)[:8].tolist())}
    args = tuple(case.program.example_args)
    for threads in thread_counts:
        # The timing harness turns spinning off unless asked; "spinning" times it on.
        spec = tables.MeasureSpec("onnxruntime", (("spinning", spinning),), threads, 40)
        fns = {"dense": tables._bound(tables.lower_for_timing(case.program, spec), args, {})}
        for name, keep in keeps.items():
            program = case.program.clone(share_tensors=True)
            apply_plan(program, PruningPlan({key: keep}))
            fns[name] = tables._bound(tables.lower_for_timing(program, spec), args, {})
        for _ in range(2):
            samples = tables.time_callables(fns, rounds=40, round_seconds=0.002)
            dense = tables.undisturbed(samples["dense"])
            print(threads, "threads", {k: round(tables.undisturbed(v) / dense, 3)
                                       for k, v in samples.items()}, "dense ms", round(dense, 3))


if __name__ == "__main__":
    if sys.argv[1:] == ["sessions"]:
        sessions()
    elif sys.argv[1:] == ["sessions", "spinning"]:  # on, then off, 2 threads
        sessions(True, (2,))
        sessions(False, (2,))
    else:
        main(sys.argv[1:] or ["onnxruntime", "torch"])
