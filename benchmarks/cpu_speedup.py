"""CPU speedup of prunec's pruned artifacts: DeiT-Small (MLP neurons at 0.5) and ResNet-50
(channels at 0.5), on ONNX Runtime (2 threads) and torch eager (2 threads).

Per model, the unpruned program (``prunec.compile(model, x, [])``) and the pruned one are
lowered to both backends; per backend and batch size the two artifacts run interleaved in
one process (:func:`prunec.bench.benchmark`). Reported per row: median latency, speedup
``median_dense / median_pruned`` with a paired-bootstrap 95% interval, the MACs ideal
``macs_before / macs_after`` (prunec's cost model) and ``efficiency = speedup / ideal``.

ONNX Runtime sessions are timed with intra-op spinning off (why: ``common.py``); the sessions
exactly as the backend builds them (spinning on) are reported too. For DeiT-Small two more
pairs run: prunec's artifacts lowered with ``opset=23`` (SDPA exported as the ONNX
``Attention`` op, GELU as ``Gelu``), and a reference that is not prunec: the HF model and a
hand-pruned copy with prunec's MLP widths exported by ``torch.onnx.export(dynamo=False)``.
An ONNX Runtime kernel profile of DeiT-Small splits the time by op category.

- DeiT-Small: ``ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
  intermediate_size=1536)``, 224 / 16, SDPA attention, random weights. DeiT-S and ViT-S/16
  share this architecture apart from DeiT's distillation token. MLP hidden neurons pruned at
  0.5 by VBP on random calibration images (``targets="mlp"``, global, ``round_to=8``).
- ResNet-50: ``ResNetConfig()`` defaults, 224, ``MagnitudePruning(0.5)`` with
  ``targets="all"`` (residual channels included); the groups it prunes are listed.

Run: ``python benchmarks/cpu_speedup.py`` -> ``benchmarks/results/cpu_speedup.{md,json,png}``
(``--quick`` for a smoke run that writes ``cpu_speedup_quick.*``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import prunec  # noqa: E402
from prunec.backends import lower  # noqa: E402
from prunec.ir.channels import analyze_channels  # noqa: E402
from prunec.passes import MagnitudePruning  # noqa: E402


def build(name: str) -> dict:
    """Compile dense and pruned programs of ``name``; lower both to the two backends."""
    x = common.capture_inputs()
    if name == "DeiT-Small":
        model = common.deit_small()
        pass_, recipe = common.mlp_pruning_pass(0.5, common.calibration_images())
    else:
        model = common.resnet50()
        pass_, recipe = MagnitudePruning(0.5), "MagnitudePruning(0.5, targets='all', round_to=8)"
    t0 = time.perf_counter()
    dense = prunec.compile(model, x, [])
    pruned = prunec.compile(model, x, [pass_])
    compile_s = time.perf_counter() - t0
    arts = {b: {"dense": d, "pruned": p} for (b, d), p in zip(
        common.lower_backends(dense.program).items(),
        common.lower_backends(pruned.program).values())}
    arts[SPINNING] = {v: lower(c.program, "onnxruntime", intra_op_threads=common.THREADS)
                      for v, c in (("dense", dense), ("pruned", pruned))}
    if name == "DeiT-Small":
        arts[OPSET23] = {v: common.without_spinning(lower(
            c.program, "onnxruntime", intra_op_threads=common.THREADS, opset=23))
            for v, c in (("dense", dense), ("pruned", pruned))}
        widths = common.linear_widths(pruned.program.gm, "mlp.fc1")  # a hand-pruned reference
        arts[REFERENCE] = torchscript_reference(model, widths, TMP.name)
    per_sample = common.CAPTURE_BATCH
    return {"model": name, "recipe": recipe, "artifacts": arts, "compile_s": compile_s,
            "macs": {"dense": pruned.report.macs_before // per_sample,
                     "pruned": pruned.report.macs_after // per_sample},
            "params": {"dense": pruned.report.params_before, "pruned": pruned.report.params_after},
            "report": pruned.report.to_dict(),
            "structure": structure(name, dense.program, pruned)}


REFERENCE = "ref: hand-pruned, TorchScript export, ORT"
OPSET23 = "onnxruntime opset=23"
SPINNING = "onnxruntime, default session (spinning on)"
TMP = tempfile.TemporaryDirectory()


def structure(name: str, dense_program, pruned) -> dict:
    """What was pruned: MLP widths (DeiT) or the group table (ResNet)."""
    if name == "DeiT-Small":
        return {"mlp_widths": common.linear_widths(pruned.program.gm, "mlp.fc1")}
    keep = pruned.report.passes[0]["plan"].keep
    groups = []
    for g in analyze_channels(dense_program):
        if g.size <= 3:  # RGB input channels
            continue
        groups.append({"key": g.key, "size": g.size, "kept": len(keep.get(g.key, range(g.size))),
                       "tags": sorted(g.tags), "prunable": g.prunable, "reason": g.reason})
    return {"groups": groups}


# --------------------------------------------------------------------------- reference
class _OrtCallable:
    """An ONNX file in a session with the onnxruntime backend's options, called on a tensor."""

    name = "onnxruntime (TorchScript export)"

    def __init__(self, path: str) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(path, common.no_spin_options(),
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.path = path
        self.settings = {"intra_op_threads": common.THREADS, "export": "torch.onnx dynamo=False"}

    def __call__(self, x: torch.Tensor):
        return self.session.run(None, {self.input: x.numpy()})[0]


def hand_pruned_copy(model: torch.nn.Module, widths: list[int]) -> torch.nn.Module:
    """A copy of the HF ViT whose MLP ``fc1``/``fc2`` are rebuilt at ``widths`` (the same
    widths as prunec's result, so the same MACs; the values do not matter for speed)."""
    import copy

    copy_ = copy.deepcopy(model)
    for layer, w in zip(copy_.vit.layers, widths):
        hidden = layer.mlp.fc1.in_features
        layer.mlp.fc1 = torch.nn.Linear(hidden, w)
        layer.mlp.fc2 = torch.nn.Linear(w, hidden)
    return copy_.eval()


def torchscript_reference(model: torch.nn.Module, widths: list[int], tmp: str) -> dict:
    """Dense model and its hand-pruned copy exported by ``torch.onnx.export(dynamo=False)``
    (what one does by hand), served with the same ORT session options as prunec's."""
    out = {}
    for variant, m in (("dense", model), ("pruned", hand_pruned_copy(model, widths))):
        path = f"{tmp}/{variant}_ts.onnx"
        torch.onnx.export(_Logits(m), (common.images(1),), path, dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}})
        out[variant] = _OrtCallable(path)
    return out


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


# --------------------------------------------------------------------------- ORT profile
_LAYOUT = {"Transpose", "Reshape", "Concat", "Slice", "Gather", "Shape", "Expand", "Unsqueeze",
           "Squeeze", "ReorderInput", "ReorderOutput", "Equal"}


def _category(op: str, weight: tuple | None, hidden: int) -> str:
    """Where a kernel's time goes (DeiT): GEMMs by weight shape, then op families."""
    if op in ("MatMul", "FusedMatMul", "Gemm"):
        if weight is None:
            return "attention QK^T / AV (MatMul, no weight)"
        return ("q/k/v/o projections (MatMul 384x384)" if set(weight) == {hidden}
                else "MLP fc1/fc2 (MatMul)" if hidden in weight and len(weight) == 2
                else "other MatMul/Gemm")
    if op in ("Attention", "MultiHeadAttention"):
        return "attention (fused ONNX Attention op)"
    if op in ("Softmax", "IsNaN", "Where"):
        return "softmax + exporter's NaN guard (Softmax, IsNaN, Where)"
    if op in ("Erf", "Gelu", "BiasGelu", "FastGelu"):
        return "GELU (Erf / Gelu)"
    if op in ("Add", "Mul", "Div", "Sub"):
        return "element-wise Add/Mul/Div (biases, GELU arithmetic, residuals, scaling)"
    if "LayerNormalization" in op:
        return "LayerNorm"
    return "layout and shape ops (Transpose, Reshape, ...)" if op in _LAYOUT else f"other ({op})"


def ort_profiles(models: dict, rounds: int, hidden: int = 384) -> dict[str, dict]:
    """Per-category kernel time (ms per call, batch 1) of each ONNX model, in sessions with
    the backend's options plus profiling, run interleaved; node weights are read from the
    ORT-optimised graph so that fused nodes are classified too."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sessions = {name: _profiled_session(model, f"{tmp}/{name}")
                    for name, model in models.items()}
        feed = common.images(1, seed=5).numpy()
        for i in range(rounds + 2):
            for name in common.interleaved_order(list(sessions), i):
                sess = sessions[name][0]
                sess.run(None, {sess.get_inputs()[0].name: feed})
        return {name: _aggregate(sess, graph, rounds, hidden)
                for name, (sess, graph) in sessions.items()}


def _profiled_session(model, prefix: str):
    import onnx
    import onnxruntime as ort

    opts = common.no_spin_options()
    opts.enable_profiling = True
    opts.profile_file_prefix = prefix
    opts.optimized_model_filepath = f"{prefix}_opt.onnx"
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess, onnx.load(f"{prefix}_opt.onnx").graph


def _aggregate(sess, graph, rounds: int, hidden: int) -> dict:
    """Per category, the median over timed runs of that run's summed kernel time (ms): a
    median, so that a run hit by a neighbour's process does not skew the split."""
    import json

    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    weight = {n.name: next((inits[i] for i in n.input if i in inits and len(inits[i]) == 2),
                           None) for n in graph.node}
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [(e["ts"], e["ts"] + e["dur"]) for e in events
            if e.get("cat") == "Session" and e["name"] == "model_run"][2:]  # 2 warm-up runs
    per_run: list[dict[str, float]] = [{} for _ in runs]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        i = next((k for k, (a, b) in enumerate(runs) if a <= e["ts"] <= b), None)
        if i is not None:
            key = _category(e["args"]["op_name"], weight.get(e["name"][: -len("_kernel_time")]),
                            hidden)
            per_run[i][key] = per_run[i].get(key, 0.0) + e["dur"] / 1e3
    keys = {k for run in per_run for k in run}
    out: dict = {k: float(np.median([run.get(k, 0.0) for run in per_run])) for k in keys}
    out["(ops in the ORT-optimised graph)"] = dict(sorted(
        _op_counts(graph).items(), key=lambda kv: -kv[1]))
    return out


def _op_counts(graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def profile_lines(prof: dict) -> list[str]:
    """A table: kernel categories x profiled models (ms per call), dense/pruned ratios."""
    names = list(prof)
    keys: list[str] = []
    for p in prof.values():
        keys += [k for k in p if k not in keys and not k.startswith("(")]
    keys.sort(key=lambda k: -prof["dense"].get(k, 0.0))
    total = {n: sum(prof[n].get(k, 0.0) for k in keys) for n in names}
    pairs = [(d, p) for d, p in (("dense", "pruned"), ("opset23 dense", "opset23 pruned"),
                                 ("ref dense", "ref pruned"))
             if d in prof and p in prof]
    head = ["kernel category", *(f"{n} ms" for n in names), *(f"{d} / {p}" for d, p in pairs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in keys + ["**sum of kernels**"]:
        get = (lambda n: total[n]) if k.startswith("**") else (lambda n: prof[n].get(k, 0.0))
        cells = [k, *(f"{get(n):.2f}" for n in names),
                 *(f"{get(d) / get(p):.2f}" if get(p) else "-" for d, p in pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    for n in names:
        ops = prof[n]["(ops in the ORT-optimised graph)"]
        lines += ["", f"ORT-optimised graph of `{n}`, op counts: " + ", ".join(
            f"{k} {v}" for k, v in ops.items())]
    return lines


def inputs(batch: int):
    return (common.images(batch, seed=7),), {}


def run(args) -> dict:
    common.set_threads()
    models = {}
    for name in ("DeiT-Small", "ResNet-50"):
        print(f"{name}: compiling and lowering", flush=True)
        built = build(name)
        print(f"{name}: MACs/sample {built['macs']['dense'] / 1e9:.3f} G -> "
              f"{built['macs']['pruned'] / 1e9:.3f} G; timing", flush=True)
        arts = built.pop("artifacts")
        res = common.measure(arts, inputs, args.iters, built["macs"], warmup=args.warmup)
        if name == "DeiT-Small":
            print(f"{name}: ONNX Runtime kernel profile", flush=True)
            import onnx

            onnx_models = {v: a.model for v, a in arts["onnxruntime"].items()}
            onnx_models.update({f"opset23 {v}": a.model for v, a in arts[OPSET23].items()})
            onnx_models.update({f"ref {v}": onnx.load(a.path) for v, a in arts[REFERENCE].items()})
            built["ort_profile"] = ort_profiles(onnx_models, args.profile_rounds)
        models[name] = {**built, "bench": res}
    return models


def summary_rows(models: dict) -> list[dict]:
    rows = []
    for name, m in models.items():
        res = m["bench"]
        for r in res.rows:
            variant, _, backend = r.artifact.partition("/")
            if variant == "dense":
                continue
            base = res.row(f"dense/{backend}", r.batch_size)
            rows.append({"model": name, "backend": backend, "batch": r.batch_size,
                         "dense_ms": base.median_ms, "pruned_ms": r.median_ms,
                         "speedup": r.speedup, "ci95": r.speedup_ci95,
                         "min_speedup": r.min_speedup, "ideal": r.ideal_speedup,
                         "efficiency": r.efficiency})
    return rows


def markdown(models: dict, rows: list[dict], args) -> str:
    env = next(iter(models.values()))["bench"].environment
    lines = ["# CPU speedup of pruned artifacts (ONNX Runtime and torch eager, 2 threads)", "",
             f"Command: `{common.command_line()}`. Every number below is measured by this "
             "script; speedup = median(dense) / median(pruned) over interleaved rounds "
             "(dense and pruned alternate in one process, per backend and batch size), "
             "[95% paired-bootstrap interval], ideal = MACs(dense) / MACs(pruned) from "
             "prunec's cost model, efficiency = speedup / ideal. `min` is the ratio of the "
             "fastest calls, a cross-check on a shared machine. Rows `" + REFERENCE + "` are a "
             "reference, not prunec: the HF model and a hand-pruned copy of it with prunec's "
             "MLP widths, exported by `torch.onnx.export(dynamo=False)` and run with the same "
             "ORT session options. Rows `" + OPSET23 + "` are prunec's artifacts lowered with "
             "the backend option `opset=23` (the default is 18). ONNX Runtime sessions run "
             "with intra-op spinning off, except rows `" + SPINNING + "`: the sessions exactly "
             "as the backend builds them, which several interleaved sessions on 2 cores slow "
             "down unevenly (see Environment).", "",
             "| model | backend | batch | dense ms | pruned ms | speedup [95% CI] | min | "
             "ideal | efficiency |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['dense_ms']:.2f} | "
                     f"{r['pruned_ms']:.2f} | **{r['speedup']:.2f}x** [{lo:.2f}, {hi:.2f}] | "
                     f"{r['min_speedup']:.2f}x | {r['ideal']:.2f}x | **{r['efficiency']:.2f}** |")
    deit = [r for r in rows if r["model"] == "DeiT-Small"
            and r["backend"] not in (REFERENCE, SPINNING)]
    met = [f"{r['backend']} b{r['batch']}" for r in deit if r["efficiency"] >= 0.92]
    lines += ["", f"DeiT-Small turns at least 92% of its MACs reduction into speedup "
              f"(efficiency >= 0.92) in {len(met)} of {len(deit)} rows "
              f"({', '.join(met) or 'none'}).", ""]
    for name, m in models.items():
        lines += [f"## {name}", "", f"- pruning: {m['recipe']}",
                  f"- MACs per sample: {m['macs']['dense'] / 1e9:.3f} G -> "
                  f"{m['macs']['pruned'] / 1e9:.3f} G; params {m['params']['dense'] / 1e6:.2f} M "
                  f"-> {m['params']['pruned'] / 1e6:.2f} M; capture + pruning "
                  f"{m['compile_s']:.1f} s"]
        lines += structure_lines(name, m["structure"]) + [""]
        if "ort_profile" in m:
            lines += [f"### {name}: where ONNX Runtime spends the time (batch 1, kernel times "
                      f"from ORT's profiler, per category the median over {args.profile_rounds} "
                      "interleaved runs; profiling inflates small kernels)", ""] + profile_lines(m["ort_profile"]) + [""]
    lines += ["## Environment", ""] + common.env_lines(env, [
        "- DeiT-S and ViT-S/16 share this architecture apart from DeiT's distillation token; "
        "weights are random (speed depends only on the widths)",
        f"- iterations per batch size {args.iters}, warmup {args.warmup} rounds; "
        f"{common.load_note()} at the end of the run"])
    return "\n".join(lines) + "\n"


def structure_lines(name: str, s: dict) -> list[str]:
    if "mlp_widths" in s:
        w = s["mlp_widths"]
        return [f"- MLP hidden widths per layer (of 1536): {w} (mean {sum(w) / len(w):.0f}; "
                f"all multiples of 8: {all(v % 8 == 0 for v in w)})"]
    groups = s["groups"]
    pruned = [g for g in groups if g["kept"] < g["size"]]
    res = [g for g in pruned if "residual" in g["tags"]]
    lines = [f"- groups pruned: {len(pruned)} of {len(groups)} (residual-stream groups: "
             f"{len(res)}: " + ", ".join(f"{g['key'].split('.convolution')[0]} "
                                        f"{g['size']}->{g['kept']}" for g in res) + ")",
             f"- bottleneck-internal widths kept: "
             f"{[g['kept'] for g in pruned if 'residual' not in g['tags']]}"]
    blocked = [g for g in groups if not g["prunable"]]
    for g in blocked:
        lines.append(f"- not prunable: `{g['key']}` ({g['size']}): {g['reason']}")
    return lines


_SHORT = {"onnxruntime": "ORT", SPINNING: "ORT\nspinning", OPSET23: "ORT\nopset 23",
          REFERENCE: "ref\nTorchScript"}


def plot(rows: list[dict], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(7 * len(names), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        sel = [r for r in rows if r["model"] == name]
        labels = [f"{_SHORT.get(r['backend'], r['backend'])}\nb{r['batch']}" for r in sel]
        xs = range(len(sel))
        err = [[r["speedup"] - r["ci95"][0] for r in sel], [r["ci95"][1] - r["speedup"] for r in sel]]
        ax.bar(xs, [r["speedup"] for r in sel], yerr=err, capsize=4, color="tab:blue",
               label="measured speedup (median, 95% CI)")
        ax.plot(xs, [r["ideal"] for r in sel], "r_", markersize=30, mew=2,
                label="ideal (MACs ratio)")
        for x, r in zip(xs, sel):
            ax.annotate(f"eff\n{r['efficiency']:.2f}", (x, r["speedup"] / 2), ha="center",
                        va="center", color="white", fontsize=8)
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(title=f"{name}, pruned vs dense", ylabel="speedup (x)")
    # One legend for the figure, above the panels: never over a bar or a point.
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize=8,
               frameon=False)
    fig.savefig(path, format="png", dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, nargs=2, default=[120, 30], metavar=("B1", "B8"),
                        help="timed rounds at batch 1 and at batch 8")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="few rounds; *_quick files")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the PNG from the committed JSON (no timing)")
    args = parser.parse_args()
    if args.replot:
        stem = common.RESULTS / ("cpu_speedup_quick" if args.quick else "cpu_speedup")
        plot(json.loads(stem.with_suffix(".json").read_text())["summary"], stem.with_suffix(".png"))
        return
    args.iters = {1: 5, 8: 2} if args.quick else {1: args.iters[0], 8: args.iters[1]}
    args.profile_rounds = 3 if args.quick else args.profile_rounds
    start = time.perf_counter()
    models = run(args)
    rows = summary_rows(models)
    stem = common.RESULTS / ("cpu_speedup_quick" if args.quick else "cpu_speedup")
    common.write_json(stem.with_suffix(".json"), {
        "summary": rows, "seconds": time.perf_counter() - start,
        "loadavg_end": os.getloadavg(), "versions": common.versions(),
        "models": {n: {**{k: v for k, v in m.items() if k != "bench"},
                       "bench": {**m["bench"].to_dict(),
                                 "rows": [common.row_dict(r) for r in m["bench"].rows]}}
                   for n, m in models.items()}})
    stem.with_suffix(".md").write_text(markdown(models, rows, args))
    plot(rows, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
