"""Analysis + rewrite time (capture excluded) for ViT-Base and ResNet-50 on CPU.

Both stay under one second on a 2-core CPU. Measures, on one captured program per model:
``analyze_channels`` (the channel-dependency analysis, cold: the cache is bypassed) and
``apply_plan`` of a 50% magnitude plan (slicing, shape constants, metadata refresh), median of
``--repeats`` runs. Models are built from transformers configs with random weights.

Run: ``python benchmarks/analysis_time.py`` -> benchmarks/results/analysis_time.{md,json}
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from prunec.ir.capture import capture
from prunec.ir.channels import _analyze
from prunec.passes import MagnitudePruning
from prunec.rewrite import apply_plan

RESULTS = Path(__file__).parent / "results"


def models():
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(attn_implementation="sdpa"))
    resnet = transformers.ResNetForImageClassification(transformers.ResNetConfig())
    return {"ViT-Base/16 224": (vit.eval(), (torch.randn(1, 3, 224, 224),)),
            "ResNet-50 224": (resnet.eval(), (torch.randn(1, 3, 224, 224),))}


def measure(model, inputs, repeats: int) -> dict:
    t0 = time.perf_counter()
    program = capture(model, inputs)
    capture_s = time.perf_counter() - t0
    analysis_s, rewrite_s = [], []
    plan = MagnitudePruning(0.5).plan(program, _analyze(program).prunable(), None)
    for _ in range(repeats):
        p = program.clone()
        t0 = time.perf_counter()
        analysis = _analyze(p)
        analysis_s.append(time.perf_counter() - t0)
        p._cache[("channels", p.version)] = analysis  # what apply_plan would find cached
        t0 = time.perf_counter()
        apply_plan(p, plan)
        rewrite_s.append(time.perf_counter() - t0)
    a, r = statistics.median(analysis_s), statistics.median(rewrite_s)
    return {"capture_s": capture_s, "analysis_s": a, "rewrite_s": r, "analysis_plus_rewrite_s": a + r,
            "groups": len(analysis), "prunable_groups": len(analysis.prunable()),
            "graph_nodes": len(program.graph.nodes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = {name: measure(m, x, args.repeats) for name, (m, x) in models().items()}
    env = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "analysis_time.json").write_text(json.dumps({"env": env, "results": rows}, indent=2))
    lines = ["# Analysis + rewrite time (capture excluded), CPU", "",
             f"torch {env['torch']}, transformers {env['transformers']}, {env['threads']} threads, "
             f"median of {args.repeats} runs. Analysis + rewrite takes at most "
             f"{max(r['analysis_plus_rewrite_s'] for r in rows.values()):.2f} s per model.", "",
             "| model | graph nodes | groups (prunable) | analysis s | rewrite s | analysis+rewrite s | capture s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['graph_nodes']} | {r['groups']} ({r['prunable_groups']}) | "
                     f"{r['analysis_s']:.3f} | {r['rewrite_s']:.3f} | **{r['analysis_plus_rewrite_s']:.3f}** | "
                     f"{r['capture_s']:.2f} |")
    (RESULTS / "analysis_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
