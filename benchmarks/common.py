"""Shared helpers of the CPU benchmarks (cpu_speedup, torch_pruning_compare, round_to_curve).

- models: DeiT-Small (``ViTConfig`` 12 x 384, 6 heads, MLP 1536, 224 / 16, SDPA attention) and
  ResNet-50 (``ResNetConfig`` defaults, 224), random weights, 1000 classes;
- pruning recipes: the MLP pass of the CPU benchmark (VBP when importable, else magnitude);
- lowering of one program to the two measured backends (``torch`` eager, ``onnxruntime``
  with 2 intra-op threads), both through :func:`prunec.backends.lower`;
- timing: :func:`measure` runs :func:`prunec.bench.benchmark` once per backend and batch size
  (the artifacts of one backend interleaved in one process, baseline first) and merges the
  results; a paired bootstrap interval of each speedup is added from the raw samples;
- result files: JSON (everything, raw samples included), Markdown, environment lines.

Torch and ONNX Runtime artifacts are never interleaved with each other: their thread pools
spin after a call, which on 2 cores would charge one framework's idle spinning to the other.

ONNX Runtime sessions are timed with intra-op spinning off (:func:`without_spinning`: session
config ``session.intra_op.allow_spinning = 0``, otherwise the backend's own options). Each
session owns a thread pool whose workers keep spinning after a run; interleaving several
sessions on 2 cores, the next session then shares the cores with the previous one's spinners.
Measured here (DeiT-Small, batch 1, four sessions interleaved in the harness's order
A B C D / D C B A): with spinning, the two middle sessions took a median of 87-88 ms and the two
end ones (which every other round follow themselves) 61-78 ms, *for the same model*; with
spinning off all four took 43.4 ms. The position bias would decide comparisons (prunec's
artifact sat in the middle of dense / prunec / Torch-Pruning), so spinning is off for every
timed session, and ``cpu_speedup.py`` also reports the sessions as the backend builds them.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from prunec.backends import lower
from prunec.bench import BenchResult, benchmark, environment, interleaved_order

__all__ = [
    "THREADS", "RESULTS", "IMAGE", "deit_small", "resnet50", "images", "calibration_images",
    "mlp_pruning_pass", "lower_backends", "measure", "paired_speedup_ci", "linear_widths",
    "conv_widths", "env_lines", "versions", "write_json", "load_note", "fmt",
    "interleaved_order", "without_spinning", "no_spin_options",
]

THREADS = 2
RESULTS = Path(__file__).parent / "results"
IMAGE = 224
CAPTURE_BATCH = 2  # a batch of 1 at capture would specialise the batch axis (static ONNX batch)


def set_threads(threads: int = THREADS) -> None:
    """Torch eager on ``threads`` intra-op threads (ONNX Runtime sets its own per session)."""
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- models
def deit_small(num_labels: int = 1000) -> torch.nn.Module:
    """DeiT-Small / ViT-S/16 without the distillation token, random weights, eval mode."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                       intermediate_size=1536, image_size=IMAGE, patch_size=16,
                       num_labels=num_labels, attn_implementation="sdpa")
    return ViTForImageClassification(config).eval()


def resnet50(num_labels: int = 1000) -> torch.nn.Module:
    """ResNet-50 (``ResNetConfig`` defaults: bottleneck, 3/4/6/3), random weights, eval mode."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(num_labels=num_labels)).eval()


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def calibration_images(batches: int = 4, batch: int = 8, seed: int = 1) -> list[torch.Tensor]:
    """Random calibration images (the speed depends only on the widths they select)."""
    return [images(batch, seed + i) for i in range(batches)]


def mlp_pruning_pass(ratio: float, calibration: list[torch.Tensor]) -> tuple[Any, str]:
    """``VarianceBasedPruning(ratio, calibration)`` (MLP neurons) when importable, else
    ``MagnitudePruning(ratio, targets="mlp")``; returns the pass and its description."""
    try:
        from prunec.passes.prune_variance import VarianceBasedPruning
    except ImportError:
        from prunec.passes import MagnitudePruning

        return (MagnitudePruning(ratio, targets="mlp"),
                f"MagnitudePruning({ratio}, targets='mlp') (VBP not importable)")
    n = sum(x.shape[0] for x in calibration)
    return (VarianceBasedPruning(ratio, calibration, targets="mlp"),
            f"VarianceBasedPruning({ratio}, targets='mlp', round_to=8) on {n} random images")


def capture_inputs() -> tuple[torch.Tensor]:
    return (images(CAPTURE_BATCH, seed=123),)


# --------------------------------------------------------------------------- lowering
def lower_backends(program: Any, **ort_options: Any) -> dict[str, Any]:
    """``{"torch": eager artifact, "onnxruntime": 2-thread ORT artifact without spinning}``
    of one program (both lowerings run their parity check against the program)."""
    ort_art = lower(program, "onnxruntime", intra_op_threads=THREADS, **ort_options)
    return {"torch": lower(program, "torch"), "onnxruntime": without_spinning(ort_art)}


def no_spin_options(intra_op_threads: int = THREADS, inter_op_threads: int = 1) -> Any:
    """The onnxruntime backend's session options with intra-op spinning off."""
    from prunec.backends.onnxruntime_backend import session_options

    opts = session_options(intra_op_threads, inter_op_threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def without_spinning(artifact: Any) -> Any:
    """Rebuild an ``OnnxRuntimeArtifact``'s session from its own ONNX model with the same
    options and providers, intra-op spinning off (see the module docstring). The model,
    its interface and the parity-checked graph are unchanged."""
    import onnxruntime as ort

    opts = no_spin_options(artifact.settings["intra_op_threads"],
                           artifact.settings["inter_op_threads"])
    artifact.session = ort.InferenceSession(artifact.model.SerializeToString(), sess_options=opts,
                                            providers=artifact.session.get_providers())
    artifact.settings["allow_spinning"] = False
    return artifact


# --------------------------------------------------------------------------- timing
def measure(artifacts: dict[str, dict[str, Callable]], make_inputs: Callable[[int], tuple],
            iters: dict[int, int], macs: dict[str, int], warmup: int = 3) -> BenchResult:
    """Benchmark ``artifacts[backend][variant]`` per backend and batch size; names in the
    result are ``"variant/backend"``; the first variant of each backend is its baseline.

    Args:
        artifacts: backend -> variant -> callable.
        make_inputs: ``batch -> (args, kwargs)``.
        iters: batch size -> timed interleaved rounds.
        macs: variant -> MACs per sample.
        warmup: untimed rounds per run.
    """
    rows, runs = [], []
    for batch, n in iters.items():
        for backend, variants in artifacts.items():
            named = {f"{v}/{backend}": fn for v, fn in variants.items()}
            load = os.getloadavg()
            start = time.perf_counter()
            res = benchmark(named, make_inputs, [batch], warmup=warmup, iters=n,
                            macs={f"{v}/{backend}": macs[v] for v in variants})
            _add_intervals(res)
            rows.extend(res.rows)
            runs.append({"backend": backend, "batch": batch, "iters": n, "warmup": warmup,
                         "baseline": res.baseline, "seconds": time.perf_counter() - start,
                         "loadavg_before": load, "loadavg_after": os.getloadavg(),
                         "artifacts": res.settings["artifacts"]})
            print(f"  {backend} batch {batch}: " + ", ".join(
                f"{r.artifact} {r.median_ms:.1f} ms ({_x(r.speedup)})" for r in res.rows),
                flush=True)
    settings = {"runs": runs, "interleaved": True, "timer": "perf_counter",
                "statistic": "median of interleaved rounds; speedup = median_base / median"}
    return BenchResult(rows=rows, environment=environment(), settings=settings)


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def paired_speedup_ci(base_ms: list[float], ms: list[float], reps: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of ``median(base) / median(x)``, resampling interleaved rounds
    as pairs (round ``i`` of both artifacts ran back to back, so they share its load)."""
    base, x = np.asarray(base_ms), np.asarray(ms)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), size=(reps, len(base)))
    ratios = np.median(base[idx], axis=1) / np.median(x[idx], axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def _add_intervals(res: BenchResult) -> None:
    base = next(r for r in res.rows if r.artifact == res.baseline)
    for r in res.rows:
        r.speedup_ci95 = paired_speedup_ci(base.samples_ms, r.samples_ms)  # type: ignore[attr-defined]
        r.min_speedup = base.min_ms / r.min_ms  # type: ignore[attr-defined]


def row_dict(r: Any) -> dict:
    d = asdict(r)
    d["speedup_ci95"] = getattr(r, "speedup_ci95", None)
    d["min_speedup"] = getattr(r, "min_speedup", None)
    return d


# --------------------------------------------------------------------------- widths
def linear_widths(module: torch.nn.Module, suffix: str) -> list[int]:
    """``out_features`` of the ``nn.Linear`` / graph weights whose name ends with ``suffix``."""
    return [int(p.shape[0]) for n, p in module.state_dict().items()
            if n.endswith(suffix + ".weight") and p.dim() == 2]


def conv_widths(module: torch.nn.Module) -> dict[str, int]:
    return {n[: -len(".weight")]: int(p.shape[0]) for n, p in module.state_dict().items()
            if n.endswith(".weight") and p.dim() == 4}


# --------------------------------------------------------------------------- results
def versions() -> dict[str, str | None]:
    out = {}
    for p in ("torch", "onnx", "onnxruntime", "onnxscript", "onnx-graphsurgeon",
              "transformers", "torch-pruning", "numpy"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def env_lines(env: dict, extra: Iterable[str] = ()) -> list[str]:
    v = versions()
    lines = [
        f"- CPU: {env['cpu']} ({env['cpu_count']} logical CPUs visible; other processes share "
        f"them: each run's load average is in the JSON)",
        f"- threads: torch eager `torch.set_num_threads({THREADS})`; ONNX Runtime "
        f"`intra_op_threads={THREADS}`, `inter_op_threads=1`, `ORT_ENABLE_ALL`, "
        f"CPUExecutionProvider, intra-op spinning off unless a row says otherwise (several "
        f"sessions interleaved on 2 cores: a session's spinning workers slow the next one; "
        f"see `benchmarks/common.py`)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- python {env['python']}, {env['platform']}",
    ]
    return lines + list(extra)


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def command_line() -> str:
    return "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
