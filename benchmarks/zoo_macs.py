"""MACs and parameters of the test zoo before and after 50% pruning (both baseline passes).

Run: ``python benchmarks/zoo_macs.py`` -> benchmarks/results/zoo_macs.{md,json}
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prunec  # noqa: E402
from prunec.passes import MagnitudePruning, RandomPruning  # noqa: E402
from tests.zoo import ZOO  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    rows = []
    for name, factory in ZOO.items():
        case = factory()
        for pass_ in (MagnitudePruning(0.5), RandomPruning(0.5), MagnitudePruning(0.5, targets="mlp")):
            r = prunec.compile(case.model, case.args, [pass_], example_kwargs=case.kwargs).report
            rows.append({"model": name, "pass": f"{type(pass_).__name__}({pass_.targets})",
                         "macs_before": r.macs_before, "macs_after": r.macs_after,
                         "params_before": r.params_before, "params_after": r.params_after})
            print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "zoo_macs.json").write_text(json.dumps(rows, indent=2))
    lines = ["# Test zoo at ratio 0.5", "", "Random weights, small configs (tests/zoo); MACs at the "
             "zoo's example input size, batch counted.", "",
             "| model | pass (targets) | MACs before | MACs after | MACs kept | params before | params after |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['pass']} | {r['macs_before']:,} | {r['macs_after']:,} | "
                     f"{100 * r['macs_after'] / r['macs_before']:.1f}% | {r['params_before']:,} | {r['params_after']:,} |")
    (RESULTS / "zoo_macs.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
