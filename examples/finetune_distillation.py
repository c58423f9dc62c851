"""Prune a trained classifier, then recover its accuracy by distillation from the unpruned
model with ``prunec.finetune``.

The classifier is prunec's built-in ResNet-14 trained on scikit-learn's handwritten digits
(real 8x8 images, trained here in a few seconds). Variance-based pruning removes 50% of its
bottleneck channels; the pruned model then trains for a few epochs in train mode (batch norm
and dropout as in training) on KL to the unpruned model's logits plus cross-entropy.

    python examples/finetune_distillation.py            # about a minute on 2 CPU cores
    python examples/finetune_distillation.py --tiny     # one epoch on part of the data
"""
from __future__ import annotations

import os
import sys

import torch

import prunec
from prunec.passes import VarianceBasedPruning
from prunec.zoo import default_model, digits_data, evaluate


def main(tiny: bool = False) -> dict:
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared CPU
    model, example = default_model()
    x_train, y_train, x_test, y_test = digits_data()
    if tiny:
        x_train, y_train = x_train[:512], y_train[:512]

    calibration = [(x,) for x in x_train.split(64)]
    compiled = prunec.compile(model, example, [VarianceBasedPruning(0.5, calibration)])
    print(compiled.report)

    before, pruned = evaluate(model, x_test, y_test), evaluate(compiled, x_test, y_test)
    train = list(zip(x_train.split(32), y_train.split(32)))  # (inputs, target) batches
    _, history = prunec.finetune(compiled, train, epochs=1 if tiny else 3, teacher=model,
                                 lr=2e-3, alpha=0.5)  # alpha: weight of the distillation term
    tuned = evaluate(compiled, x_test, y_test)
    print(f"test accuracy: {before:.1%} unpruned, {pruned:.1%} right after pruning, "
          f"{tuned:.1%} after fine-tuning (final loss {history[-1]['loss']:.3f})")
    return {"before": before, "pruned": pruned, "tuned": tuned}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:] or os.environ.get("PRUNEC_EXAMPLES_TINY") == "1")
