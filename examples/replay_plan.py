"""Save what a pruning pass decided and replay it later on a fresh copy of the model.

A pruning plan is plain data: for each channel group the units kept, plus the folded means.
``compiled.plans`` lists the plans applied; ``plan.to_json()`` saves one and
``PruningPlan.from_json`` reads it back; ``prunec.compile(model, x, plans=[...])`` applies
them without scoring or calibrating again, e.g. to lower the same pruned model to another
backend, or to prune the train-mode model the same way.

    python examples/replay_plan.py            # a few seconds
    python examples/replay_plan.py --tiny
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

import prunec
from prunec.passes import VarianceBasedPruning
from prunec.rewrite.plan import PruningPlan


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.GELU(),
                               torch.nn.Linear(256, 256), torch.nn.GELU(),
                               torch.nn.Linear(256, 10)).eval()


def main(tiny: bool = False) -> dict:
    model = make_model()
    data = [torch.randn(64, 32) for _ in range(2 if tiny else 16)]
    x = data[0][:4]

    first = prunec.compile(model, (x,), [VarianceBasedPruning(0.5, data)])
    print(first.report)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plans.json"
        path.write_text(json.dumps([json.loads(p.to_json()) for p in first.plans]))
        plans = [PruningPlan.from_json(json.dumps(p)) for p in json.loads(path.read_text())]

    # A fresh capture of the same model, pruned by the saved plans alone: no calibration.
    replayed = prunec.compile(make_model(), (x,), plans=plans, backend="onnxruntime")
    probe = torch.randn(8, 32)
    difference = float((first(probe) - replayed(probe)).abs().max())
    print(f"replayed on ONNX Runtime: MACs {replayed.report.macs_after} (first run "
          f"{first.report.macs_after}), largest output difference {difference:.2e}")
    return {"difference": difference, "macs": (first.report.macs_after,
                                               replayed.report.macs_after)}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:] or os.environ.get("PRUNEC_EXAMPLES_TINY") == "1")
