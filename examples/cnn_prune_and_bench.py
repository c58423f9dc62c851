"""Prune a CNN and time it against the unpruned one on ONNX Runtime.

A CIFAR-style ResNet-56 (random weights: latency does not depend on them) has half of its
channels removed by magnitude pruning, residual channels included; both models are lowered
to ONNX Runtime and timed interleaved, with a confidence interval for the speedup.

    python examples/cnn_prune_and_bench.py            # about a minute on 2 CPU cores
    python examples/cnn_prune_and_bench.py --tiny     # ResNet-8, a few rounds

Any ``nn.Module`` works in place of ``resnet56()``, e.g. ``torchvision.models.resnet50()``
with a ``1x3x224x224`` example.
"""
from __future__ import annotations

import os
import sys

import torch

import prunec
from prunec.bench import benchmark
from prunec.passes import MagnitudePruning
from prunec.zoo import CifarResNet, resnet56


def main(tiny: bool = False) -> dict:
    torch.manual_seed(0)
    model = (CifarResNet(blocks_per_stage=1) if tiny else resnet56()).eval()
    x = torch.randn(2, 3, 32, 32)  # a batch of 2 keeps the batch axis dynamic (1 would fix it)

    dense = prunec.compile(model, (x,), [], backend="onnxruntime")
    pruned = prunec.compile(model, (x,), [MagnitudePruning(0.5, targets="all")],
                            backend="onnxruntime")
    print(pruned.report)

    def inputs(batch: int):
        return (torch.randn(batch, 3, 32, 32),), {}

    result = benchmark({"dense": dense, "pruned": pruned}, inputs,
                       batch_sizes=[1] if tiny else [1, 16],
                       iters=5 if tiny else None, time_budget=10.0, warmup=2 if tiny else 10,
                       macs={"dense": dense.report.macs_per_sample_before,
                             "pruned": pruned.report.macs_per_sample_after})
    print(result.to_markdown())  # ends with warnings when noise hides the difference
    row = result.row("pruned", result.settings["batch_sizes"][-1])
    return {"speedup": row.speedup, "ideal": row.ideal_speedup, "warnings": result.warnings}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:] or os.environ.get("PRUNEC_EXAMPLES_TINY") == "1")
