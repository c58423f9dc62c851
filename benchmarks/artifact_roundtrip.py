"""Save -> load round trips of every CPU backend: file size, load time, and parity of the
reloaded artifact against the in-memory one at another batch size (and, for BERT, another
sequence length).

Models: a CIFAR ResNet-20 (prunec.zoo, random weights) pruned by MagnitudePruning(0.5), and a
BERT encoder (transformers BertConfig: 4 layers, hidden 256, 4 heads, intermediate 1024)
pruned by MagnitudePruning(0.3, targets="mlp"). Run:

    python benchmarks/artifact_roundtrip.py

Writes benchmarks/results/artifact_roundtrip.{md,json}.
"""
from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import prunec
from prunec.passes import MagnitudePruning
from prunec.zoo import resnet20

RESULTS = Path(__file__).parent / "results"
BACKENDS = ["torch", "onnx", "onnxruntime", "inductor"]


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=1024)
    model = BertModel(config).eval()
    ids = torch.randint(0, 1000, (2, 32))
    mask = torch.ones_like(ids)
    other_ids = torch.randint(0, 1000, (5, 47))
    other_mask = torch.ones_like(other_ids)
    other_mask[2, 30:] = 0
    return ("bert-4x256 (MLP 0.3)", model, (ids,), {"attention_mask": mask},
            [MagnitudePruning(0.3, targets="mlp")], (other_ids,), {"attention_mask": other_mask},
            "batch 5, sequence 47")


def _resnet():
    torch.manual_seed(0)
    model = resnet20().eval()
    return ("resnet20 (all 0.5)", model, (torch.randn(2, 3, 32, 32),), {},
            [MagnitudePruning(0.5)], (torch.randn(7, 3, 40, 40),), {}, "batch 7, image 40x40")


def _max_diff(a, b) -> float:
    import torch.utils._pytree as pytree

    ta = [t for t in pytree.tree_leaves(a) if isinstance(t, torch.Tensor)]
    tb = [t for t in pytree.tree_leaves(b) if isinstance(t, torch.Tensor)]
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(ta, tb))


def run() -> list[dict]:
    rows = []
    for make in (_resnet, _bert):
        name, model, args, kwargs, passes, o_args, o_kwargs, other = make()
        for backend in BACKENDS:
            compiled = prunec.compile(model, args, passes, example_kwargs=kwargs, backend=backend)
            suffix = ".onnx" if "onnx" in backend else ".pt2"
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                path = compiled.save(Path(tmp) / f"model{suffix}")
                save_s = time.perf_counter() - start
                start = time.perf_counter()
                loaded = prunec.load(path)
                load_s = time.perf_counter() - start
                reference = compiled.module(*o_args, **o_kwargs)
                row = {"model": name, "backend": backend, "file": path.suffix,
                       "artifact": type(loaded).__name__, "bytes": path.stat().st_size,
                       "save_s": round(save_s, 2), "load_s": round(load_s, 2),
                       "inputs": other,
                       "max_abs_diff_loaded_vs_program": _max_diff(loaded(*o_args, **o_kwargs),
                                                                   reference),
                       "max_abs_diff_in_memory_vs_program": _max_diff(
                           compiled(*o_args, **o_kwargs), reference)}
            rows.append(row)
            print(row, flush=True)
    return rows


def write(rows: list[dict]) -> None:
    env = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "artifact_roundtrip.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    lines = ["# Saving and loading artifacts", "",
             "Each model is compiled, saved with `compiled.save(path)`, loaded with "
             "`prunec.load(path)` (no model code), and both the reloaded and the in-memory "
             "artifact are called on inputs of another size than the example; the reference is "
             "the pruned program itself (`compiled.module`).", "",
             f"Environment: {env}", "",
             "| model | backend | file | reloaded as | size | save | load | inputs | max abs diff, loaded | max abs diff, in memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['file']} | {r['artifact']} | "
                     f"{r['bytes'] / 1e6:.2f} MB | {r['save_s']} s | {r['load_s']} s | {r['inputs']} | "
                     f"{r['max_abs_diff_loaded_vs_program']:.2e} | "
                     f"{r['max_abs_diff_in_memory_vs_program']:.2e} |")
    lines += ["", "The inductor file is an AOTInductor package: `save` compiles it, which is "
              "where its save time goes. Times were measured on a shared machine while other "
              "jobs ran; they show orders of magnitude only."]
    (RESULTS / "artifact_roundtrip.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write(run())
