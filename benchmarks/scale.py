"""Time and memory of prunec's pipeline on large models, next to Torch-Pruning's.

Models (random weights, built from ``transformers`` configs without their slow weight
initialisation, then filled in place with N(0, 0.02), norm scales with N(1, 0.02)):

- ViT-B/16, ViT-L/16, ViT-H/14 (``ViTConfig`` sizes, 224 x 224, float32);
- a Llama-shaped 1B (``LlamaConfig`` of Llama 3.2 1B: 16 layers, hidden 2048, MLP 8192,
  32 heads / 8 KV heads, tied 128256-token embedding; float32);
- an 8B-shaped Llama (Llama 3.1 8B: 32 layers, hidden 4096, MLP 14336, untied embedding)
  in bfloat16 (16 GB), *lazily materialised*: its large weights stay as ``torch.empty``
  allocated them (zero pages: no memory until written), so the 16 GB model and prunec's
  pruned copy fit next to each other on a 24 GiB machine shared with other jobs. Its
  times are therefore optimistic for reading weights (scoring reads zero pages); the
  fully materialised models above are the ones to read times from.

Both tools prune the same thing: half of every MLP's hidden channels, ranked per layer by
the L2 norm of their weights, kept counts multiples of 8.

- prunec: ``capture`` (shares the weights), ``analyze_channels``, ``MagnitudePruning(0.5,
  targets="mlp", scope="local")``'s scoring (``score``) and selection, ``apply_plan``, then one
  forward pass of the pruned program (finite outputs of the right shape).
- Torch-Pruning: ``tp.DependencyGraph().build_dependency(model, example_inputs)``, then a
  ``tp.pruner.MagnitudePruner`` (``MagnitudeImportance(p=2)``, ``pruning_ratio=0.5``, local,
  ``round_to=8``, every ``nn.Linear`` except the MLPs' first layer ignored so that only MLP
  hidden channels go) and its ``step()``.

Each (model, tool) runs in a fresh process, one at a time. Memory is the process's peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` after the model is built) minus its RSS
once the model is built: the growth caused by the tool. By default prunec never writes the
caller's tensors, so its rewrite allocates the pruned tensors next to the caller's model; the
report gives that share separately. ``prunec-donate`` runs the same pipeline with
``donate=True`` (what ``prunec.compile(..., donate=True, verify=False)`` does): each sliced
weight's storage is released as soon as its pruned copy exists, so the pruned copies replace
the originals instead of adding to them. ``prunec-compile`` calls ``prunec.compile`` as a user would (verification on, no donate)
and reports its peak growth next to the pruned tensors' share. ``llama_8b_filled`` is the 8B model with every
weight written (16 GB resident), run only that way: it is the case donation is for.

Run: ``python benchmarks/scale.py`` (all models) or ``--models vit_b llama_1b``;
``--threads`` (default 2). Results: ``benchmarks/results/scale.{md,json}``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's prunec

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
RATIO = 0.5
ROUND_TO = 8


# ---------------------------------------------------------------------------- models
def _llama_config(size: str) -> Any:
    from transformers import LlamaConfig

    if size == "1b":
        return LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                           num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                           tie_word_embeddings=True, use_cache=False, head_dim=64,
                           rope_theta=500000.0, max_position_embeddings=8192)
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       tie_word_embeddings=False, use_cache=False, head_dim=128,
                       rope_theta=500000.0, max_position_embeddings=8192)


def _vit_config(size: str) -> Any:
    from transformers import ViTConfig

    dims = {"b": (768, 12, 12, 3072, 16), "l": (1024, 24, 16, 4096, 16),
            "h": (1280, 32, 16, 5120, 14)}[size]
    hidden, layers, heads, mlp, patch = dims
    return ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=mlp, patch_size=patch, image_size=224,
                     attn_implementation="sdpa")


MODELS: dict[str, dict] = {
    "vit_b": {"name": "ViT-B/16", "kind": "vit", "size": "b", "dtype": "float32"},
    "vit_l": {"name": "ViT-L/16", "kind": "vit", "size": "l", "dtype": "float32"},
    "vit_h": {"name": "ViT-H/14", "kind": "vit", "size": "h", "dtype": "float32"},
    "llama_1b": {"name": "Llama-shaped 1B", "kind": "llama", "size": "1b", "dtype": "float32"},
    "llama_8b": {"name": "Llama-shaped 8B", "kind": "llama", "size": "8b", "dtype": "bfloat16",
                 "lazy": True},
    # Every weight written (16 GB resident): only prunec with donate=True fits next to it.
    "llama_8b_filled": {"name": "Llama-shaped 8B, materialised", "kind": "llama", "size": "8b",
                        "dtype": "bfloat16", "tools": ["prunec-donate"]},
}
LAZY_MIN_ELEMENTS = 1 << 20
"""In a lazy model, weights of at least this many elements stay as allocated by
``torch.empty``: fresh zero pages that take no memory until written (smaller tensors come
from the heap and could hold garbage, so they are filled)."""


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(key: str) -> tuple[torch.nn.Module, tuple, Callable]:
    """The model (eval mode, filled weights), its example inputs, and the predicate naming
    the MLPs' input layers (Torch-Pruning ignores every other ``nn.Linear``)."""
    from transformers.initialization import no_init_weights

    spec = MODELS[key]
    dtype = getattr(torch, spec["dtype"])
    with no_init_weights(), _default_dtype(dtype):
        if spec["kind"] == "vit":
            from transformers import ViTForImageClassification

            model = ViTForImageClassification(_vit_config(spec["size"]))
            example = (torch.randn(1, 3, 224, 224, dtype=dtype),)
            first = lambda name: name.endswith("mlp.fc1")  # noqa: E731
        else:
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM(_llama_config(spec["size"]))
            example = (torch.randint(0, 128256, (1, 16)),)
            # The gate and up projections share the hidden channels (their product feeds
            # down_proj): Torch-Pruning drops a group whose output layers are ignored.
            first = lambda name: name.endswith(("mlp.gate_proj", "mlp.up_proj"))  # noqa: E731
    if getattr(model.config, "tie_word_embeddings", False):
        # no_init_weights (transformers 5) also skips the tying that construction does:
        # without this the 1B's lm_head was a second 128256 x 2048 matrix (5.58 GiB model
        # instead of Llama 3.2 1B's 4.60 GiB).
        model.tie_weights()
    _fill(model, lazy=spec.get("lazy", False))
    return model.eval(), example, first


@torch.no_grad()
def _fill(model: torch.nn.Module, lazy: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if lazy and p.numel() >= LAZY_MIN_ELEMENTS:
            continue
        mean = 1.0 if p.dim() == 1 and "norm" in name else 0.0
        p.normal_(mean, 0.02, generator=gen)


# ---------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def peak_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` value 5)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Stages:
    """Wall time and RSS after each stage; peak over all stages."""

    def __init__(self) -> None:
        gc.collect()
        reset_peak()
        self.base = rss_bytes()
        self.rows: dict[str, dict] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.rows[name] = {"seconds": time.perf_counter() - start,
                           "rss_growth_bytes": rss_bytes() - self.base,
                           "peak_growth_bytes": peak_bytes() - self.base}


def model_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------- prunec
def run_prunec(key: str, donate: bool = False) -> dict:
    from prunec.ir.capture import capture
    from prunec.ir.channels import analyze_channels
    from prunec.passes import MagnitudePruning
    from prunec.passes.base import candidate_groups
    from prunec.rewrite import apply_plan

    model, example, _ = build(key)
    size = model_bytes(model)
    pass_ = MagnitudePruning(RATIO, targets="mlp", scope="local", round_to=ROUND_TO)
    scoring = {"seconds": 0.0}
    score = pass_.score

    def timed_score(*args):
        start = time.perf_counter()
        out = score(*args)
        scoring["seconds"] += time.perf_counter() - start
        return out

    pass_.score = timed_score
    shapes = [tuple(p.shape) for p in model.parameters()]
    params = sum(p.numel() for p in model.parameters())  # before donate=True releases any
    stages = Stages()
    with stages.stage("capture"):
        program = capture(model, example)
        program.donated = donate  # what compile(..., donate=True, verify=False) sets
    with stages.stage("analysis"):
        groups = candidate_groups(analyze_channels(program), "mlp")
    with stages.stage("scoring_and_selection"):
        plan = pass_.plan(program, groups, None)
    old = {n: program.get_tensor(n) for n in _sliced_names(program, groups)}
    with stages.stage("rewrite"):
        apply_plan(program, plan)
    new_bytes = sum(program.get_tensor(n).numel() * program.get_tensor(n).element_size()
                    for n in old)
    del old
    with stages.stage("forward_check"), torch.no_grad():
        out = program.gm(*example)
        logits = out.logits if hasattr(out, "logits") else out[0]
        finite = bool(torch.isfinite(logits).all())
    rows = stages.rows
    rows["scoring"] = {"seconds": scoring["seconds"]}
    untouched = shapes == [tuple(p.shape) for p in model.parameters()]
    return {"model_bytes": size, "params": params, "donate": donate,
            "released_params": sum(p.numel() == 0 for p in model.parameters()),
            "stages": rows, "pruned_tensor_bytes": new_bytes, "groups": len(groups),
            "pruned_groups": len(plan.keep), "output_finite": finite,
            "output_shape": list(logits.shape), "caller_shapes_kept": untouched,
            "capture_notes": list(program.capture_notes)}


def run_prunec_compile(key: str) -> dict:
    """``prunec.compile`` as a user calls it: same pass, ``verify=True`` (the default), no
    ``donate``; the pruned tensors again live next to the caller's untouched weights."""
    import prunec
    from prunec.passes import MagnitudePruning

    model, example, _ = build(key)
    size = model_bytes(model)
    stages = Stages()
    with stages.stage("compile"):
        compiled = prunec.compile(model, example, [MagnitudePruning(
            RATIO, targets="mlp", scope="local", round_to=ROUND_TO)])
    pruned_bytes = sum(t.numel() * t.element_size() for t in compiled.program.gm.parameters()
                       if all(t is not p for p in model.parameters()))
    with stages.stage("forward_check"), torch.no_grad():
        out = compiled(*example)
        logits = out.logits if hasattr(out, "logits") else out[0]
        finite = bool(torch.isfinite(logits).all())
    entry = compiled.report.passes[-1]
    return {"model_bytes": size, "stages": stages.rows, "pruned_tensor_bytes": pruned_bytes,
            "verified": entry.get("verified"), "output_finite": finite,
            "output_shape": list(logits.shape)}


def run_prunec_profile(key: str, top: int = 25) -> dict:
    """prunec's analysis, scoring and selection, and rewrite under ``cProfile`` (a separate
    run: the profiler's overhead inflates the times): the top entries by cumulative and by
    own time."""
    import cProfile
    import io
    import pstats

    from prunec.ir.capture import capture
    from prunec.ir.channels import analyze_channels
    from prunec.passes import MagnitudePruning
    from prunec.passes.base import candidate_groups
    from prunec.rewrite import apply_plan

    model, example, _ = build(key)
    program = capture(model, example)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    groups = candidate_groups(analyze_channels(program), "mlp")
    plan = MagnitudePruning(RATIO, targets="mlp", scope="local", round_to=ROUND_TO).plan(
        program, groups, None)
    apply_plan(program, plan)
    profiler.disable()
    total = time.perf_counter() - start
    out = {"profiled_seconds": total}
    for order in ("cumulative", "tottime"):
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats(order)
        rows = []
        for func in stats.fcn_list[:top]:  # fcn_list: sorted by the last sort_stats
            cc, nc, tt, ct, _ = stats.stats[func]
            filename, line, name = func
            short = filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
            rows.append({"function": f"{short}:{line}({name})", "calls": nc,
                         "tottime": tt, "cumtime": ct})
        out[order] = rows
    return out


def _sliced_names(program, groups) -> set[str]:
    return {slot.param for g in groups for slot in g.params}


# ---------------------------------------------------------------------------- Torch-Pruning
def run_tp(key: str) -> dict:
    import torch_pruning as tp

    model, example, first = build(key)
    size = model_bytes(model)
    ignored = [m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not first(n)]
    stages = Stages()
    with stages.stage("dependency_graph"):
        tp.DependencyGraph().build_dependency(model, example_inputs=example[0],
                                              output_transform=_logits_sum)
    with stages.stage("pruner_init"):
        pruner = tp.pruner.MagnitudePruner(
            model, example[0], importance=tp.importance.MagnitudeImportance(p=2),
            global_pruning=False, pruning_ratio=RATIO, ignored_layers=ignored, round_to=ROUND_TO,
            output_transform=_logits_sum)
    with stages.stage("pruning_step"):
        pruner.step()
    with stages.stage("forward_check"), torch.no_grad():
        out = model(*example)
        logits = out.logits if hasattr(out, "logits") else out[0]
        finite = bool(torch.isfinite(logits).all())
    return {"model_bytes": size, "stages": stages.rows, "output_finite": finite,
            "output_shape": list(logits.shape),
            "params_after": sum(p.numel() for p in model.parameters())}


def _logits_sum(out: Any) -> torch.Tensor:
    """The scalar Torch-Pruning traces back from (transformers outputs are dataclasses)."""
    return out.logits.sum()


# ---------------------------------------------------------------------------- driver
def child(key: str, tool: str, threads: int, out: Path) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if tool == "tp":
        result = run_tp(key)
    elif tool == "prunec-compile":
        result = run_prunec_compile(key)
    elif tool == "prunec-profile":
        result = run_prunec_profile(key)
    else:
        result = run_prunec(key, donate=tool == "prunec-donate")
    out.write_text(json.dumps(result, indent=2))


def environment(threads: int) -> dict:
    import transformers

    try:
        import torch_pruning as tp
        tp_version = getattr(tp, "__version__", "unknown")
    except ImportError:
        tp_version = None
    mem = _meminfo_gb()
    return {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "memory_gb": mem, "threads": threads,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_pruning": tp_version, "python": platform.python_version()}


def _meminfo_gb() -> float:
    with open("/proc/meminfo") as handle:
        kb = int(handle.readline().split()[1])
    return round(kb / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--tools", nargs="+",
                        default=["prunec", "prunec-donate", "prunec-compile", "tp"],
                        choices=["prunec", "prunec-donate", "prunec-compile", "tp",
                                 "prunec-profile"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "TOOL"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of every tool, interleaved; times are medians")
    parser.add_argument("--quiet-machine", action="store_true",
                        help="record that the run held the machine (QUIET protocol)")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.threads, args.out)
        return
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "scale.json"
    data = json.loads(path.read_text()) if path.exists() else {"results": {}}
    data["env"] = environment(args.threads)
    data["env"]["loadavg_before"] = os.getloadavg()
    data["env"]["quiet_machine"] = args.quiet_machine
    for key in args.models:
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeats):  # rounds: every tool once per round (interleaved)
            for tool in args.tools:
                if tool not in MODELS[key].get("tools", [tool]):
                    continue
                result = _run_child(key, tool, args)
                runs.setdefault(tool, []).append(result)
                print(key, tool, json.dumps(result)[:400], flush=True)
        for tool, results in runs.items():
            data["results"].setdefault(key, {})[tool] = _median_run(results)
        path.write_text(json.dumps(data, indent=2))
    data["env"]["loadavg_after"] = os.getloadavg()
    path.write_text(json.dumps(data, indent=2))
    (RESULTS / "scale.md").write_text(render(data))


def _median_run(results: list[dict]) -> dict:
    """One run's record with each stage's seconds replaced by the median over the runs
    (all of them kept under ``stage_seconds_runs``); peaks are the largest seen."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[-1]
    out = dict(ok[0])
    if len(ok) > 1 and "stages" in out:
        runs = {k: [r["stages"][k].get("seconds") for r in ok] for k in ok[0]["stages"]}
        out["stage_seconds_runs"] = runs
        out["stages"] = {k: dict(v) for k, v in ok[0]["stages"].items()}
        for k, values in runs.items():
            values = sorted(v for v in values if v is not None)
            if values:
                out["stages"][k]["seconds"] = values[len(values) // 2] if len(values) % 2 \
                    else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
            peaks = [r["stages"][k].get("peak_growth_bytes") for r in ok]
            if None not in peaks:
                out["stages"][k]["peak_growth_bytes"] = max(peaks)
    return out


def _run_child(key: str, tool: str, args) -> dict:
    out = RESULTS / f".scale_{key}_{tool}.json"
    cmd = [sys.executable, __file__, "--child", key, tool, "--threads", str(args.threads),
           "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail),
                "wall_seconds": time.perf_counter() - start}
    result = json.loads(out.read_text())
    out.unlink()
    result["wall_seconds"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------- report
def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def render(data: dict) -> str:
    env = data["env"]
    lines = [
        "# Scale: prunec and Torch-Pruning on large models (CPU)", "",
        f"Machine: {env['platform']}, {env['cores']} cores, {env['memory_gb']} GiB RAM; "
        f"torch {env['torch']}, transformers {env['transformers']}, Torch-Pruning "
        f"{env['torch_pruning']}; {env['threads']} threads per run. " + (
            "The latest run held the machine (QUIET protocol: no other benchmark or test "
            "started while it ran; load average (1 min) "
            f"{env['loadavg_before'][0]:.1f} at its start, {env['loadavg_after'][0]:.1f} at "
            "its end); rows from earlier runs say how loaded the machine was below."
            if env.get("quiet_machine") else
            "The machine was shared with other jobs during the runs, so times are upper "
            "bounds (other processes competed for the 2 cores); memory figures are per "
            "process and not affected."), "",
        f"Task for both tools: remove {int(RATIO * 100)}% of every MLP's hidden channels, "
        f"ranked per layer by weight L2 norm, kept counts multiples of {ROUND_TO}. Random "
        f"weights; one process per (model, tool), run one at a time. Peak growth is the "
        f"process's peak RSS minus its RSS once the model was built.", "",
        "The 8B model is lazily materialised: its large weights stay as `torch.empty` "
        "allocated them (zero pages, resident only once written), which is what lets the "
        "16 GB model and its pruned copy share a 24 GiB machine with other jobs; its scoring "
        "reads zero pages and is faster than it would be on real weights.", "",
    ] + [f"- {note}" for note in data.get("run_notes", [])] + ([""] if data.get("run_notes") else []) + [
        "## Time (seconds)", "",
        "| model | params | dtype | prunec capture | analysis | scoring | selection | rewrite "
        "| analysis+scoring+rewrite | TP dependency graph | TP pruner init | TP pruning step "
        "| ratio to TP graph |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, spec in MODELS.items():
        row = data["results"].get(key)
        if not row:
            continue
        lines.append(_time_row(spec, row))
    lines += ["", "## Memory (GiB)", "",
              "| model | model size | prunec peak growth (x size) | of which pruned tensors "
              "| prunec growth beyond the pruned tensors (x size) "
              "| prunec, donate=True: peak growth (x size) | TP peak growth (x size) |",
              "|---|---|---|---|---|---|---|"]
    for key, spec in MODELS.items():
        row = data["results"].get(key)
        if row:
            lines.append(_memory_row(spec, row))
    lines += _compile_section(data)
    lines += _verified_8b_section(data)
    lines += _profile_section(data)
    lines += ["", "## Summary", ""] + _summary(data)
    lines += ["", "## Checks", ""]
    for key, spec in MODELS.items():
        row = data["results"].get(key, {})
        p = row.get("prunec") or row.get("prunec-donate", {})
        if "error" in p:
            lines.append(f"- {spec['name']}: prunec failed: {p['error']}")
        elif p:
            notes = "; ".join(p.get("capture_notes") or []) or "none"
            lines.append(f"- {spec['name']}: prunec pruned {p['pruned_groups']} of "
                         f"{p['groups']} MLP groups, pruned model's output "
                         f"{p['output_shape']} finite: {p['output_finite']}; capture notes: "
                         f"{notes}.")
        t = row.get("tp", {})
        if "error" in t:
            lines.append(f"- {spec['name']}: Torch-Pruning failed: {t['error']}")
    return "\n".join(lines) + "\n"


def _compile_section(data: dict) -> list[str]:
    """``prunec.compile`` as a user calls it (verification on, no donate)."""
    rows = [(spec, data["results"][k]["prunec-compile"]) for k, spec in MODELS.items()
            if "prunec-compile" in data["results"].get(k, {})]
    if not rows:
        return []
    lines = ["", "## prunec.compile as a user calls it (verify=True, no donate)", "",
             "`prunec.compile(model, example, [MagnitudePruning(0.5, targets=\"mlp\", "
             "scope=\"local\", round_to=8)])`: capture, the pass, its numerical verification "
             "(CheckOutputs: the pruned program against the original with the removed units "
             "zeroed, on the example inputs and a random batch) and lowering, in one call. "
             "The pruned tensors are new; the caller's weights stay as they are, so they are "
             "a floor on the growth without donate.", "",
             "| model | model size | compile seconds | peak growth (x size) | of which pruned "
             "tensors (x size) | beyond the pruned tensors (x size) | verified |",
             "|---|---|---|---|---|---|---|"]
    for spec, r in rows:
        if "error" in r:
            lines.append(f"| {spec['name']} | failed: {r['error']} | | | | | |")
            continue
        size, peak = r["model_bytes"], r["stages"]["compile"]["peak_growth_bytes"]
        pruned = r["pruned_tensor_bytes"]
        lines.append(f"| {spec['name']} | {_gb(size)} | {r['stages']['compile']['seconds']:.1f} "
                     f"| {_gb(peak)} ({peak / size:.2f}x) | {_gb(pruned)} ({pruned / size:.2f}x) "
                     f"| {_gb(peak - pruned)} ({(peak - pruned) / size:.2f}x) | {r['verified']} |")
    return lines + [""] + [f"- {n}" for n in data.get("compile_notes", [])]


def _profile_section(data: dict, top: int = 15) -> list[str]:
    """Where prunec's analysis + scoring + rewrite time goes (``prunec-profile`` runs)."""
    out: list[str] = []
    for key, spec in MODELS.items():
        r = data["results"].get(key, {}).get("prunec-profile")
        if not r or "error" in r:
            continue
        out += ["", f"## Profile: {spec['name']}, analysis + scoring + rewrite", "",
                f"`cProfile` over `analyze_channels`, the pass's `plan` (scoring, selection) "
                f"and `apply_plan`, in a run of its own ({r['profiled_seconds']:.1f} s under "
                f"the profiler). Top {top} by own time (tottime), then by cumulative time.", "",
                "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
        out += [f"| `{e['function']}` | {e['calls']} | {e['tottime']:.2f} | {e['cumtime']:.2f} |"
                for e in r["tottime"][:top]]
        out += ["", "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
        out += [f"| `{e['function']}` | {e['calls']} | {e['tottime']:.2f} | {e['cumtime']:.2f} |"
                for e in r["cumulative"][:top]]
        out += [""] + [f"- {n}" for n in data.get("profile_notes", [])]
    return out


PHASES_8B = ("build", "capture", "analysis", "scoring", "reference", "rewrite", "compile",
             "verification")


def _proxy_args(key: str, r: dict) -> str:
    args = "" if key.startswith("llama_8b_verified") else \
        f" --layers {r['layers']} --vocab {r['vocab']}"
    args += " --compile" if "same_plan" in r else ""
    return args + ("" if r.get("dtype", "bfloat16") == "bfloat16" else f" --dtype {r['dtype']}")


def _verified_8b_section(data: dict) -> list[str]:
    """``benchmarks/scale_8b.py``: the 8B-shaped Llama (and its few-layer proxies) pruned with
    every weight written, phase by phase, and checked layer by layer."""
    out: list[str] = []
    for key, title in (("llama_8b_verified", "8B-shaped Llama, bfloat16, every weight written, "
                        "verified layer by layer"),
                       ("llama_8b_verified_compile", "8B-shaped Llama through prunec.compile("
                        "..., verify=False, donate=True), verified layer by layer"),
                       ("llama_8b_proxy", "Proxy: the 8B's layer shapes with fewer layers"),
                       ("llama_8b_proxy_float32", "Proxy in float32: the same check without "
                        "bfloat16 rounding")):
        r = data["results"].get(key, {}).get("prunec-verified")
        if not r:
            continue
        env, base = r["env"], r["rss_built_bytes"] - r["rss_before_build_bytes"]
        out += ["", f"## {title}", "",
                f"`python benchmarks/scale_8b.py{_proxy_args(key, r)}`: "
                f"{r['layers']} layers, vocabulary {r['vocab']}, {r['params'] / 1e9:.2f}B "
                f"parameters, {_gb(r['model_bytes'])} GiB in {r.get('dtype', 'bfloat16')}, "
                f"random weights from a "
                f"seeded generator, built once in place (no second copy). Pruned with "
                f"`MagnitudePruning(0.5, targets=\"mlp\", scope=\"local\", round_to=8)` and "
                + (f"`prunec.compile(model, (ids,), [pass], verify=False, donate=True)` (the "
                   f"plan for the masked reference was made beforehand on a capture sharing "
                   f"the weights, then dropped; the plan compile carried out is the same: "
                   f"{r['same_plan']}), " if "same_plan" in r else
                   "donation (`program.donated = True`, as `prunec.compile(..., donate=True, "
                   "verify=False)` sets it), ")
                + f"{r['pruned_groups']} of {r['groups']} MLP groups, kept widths "
                f"{r['kept_widths']}; {r['released_params']} parameters of the original "
                f"released as their pruned copies were made.", "",
                f"Machine: {env['platform']}, {env['cores']} cores, {env['memory_gb']} GiB RAM; "
                f"torch {env['torch']}, transformers {env['transformers']}; {env['threads']} "
                f"threads. "
                + (r["machine_note"] if r.get("machine_note") else
                   "The run held the machine (QUIET protocol: no other benchmark or test "
                   "started while it ran)" if r.get("quiet_machine") else
                   "The machine was shared with other jobs during the run")
                + f"; load average (1 min) {r.get('loadavg_before', [float('nan')])[0]:.1f} at the start, "
                f"{r['loadavg_after'][0]:.1f} at the end. RSS sampled every "
                f"20 ms by a thread (and the kernel's peak, VmHWM, reset per phase).", "",
                f"RSS of the built model over the process before building: {_gb(base)} GiB. "
                f"Growth below is over the built model (build: over the process before it).", "",
                "| phase | seconds | RSS after (GiB) | peak during (GiB) | peak (x model) |",
                "|---|---|---|---|---|"]
        for name in PHASES_8B:
            ph = r["phases"].get(name)
            if not ph:
                continue
            shift = 0 if name == "build" else base
            rss, peak = ph["rss_growth_bytes"] - shift, ph["peak_growth_bytes"] - shift
            out.append(f"| {name} | {ph['seconds']:.1f} | {_gb(rss)} | {_gb(peak)} | "
                       f"{peak / r['model_bytes']:.3f}x |")
        out += ["", f"Verification: hidden states after each layer and the logits of the pruned "
                f"program against the original `transformers` model run with the removed "
                f"hidden channels zeroed at every `down_proj` input (forward pre-hooks, no "
                f"prunec code), and against the dense model. Relative error = max abs "
                f"difference / max abs reference. Pass: layers 0..{r['layers_checked'] - 1} "
                f"within {r['rtol']} of the masked reference and farther than that from the "
                f"dense one. **Verified: {r['verified']}**.", "",
                "| output | rel. error vs masked | rel. error vs dense |", "|---|---|---|"]
        for c in r["layer_checks"]:
            mark = "" if c["layer"] < r["layers_checked"] else " (not in the pass test)"
            out.append(f"| layer {c['layer']}{mark} | {c['rel_err_vs_masked']:.2e} | "
                       f"{c['rel_err_vs_dense']:.2e} |")
        out.append(f"| logits | {r['logits_rel_err_vs_masked']:.2e} | "
                   f"{r['logits_rel_err_vs_dense']:.2e} |")
    return out


def _dtype(spec: dict) -> str:
    return spec["dtype"] + (" (lazy)" if spec.get("lazy") else "")


def _summary_8b(r: dict | None) -> list[str]:
    """One summary line for a ``scale_8b.py`` run of the full 8B model."""
    out: list[str] = []
    if r:
        base = r["rss_built_bytes"]
        peak = max(ph["peak_growth_bytes"] + r["rss_before_build_bytes"] - base
                   for name, ph in r["phases"].items() if name != "build")
        worst = max(c["rel_err_vs_masked"] for c in r["layer_checks"][:r["layers_checked"]])
        nearest = min(c["rel_err_vs_dense"] for c in r["layer_checks"][:r["layers_checked"]])
        how = " through prunec.compile" if "same_plan" in r else ""
        seconds = sum(ph["seconds"] for n, ph in r["phases"].items()
                      if n not in ("build", "reference", "verification"))
        out.append(f"- 8B-shaped Llama, bfloat16, all {_gb(r['model_bytes'])} GiB of weights "
                   f"written: MLP 50% pruned with donation{how} on this "
                   f"{r['env']['memory_gb']} GiB machine, peak growth over the built model "
                   f"{_gb(peak)} GiB ({peak / r['model_bytes']:.3f}x), {seconds:.0f} s "
                   f"from capture to the pruned program; layers 0..{r['layers_checked'] - 1} "
                   f"of the pruned program within {worst:.1e} of the masked original "
                   f"(dense: {nearest:.2f} and more); verified: {r['verified']}.")
    return out


def _summary(data: dict) -> list[str]:
    """The measured figures against the three questions the benchmark asks."""
    out = []
    one = data["results"].get("llama_1b", {})
    p, t = one.get("prunec", {}), one.get("tp", {})
    core = [_s(p, k) for k in ("analysis", "scoring_and_selection", "rewrite")]
    graph = _s(t, "dependency_graph")
    if None not in core and graph:
        slowest = max(zip(core, ("analysis", "scoring and selection", "rewrite")))
        out.append(f"- Llama-shaped 1B: analysis + scoring + rewrite took {sum(core):.1f} s, "
                   f"{sum(core) / graph:.2f}x Torch-Pruning's dependency-graph build "
                   f"({graph:.1f} s); the largest share is {slowest[1]} ({slowest[0]:.1f} s).")
    for key in ("llama_1b", "llama_8b"):
        p = data["results"].get(key, {}).get("prunec", {})
        peak = _peak(p, ["capture", "analysis", "scoring_and_selection", "rewrite"])
        if peak is None or "pruned_tensor_bytes" not in p:
            continue
        size, pruned = p["model_bytes"], p["pruned_tensor_bytes"]
        out.append(f"- {MODELS[key]['name']}: peak RSS growth {peak / size:.2f}x the model's "
                   f"size, of which the pruned tensors themselves are {pruned / size:.2f}x "
                   f"(prunec leaves the caller's weights as they are, so the pruned copies of "
                   f"the sliced weights live next to them); everything else, capture and "
                   f"analysis included, {(peak - pruned) / size:.2f}x.")
    for key in ("llama_1b", "llama_8b_filled"):
        p = data["results"].get(key, {}).get("prunec-donate", {})
        peak = _peak(p, ["capture", "analysis", "scoring_and_selection", "rewrite"])
        if peak is None:
            continue
        out.append(f"- {MODELS[key]['name']} with donate=True: peak RSS growth "
                   f"{_gb(peak)} GiB, {peak / p['model_bytes']:.2f}x the model's size "
                   f"({p['released_params']} sliced parameters released as their pruned "
                   f"copies were made; pruned output finite: {p.get('output_finite')}).")
    for key in ("llama_8b_verified", "llama_8b_verified_compile"):
        out += _summary_8b(data["results"].get(key, {}).get("prunec-verified"))
    p = data["results"].get("llama_8b", {}).get("prunec", {})
    if p and "error" not in p:
        out.append(f"- Llama-shaped 8B (bfloat16, lazily materialised): captured, analysed, "
                   f"scored, rewritten and run end to end in one process on this "
                   f"{data['env']['memory_gb']} GiB machine (output finite: "
                   f"{p.get('output_finite')}).")
    return out


def _s(row: dict, stage: str) -> float | None:
    return row.get("stages", {}).get(stage, {}).get("seconds")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _time_row(spec: dict, row: dict) -> str:
    p, t = row.get("prunec") or row.get("prunec-donate", {}), row.get("tp", {})
    scoring = _s(p, "scoring")
    sel_total = _s(p, "scoring_and_selection")
    selection = None if scoring is None or sel_total is None else sel_total - scoring
    core = None
    if None not in (_s(p, "analysis"), sel_total, _s(p, "rewrite")):
        core = _s(p, "analysis") + sel_total + _s(p, "rewrite")
    graph = _s(t, "dependency_graph")
    ratio = "n/a" if core is None or not graph else f"{core / graph:.2f}x"
    params = p.get("params")
    return (f"| {spec['name']} | {params / 1e9:.2f}B | {_dtype(spec)} | " if params else
            f"| {spec['name']} | n/a | {_dtype(spec)} | ") + " | ".join([
        _fmt(_s(p, "capture")), _fmt(_s(p, "analysis")), _fmt(scoring), _fmt(selection),
        _fmt(_s(p, "rewrite")), f"**{_fmt(core)}**", _fmt(graph), _fmt(_s(t, "pruner_init")),
        _fmt(_s(t, "pruning_step")), ratio]) + " |"


def _peak(row: dict, stages: list[str]) -> float | None:
    values = [row.get("stages", {}).get(s, {}).get("peak_growth_bytes") for s in stages]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _memory_row(spec: dict, row: dict) -> str:
    p, t = row.get("prunec", {}), row.get("tp", {})
    size = p.get("model_bytes") or t.get("model_bytes") or \
        row.get("prunec-donate", {}).get("model_bytes")
    pp = _peak(p, ["capture", "analysis", "scoring_and_selection", "rewrite"])
    tp_peak = _peak(t, ["dependency_graph", "pruner_init", "pruning_step"])
    pruned = p.get("pruned_tensor_bytes")

    def rel(x):
        return "n/a" if x is None or not size else f"{_gb(x)} ({x / size:.2f}x)"

    beyond = None if pp is None or pruned is None else pp - pruned
    donated = _peak(row.get("prunec-donate", {}), ["capture", "analysis", "scoring_and_selection",
                                                   "rewrite"])
    return (f"| {spec['name']} | {_gb(size) if size else 'n/a'} | {rel(pp)} | "
            f"{_gb(pruned) if pruned is not None else 'n/a'} | {rel(beyond)} | {rel(donated)} | "
            f"{rel(tp_peak)} |")


if __name__ == "__main__":
    main()
