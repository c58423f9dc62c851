"""ONNX Runtime latency (2 threads) against the MLP hidden width of a DeiT-Small-like model:
does ``round_to=8`` land on fast widths?

The model is the MLP half of DeiT-Small: 12 pre-norm residual blocks
``x + fc2(gelu(fc1(layernorm(x))))`` with hidden size 384 and tokens 197 (224 / 16 + CLS), the
MLP width ``W`` the same in every block. Attention is left out: it does not depend on ``W``
and would only add the same time to every width. Each width is captured and lowered by prunec
(``capture`` -> ``lower(program, "onnxruntime", intra_op_threads=2)``, the same ONNX export
and session as the pruned models get, intra-op spinning off as in every timed ORT session
here: with 17 sessions interleaved, spinning workers would make the position in the round
matter more than the width, see ``common.py``), and all widths run interleaved in one
process (:func:`prunec.bench.benchmark`), every width each round.

Reported per width and batch size: median latency, latency per GMAC (MACs from prunec's cost
model) and the slowdown against the trend: a least-squares line of latency on ``W`` over all
widths (MACs are linear in ``W``), so a width whose kernel path is slow stands above it.
Widths that are multiples of 8 (what ``round_to=8`` keeps) are marked.

Run: ``python benchmarks/round_to_curve.py`` -> ``benchmarks/results/round_to_curve.{md,json,png}``
(``--quick``: ``round_to_curve_quick.*``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from prunec.backends import lower  # noqa: E402
from prunec.ir.capture import capture  # noqa: E402
from prunec.ir.cost import count_macs  # noqa: E402

HIDDEN, TOKENS, LAYERS = 384, 197, 12


class MLPStack(nn.Module):
    """``LAYERS`` blocks ``x + fc2(gelu(fc1(norm(x))))`` of hidden ``HIDDEN``, MLP ``width``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm": nn.LayerNorm(HIDDEN, eps=1e-12), "fc1": nn.Linear(HIDDEN, width),
            "fc2": nn.Linear(width, HIDDEN)}) for _ in range(LAYERS))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b["fc2"](self.act(b["fc1"](b["norm"](x))))
        return x


def tokens(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, TOKENS, HIDDEN, generator=torch.Generator().manual_seed(seed))


def build(widths: list[int]) -> tuple[dict, dict]:
    arts, macs = {}, {}
    for w in widths:
        torch.manual_seed(w)
        program = capture(MLPStack(w).eval(), (tokens(common.CAPTURE_BATCH),))
        name = f"W={w}"
        macs[name] = count_macs(program) // common.CAPTURE_BATCH
        arts[name] = common.without_spinning(
            lower(program, "onnxruntime", intra_op_threads=common.THREADS))
    return arts, macs


def analyse(res, widths: list[int], macs: dict) -> list[dict]:
    rows = []
    for batch in dict.fromkeys(r.batch_size for r in res.rows):
        med = np.array([res.row(f"W={w}", batch).median_ms for w in widths])
        slope, icpt = np.polyfit(np.array(widths, float), med, 1)
        for w, m in zip(widths, med):
            r = res.row(f"W={w}", batch)
            trend = slope * w + icpt
            rows.append({"width": w, "batch": batch, "median_ms": float(m), "p90_ms": r.p90_ms,
                         "min_ms": r.min_ms, "ms_per_gmac": float(m) / (batch * macs[f"W={w}"] / 1e9),
                         "vs_trend": float(m / trend), "mult8": w % 8 == 0,
                         "mult16": w % 16 == 0, "macs": macs[f"W={w}"]})
    return rows


def markdown(rows: list[dict], res, args) -> str:
    lines = ["# ONNX Runtime latency vs MLP hidden width (DeiT-Small MLP stack, 2 threads)", "",
             f"Command: `{common.command_line()}`. Model: {LAYERS} blocks "
             f"`x + fc2(gelu(fc1(layernorm(x))))`, hidden {HIDDEN}, {TOKENS} tokens, MLP width W "
             "in every block; lowered by prunec to onnxruntime; all widths interleaved in one "
             "process. `vs trend` = median / least-squares line of median on W (per batch); "
             "`*` marks multiples of 8 (round_to=8), `**` multiples of 16.", ""]
    for batch in dict.fromkeys(r["batch"] for r in rows):
        sel = [r for r in rows if r["batch"] == batch]
        lines += [f"## batch {batch}", "", "| W | | median ms | p90 ms | min ms | ms / GMAC | vs trend |",
                  "|---|---|---|---|---|---|---|"]
        for r in sel:
            mark = "**" if r["mult16"] else "*" if r["mult8"] else ""
            lines.append(f"| {r['width']} | {mark} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
                         f"{r['min_ms']:.3f} | {r['ms_per_gmac']:.3f} | {r['vs_trend']:.3f} |")
        m8 = [r["vs_trend"] for r in sel if r["mult8"]]
        other = [r["vs_trend"] for r in sel if not r["mult8"]]
        worst = max(sel, key=lambda r: r["vs_trend"])
        steps = [(b["median_ms"] / a["median_ms"] - 1, a["width"], b["width"])
                 for a, b in zip(sel, sel[1:])]
        up = max(steps)
        lines += ["", f"Mean `vs trend`: multiples of 8 {np.mean(m8):.3f} ({len(m8)} widths), "
                  f"others {np.mean(other):.3f} ({len(other)} widths); slowest against the "
                  f"trend: W={worst['width']} ({worst['vs_trend']:.3f}); largest step up between "
                  f"neighbouring widths: {up[1]} -> {up[2]} ({100 * up[0]:+.1f}%); range of "
                  f"medians {100 * (max(r['median_ms'] for r in sel) / min(r['median_ms'] for r in sel) - 1):.1f}% "
                  f"for +{100 * (sel[-1]['width'] / sel[0]['width'] - 1):.1f}% width.", ""]
    lines += ["## Environment", ""] + common.env_lines(res.environment, [
        f"- iterations per batch size {args.iters}, warmup {args.warmup} rounds; "
        f"{common.load_note()} at the end of the run"])
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    batches = list(dict.fromkeys(r["batch"] for r in rows))
    fig = Figure(figsize=(6 * len(batches), 4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, batch in enumerate(batches):
        ax = fig.add_subplot(1, len(batches), i + 1)
        sel = [r for r in rows if r["batch"] == batch]
        ax.plot([r["width"] for r in sel], [r["median_ms"] for r in sel], "-", color="gray",
                lw=0.8)
        for cond, style, label in ((lambda r: not r["mult8"], "o", "other widths"),
                                   (lambda r: r["mult8"] and not r["mult16"], "s", "multiple of 8"),
                                   (lambda r: r["mult16"], "D", "multiple of 16")):
            pts = [r for r in sel if cond(r)]
            ax.plot([r["width"] for r in pts], [r["median_ms"] for r in pts], style, label=label)
        ax.set(title=f"batch {batch}: DeiT-S MLP stack, ORT 2 threads", xlabel="MLP width W",
               ylabel="median latency (ms)")
        ax.grid(alpha=0.3)
    # One legend for the figure, above the panels: never over a bar or a point.
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize=8,
               frameon=False)
    fig.savefig(path, format="png", dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs=2, default=[760, 776], metavar=("LO", "HI"))
    parser.add_argument("--iters", type=int, nargs=2, default=[80, 15], metavar=("B1", "B8"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the PNG from the committed JSON (no timing)")
    args = parser.parse_args()
    if args.replot:
        stem = common.RESULTS / ("round_to_curve_quick" if args.quick else "round_to_curve")
        plot(json.loads(stem.with_suffix(".json").read_text())["rows"], stem.with_suffix(".png"))
        return
    args.iters = {1: 3, 8: 1} if args.quick else {1: args.iters[0], 8: args.iters[1]}
    widths = list(range(args.widths[0], args.widths[1] + 1))
    common.set_threads()
    start = time.perf_counter()
    arts, macs = build(widths)
    print(f"built {len(widths)} widths in {time.perf_counter() - start:.0f} s", flush=True)
    res = common.measure({"onnxruntime": arts}, lambda b: ((tokens(b, seed=7),), {}), args.iters,
                         {k.partition("/")[0]: v for k, v in macs.items()}, warmup=args.warmup)
    rows = analyse(_strip_backend(res), widths, macs)
    stem = common.RESULTS / ("round_to_curve_quick" if args.quick else "round_to_curve")
    common.write_json(stem.with_suffix(".json"), {
        "rows": rows, "seconds": time.perf_counter() - start, "loadavg_end": os.getloadavg(),
        "versions": common.versions(), "model": {"hidden": HIDDEN, "tokens": TOKENS,
                                                 "layers": LAYERS},
        "bench": {**res.to_dict(), "rows": [common.row_dict(r) for r in res.rows]}})
    stem.with_suffix(".md").write_text(markdown(rows, res, args))
    plot(rows, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    print(f"total {time.perf_counter() - start:.0f} s")


def _strip_backend(res):
    """Rows named ``W=.../onnxruntime`` -> ``W=...`` (one backend here)."""
    for r in res.rows:
        r.artifact = r.artifact.partition("/")[0]
    return res


if __name__ == "__main__":
    main()
