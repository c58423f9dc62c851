"""MACs and parameters of DeiT-Base before and after VBP at ratio 0.55, against the paper.

The VBP paper reports for DeiT-B (224 px, patch 16) at ``p = 0.55``: MACs 17.58G -> 11.44G
and parameters 86.57M -> 55.40M. Without ImageNet weights or data, this script builds the
architecture with random weights and calibrates on random images: the variance ranking is
then meaningless, but the cost is not, because every MLP neuron of every block costs the same
(``2 * 768`` MACs per token and ``2 * 768 + 1`` parameters). The count removed is fixed by the
ratio (``0.55 * 12 * 3072``), so the cost after pruning depends only on rounding.

Architectures counted (batch 1):

- ``hf_deit``: ``transformers.DeiTForImageClassification(DeiTConfig(num_labels=1000))``:
  Hugging Face's DeiT has a CLS *and* a distillation token (198 tokens) and one classifier;
- ``deit_b_197``: the same sizes as ``ViTForImageClassification`` (197 tokens), the layout of
  timm's ``deit_base_patch16_224`` that the paper (via fvcore) counts.

MACs follow :mod:`prunec.ir.cost` (products only; fvcore also charges norms, which is the
0.02G gap noted there). Writes ``benchmarks/results/vbp_deit_base_cost.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunec.ir.capture import capture
from prunec.ir.cost import count_macs, count_params
from prunec.passes import PassContext, VarianceBasedPruning

__all__ = ["build", "measure", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
PUBLISHED = {"macs_before": 17.58e9, "macs_after": 11.44e9,
             "params_before": 86.57e6, "params_after": 55.40e6}


def build(kind: str) -> torch.nn.Module:
    """DeiT-Base with random weights (seeded), eval mode."""
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if kind == "hf_deit":
        return DeiTForImageClassification(DeiTConfig(num_labels=1000, attn_implementation="sdpa")).eval()
    config = ViTConfig(**DeiTConfig().to_dict())
    config.num_labels, config._attn_implementation = 1000, "sdpa"
    return ViTForImageClassification(config).eval()


def measure(kind: str, ratio: float, round_to: int, calibration: list) -> dict:
    model = build(kind)
    # Static batch 1 (export would specialise a dynamic batch of 1 anyway): costs per image.
    program = capture(model, (torch.randn(1, 3, 224, 224),), dynamic=False)
    before = {"macs_before": count_macs(program), "params_before": count_params(program)}
    result = VarianceBasedPruning(ratio, calibration, round_to=round_to)(program, PassContext())
    kept = {k: len(v) for k, v in result.plan.keep.items()}
    return {"model": kind, "ratio": ratio, "round_to": round_to, **before,
            "macs_after": count_macs(program), "params_after": count_params(program),
            "neurons_removed": result.stats["units_removed"], "neurons_total": 12 * 3072,
            "kept_per_layer": list(kept.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.55)
    parser.add_argument("--out", type=Path, default=RESULTS / "vbp_deit_base_cost")
    args = parser.parse_args()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    calibration = [torch.randn(1, 3, 224, 224, generator=gen) for _ in range(8)]
    rows = []
    for kind in ("deit_b_197", "hf_deit"):
        for round_to in (1, 8):
            row = measure(kind, args.ratio, round_to, calibration)
            rows.append(row)
            print(f"{kind} round_to={round_to}: MACs {row['macs_before'] / 1e9:.2f}G -> "
                  f"{row['macs_after'] / 1e9:.2f}G, params {row['params_before'] / 1e6:.2f}M -> "
                  f"{row['params_after'] / 1e6:.2f}M, removed {row['neurons_removed']}", flush=True)
    info = {"published": PUBLISHED, "seconds": round(time.perf_counter() - start, 1),
            "calibration": "8 random 224x224 images (N(0,1)), batch 1", "torch": torch.__version__}
    write(args.out, info, rows)


def write(out: Path, info: dict, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    pub = info["published"]
    lines = ["# DeiT-Base: MACs and parameters before / after VBP (ratio 0.55 of MLP neurons)", "",
             "Random weights, random calibration images: only the cost is meaningful. "
             "Batch 1, 224x224; MACs by prunec.ir.cost (products only).", "",
             "| model | round_to | neurons removed | MACs before | MACs after | reduction | "
             "params before | params after |", "|---|---|---|---|---|---|---|---|",
             f"| paper (DeiT-B, fvcore) | - | - | {pub['macs_before'] / 1e9:.2f}G | "
             f"{pub['macs_after'] / 1e9:.2f}G | "
             f"{100 * (1 - pub['macs_after'] / pub['macs_before']):.2f}% | "
             f"{pub['params_before'] / 1e6:.2f}M | {pub['params_after'] / 1e6:.2f}M |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['round_to']} | {r['neurons_removed']} / "
                     f"{r['neurons_total']} | {r['macs_before'] / 1e9:.2f}G | "
                     f"{r['macs_after'] / 1e9:.2f}G | "
                     f"{100 * (1 - r['macs_after'] / r['macs_before']):.2f}% | "
                     f"{r['params_before'] / 1e6:.2f}M | {r['params_after'] / 1e6:.2f}M |")
    lines += ["", "Kept neurons per layer (of 3072): "
              + "; ".join(f"{r['model']} round_to={r['round_to']}: {r['kept_per_layer']}" for r in rows),
              "", f"Total run time {info['seconds']} s, torch {info['torch']}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
