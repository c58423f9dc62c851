"""prunec vs Torch-Pruning at equal MACs: DeiT-Small (MLP neurons) and ResNet-50 (channels),
on ONNX Runtime (2 threads) and torch eager (2 threads).

prunec side: as in ``cpu_speedup.py`` (DeiT-Small: VBP at 0.5 on MLP neurons, ResNet-50:
``MagnitudePruning(0.5)``, global, ``round_to=8``). Torch-Pruning side: its
``tp.pruner.MagnitudePruner`` (MetaPruner + ``MagnitudeImportance(p=2)``, ``global_pruning=True``
like prunec's global scope, ``round_to=8``):

- DeiT-Small, like-for-like with prunec's MLP pruning: every ``nn.Linear`` / ``nn.Conv2d``
  except the ``mlp.fc1`` layers is in ``ignored_layers``, so only the MLP hidden neurons go;
- ResNet-50: ``ignored_layers=[classifier]`` (Torch-Pruning's ResNet recipe).

Its ``pruning_ratio`` is tuned by a short search (secant / bisection) until the pruned model's
MACs, counted by prunec's cost model on a ``prunec.ir.capture.capture`` of it, are within 1%
of prunec's. The Torch-Pruning model then goes through the same lowerings (capture, ``torch``
and ``onnxruntime`` with their parity checks) with no manual fix; whether that worked is
recorded. Torch-Pruning's documented HF ViT recipe (``examples/transformers/prune_hf_vit.py``:
``num_heads`` dict, ``prune_head_dims=True``, then hand-patching the attention modules) is
also tried on DeiT-Small and what it needed is recorded (not timed: it prunes other layers).

Per backend and batch size, dense / prunec / Torch-Pruning artifacts run interleaved in one
process (ONNX Runtime sessions with intra-op spinning off: with spinning, the artifact in the
middle of the round, here prunec's, is systematically slowed by its neighbours' spinning
workers; see ``common.py``). The question: is prunec's artifact as fast as Torch-Pruning's?

Run: ``python benchmarks/torch_pruning_compare.py`` ->
``benchmarks/results/tp_compare.{md,json,png}`` (``--quick``: ``tp_compare_quick.*``).
"""
from __future__ import annotations

import argparse
import json
import copy
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import prunec  # noqa: E402
from prunec.ir.capture import capture  # noqa: E402
from prunec.ir.cost import count_macs  # noqa: E402
from prunec.passes import MagnitudePruning  # noqa: E402

MACS_TOL = 0.01


# --------------------------------------------------------------------------- Torch-Pruning
def tp_prune(model: torch.nn.Module, ratio: float, ignored) -> torch.nn.Module:
    """A pruned deep copy: ``MagnitudePruner`` at ``ratio`` (global, p=2, round_to=8)."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(
        pruned, common.images(1), importance=tp.importance.MagnitudeImportance(p=2),
        global_pruning=True, pruning_ratio=ratio, ignored_layers=ignored(pruned), round_to=8,
        output_transform=lambda out: out.logits.sum())
    pruner.step()
    return pruned.eval()


def macs_per_sample(model: torch.nn.Module) -> int:
    """prunec's cost model on a capture of ``model`` (the benchmark's capture batch)."""
    return count_macs(capture(model, common.capture_inputs())) // common.CAPTURE_BATCH


def search_ratio(model, ignored, target: int, start: float = 0.5, steps: int = 8) -> dict:
    """Tune ``pruning_ratio`` until MACs are within :data:`MACS_TOL` of ``target``.

    MACs fall monotonically with the ratio; the next ratio interpolates linearly between the
    nearest tried ratios on each side of the target (bisection when only one side is known
    yet, stepping by 0.1).
    """
    trace, best = [], None
    lo, hi = (0.0, None), (1.0, None)  # (ratio, macs) brackets: lo has macs > target
    ratio = start
    for _ in range(steps):
        pruned = tp_prune(model, ratio, ignored)
        macs = macs_per_sample(pruned)
        err = macs / target - 1
        trace.append({"pruning_ratio": round(ratio, 5), "macs": macs, "rel_error": err})
        print(f"    Torch-Pruning ratio {ratio:.4f}: {macs / 1e9:.4f} GMACs ({100 * err:+.2f}%)",
              flush=True)
        if best is None or abs(err) < abs(best[2]):
            best = (ratio, pruned, err, macs)
        if abs(err) <= MACS_TOL:
            break
        if macs > target:
            lo = (ratio, macs)
        else:
            hi = (ratio, macs)
        if lo[1] is not None and hi[1] is not None:
            ratio = lo[0] + (lo[1] - target) / (lo[1] - hi[1]) * (hi[0] - lo[0])
        else:
            ratio = min(ratio + 0.1, 0.95) if hi[1] is None else max(ratio - 0.1, 0.0)
    ratio, pruned, err, macs = best
    return {"model": pruned, "pruning_ratio": ratio, "macs": macs, "rel_error": err,
            "trace": trace, "within_tolerance": abs(err) <= MACS_TOL}


def mlp_only_ignored(model: torch.nn.Module) -> list:
    return [m for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and not n.endswith("mlp.fc1")]


def classifier_ignored(model: torch.nn.Module) -> list:
    return [model.classifier]


# --------------------------------------------------------------------------- recipe check
def head_recipe_check() -> dict:
    """Torch-Pruning's HF ViT recipe on DeiT-Small (transformers 5.x): what runs, what needs
    patching by hand. Returns a record of each step."""
    import torch_pruning as tp
    import transformers.models.vit.modeling_vit as vit_mod

    record: dict = {}
    try:
        from transformers.models.vit.modeling_vit import ViTSelfAttention  # noqa: F401
        record["recipe_import"] = "ok"
    except ImportError as exc:
        record["recipe_import"] = f"ImportError: {exc}"
    model = common.deit_small()
    attn = [m for m in model.modules() if isinstance(m, vit_mod.ViTAttention)]
    num_heads = {lin: a.num_attention_heads for a in attn
                 for lin in (a.q_proj, a.k_proj, a.v_proj)}
    pruner = tp.pruner.MagnitudePruner(
        model, common.images(1), importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5, ignored_layers=[model.classifier], num_heads=num_heads,
        prune_head_dims=True, prune_num_heads=False, round_to=8,
        output_transform=lambda out: out.logits.sum())
    pruner.step()
    a0 = attn[0]
    record["after_pruning"] = {
        "q_proj.out_features": a0.q_proj.out_features,
        "num_attention_heads": a0.num_attention_heads, "head_dim attribute": a0.head_dim,
        "pruner.num_heads[q_proj]": pruner.num_heads[a0.q_proj]}
    record["unpatched_sdpa_q_shape"] = _sdpa_shapes(model)
    for a in attn:  # the transformers-5 analogue of the recipe's attention_head_size patch
        a.num_attention_heads = pruner.num_heads[a.q_proj]
        a.head_dim = a.q_proj.out_features // a.num_attention_heads
    record["patch"] = ("for every ViTAttention: num_attention_heads = pruner.num_heads[q_proj]; "
                       "head_dim = q_proj.out_features // num_attention_heads "
                       "(scaling left at the original head_dim ** -0.5)")
    record["patched_sdpa_q_shape"] = _sdpa_shapes(model)
    record["patched_export"] = _try_export(model)
    return record


def _sdpa_shapes(model: torch.nn.Module) -> list:
    """Shape of the query given to ``scaled_dot_product_attention`` in the first layer."""
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(list(q.shape))
        return original(q, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            model(common.images(1))
    except Exception as exc:  # record, whatever the failure is
        return [f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"]
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    return seen[:1]


def _try_export(model: torch.nn.Module) -> str:
    try:
        program = prunec.compile(model, common.capture_inputs(), []).program
        prunec.backends.lower(program, "onnxruntime", intra_op_threads=common.THREADS)
        return "ok (capture + onnxruntime lowering with parity check)"
    except Exception as exc:  # record, whatever the failure is
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


# --------------------------------------------------------------------------- per model
def build(name: str) -> dict:
    x = common.capture_inputs()
    if name == "DeiT-Small":
        model = common.deit_small()
        pass_, recipe = common.mlp_pruning_pass(0.5, common.calibration_images())
        ignored, tp_recipe = mlp_only_ignored, ("MagnitudePruner(MagnitudeImportance(p=2), "
                                                "global_pruning=True, round_to=8), ignored_layers "
                                                "= every Linear/Conv2d except mlp.fc1")
    else:
        model = common.resnet50()
        pass_, recipe = MagnitudePruning(0.5), "MagnitudePruning(0.5, targets='all', round_to=8)"
        ignored, tp_recipe = classifier_ignored, ("MagnitudePruner(MagnitudeImportance(p=2), "
                                                  "global_pruning=True, round_to=8), "
                                                  "ignored_layers=[classifier]")
    dense = prunec.compile(model, x, [])
    pruned = prunec.compile(model, x, [pass_])
    target = pruned.report.macs_after // common.CAPTURE_BATCH
    t0 = time.perf_counter()
    found = search_ratio(model, ignored, target)
    search_s = time.perf_counter() - t0
    tp_model = found.pop("model")
    export = {}
    arts: dict = {}
    for variant, program in (("dense", dense.program), ("prunec", pruned.program)):
        for backend, art in common.lower_backends(program).items():
            arts.setdefault(backend, {})[variant] = art
    try:  # no manual fix: capture and lower the Torch-Pruning model as it comes
        tp_program = prunec.compile(tp_model, x, []).program
        for backend, art in common.lower_backends(tp_program).items():
            arts[backend]["torch-pruning"] = art
        export["torch-pruning"] = "ok: captured and lowered to torch and onnxruntime (parity " \
                                  "checks passed) with no manual fix"
    except Exception as exc:  # record the failure; the comparison then has no TP artifact
        export["torch-pruning"] = f"FAILED: {type(exc).__name__}: {exc}"
        traceback.print_exc()
    return {"model": name, "recipe": recipe, "tp_recipe": tp_recipe, "artifacts": arts,
            "macs": {"dense": pruned.report.macs_before // common.CAPTURE_BATCH,
                     "prunec": target, "torch-pruning": found["macs"]},
            "search": {**found, "seconds": search_s}, "export": export,
            "widths": widths(name, pruned.program.gm, tp_model)}


def widths(name: str, prunec_gm, tp_model) -> dict:
    if name == "DeiT-Small":
        return {"prunec": common.linear_widths(prunec_gm, "mlp.fc1"),
                "torch-pruning": common.linear_widths(tp_model, "mlp.fc1")}
    a, b = common.conv_widths(prunec_gm), common.conv_widths(tp_model)
    return {"prunec": list(a.values()), "torch-pruning": list(b.values()),
            "names": list(b)}


def inputs(batch: int):
    return (common.images(batch, seed=7),), {}


def compare_rows(name: str, res) -> list[dict]:
    rows = []
    for backend in dict.fromkeys(r.artifact.partition("/")[2] for r in res.rows):
        for batch in dict.fromkeys(r.batch_size for r in res.rows):
            get = {v: res.row(f"{v}/{backend}", batch) for v in ("dense", "prunec")}
            try:
                get["torch-pruning"] = res.row(f"torch-pruning/{backend}", batch)
            except KeyError:
                get["torch-pruning"] = None
            p, t = get["prunec"], get["torch-pruning"]
            row = {"model": name, "backend": backend, "batch": batch,
                   "dense_ms": get["dense"].median_ms, "prunec_ms": p.median_ms,
                   "prunec_speedup": p.speedup, "prunec_ideal": p.ideal_speedup,
                   "prunec_efficiency": p.efficiency}
            if t is not None:
                row.update({"tp_ms": t.median_ms, "tp_speedup": t.speedup,
                            "tp_ideal": t.ideal_speedup, "tp_efficiency": t.efficiency,
                            "prunec_vs_tp": t.median_ms / p.median_ms,
                            "prunec_vs_tp_ci95": common.paired_speedup_ci(t.samples_ms,
                                                                          p.samples_ms)})
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- output
def markdown(models: dict, rows: list[dict], recipe: dict, args) -> str:
    env = next(iter(models.values()))["bench"].environment
    lines = ["# prunec vs Torch-Pruning at equal MACs (CPU, 2 threads)", "",
             f"Command: `{common.command_line()}`. All numbers measured by this script. Per "
             "backend and batch size the dense, prunec and Torch-Pruning artifacts run "
             "interleaved in one process. speedup = median(dense) / median(x); "
             "prunec/TP = median(TP) / median(prunec) (> 1: prunec faster) with a 95% "
             "paired-bootstrap interval; ideal and efficiency from prunec's MACs count.", "",
             "| model | backend | batch | dense ms | prunec ms | TP ms | prunec speedup (eff) | "
             "TP speedup (eff) | prunec/TP [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["model"], r["backend"], str(r["batch"]), f"{r['dense_ms']:.2f}",
                 f"{r['prunec_ms']:.2f}", "-", f"{r['prunec_speedup']:.2f}x "
                 f"({r['prunec_efficiency']:.2f})", "-", "-"]
        if "tp_ms" in r:
            lo, hi = r["prunec_vs_tp_ci95"]
            cells[5] = f"{r['tp_ms']:.2f}"
            cells[7] = f"{r['tp_speedup']:.2f}x ({r['tp_efficiency']:.2f})"
            cells[8] = f"**{r['prunec_vs_tp']:.3f}** [{lo:.3f}, {hi:.3f}]"
        lines.append("| " + " | ".join(cells) + " |")
    verdict = [r for r in rows if "tp_ms" in r]
    faster = [r for r in verdict if r["prunec_vs_tp"] >= 1.0]
    missed = [f"{r['model']} {r['backend']} b{r['batch']}: {r['prunec_vs_tp']:.3f} "
              f"[{r['prunec_vs_tp_ci95'][0]:.3f}, {r['prunec_vs_tp_ci95'][1]:.3f}]"
              for r in verdict if r["prunec_vs_tp"] < 1.0]
    lines += ["", f"prunec's artifact is at least as fast as Torch-Pruning's (by median) in "
              f"{len(faster)} of {len(verdict)} rows"
              + (f"; slower (prunec/TP speed ratio, 95% interval) in: {'; '.join(missed)}."
                 if missed else "."), ""]
    for name, m in models.items():
        s = m["search"]
        lines += [f"## {name}", "", f"- prunec: {m['recipe']}", f"- Torch-Pruning: {m['tp_recipe']}",
                  f"- MACs per sample (prunec's cost model): dense {m['macs']['dense'] / 1e9:.4f} G, "
                  f"prunec {m['macs']['prunec'] / 1e9:.4f} G, Torch-Pruning "
                  f"{m['macs']['torch-pruning'] / 1e9:.4f} G ({100 * s['rel_error']:+.2f}% vs "
                  f"prunec, pruning_ratio {s['pruning_ratio']:.4f} after {len(s['trace'])} "
                  f"tries, {s['seconds']:.0f} s; within 1%: "
                  f"{'yes' if s['within_tolerance'] else 'NO'})",
                  f"- export of the Torch-Pruning model: {m['export']['torch-pruning']}"]
        w = m["widths"]
        if name == "DeiT-Small":
            lines += [f"- MLP widths prunec: {w['prunec']}",
                      f"- MLP widths Torch-Pruning: {w['torch-pruning']}"]
        else:
            lines += [f"- conv output widths prunec: {w['prunec']}",
                      f"- conv output widths Torch-Pruning: {w['torch-pruning']}"]
        lines.append("")
    lines += ["## Torch-Pruning's documented HF ViT recipe on DeiT-Small (not timed)", "",
              "`examples/transformers/prune_hf_vit.py`: `num_heads` dict for q/k/v, "
              "`prune_head_dims=True`, `prune_num_heads=False`, then hand-patching the "
              "attention modules. With transformers 5.x:", ""]
    lines += [f"- {k}: {v}" for k, v in recipe.items()]
    before, after = recipe.get("unpatched_sdpa_q_shape"), recipe.get("patched_sdpa_q_shape")
    if before and after and before != after and isinstance(before[0], list):
        lines += ["", f"Without the hand patch the pruned model runs without any error but its "
                  f"attention is computed over {before[0][1]} heads of {before[0][3]} instead of "
                  f"{after[0][1]} heads of {after[0][3]} (query shape given to SDPA): silently "
                  f"wrong outputs. prunec prunes whole heads and rewrites the reshape constants "
                  f"in the captured graph, so there is no module attribute to patch."]
    lines += ["", "## Environment", ""] + common.env_lines(env, [
        f"- iterations per batch size {args.iters}, warmup {args.warmup} rounds; "
        f"{common.load_note()} at the end of the run"])
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(5.5 * len(names), 4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        sel = [r for r in rows if r["model"] == name]
        xs = list(range(len(sel)))
        ax.bar([x - 0.2 for x in xs], [r["prunec_speedup"] for r in sel], 0.4, label="prunec")
        ax.bar([x + 0.2 for x in xs], [r.get("tp_speedup", 0) for r in sel], 0.4,
               label="Torch-Pruning")
        ax.plot(xs, [r["prunec_ideal"] for r in sel], "r_", markersize=30, mew=2,
                label="ideal (prunec MACs)")
        ax.set_xticks(xs, [f"{r['backend']}\nbatch {r['batch']}" for r in sel], fontsize=8)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(title=f"{name}: speedup over dense at equal MACs", ylabel="speedup (x)")
    # One legend for the figure, above the panels: never over a bar or a point.
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize=8,
               frameon=False)
    fig.savefig(path, format="png", dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, nargs=2, default=[80, 20], metavar=("B1", "B8"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the PNG from the committed JSON (no timing)")
    args = parser.parse_args()
    if args.replot:
        stem = common.RESULTS / ("tp_compare_quick" if args.quick else "tp_compare")
        plot(json.loads(stem.with_suffix(".json").read_text())["summary"], stem.with_suffix(".png"))
        return
    args.iters = {1: 4, 8: 2} if args.quick else {1: args.iters[0], 8: args.iters[1]}
    common.set_threads()
    start = time.perf_counter()
    print("Torch-Pruning HF ViT recipe check", flush=True)
    recipe = head_recipe_check()
    models = {}
    for name in ("DeiT-Small", "ResNet-50"):
        print(f"{name}: prunec, Torch-Pruning ratio search, lowering", flush=True)
        built = build(name)
        res = common.measure(built.pop("artifacts"), inputs, args.iters, built["macs"],
                             warmup=args.warmup)
        models[name] = {**built, "bench": res}
    rows = [r for n, m in models.items() for r in compare_rows(n, m["bench"])]
    stem = common.RESULTS / ("tp_compare_quick" if args.quick else "tp_compare")
    common.write_json(stem.with_suffix(".json"), {
        "summary": rows, "recipe_check": recipe, "seconds": time.perf_counter() - start,
        "loadavg_end": os.getloadavg(), "versions": common.versions(),
        "models": {n: {**{k: v for k, v in m.items() if k != "bench"},
                       "bench": {**m["bench"].to_dict(),
                                 "rows": [common.row_dict(r) for r in m["bench"].rows]}}
                   for n, m in models.items()}})
    stem.with_suffix(".md").write_text(markdown(models, rows, recipe, args))
    plot(rows, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
