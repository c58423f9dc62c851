"""OCSPruner on MNIST-1D with the 1-D ResNet-56: accuracy, stability, training time, speedup.

Four runs from the same seeded initialisation, all with SGD (Nesterov momentum 0.9, weight
decay 5e-4, batch 128, lr 0.1, x0.2 at 30/60/80/90 % of the epochs):

1. ``dense``: the unpruned network trained for E epochs;
2. ``ocspruner``: :func:`prunec.recipes.ocspruner` at 50 % fewer MACs over the same E epochs
   (selection from epoch 2, pruning at the stable epoch, training goes on pruned);
3. ``prune_at_init``: the same criterion and MACs target applied to the initial weights
   (:meth:`OneCyclePruner.prune` before any step), then E epochs of training;
4. ``dense_prune_finetune``: the dense model of run 1, pruned by prunec's
   ``MagnitudePruning`` at the global ratio whose MACs reduction is closest to 50 %
   (bisection), then fine-tuned for F epochs (lr 0.01, same schedule shape).

Accuracy is on the validation split per epoch and on the test split at the end. Training
time is wall time on this machine: the training passes, selection, pruning and captures;
validation is excluded. ``time to equal accuracy`` for run 4 is the dense time plus pruning
plus the fine-tuning epochs until its validation accuracy first reaches OCSPruner's final
one. The final models' latency is measured with :func:`prunec.bench.benchmark` (eval-mode
captures run by torch, interleaved) against the MACs ideal.

Usage: ``python benchmarks/ocspruner_mnist1d.py [--epochs 30] [--samples 10000] [--threads 1]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import mnist1d_common as common  # noqa: E402

from prunec.bench import benchmark  # noqa: E402
from prunec.ir.capture import capture  # noqa: E402
from prunec.ir.cost import count_macs, count_params  # noqa: E402
from prunec.ir.program import Program  # noqa: E402
from prunec.passes import MagnitudePruning  # noqa: E402
from prunec.recipes import OneCyclePruner, ocspruner  # noqa: E402
from prunec.recipes.ocs_train import eval_program  # noqa: E402
from prunec.train import assign_state, train_program  # noqa: E402
from prunec.zoo import resnet56_1d  # noqa: E402

TARGET = 0.5
NAME = "ocspruner_mnist1d"


def fresh_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return resnet56_1d()


def val_fn(eval_prog: Program, train_module: torch.nn.Module, data: dict):
    """Validation accuracy of ``train_module``'s tensors through the eval-mode ``eval_prog``."""

    def accuracy() -> float:
        state = dict(train_module.named_parameters())
        state.update(train_module.named_buffers())
        run = lambda x: torch.func.functional_call(eval_prog.gm, state, (x,))  # noqa: E731
        return common.evaluate(run, data["x_val"], data["y_val"])

    return accuracy


# ---------------------------------------------------------------------------- runs
def run_dense(data: dict, epochs: int, seed: int = 0) -> dict:
    model = fresh_model(seed)
    start = time.perf_counter()
    history = common.train(model, data, epochs=epochs, seed=seed)
    wall = time.perf_counter() - start
    return {"model": model, "history": history, "train_seconds": wall - _eval_time(history)}


def run_ocspruner(data: dict, epochs: int, example: torch.Tensor, seed: int = 0) -> dict:
    start = time.perf_counter()
    compiled = ocspruner(fresh_model(seed), example, (data["x_train"], data["y_train"]), epochs=epochs,
                         macs_reduction=TARGET, val_data=(data["x_val"], data["y_val"]),
                         batch_size=128, lr=0.1, seed=seed, progress=False)
    wall = time.perf_counter() - start
    history = compiled.report.epochs
    return {"compiled": compiled, "history": history, "train_seconds": wall - _eval_time(history)}


def run_prune_at_init(data: dict, epochs: int, example: torch.Tensor, seed: int = 0) -> dict:
    model = fresh_model(seed)
    start = time.perf_counter()
    pruner = OneCyclePruner(model, example, macs_reduction=TARGET)
    pruner.prune(None)
    setup = time.perf_counter() - start
    program = eval_program(model, pruner)  # for validation: not training time
    history = common.train(pruner.module, data, epochs=epochs, seed=seed,
                           val_fn=val_fn(program, pruner.module, data))
    assign_state(pruner.module, program, clone=True)
    return {"program": program, "history": history,
            "train_seconds": setup + sum(h["seconds"] for h in history),
            "reduction": 1 - count_macs(program) / pruner.base_macs,
            "macs": count_macs(program)}


def magnitude_matched(dense_program: Program, target: float) -> tuple[Program, float, float]:
    """``MagnitudePruning`` (global, round_to=1) at the ratio whose MACs reduction is closest
    to ``target``, found by bisection on clones; returns (program, ratio, reduction)."""
    base = count_macs(dense_program)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(14):
        ratio = (lo + hi) / 2
        trial = dense_program.clone()
        MagnitudePruning(ratio, round_to=1)(trial)
        reduction = 1 - count_macs(trial) / base
        if best is None or abs(reduction - target) < abs(best[2] - target):
            best = (trial, ratio, reduction)
        lo, hi = (ratio, hi) if reduction < target else (lo, ratio)
    return best


def run_dense_prune_finetune(dense: dict, data: dict, epochs: int, example: torch.Tensor,
                             seed: int = 0) -> dict:
    start = time.perf_counter()
    program = capture(dense["model"].eval(), example)
    pruned, ratio, reduction = magnitude_matched(program, TARGET)
    pruned_acc = common.evaluate(pruned.gm, data["x_val"], data["y_val"])
    student = train_program(pruned, dense["model"])
    prune_seconds = time.perf_counter() - start
    history = common.train(student.gm, data, epochs=epochs, lr=0.01, seed=seed,
                           val_fn=val_fn(pruned, student.gm, data))
    assign_state(student.gm, pruned, clone=True)
    return {"program": pruned, "history": history, "ratio": ratio, "reduction": reduction,
            "val_acc_after_pruning": pruned_acc, "prune_seconds": prune_seconds,
            "train_seconds": prune_seconds + sum(h["seconds"] for h in history)}


def _eval_time(history: list[dict]) -> float:
    return sum(h.get("eval_seconds", 0.0) for h in history)


# ---------------------------------------------------------------------------- measures
def time_to_accuracy(dense: dict, dpf: dict, target_acc: float) -> float | None:
    """Dense time + pruning + fine-tuning epochs until val accuracy >= ``target_acc``."""
    spent = dense["train_seconds"] + dpf["prune_seconds"]
    for row in dpf["history"]:
        spent += row["seconds"]
        if row["val_acc"] >= target_acc:
            return spent
    return None


def latency(dense_model: torch.nn.Module, compiled, example: torch.Tensor, threads: int) -> dict:
    """Interleaved latency of the dense and the OCSPruner model, torch eager and ONNX Runtime
    (``threads`` intra-op threads, spinning off), batches 1 and 64."""
    from prunec.backends import lower

    dense_prog = capture(dense_model.eval(), example)
    torch.set_num_threads(threads)
    per_sample = {"dense": count_macs(dense_prog) // len(example),
                  "ocspruner": count_macs(compiled.program) // len(example)}
    out = {}
    for backend in ("torch", "onnxruntime"):
        opts = {"intra_op_threads": threads, "spinning": False} if backend == "onnxruntime" else {}
        artifacts = {f"{name}/{backend}": lower(prog, backend, **opts)
                     for name, prog in (("dense", dense_prog), ("ocspruner", compiled.program))}
        gen = torch.Generator().manual_seed(0)
        result = benchmark(artifacts, lambda b: ((torch.randn(b, 1, 40, generator=gen),), {}),
                           batch_sizes=(1, 64), warmup=20, iters=200,
                           macs={f"{n}/{backend}": m for n, m in per_sample.items()})
        out.update({f"{r.artifact}@{r.batch_size}": {
            "median_ms": r.median_ms, "speedup": r.speedup, "ideal": r.ideal_speedup,
            "efficiency": r.efficiency} for r in result.rows})
    return out


def macs_cost(history: list[dict], base_macs: float) -> list[float]:
    """OCSPruner's training cost per epoch in dense-epoch units: the MACs the model had while
    the epoch trained (``macs`` of a history row is after its ``end_epoch``, so the previous
    row's) over the dense MACs."""
    during = [base_macs] + [h["macs"] for h in history[:-1]]
    return [m / base_macs for m in during]


# ---------------------------------------------------------------------------- output
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, label in (("dense", "dense"), ("ocspruner", "OCSPruner 50% MACs"),
                        ("prune_at_init", "prune at epoch 0")):
        h = results[name]["history"]
        ax1.plot([r["epoch"] for r in h], [100 * r["val_acc"] for r in h], label=label)
    e = results["epochs"]
    h = results["dense_prune_finetune"]["history"]
    ax1.plot([e + r["epoch"] for r in h], [100 * r["val_acc"] for r in h],
             label="dense, magnitude 50% MACs, fine-tune")
    stable = results["ocspruner"]["stable_epoch"]
    ax1.axvline(stable, color="gray", ls=":", lw=1)
    ax1.set(xlabel="epoch", ylabel="validation accuracy (%)", title="MNIST-1D, 1-D ResNet-56")
    ax1.set_ylim(bottom=max(0, min(100 * r["val_acc"] for r in results["dense"]["history"][2:]) - 5))
    ax1.legend(fontsize=8)
    rows = [r for r in results["ocspruner"]["history"] if r["jaccard"] is not None]
    ax2.plot([r["epoch"] for r in rows], [r["jaccard"] for r in rows], "o-", label="J_t (vs t-2)")
    ax2.plot([r["epoch"] for r in rows], [r["stability"] for r in rows], "s--",
             label="running mean of 3")
    ax2.axhline(0.999, color="gray", lw=0.8)
    ax2.axvline(stable, color="red", ls=":", label=f"pruned at epoch {stable}")
    ax2.set(xlabel="epoch", ylabel="Jaccard", title="Sub-network stability")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def seeds_section(results: dict) -> list[str]:
    """Test accuracy of every run over the seeds (mean, sample std, values), the stable epochs
    and the time ratios; empty for a single seed."""
    per_seed = results.get("per_seed", [])
    if len(per_seed) < 2:
        return []
    sm = results["summary"]
    seeds = ", ".join(str(r["seed"]) for r in per_seed)
    lines = [f"## Test accuracy over {len(per_seed)} seeds ({seeds}: initialisation and data order)",
             "", "| run | mean test acc (%) | std (points) | per seed (%) |", "|---|---|---|---|"]
    for name, label in RUNS:
        st = sm[name]
        lines.append(f"| {label} | {100 * st['mean']:.2f} | {100 * st['std']:.2f} | "
                     + ", ".join(f"{100 * v:.2f}" for v in st["values"]) + " |")
    d = sm["ocs_minus_dense"]
    tr = sm["time_ratio"]
    lines += ["", "OCSPruner minus dense, per seed: "
              + ", ".join(f"{100 * v:+.2f}" for v in d["values"])
              + f" points (mean {100 * d['mean']:+.2f}). Stable epochs: "
              + ", ".join(str(v) for v in sm["stable_epoch"]) + ". Training-time ratio "
              "(dense + prune + fine-tune until OCSPruner's validation accuracy, over OCSPruner): "
              + (", ".join(f"{v:.2f}x" for v in tr["values"]) if tr["values"] else "never reached")
              + f" ({len(tr['values'])} of {len(per_seed)} seeds reached it); with all F "
              "fine-tuning epochs: " + ", ".join(f"{v:.2f}x" for v in sm["time_ratio_full"]["values"])
              + ".", ""]
    return lines


def markdown(results: dict, threads: int) -> str:
    e, f = results["epochs"], results["finetune_epochs"]
    d, o, p, m = (results[k] for k in ("dense", "ocspruner", "prune_at_init", "dense_prune_finetune"))
    lines = [
        "# OCSPruner on MNIST-1D (1-D ResNet-56)", "",
        f"MNIST-1D generated locally ({results['samples']} sequences: "
        f"{results['sizes']['train']} train / {results['sizes']['val']} validation / "
        f"{results['sizes']['test']} test), 1-D ResNet-56 (3 x 9 basic blocks, widths 16/32/64, "
        f"{results['macs_dense'] / 1e6:.2f} M MACs per sequence). SGD Nesterov 0.9, wd 5e-4, "
        f"batch 128, lr 0.1 x0.2 at 30/60/80/90 % of the epochs; E = {e} epochs, "
        f"fine-tuning F = {f} epochs at lr 0.01. Script: `benchmarks/ocspruner_mnist1d.py`.", "",
        *seeds_section(results),
        *pairs_section(results, results.get("pairs", [])),
        f"### Seed {results['seed']} in detail" if len(results.get("per_seed", [])) > 1 else "",
        "",
        "| run | MACs reduction | epochs | val acc (last) | test acc | training time (s) |",
        "|---|---|---|---|---|---|",
        f"| dense | 0 | {e} | {100 * d['val_acc']:.2f} | {100 * d['test_acc']:.2f} | {d['train_seconds']:.0f} |",
        f"| OCSPruner (stable epoch {o['stable_epoch']}{', forced' if o['forced'] else ''}) | "
        f"{o['reduction']:.4f} | {e} | {100 * o['val_acc']:.2f} | {100 * o['test_acc']:.2f} | "
        f"{o['train_seconds']:.0f} |",
        f"| prune at epoch 0 (same criterion) | {p['reduction']:.4f} | {e} | {100 * p['val_acc']:.2f} | "
        f"{100 * p['test_acc']:.2f} | {p['train_seconds']:.0f} |",
        f"| dense + magnitude (ratio {m['ratio']:.3f}) + fine-tune | {m['reduction']:.4f} | {e} + {f} | "
        f"{100 * m['val_acc']:.2f} | {100 * m['test_acc']:.2f} | "
        f"{d['train_seconds'] + m['train_seconds']:.0f} |", "",
        f"Magnitude-pruned dense model before fine-tuning: {100 * m['val_acc_after_pruning']:.2f} % "
        f"validation accuracy.", "",
        "## Training time at equal accuracy", "",
    ]
    t = results["time_to_ocs_accuracy"]
    if t is None:
        lines.append(f"Dense + prune + fine-tune never reached OCSPruner's final validation accuracy "
                     f"({100 * o['val_acc']:.2f} %) within F = {f} epochs; its full time "
                     f"({d['train_seconds'] + m['train_seconds']:.0f} s) is "
                     f"{results['time_ratio_full']:.2f}x OCSPruner's ({o['train_seconds']:.0f} s): "
                     f"a lower bound.")
    else:
        lines.append(f"Dense + prune + fine-tune reached OCSPruner's final validation accuracy "
                     f"({100 * o['val_acc']:.2f} %) after {t:.0f} s; OCSPruner took "
                     f"{o['train_seconds']:.0f} s: **{results['time_ratio']:.2f}x**.")
    c = results["macs_cost"]
    lines += ["", "Training cost counted in MACs instead (deterministic; epochs weighted by the "
              "model's MACs then, in dense-epoch units): OCSPruner "
              f"{c['ocspruner']:.1f}, dense + prune + fine-tune until OCSPruner's accuracy "
              f"{'-' if c['dpf_to_ocs'] is None else format(c['dpf_to_ocs'], '.1f')} "
              f"(all {f} fine-tuning epochs: {c['dpf_full']:.1f}), prune at epoch 0 "
              f"{c['prune_at_init']:.1f}, dense {c['dense']:.1f}."]
    lines += ["", "## Latency of the final models (eval-mode programs, interleaved)", "",
              f"Median of 200 interleaved calls, {threads} thread(s); ONNX Runtime with "
              f"intra-op spinning off.", "",
              "| backend | batch | dense ms | OCSPruner ms | speedup | MACs ideal | efficiency |",
              "|---|---|---|---|---|---|---|"]
    lat = results["latency"]
    for backend in ("torch", "onnxruntime"):
        for b in (1, 64):
            dd, oo = lat[f"dense/{backend}@{b}"], lat[f"ocspruner/{backend}@{b}"]
            lines.append(f"| {backend} | {b} | {dd['median_ms']:.3f} | {oo['median_ms']:.3f} | "
                         f"{oo['speedup']:.2f}x | {oo['ideal']:.2f}x | {oo['efficiency']:.2f} |")
    if results.get("observations"):
        lines += ["", "## What came out", ""] + [f"- {o}" for o in results["observations"]]
    lines += ["", "![accuracy and stability](ocspruner_mnist1d.png)", "", "## Machine", "",
              *common.environment_lines(threads),
              f"- load average at start / end: {results['load'][0]} / {results['load'][1]} "
              f"(the 2 cores were shared with other jobs: wall times carry that noise)",
              f"- total benchmark wall time: {results['wall_seconds'] / 60:.1f} min", ""]
    return "\n".join(lines)


RUNS = (("dense", "dense"), ("ocspruner", "OCSPruner"), ("prune_at_init", "prune at epoch 0"),
        ("dense_prune_finetune", "dense + magnitude + fine-tune"))


def run_seed(data: dict, e: int, f: int, example: torch.Tensor, seed: int) -> tuple[dict, dict]:
    """The four runs from initialisation ``seed`` (also the data order); returns the JSON
    results and the trained objects (for the latency of the first seed)."""
    test = lambda fn: common.evaluate(fn, data["x_test"], data["y_test"])  # noqa: E731
    dense = run_dense(data, e, seed)
    print(f"[seed {seed}] dense: val {dense['history'][-1]['val_acc']:.4f} "
          f"{dense['train_seconds']:.0f}s", flush=True)
    ocs = run_ocspruner(data, e, example, seed)
    rep = ocs["compiled"].report
    print(f"[seed {seed}] ocspruner: stable {rep.stable_epoch} val {ocs['history'][-1]['val_acc']:.4f} "
          f"{ocs['train_seconds']:.0f}s", flush=True)
    init = run_prune_at_init(data, e, example, seed)
    print(f"[seed {seed}] prune@0: val {init['history'][-1]['val_acc']:.4f}", flush=True)
    dpf = run_dense_prune_finetune(dense, data, f, example, seed)
    print(f"[seed {seed}] dense+prune+ft: val {dpf['history'][-1]['val_acc']:.4f}", flush=True)

    results: dict = {"seed": seed}
    dense_prog = capture(dense["model"].eval(), example)
    results["macs_dense"] = count_macs(dense_prog) / len(example)
    results["params_dense"] = count_params(dense_prog)
    results["dense"] = {"history": dense["history"], "val_acc": dense["history"][-1]["val_acc"],
                        "test_acc": test(dense_prog.gm), "train_seconds": dense["train_seconds"]}
    results["ocspruner"] = ocs_results(ocs, test)
    results["prune_at_init"] = init_results(init, test)
    results["dense_prune_finetune"] = {
        **{k: v for k, v in dpf.items() if k != "program"},
        "val_acc": dpf["history"][-1]["val_acc"], "test_acc": test(dpf["program"].gm)}
    t = time_to_accuracy(dense, dpf, results["ocspruner"]["val_acc"])
    full = dense["train_seconds"] + dpf["train_seconds"]
    results["time_to_ocs_accuracy"] = t
    results["time_ratio"] = None if t is None else t / ocs["train_seconds"]
    results["time_ratio_full"] = full / ocs["train_seconds"]
    base = rep.macs_before
    ocs_cost = sum(macs_cost(ocs["history"], base))
    init_cost = len(init["history"]) * init["macs"] / base
    ft = [(1 - dpf["reduction"]) for _ in dpf["history"]]
    reach = next((i for i, h in enumerate(dpf["history"])
                  if h["val_acc"] >= results["ocspruner"]["val_acc"]), None)
    results["macs_cost"] = {"dense": float(e), "ocspruner": ocs_cost, "prune_at_init": init_cost,
                            "dpf_full": e + sum(ft),
                            "dpf_to_ocs": None if reach is None else e + sum(ft[:reach + 1])}
    return results, {"dense_model": dense["model"], "compiled": ocs["compiled"]}


def ocs_results(ocs: dict, test) -> dict:
    """The JSON record of :func:`run_ocspruner`'s run (``test``: accuracy on the test split)."""
    rep = ocs["compiled"].report
    return {"history": ocs["history"], "val_acc": ocs["history"][-1]["val_acc"],
            "test_acc": test(ocs["compiled"].module), "train_seconds": ocs["train_seconds"],
            "stable_epoch": rep.stable_epoch, "forced": rep.forced, "jaccard": rep.jaccard,
            "reduction": 1 - rep.macs_after / rep.macs_before, "params": rep.params_after}


def init_results(init: dict, test) -> dict:
    """The JSON record of :func:`run_prune_at_init`'s run."""
    return {"history": init["history"], "val_acc": init["history"][-1]["val_acc"],
            "macs": init["macs"], "test_acc": test(init["program"].gm),
            "reduction": init["reduction"], "train_seconds": init["train_seconds"]}


PAIR_KEYS = ("test_acc", "val_acc", "stable_epoch", "reduction")


def run_pair(data: dict, e: int, example: torch.Tensor, seed: int) -> dict:
    """OCSPruner and pruning at epoch 0 only, from initialisation ``seed``: the comparison the
    seed spread leaves open, made over more seeds at about half the cost of :func:`run_seed`
    (the records keep :data:`PAIR_KEYS`)."""
    test = lambda fn: common.evaluate(fn, data["x_test"], data["y_test"])  # noqa: E731
    ocs = ocs_results(run_ocspruner(data, e, example, seed), test)
    init = init_results(run_prune_at_init(data, e, example, seed), test)
    print(f"[seed {seed}] ocspruner stable {ocs['stable_epoch']}; prune@0 done", flush=True)
    return {"seed": seed, "epochs": e,
            "ocspruner": {k: ocs[k] for k in PAIR_KEYS},
            "prune_at_init": {k: init[k] for k in PAIR_KEYS if k in init}}


def pairs_section(results: dict, pairs: list[dict]) -> list[str]:
    """OCSPruner minus prune-at-0 test accuracy over every seed run (the main seeds and the
    ``--pair-seed`` runs): per seed, mean, sample std, and how many seeds favour OCSPruner."""
    import statistics

    rows = [(r["seed"], r["ocspruner"]["test_acc"], r["prune_at_init"]["test_acc"])
            for r in results.get("per_seed", [results])]
    rows += [(r["seed"], r["ocspruner"]["test_acc"], r["prune_at_init"]["test_acc"]) for r in pairs]
    if not pairs:
        return []
    diffs = [100 * (o - p) for _, o, p in rows]
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    lines = [f"## OCSPruner vs prune at epoch 0 over {len(rows)} seeds", "",
             f"The {len(pairs)} extra seeds ({', '.join(str(r['seed']) for r in pairs)}) ran only "
             f"these two (`--pair-seed`), with the same data, E and schedule.", "",
             "| seed | OCSPruner test acc (%) | prune at epoch 0 (%) | difference (points) |",
             "|---|---|---|---|"]
    for (seed, o, p), d in zip(rows, diffs):
        lines.append(f"| {seed} | {100 * o:.2f} | {100 * p:.2f} | {d:+.2f} |")
    lines += ["", f"Mean difference {mean:+.2f} points, std {std:.2f}, standard error "
              f"{std / len(diffs) ** 0.5:.2f}; OCSPruner ahead on {sum(d > 0 for d in diffs)} of "
              f"{len(diffs)} seeds, tied on {sum(d == 0 for d in diffs)}. Mean test accuracy: "
              f"OCSPruner {statistics.fmean(100 * o for _, o, _ in rows):.2f}, prune at epoch 0 "
              f"{statistics.fmean(100 * p for _, _, p in rows):.2f}.", ""]
    return lines


def summarize(per_seed: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each run's test accuracy, and the
    per-seed values of the stable epoch and the time ratios."""
    import statistics

    def stats(values):
        values = [v for v in values if v is not None]
        return {"values": values, "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None}

    out = {name: stats([r[name]["test_acc"] for r in per_seed]) for name, _ in RUNS}
    out["stable_epoch"] = [r["ocspruner"]["stable_epoch"] for r in per_seed]
    out["time_ratio"] = stats([r["time_ratio"] for r in per_seed])
    out["time_ratio_full"] = stats([r["time_ratio_full"] for r in per_seed])
    out["ocs_minus_dense"] = stats([r["ocspruner"]["test_acc"] - r["dense"]["test_acc"]
                                    for r in per_seed])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--seeds", type=int, default=1, help="initialisations 0 .. N-1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(common.RESULTS / NAME))
    parser.add_argument("--render", action="store_true",
                        help="rewrite the Markdown and PNG from the JSON at --out, run nothing")
    parser.add_argument("--pair-seed", type=int, default=None,
                        help="run only OCSPruner and prune-at-0 from this seed and write "
                             "<out>_pair_seed<N>.json; --render adds those runs as a section")
    args = parser.parse_args()
    if args.pair_seed is not None:
        torch.set_num_threads(args.threads)
        data = common.load_data(args.samples)
        out = Path(args.out)
        pair = run_pair(data, args.epochs, data["x_train"][:2], args.pair_seed)
        pair["samples"] = args.samples
        common.write_json(out.with_name(f"{out.name}_pair_seed{args.pair_seed}.json"), pair)
        return
    if args.render:
        out = Path(args.out)
        results = json.loads(out.with_suffix(".json").read_text())
        results["pairs"] = [json.loads(q.read_text()) for q in
                            sorted(out.parent.glob(f"{out.name}_pair_seed*.json"))]
        bad = [q["seed"] for q in results["pairs"]
               if (q["epochs"], q["samples"]) != (results["epochs"], results["samples"])]
        if bad:
            raise SystemExit(f"pair runs of seeds {bad} used other --epochs/--samples than the main run")
        plot(results, out.with_suffix(".png"))
        out.with_suffix(".md").write_text(markdown(results, results.get("threads", args.threads)))
        return
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    load0 = os.getloadavg()[0]
    data = common.load_data(args.samples)
    example = data["x_train"][:2]
    e, f = args.epochs, args.finetune_epochs or max(1, args.epochs // 2)
    out = Path(args.out)
    per_seed, first = [], None
    for seed in range(args.seeds):
        results, objects = run_seed(data, e, f, example, seed)
        per_seed.append(results)
        first = first or objects
        common.write_json(out.with_name(out.name + "_partial.json"), {"per_seed": per_seed})
    results = {"epochs": e, "finetune_epochs": f, "samples": args.samples, "target": TARGET,
               "sizes": {k: len(data[f"y_{k}"]) for k in ("train", "val", "test")},
               **per_seed[0], "per_seed": per_seed, "summary": summarize(per_seed)}
    results["latency"] = latency(first["dense_model"], first["compiled"], example, args.threads)
    results["threads"] = args.threads
    results["load"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    results["wall_seconds"] = time.perf_counter() - wall
    results["environment"] = common.environment()
    common.write_json(out.with_suffix(".json"), results)
    out.with_name(out.name + "_partial.json").unlink(missing_ok=True)
    plot(results, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(markdown(results, args.threads))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
