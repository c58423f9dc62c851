"""PEEAO's neuron score: the second-order (Fisher) estimate against the measured KL.

PEEAO (arXiv 2506.04513) scores each inner filter of a residual block by ``KL(q || p)``
between the softmax outputs with that filter zeroed (q) and without (p): one forward pass per
filter. prunec's recipe uses by default the second-order estimate of the same quantity
(:func:`prunec.recipes.neuron_kl.neuron_kl_scores`: one forward and K backward passes);
:func:`~prunec.recipes.neuron_kl.neuron_kl_exact` measures it as the authors do. This script
trains the 1-D ResNet-56 on MNIST-1D, then compares the two on the same calibration sample:

- rank agreement (Spearman) within each block and over all filters (PEEAO sorts globally);
- the filters each removes when asked for ``n`` of them (one global sort, as the recipe), their
  overlap, and the measured KL of removing each set at once (lower is better);
- the wall time of each scorer.

Usage: ``python benchmarks/neuron_kl_agreement.py [--samples 10000] [--epochs 10] [--per-class 20]``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import mnist1d_common as common  # noqa: E402

from prunec.ir.capture import capture  # noqa: E402
from prunec.ir.interpret import run_with_overrides  # noqa: E402
from prunec.recipes.neuron_kl import (inner_groups, neuron_kl_exact,  # noqa: E402
                                      neuron_kl_scores, select_units)
from prunec.rewrite.reference import reference_program  # noqa: E402
from prunec.recipes.peeao import class_balanced  # noqa: E402
from prunec.zoo import resnet56_1d  # noqa: E402

NAME = "neuron_kl_agreement"
COUNTS = (32, 64, 128, 256)


def ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1])


@torch.no_grad()
def removal_kl(program, plan, calibration) -> float:
    """Measured ``KL(q || p)`` (per row) of removing every unit the plan removes, at once: the
    program run as :func:`prunec.rewrite.reference.reference_program` defines the plan."""
    reference, overrides, why_not = reference_program(program, plan)
    assert reference is not None, why_not
    total = rows = 0
    for item in calibration:
        log_p = F.log_softmax(run_with_overrides(program, item, {}).double(), -1)
        log_q = F.log_softmax(run_with_overrides(reference, item, overrides).double(), -1)
        total += float((log_q.exp() * (log_q - log_p)).sum())
        rows += log_p.shape[0]
    return total / rows


def markdown(r: dict) -> str:
    a = r["args"]
    lines = [
        "# PEEAO's neuron score: second-order estimate vs measured KL", "",
        f"1-D ResNet-56 (`prunec.zoo.resnet56_1d`) trained {a['epochs']} epochs on MNIST-1D "
        f"({r['train']} training sequences; test accuracy {100 * r['test_acc']:.2f} %). "
        f"Calibration: {a['per_class']} training sequences per class ({r['calibration_rows']} in "
        f"all). Units: the {r['units']} filters of the first convolution of the "
        f"{r['groups']} residual blocks (PEEAO's neuron candidates). `fisher` is "
        "`neuron_kl_scores` (the recipe's default), `exact` is `neuron_kl_exact` (one forward "
        "per filter, the authors' procedure).", "",
        f"Wall time (1 thread): fisher {r['seconds']['fisher']:.2f} s, exact "
        f"{r['seconds']['exact']:.1f} s ({r['seconds']['exact'] / r['seconds']['fisher']:.0f}x).",
        "",
        f"Spearman rank correlation over all {r['units']} filters: **{r['spearman_global']:.3f}**; "
        f"within a block: median {r['spearman_block_median']:.3f}, lowest "
        f"{r['spearman_block_min']:.3f} ({r['spearman_block_min_key']}).", "",
        "Removing the `n` lowest-scoring filters (one global sort, every block keeps one), "
        "measured KL of removing the whole set (per sequence, nats):", "",
        "| n | overlap of the two sets | KL, fisher's set | KL, exact's set |",
        "|---|---|---|---|",
    ]
    for row in r["removal"]:
        lines.append(f"| {row['count']} | {row['overlap']} / {row['count']} | "
                     f"{row['kl_fisher']:.4g} | {row['kl_exact']:.4g} |")
    share = [row["overlap"] / row["count"] for row in r["removal"]]
    ratio = [row["kl_fisher"] / row["kl_exact"] for row in r["removal"] if row["kl_exact"] > 0]
    lines += ["", f"The two sets share {100 * min(share):.0f}-{100 * max(share):.0f} % of their "
              f"filters; the KL of removing fisher's set is {min(ratio):.2f}-{max(ratio):.2f}x that "
              f"of removing exact's. Scoring each filter alone ignores interactions, for both "
              f"scorers; the set columns measure what the recipe actually removes.", "",
              "## Machine", "", *common.environment_lines(1), "",
              "Script: `benchmarks/neuron_kl_agreement.py`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--render", action="store_true",
                        help="rewrite the Markdown from the committed JSON, run nothing")
    args = parser.parse_args()
    if args.render:
        results = json.loads((common.RESULTS / f"{NAME}.json").read_text())
        (common.RESULTS / f"{NAME}.md").write_text(markdown(results))
        return
    torch.set_num_threads(1)
    data = common.load_data(args.samples)
    torch.manual_seed(0)
    model = resnet56_1d()
    common.train(model, data, epochs=args.epochs, lr=0.1, seed=0)
    model.eval()
    program = capture(model, (data["x_train"][:2],))
    test_acc = common.evaluate(program.gm, data["x_test"], data["y_test"])
    items = [(data["x_train"][i:i + 128], data["y_train"][i:i + 128])
             for i in range(0, len(data["y_train"]), 128)]
    calib = class_balanced(items, args.per_class)
    groups = inner_groups(program)
    t0 = time.perf_counter()
    fisher = neuron_kl_scores(program, groups, calib)
    t1 = time.perf_counter()
    exact = neuron_kl_exact(program, groups, calib)
    t2 = time.perf_counter()
    per_block = {k: spearman(fisher[k], exact[k]) for k in groups}
    worst = min(per_block, key=per_block.get)
    removal = []
    for n in COUNTS:
        plans = {name: select_units(groups, s, n) for name, s in (("fisher", fisher), ("exact", exact))}
        sets = {name: {(k, u) for k, (g, _) in groups.items() for u in range(g.size)
                       if k in p.keep and u not in p.keep[k]} for name, p in plans.items()}
        removal.append({"count": n, "overlap": len(sets["fisher"] & sets["exact"]),
                        "kl_fisher": removal_kl(program, plans["fisher"], calib),
                        "kl_exact": removal_kl(program, plans["exact"], calib)})
    cat = lambda s: torch.cat([s[k] for k in groups])  # noqa: E731
    results = {"args": vars(args), "train": len(data["y_train"]), "test_acc": test_acc,
               "calibration_rows": sum(len(x) for x in calib), "groups": len(groups),
               "units": sum(g.size for g, _ in groups.values()),
               "seconds": {"fisher": t1 - t0, "exact": t2 - t1},
               "spearman_global": spearman(cat(fisher), cat(exact)),
               "spearman_block": per_block,
               "spearman_block_median": float(torch.tensor(list(per_block.values())).median()),
               "spearman_block_min": per_block[worst], "spearman_block_min_key": worst,
               "removal": removal, "environment": common.environment()}
    common.write_json(common.RESULTS / f"{NAME}.json", results)
    (common.RESULTS / f"{NAME}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
