"""Where the latency model is wrong: predicted against measured, in context.

For a model, backend and thread count, the latency model of
:class:`prunec.passes.latency.WidthModel` is built (tables measured or read from the cache)
and compared with whole programs timed on the backend, interleaved with the dense program in
one session:

- ``uniform``: every group of one structure at the same width ``k`` (the model is exact at
  the smallest width by construction; between, it follows the isolated table's curve);
- ``single``: one group at its smallest width, the others full (additivity within a
  structure: n singles should save what the uniform plan saves);
- ``mixed j``: every group at a width drawn from its candidates (as a knapsack plan);
- ``dense copy``: the dense program lowered a second time (the noise floor).

Run: ``python benchmarks/latency_model_check.py --models llama --backend onnxruntime
--threads 1``. Writes ``benchmarks/results/latency_model_check.{json,md}`` (rows appended
per configuration).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from prunec.ir.channels import analyze_channels
from prunec.passes import latency_table as tables
from prunec.passes.base import candidate_groups, unit_step
from prunec.passes.latency import LatencyTarget, WidthModel, measurement_inputs
from prunec.rewrite import PruningPlan, apply_plan

RESULTS = Path(__file__).resolve().parent / "results"


def program_for(name: str):
    from prunec.ir.capture import capture

    if name == "llama":
        from benchmarks.latency_target import _llama

        model = _llama().eval()
        ids = torch.randint(0, 256, (1, 128), generator=torch.Generator().manual_seed(0))
        return capture(model, (), {"input_ids": ids})
    if name == "digits_resnet":
        from prunec import zoo

        model, _ = zoo.default_model()
        _, _, x_test, _ = zoo.digits_data()
        return capture(model, (x_test[:64].clone(),))
    if name == "minilm":
        from benchmarks.latency_target import minilm_case

        return minilm_case().program
    raise SystemExit(f"unknown model {name}")


def check(name: str, backend: str, threads: int, rounds: int) -> list[dict]:
    program = program_for(name)
    groups = candidate_groups(analyze_channels(program), "mlp")
    target = LatencyTarget(0.7, backend=backend, threads=threads, rounds=rounds)
    steps = {g.key: unit_step(g, 8) for g in groups}
    model = WidthModel.build(program, groups, target, steps)
    members: dict[str, list] = {}
    for g, s in zip(groups, model.structures):
        members.setdefault(s.signature, []).append(g)
    variants: dict[str, tuple[PruningPlan, float]] = {}
    for i, (sig, gs) in enumerate(members.items()):
        widths = model.widths[gs[0].key]
        picks = sorted(set(widths[:: max(1, len(widths) // 6)]) | {widths[0]})
        for k in picks:
            if k == gs[0].size:
                continue
            counts = {g.key: k for g in gs}
            variants[f"s{i} uniform k={k}/{gs[0].size} (x{len(gs)})"] = (
                PruningPlan({g.key: list(range(k)) for g in gs}), model.predict_ms(counts))
        k = widths[0]
        variants[f"s{i} single k={k}/{gs[0].size}"] = (
            PruningPlan({gs[0].key: list(range(k))}), model.predict_ms({gs[0].key: k}))
    rng = np.random.default_rng(0)
    for j in range(3):  # mixed widths, as a knapsack plan has them
        counts = {g.key: int(rng.choice(model.widths[g.key])) for g in groups}
        variants[f"mixed {j}"] = (PruningPlan({k: list(range(c)) for k, c in counts.items()
                                              if c < next(g.size for g in groups
                                                          if g.key == k)}),
                                  model.predict_ms(counts))
    spec = target.spec()
    args, kwargs = measurement_inputs(program, target)
    fns = {"dense": tables._bound(tables.lower_for_timing(program, spec), args, kwargs),
           "dense copy": tables._bound(tables.lower_for_timing(program, spec), args, kwargs)}
    for label, (plan, _) in variants.items():
        variant = program.clone(share_tensors=True)
        apply_plan(variant, plan)
        fns[label] = tables._bound(tables.lower_for_timing(variant, spec), args, kwargs)
    with tables._threads_for(spec):
        samples = tables.time_callables(fns, rounds=rounds, round_seconds=0.002)
    dense = tables.undisturbed(samples["dense"])
    rows = [{"model": name, "backend": backend, "threads": threads, "variant": "dense copy",
             "predicted": 1.0, "measured": tables.undisturbed(samples["dense copy"]) / dense,
             "dense_ms": dense, "model_dense_ms": model.dense_ms}]
    for label, (_, predicted_ms) in variants.items():
        rows.append({"model": name, "backend": backend, "threads": threads, "variant": label,
                     "predicted": predicted_ms / model.dense_ms,
                     "measured": tables.undisturbed(samples[label]) / dense,
                     "median_measured": float(np.median(samples[label])
                                              / np.median(samples["dense"])),
                     "dense_ms": dense, "model_dense_ms": model.dense_ms})
    for r in rows:
        r["timing"] = TIMING
    for r in rows:
        print(f"{r['model']:14s} {backend:11s} x{threads} {r['variant']:34s} predicted "
              f"{r['predicted']:.1%} measured {r['measured']:.1%}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["llama", "digits_resnet"])
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "latency_model_check")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    path = args.out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    for name in args.models:
        data["rows"].extend(check(name, args.backend, args.threads, args.rounds))
    data["machine"], data["load_average_at_end"] = tables.machine_id(), os.getloadavg()
    path.write_text(json.dumps(data, indent=2))
    args.out.with_suffix(".md").write_text(markdown(data))


def markdown(data: dict) -> str:
    lines = ["# The latency model against whole programs timed on the backend", "",
             "`benchmarks/latency_model_check.py`: the tables' prediction for a plan (as "
             "`WidthModel.predict_ms` prices it) against the whole program with that plan, "
             "timed interleaved with the dense program in one session (30 rounds, fastest "
             "call, each timed call after an untimed one). `uniform`: every group of one "
             "structure (`s0`, `s1`...) at width k; `single`: one group at its smallest "
             "width; `mixed`: every group at a random candidate width; `dense copy`: the "
             "dense program lowered twice (the noise floor).", "",
             f"Machine: `{data['machine']}`. " + NOTE, "",
             "| timing | model | backend | threads | plan | predicted | measured | error "
             "(points) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r.get('timing', TIMING).split(':')[0]} | {r['model']} | "
                     f"{r['backend']} | {r['threads']} | {r['variant']} | "
                     f"{r['predicted']:.1%} | {r['measured']:.1%} | "
                     f"{100 * (r['measured'] - r['predicted']):+.1f} |")
    return "\n".join(lines + ["", *FINDINGS]) + "\n"


TIMING = "after: untimed call before each timing"
NOTE = ("Each configuration was timed holding the 2-core machine (QUIET protocol: no other "
        "job started meanwhile). `before`: the timing of the first latency-target version; "
        "`after`: every timed call follows one untimed call of the same program.")
FINDINGS: list[str] = [
    "## What the checks found",
    "",
    "- **Place in the interleaved order** (fixed): rounds alternated forward and reversed "
    "order, so the programs at either end ran twice in a row every other round and their "
    "fastest call found their weights in cache. The Llama-shaped decoder lowered twice timed "
    "5.0 % apart by place alone (ONNX Runtime, 1 thread), and every uniform plan measured "
    "+2.7 to +7.5 points slower than predicted (the dense reference, first in every "
    "session, ran warm; so did the tables' smallest and full widths, first and last). With "
    "an untimed call before each timed one: the same program twice within 0.1 %, uniform "
    "plans -0.1 to +2.7 points, mixed-width plans (as a knapsack picks them) -0.2 to +2.4, "
    "the digits ResNet -0.6 to +3.5.",
    "- **Interactions**: one decoder MLP at 8 of 768 units saves 11.8 % in context, all "
    "four together 58.5 %, 14.6 % each (savings are super-additive: a smaller model keeps "
    "more of itself in cache). The model takes each structure's scale from all its groups "
    "pruned together, so it is exact for the uniform plan at the smallest width and prices a "
    "lone group 2.8 points too optimistic. This is what the closed loop corrects.",
    "- **Stepwise widths**: ONNX Runtime's convolutions in the digits ResNet cost about the "
    "same at 8 and 16 of 32 channels and at 24 and 32. Every candidate width is measured, so "
    "the knapsack sees the steps; no interpolated price enters a plan.",
    "- **The plan timed was not the program delivered** (fixed; `benchmarks/"
    "latency_plan_gap.py`, digits ResNet, VBP asked for 90 % at 2 threads, two orders): the "
    "loop built its plans keeping each group's *first* units, without compensations. VBP's "
    "mean folding adds ops (a conv2d of a ones tensor and an add per compensated conv: 6 on "
    "torch, 1 on ONNX Runtime). torch: first units 93.4 / 92.2 %, the pass's units 93.7 / "
    "92.2 %, the pass's program 106.6 / 104.6 % of the dense latency; ONNX Runtime: first "
    "units 78.6 / 80.4 %, the pass's units 95.2 / 94.7 %, the pass's program 96.8 / 96.7 %. "
    "The loop now times the plan the pass applies, units and compensations included.",
    "- **ONNX Runtime at 2 threads on this 2-core machine: the session decides, not the "
    "plan** (`latency_plan_gap.py sessions`): the same structure with six different sets "
    "of 8 kept channels, each its own session, timed 1.29-1.30 x the dense program in one "
    "timing of 40 rounds and 1.47-1.48 x in a second, the dense session itself 1.415 then 1.245 ms, "
    "while the pruned ones stayed at about 1.83 ms; at 1 thread the same programs timed "
    "0.97-0.99 x both times. The exported graphs are identical (same ops, same initializer "
    "shapes). Each session has an intra-op thread pool of its own (spinning off for "
    "timing), and a 2-ms program of 13 convolutions hands work to it in every op; where its "
    "worker lands against the caller on 2 cores is the likely reason a session's timing "
    "differs from another's by up to 30 % whatever it computes (not proven here). This is why the digits "
    "ResNet at 2 threads is refused on ONNX Runtime (every plan measured 99-104 %), and why "
    "the 15-point gap above between first units and the pass's units is not about the "
    "units. Not fixed here (sessions sharing one thread pool would be the next thing to "
    "try). The bimodal sessions come and go: in a later run (`sessions spinning`) the "
    "six sessions with spinning off agreed (0.96-1.00 x the dense program, dense 1.21 and "
    "1.24 ms), and with ONNX Runtime's spinning on (prunec.compile's default for "
    "onnxruntime; the harness turns it off so that one session's spinning workers do not "
    "take the cores of the next one timed) the dense program ran 1.04-1.05 ms, pruned "
    "ones 0.95-1.05 x: at 2 threads the harness times a slower configuration than the "
    "default deployment. Timing with the deployment's spinning is left to do; for the "
    "larger models at 2 threads the loop's sessions and the fresh sessions "
    "of the final timing agreed within 2 points (MiniLM 68.7 / 70.2 %, the decoder 69.4 / "
    "71.2 %).",
]


if __name__ == "__main__":
    main()
