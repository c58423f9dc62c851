"""Pruning a small Llama-shaped decoder trained here on real text, end to end.

What it does (CPU, minutes):

1. trains a Llama-shaped decoder (grouped-query attention: 4 query heads, 2 key/value heads;
   byte-level tokens) on the standard library's own documentation (``pydoc_data.topics``),
   90 % of the topics for training, the other 10 % held out;
2. prunes it with prunec's ``module`` backend (the result is a ``LlamaForCausalLM`` again):
   25 / 50 % of MLP width (magnitude, VBP with its means folded into ``mlp_bias``), 50 % of
   the key/value groups with their query heads (``HeadPruning``), 1 and 2 of 4 whole layers
   (``DepthPruning(unit="layer")``); and, at equal parameters, Torch-Pruning's
   ``MagnitudePruner`` on the MLP width;
3. measures held-out perplexity right after pruning and after the same short causal-LM
   fine-tune (next-token cross-entropy + distillation from the dense model, the same loop
   for every model);
4. times greedy generation with the KV cache (``generate(use_cache=True)``, batch 1) with 1 and
   2 torch threads, dense and pruned, interleaved; peak resident memory of a fresh process
   that loads each saved model (``from_pretrained``) and generates.

Writes ``benchmarks/results/llm_prune.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prunec  # noqa: E402
from prunec.passes import DepthPruning, HeadPruning, MagnitudePruning, VarianceBasedPruning  # noqa: E402
from prunec.train.causal_lm import masked_distillation, next_token_loss  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SEQ = 128
SEED = 0


# --------------------------------------------------------------------------- data, model
def text_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out byte streams: topics sorted by name, every 10th held out."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    train = "\n\n".join(topics[n] for i, n in enumerate(names) if i % 10)
    held = "\n\n".join(topics[n] for i, n in enumerate(names) if not i % 10)
    as_ids = lambda s: torch.tensor(list(s.encode("utf-8")), dtype=torch.long)
    return as_ids(train), as_ids(held)


def batches(stream: torch.Tensor, count: int, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - SEQ - 1, (count, batch), generator=g)
    return [torch.stack([stream[s:s + SEQ] for s in row.tolist()]) for row in starts]


def held_out(stream: torch.Tensor, sequences: int) -> torch.Tensor:
    step = (len(stream) - SEQ) // sequences
    return torch.stack([stream[i * step:i * step + SEQ] for i in range(sequences)])


def make_model():
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        use_cache=False, bos_token_id=None, eos_token_id=None, pad_token_id=0,
        tie_word_embeddings=False)
    torch.manual_seed(SEED)
    return transformers.LlamaForCausalLM(config)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- training, eval
def train(model, data: list, *, lr: float, teacher=None, alpha: float = 0.5) -> list[float]:
    """AdamW, cosine to 0; loss = next-token CE, or alpha * KL(teacher) + (1 - alpha) * CE."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, len(data)) / len(data))))
    losses = []
    for ids in data:
        logits = model(ids).logits
        loss = next_token_loss(logits, ids)
        if teacher is not None:
            with torch.no_grad():
                reference = teacher(ids).logits
            loss = alpha * masked_distillation(logits, reference, ids, 1.0) + (1 - alpha) * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model, ids: torch.Tensor) -> float:
    model.eval()
    total = 0.0
    for chunk in ids.split(16):
        total += float(next_token_loss(model(chunk).logits, chunk)) * chunk.shape[0]
    return math.exp(total / ids.shape[0])


# --------------------------------------------------------------------------- pruning
def prune_prunec(dense, example, passes) -> tuple[torch.nn.Module, float]:
    start = time.perf_counter()
    compiled = prunec.compile(dense, (example,), passes, backend="module")
    return compiled.module, time.perf_counter() - start


def prune_torch_pruning(dense, example, ratio: float):
    """Torch-Pruning's MagnitudePruner (L2 group importance) on the MLP width only: every
    attention projection, every down_proj (its outputs are the residual stream), the
    embedding and the head are ignored, so the groups left are the MLP hidden widths; the
    same ratio in every layer (``global_pruning=False``), kept counts rounded to 8."""
    import copy

    import torch_pruning as tp

    model = copy.deepcopy(dense)
    ignored = [model.lm_head, model.model.embed_tokens]
    for layer in model.model.layers:
        attn = layer.self_attn
        ignored += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, layer.mlp.down_proj]
    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=ignored, round_to=8, global_pruning=False,
        output_transform=lambda out: out.logits.sum())
    pruner.step()
    model.config.intermediate_size = model.model.layers[0].mlp.gate_proj.out_features
    return model, time.perf_counter() - start


def variants(calib: list, example: torch.Tensor) -> dict:
    """name -> (tool, passes or ratio)."""
    return {
        "MLP 25% magnitude": ("prunec", [MagnitudePruning(0.25, targets="mlp", scope="local")]),
        "MLP 25% VBP": ("prunec", [VarianceBasedPruning(0.25, calib, targets="mlp", scope="local")]),
        "MLP 25% Torch-Pruning": ("tp", 0.25),
        "MLP 50% magnitude": ("prunec", [MagnitudePruning(0.5, targets="mlp", scope="local")]),
        "MLP 50% VBP": ("prunec", [VarianceBasedPruning(0.5, calib, targets="mlp", scope="local")]),
        "MLP 50% Torch-Pruning": ("tp", 0.5),
        "heads 50% (1 of 2 KV groups)": ("prunec", [HeadPruning(
            0.5, uniform=True, criterion="activation", calibration=calib)]),
        "1 of 4 layers": ("prunec", [DepthPruning(1, unit="layer", calibration=calib,
                                                  compensate=False)]),
        "2 of 4 layers": ("prunec", [DepthPruning(2, unit="layer", calibration=calib,
                                                  compensate=False)]),
    }


# --------------------------------------------------------------------------- generation
@torch.no_grad()
def gen_seconds(model, prompt: torch.Tensor, new: int) -> float:
    start = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         use_cache=True, pad_token_id=0)
    took = time.perf_counter() - start
    assert out.shape[1] == prompt.shape[1] + new
    return took


def gen_speed(models: dict, prompt: torch.Tensor, new: int, repeats: int) -> dict:
    """tokens/s per model and thread count, models interleaved (order reversed every round)."""
    out: dict = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        names = list(models)
        samples = {n: [] for n in names}
        for name in names:  # warm-up
            gen_seconds(models[name], prompt, 8)
        for r in range(repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                samples[name].append(gen_seconds(models[name], prompt, new))
        for name in names:
            out.setdefault(name, {})[f"{threads}_thread"] = {
                "tokens_per_s": new / statistics.median(samples[name]),
                "seconds": samples[name]}
    torch.set_num_threads(2)
    return out


CHILD = r"""
import resource, sys, time, torch, transformers
torch.set_num_threads(2)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = transformers.LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
prompt = torch.arange(32).unsqueeze(0) % 256
with torch.no_grad():
    model.generate(prompt, max_new_tokens=256, min_new_tokens=256, do_sample=False,
                   use_cache=True, pad_token_id=0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak)
"""


def peak_memory(models: dict, folder: Path) -> dict:
    """Peak RSS (KiB, Linux ru_maxrss) of a fresh process after importing torch and
    transformers, and after loading the saved model and generating 256 tokens."""
    out = {}
    for name, model in models.items():
        path = folder / name.replace(" ", "_").replace("%", "pct").replace("/", "_")
        model.save_pretrained(path)
        done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                              text=True, check=True)
        base, peak = map(int, done.stdout.split()[-2:])
        out[name] = {"rss_after_imports_kib": base, "peak_rss_kib": peak,
                     "weights_bytes": sum(p.numel() * p.element_size()
                                          for p in model.parameters())}
    return out


@torch.no_grad()
def kv_cache_bytes(model, prompt: torch.Tensor, new: int) -> int:
    """Bytes of the key/value tensors in the cache ``generate`` returns after ``new`` tokens."""
    out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         use_cache=True, pad_token_id=0, return_dict_in_generate=True)
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in out.past_key_values.layers)


def torch_compile_check(model, ids: torch.Tensor) -> dict:
    """The pruned module under ``torch.compile`` gives the eager logits."""
    start = time.perf_counter()
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            diff = float((compiled(ids).logits - model(ids).logits).abs().max())
        return {"ok": diff < 1e-3, "max_abs_diff": diff, "seconds": time.perf_counter() - start}
    except Exception as exc:  # reported as measured, not hidden
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile-check", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = os.getloadavg()
    train_ids, held_ids = text_bytes()
    evaluation = held_out(held_ids, 64)
    dense = make_model()
    start = time.perf_counter()
    losses = train(dense, batches(train_ids, args.train_steps, args.batch, SEED), lr=3e-3)
    train_seconds = time.perf_counter() - start
    dense.eval()
    dense_ppl = perplexity(dense, evaluation)
    print(f"dense: {params(dense)} parameters, perplexity {dense_ppl:.3f}, "
          f"trained {train_seconds:.0f} s", flush=True)
    calib = batches(train_ids, 8, 8, SEED + 1)
    example = calib[0][:2]
    ft_data = batches(train_ids, args.finetune_steps, args.batch, SEED + 2)
    rows = {"dense": {"params": params(dense), "ppl_pruned": dense_ppl, "ppl_finetuned": None}}
    pruned_models = {}
    for name, (tool, what) in variants(calib, example).items():
        if tool == "tp":
            model, seconds = prune_torch_pruning(dense, example, what)
        else:
            model, seconds = prune_prunec(dense, example, what)
        assert type(model) is type(dense)
        ppl = perplexity(model, evaluation)
        train(model, ft_data, lr=5e-4, teacher=dense)
        rows[name] = {"tool": tool, "params": params(model), "prune_seconds": seconds,
                      "ppl_pruned": ppl, "ppl_finetuned": perplexity(model, evaluation),
                      "config": {k: getattr(model.config, k) for k in (
                          "intermediate_size", "num_attention_heads", "num_key_value_heads",
                          "num_hidden_layers", "mlp_bias")}}
        pruned_models[name] = model
        print(name, json.dumps({k: v for k, v in rows[name].items() if k != "config"}),
              flush=True)
    timed = {"dense": dense, **{n: pruned_models[n] for n in (
        "MLP 50% VBP", "heads 50% (1 of 2 KV groups)", "2 of 4 layers")}}
    prompt = evaluation[:1, :32]
    speed = gen_speed(timed, prompt, args.gen_tokens, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        memory = peak_memory(timed, Path(folder))
    for name, model in timed.items():
        memory[name]["kv_cache_bytes"] = kv_cache_bytes(model, prompt, 256)
    compile_check = None if args.no_compile_check else \
        torch_compile_check(pruned_models["MLP 50% VBP"], evaluation[:2])
    payload = {"machine": {"cpu": platform.processor() or platform.machine(),
                           "cpus": os.cpu_count(), "load_before": load_before,
                           "load_after": os.getloadavg()},
               "versions": {m: __import__(m).__version__ for m in ("torch", "transformers",
                                                                    "torch_pruning")},
               "settings": vars(args), "train_seconds": train_seconds,
               "train_loss_first_last": [losses[0], losses[-1]], "rows": rows,
               "generation": speed, "memory": memory, "torch_compile": compile_check}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "llm_prune.json").write_text(json.dumps(payload, indent=1, default=str))
    (RESULTS / "llm_prune.md").write_text(render(payload))
    print(render(payload))


def render(p: dict) -> str:
    rows, dense = p["rows"], p["rows"]["dense"]
    s = p["settings"]
    lines = [
        "# Pruning a small Llama-shaped decoder trained on real text",
        "",
        f"`python benchmarks/llm_prune.py` (defaults: {s['train_steps']} training steps, "
        f"{s['finetune_steps']} fine-tuning steps). A `LlamaForCausalLM` (hidden 128, MLP 384, "
        f"4 layers, 4 query heads sharing 2 key/value heads, byte-level vocabulary of 256; "
        f"{dense['params']:,} parameters) trained here for {p['train_seconds']:.0f} s on 90 % of "
        f"the standard library's documentation topics (`pydoc_data.topics`, batches of {s['batch']} x "
        f"{SEQ} bytes); perplexity (per byte) on 64 held-out sequences from the other 10 %.",
        "",
        "Every prunec model is `prunec.compile(..., backend=\"module\")`'s result: a "
        "`LlamaForCausalLM` whose config says its widths, checked against the pruned program. "
        "Fine-tuning: the same loop for every row, "
        f"{s['finetune_steps']} AdamW steps (lr 5e-4, cosine), 0.5 x next-token cross-entropy "
        "+ 0.5 x KL to the dense model's logits.",
        "",
        "| model | tool | parameters | perplexity after pruning | after fine-tuning | config |",
        "|---|---|---:|---:|---:|---|",
        f"| dense | - | {dense['params']:,} | {dense['ppl_pruned']:.3f} | - | - |",
    ]
    for name, r in rows.items():
        if name == "dense":
            continue
        c = r["config"]
        cfg = (f"MLP {c['intermediate_size']}, heads {c['num_attention_heads']}/"
               f"{c['num_key_value_heads']}, layers {c['num_hidden_layers']}"
               + (", mlp_bias" if c["mlp_bias"] else ""))
        tool = "Torch-Pruning" if r["tool"] == "tp" else "prunec"
        lines.append(f"| {name} | {tool} | {r['params']:,} | {r['ppl_pruned']:.3f} | "
                     f"{r['ppl_finetuned']:.3f} | {cfg} |")
    lines += ["", f"## Generation with the KV cache ({s['gen_tokens']} new tokens after a 32-token "
              f"prompt, batch 1, greedy; median of {s['repeats']} interleaved runs)", "",
              "| model | tokens/s, 1 thread | vs dense | tokens/s, 2 threads | vs dense |",
              "|---|---:|---:|---:|---:|"]
    gen = p["generation"]
    for name, g in gen.items():
        one, two = g["1_thread"]["tokens_per_s"], g["2_thread"]["tokens_per_s"]
        lines.append(f"| {name} | {one:.0f} | {one / gen['dense']['1_thread']['tokens_per_s']:.2f}x"
                     f" | {two:.0f} | {two / gen['dense']['2_thread']['tokens_per_s']:.2f}x |")
    if all(g["2_thread"]["tokens_per_s"] < g["1_thread"]["tokens_per_s"] for g in gen.values()):
        lines += ["", "With 2 threads every model ran slower than with 1: the machine's other "
                  "processes took the second core, so the 1-thread ratios are the informative "
                  "ones here."]
    lines += ["", "## Memory (a fresh process: load with `from_pretrained`, generate 256 tokens)",
              "", "Weights and the KV cache after 32 + 256 tokens are the tensors' own bytes; "
              "the resident set of the process is dominated by torch and transformers at this "
              "model size.", "",
              "| model | weights | KV cache (288 tokens) | peak RSS | RSS after importing torch + "
              "transformers |", "|---|---:|---:|---:|---:|"]
    for name, m in p["memory"].items():
        lines.append(f"| {name} | {m['weights_bytes'] / 2**20:.2f} MiB | "
                     f"{m['kv_cache_bytes'] / 2**10:.0f} KiB | "
                     f"{m['peak_rss_kib'] / 1024:.0f} MiB | "
                     f"{m['rss_after_imports_kib'] / 1024:.0f} MiB |")
    cc = p["torch_compile"]
    if cc is not None:
        lines += ["", "`torch.compile` of the pruned module (MLP 50% VBP): " + (
            f"logits equal to eager within {cc['max_abs_diff']:.1e} ({cc['seconds']:.0f} s "
            f"including compilation)" if cc.get("ok") else f"failed: {cc}")]
    m = p["machine"]
    lines += ["", "## Machine", "",
              f"- {m['cpus']} logical CPUs ({m['cpu']}), shared with other processes: load "
              f"average {m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after; "
              "timings are medians of interleaved runs, compare the ratios",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in p["versions"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
