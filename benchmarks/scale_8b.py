"""An 8B-shaped Llama in bfloat16 pruned on a 24 GiB machine, verified layer by layer.

The model has Llama 3 8B's shapes (hidden 4096, MLP 14336, 32 layers, 32 query / 8 key-value
heads, head 128, vocabulary 128256, untied embedding; 8.03B parameters, 14.96 GiB in
bfloat16) and random weights: N(0, 0.02), norm scales N(1, 0.02), from one seeded generator.
It is built without a second copy of any weight: ``transformers``' ``no_init_weights`` with
bfloat16 as the default dtype allocates each parameter once (``torch.empty``), and the
weights are then written in place, one parameter at a time.

Pipeline (one process, RSS sampled every 20 ms by a thread, time and peak RSS per phase):

1. ``build``: the model, every weight written (all 15 GiB resident);
2. ``capture``: ``prunec.ir.capture`` (eval mode: the program shares the model's tensors);
   the config's ``output_hidden_states=True`` makes the program return every layer's output
   (as a keyword example input, a bool that reaches the forward through ``**kwargs``,
   ``torch.export`` 2.13 takes it only with static shapes, to which capture falls back);
3. ``analysis``: ``analyze_channels`` and the MLP candidate groups;
4. ``scoring``: ``MagnitudePruning(0.5, targets="mlp", scope="local", round_to=8)``'s
   scores (float64 per-channel norms) and selection: half of every MLP's hidden channels;
5. ``reference``: the *original* ``transformers`` model run on the example, twice: once
   with the removed hidden channels zeroed at every ``down_proj``'s input (forward
   pre-hooks: prunec's code is not involved) and once dense;
6. ``rewrite``: ``apply_plan`` with ``program.donated = True`` (what
   ``prunec.compile(..., donate=True, verify=False)`` does): each sliced weight's storage is
   released as its pruned copy is made. Donation is needed here: without it the pruned
   tensors (5.25 GiB) add to the 15 GiB model, more than this machine has beside the other
   jobs that share it;
7. ``verification``: the pruned program run on the example; its hidden states after layers
   0..K-1 and its logits compared with the masked reference (must agree to bfloat16
   rounding) and with the dense reference (must differ: the check can fail).

``--compile`` prunes through ``prunec.compile(model, (ids,), [pass], verify=False,
donate=True)`` instead, the call a user makes (phases: build, reference, compile,
verification; the reference's plan is made beforehand on a capture sharing the weights, and
the plan compile carries out must equal it). ``--dtype float32`` runs the same check in
float32 (its errors then show what is bfloat16 rounding). ``--layers N`` builds the same
shapes with N layers (the proxy used to find what holds memory: per-layer shapes are the
8B's) and ``--vocab`` a smaller vocabulary for a cheap
proxy. Results go to ``benchmarks/results/scale.json`` under ``llama_8b_verified`` (or
``llama_8b_proxy``) and the markdown is re-rendered by ``benchmarks/scale.py``.

Run: ``python benchmarks/scale_8b.py`` (the full 8B: hold the machine, see BRIEF's QUIET
protocol) or ``python benchmarks/scale_8b.py --layers 2 --vocab 32000`` (proxy, ~1.5 GB).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's prunec
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402  (the benchmark whose results file this one adds to)

__all__ = ["RssSampler", "build_llama", "masked_reference", "main"]

SEED = 0
TOKENS = 16
CHECK_LAYERS = 4
RTOL = 2e-2
"""Largest relative error (max abs difference / max abs reference) accepted between the
pruned program and the masked reference. bfloat16 has 8 significant bits (2**-8 = 3.9e-3
per rounding); the pruned down_proj sums half as many terms in another order, so a few
roundings differ. The dense reference differs by O(1) relative (half of the MLP's output
goes), so the check separates the two by two orders of magnitude."""


# ---------------------------------------------------------------------------- memory
class RssSampler:
    """A thread sampling the process's resident set size (``VmRSS``) every ``interval`` s.

    ``phase(name)`` records, for the block it wraps: wall seconds, RSS at the end, and the
    peak RSS sampled while it ran (also ``VmHWM`` reset at its start, which catches peaks
    shorter than the interval). All figures are growth over the RSS at construction.
    """

    def __init__(self, interval: float = 0.02) -> None:
        gc.collect()
        self.base = scale.rss_bytes()
        self.interval = interval
        self._peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.phases: dict[str, dict] = {}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, scale.rss_bytes())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        say(f"{name} ...")
        scale.reset_peak()
        self._peak = scale.rss_bytes()
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        peak = max(self._peak, scale.peak_bytes(), scale.rss_bytes())
        row = {"seconds": seconds, "rss_growth_bytes": scale.rss_bytes() - self.base,
               "peak_growth_bytes": peak - self.base}
        self.phases[name] = row
        say(f"{name}: {seconds:.1f} s, RSS {gib(row['rss_growth_bytes'])} GiB over the start, "
            f"peak {gib(row['peak_growth_bytes'])} GiB")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- model
def llama_config(layers: int, vocab: int) -> Any:
    """Llama 3 8B's shapes with ``layers`` decoder layers and a ``vocab``-token embedding."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=vocab,
                       tie_word_embeddings=False, use_cache=False, head_dim=128,
                       rope_theta=500000.0, max_position_embeddings=8192,
                       output_hidden_states=True)


@torch.no_grad()
def build_llama(layers: int, vocab: int, dtype: torch.dtype = torch.bfloat16,
                progress: bool = True) -> torch.nn.Module:
    """The model in ``dtype`` with seeded random weights, never two copies of a weight.

    ``no_init_weights`` skips ``transformers``' initialisation (which would write every
    weight once more in float32 math); each parameter is allocated once in ``dtype`` and
    filled in place: N(1, 0.02) for norm scales, N(0, 0.02) otherwise.
    """
    from transformers import LlamaForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights(), scale._default_dtype(dtype):
        model = LlamaForCausalLM(llama_config(layers, vocab))
    gen = torch.Generator().manual_seed(SEED)
    params = list(model.named_parameters())
    for i, (name, p) in enumerate(params):
        p.normal_(1.0 if p.dim() == 1 and "norm" in name else 0.0, 0.02, generator=gen)
        if progress and (i + 1) % 36 == 0:
            say(f"  build: {i + 1}/{len(params)} parameters written")
    return model.eval()


def down_proj_keys(plan, groups) -> dict[str, list[int]]:
    """``{"model.layers.i.mlp.down_proj": kept hidden channels}`` from the plan's groups."""
    out = {}
    for g in groups:
        if g.key not in plan.keep:
            continue
        for slot in g.slots:
            if slot.param and slot.param.endswith("down_proj.weight") and slot.axis == 1:
                out[slot.param[: -len(".weight")]] = plan.keep[g.key]
    return out


@torch.no_grad()
def masked_reference(model: torch.nn.Module, ids: torch.Tensor,
                     kept: dict[str, list[int]] | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Hidden states (after every layer) and logits of the original ``transformers`` model,
    with every hidden channel not in ``kept[down_proj]`` zeroed at that ``down_proj``'s input
    (``kept=None``: dense). Zeroing those inputs is what removing the channels computes."""
    handles = []
    modules = dict(model.named_modules())
    for name, keep in (kept or {}).items():
        mask = torch.zeros(modules[name].in_features, dtype=torch.bool)
        mask[torch.tensor(keep)] = True

        def zero(_module, args, mask=mask):
            return (args[0] * mask.to(args[0].dtype),) + tuple(args[1:])

        handles.append(modules[name].register_forward_pre_hook(zero))
    try:
        out = model(ids, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return [h.clone() for h in out.hidden_states[1:]], out.logits.clone()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------------- run
def _built(layers: int, vocab: int, threads: int, dtype: torch.dtype) -> tuple:
    """``(sampler, rss before, model, model bytes, parameters, ids, rss built)``: the model
    built under the RSS sampler; later phases are reported as growth over the built model."""
    torch.set_num_threads(threads)
    sampler = RssSampler()
    start_rss = sampler.base
    with sampler.phase("build"):
        model = build_llama(layers, vocab, dtype)
    size = scale.model_bytes(model)
    params = sum(p.numel() for p in model.parameters())
    say(f"model: {params / 1e9:.2f}B parameters, {gib(size)} GiB")
    ids = torch.randint(0, vocab, (1, TOKENS), generator=torch.Generator().manual_seed(SEED))
    gc.collect()
    return sampler, start_rss, model, size, params, ids, scale.rss_bytes()


def run(layers: int, vocab: int, threads: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    from prunec.ir.capture import capture
    from prunec.ir.channels import analyze_channels
    from prunec.passes import MagnitudePruning
    from prunec.passes.base import candidate_groups
    from prunec.rewrite import apply_plan

    sampler, start_rss, model, size, params, ids, built = _built(layers, vocab, threads, dtype)
    with sampler.phase("capture"):
        program = capture(model, (ids,))
        program.donated = True  # what compile(..., donate=True, verify=False) sets
    with sampler.phase("analysis"):
        groups = candidate_groups(analyze_channels(program), "mlp")
    pass_ = MagnitudePruning(scale.RATIO, targets="mlp", scope="local", round_to=scale.ROUND_TO)
    with sampler.phase("scoring"):
        plan = pass_.plan(program, groups, None)
    kept = down_proj_keys(plan, groups)
    with sampler.phase("reference"):
        masked_h, masked_logits = masked_reference(model, ids, kept)
        dense_h, dense_logits = masked_reference(model, ids, None)
    with sampler.phase("rewrite"):
        apply_plan(program, plan)
    released = sum(p.numel() == 0 for p in model.parameters())
    with sampler.phase("verification"), torch.no_grad():
        out = program.gm(ids)
        hidden = list(out.hidden_states[1:]) if hasattr(out, "hidden_states") else list(out[1][1:])
        logits = out.logits if hasattr(out, "logits") else out[0]
    sampler.stop()
    layers_checked = min(CHECK_LAYERS, layers)
    check = [{"layer": i, "rel_err_vs_masked": rel_err(hidden[i], masked_h[i]),
              "rel_err_vs_dense": rel_err(hidden[i], dense_h[i])} for i in range(layers)]
    logits_masked, logits_dense = rel_err(logits, masked_logits), rel_err(logits, dense_logits)
    passed = all(c["rel_err_vs_masked"] <= RTOL < c["rel_err_vs_dense"]
                 for c in check[:layers_checked])
    widths = sorted({len(v) for v in kept.values()})
    return {"layers": layers, "vocab": vocab, "dtype": str(dtype).replace("torch.", ""),
            "params": params, "model_bytes": size,
            "rss_before_build_bytes": start_rss, "rss_built_bytes": built,
            "phases": sampler.phases, "groups": len(groups), "pruned_groups": len(plan.keep),
            "kept_widths": widths, "released_params": released, "layer_checks": check,
            "layers_checked": layers_checked, "rtol": RTOL,
            "logits_rel_err_vs_masked": logits_masked,
            "logits_rel_err_vs_dense": logits_dense, "verified": passed,
            "output_finite": bool(torch.isfinite(logits).all()),
            "capture_notes": list(program.capture_notes)}


def run_compile(layers: int, vocab: int, threads: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The same model pruned through ``prunec.compile(..., verify=False, donate=True)``, the
    call a user makes. The masked reference needs the plan before the weights go, so the
    plan is made once beforehand on a capture that shares the weights (and is dropped), and
    the plan ``compile`` carries out must be the same (MagnitudePruning is deterministic)."""
    import prunec
    from prunec.ir.capture import capture
    from prunec.ir.channels import analyze_channels
    from prunec.passes import MagnitudePruning
    from prunec.passes.base import candidate_groups

    sampler, start_rss, model, size, params, ids, built = _built(layers, vocab, threads, dtype)

    def pass_():
        return MagnitudePruning(scale.RATIO, targets="mlp", scope="local", round_to=scale.ROUND_TO)

    with sampler.phase("reference"):
        program = capture(model, (ids,))
        groups = candidate_groups(analyze_channels(program), "mlp")
        plan = pass_().plan(program, groups, None)
        kept = down_proj_keys(plan, groups)
        del program, groups
        masked_h, masked_logits = masked_reference(model, ids, kept)
        dense_h, dense_logits = masked_reference(model, ids, None)
    with sampler.phase("compile"):
        compiled = prunec.compile(model, (ids,), [pass_()], verify=False, donate=True)
    released = sum(p.numel() == 0 for p in model.parameters())
    done = compiled.program.lineage[-1].plan
    same_plan = done.keep == plan.keep
    with sampler.phase("verification"), torch.no_grad():
        out = compiled(ids)
        hidden = list(out.hidden_states[1:])
        logits = out.logits
    sampler.stop()
    layers_checked = min(CHECK_LAYERS, layers)
    check = [{"layer": i, "rel_err_vs_masked": rel_err(hidden[i], masked_h[i]),
              "rel_err_vs_dense": rel_err(hidden[i], dense_h[i])} for i in range(layers)]
    passed = same_plan and all(c["rel_err_vs_masked"] <= RTOL < c["rel_err_vs_dense"]
                               for c in check[:layers_checked])
    return {"layers": layers, "vocab": vocab, "dtype": str(dtype).replace("torch.", ""),
            "params": params, "model_bytes": size, "rss_before_build_bytes": start_rss,
            "rss_built_bytes": built, "phases": sampler.phases, "groups": len(plan.keep),
            "pruned_groups": len(done.keep), "same_plan": same_plan,
            "kept_widths": sorted({len(v) for v in done.keep.values()}),
            "released_params": released, "layer_checks": check,
            "layers_checked": layers_checked, "rtol": RTOL,
            "logits_rel_err_vs_masked": rel_err(logits, masked_logits),
            "logits_rel_err_vs_dense": rel_err(logits, dense_logits), "verified": passed,
            "output_finite": bool(torch.isfinite(logits).all()),
            "report": str(compiled.report)[:2000]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="float32: shows the check's errors in bfloat16 are rounding")
    parser.add_argument("--quiet-machine", action="store_true",
                        help="record that the run held the machine (QUIET protocol)")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="prune through prunec.compile(..., verify=False, donate=True)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = (run_compile if args.compile else run)(args.layers, args.vocab, args.threads,
                                                    getattr(torch, args.dtype))
    result["loadavg_before"] = load_before
    result["quiet_machine"] = args.quiet_machine
    result["loadavg_after"] = os.getloadavg()
    result["env"] = scale.environment(args.threads)
    key = "llama_8b_verified" if (args.layers, args.vocab) == (32, 128256) else "llama_8b_proxy"
    key += "" if args.dtype == "bfloat16" else "_" + args.dtype
    key += "_compile" if args.compile else ""
    print(json.dumps({k: v for k, v in result.items() if k != "layer_checks"}, indent=1))
    print(json.dumps(result["layer_checks"][:CHECK_LAYERS]))
    if args.no_save:
        return
    path = scale.RESULTS / "scale.json"
    data = json.loads(path.read_text())
    data["results"].setdefault(key, {})["prunec-verified"] = result
    path.write_text(json.dumps(data, indent=2))
    (scale.RESULTS / "scale.md").write_text(scale.render(data))


if __name__ == "__main__":
    main()
