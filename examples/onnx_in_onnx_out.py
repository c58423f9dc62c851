"""ONNX in, ONNX out: prune an .onnx file and get the same file back, smaller.

The user here has only an ONNX file (made below from a BERT-shaped encoder, with dynamic
batch and sequence axes, as a deployment pipeline would have it). prunec prunes its FFN
neurons with variance-based pruning (the removed neurons' means folded into the next
layer's bias), writes the plan back into the user's own graph and saves it: same input and
output names, same ``batch`` / ``seq`` axes, same opsets, node names and metadata. Plain
ONNX Runtime code then loads it unchanged, at any batch size and sequence length.

    python examples/onnx_in_onnx_out.py            # a few seconds
    python examples/onnx_in_onnx_out.py --tiny
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import prunec
from prunec.passes import VarianceBasedPruning


def export_encoder(path: Path, tiny: bool) -> None:
    """Stand-in for the user's file: a BERT-shaped encoder exported by torch."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=32 if tiny else 128, num_hidden_layers=1 if tiny else 4,
        num_attention_heads=2 if tiny else 4, intermediate_size=128 if tiny else 512)
    torch.manual_seed(0)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(0, 1000, (2, 16))
    axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "embeddings")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), (ids, torch.ones_like(ids)), str(path), dynamo=False,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["embeddings"], dynamic_axes=axes, opset_version=17)


def batch(rng: np.random.Generator, size: int = 8, seq: int = 16) -> dict:
    ids = torch.from_numpy(rng.integers(0, 1000, (size, seq)))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def main(tiny: bool = False) -> dict:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        original = Path(tmp) / "encoder.onnx"
        export_encoder(original, tiny)

        calibration = [batch(rng) for _ in range(2 if tiny else 16)]
        compiled = prunec.compile(str(original), calibration[0],
                                  passes=[VarianceBasedPruning(0.5, calibration)],
                                  backend="onnxruntime")
        print(compiled.report)
        print("file verified:", compiled.artifact.verified)
        pruned = compiled.save(Path(tmp) / "encoder.pruned.onnx")

        # The user's own ONNX Runtime code, unchanged: other batch size, other length.
        before = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
        after = ort.InferenceSession(str(pruned), providers=["CPUExecutionProvider"])
        feeds = {k: v.numpy() for k, v in batch(rng, size=3, seq=40).items()}
        a, = before.run(None, feeds)
        b, = after.run(None, feeds)
        cosine = float(np.mean(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1)
                                                    * np.linalg.norm(b, axis=-1))))
        names = ([i.name for i in after.get_inputs()] == [i.name for i in before.get_inputs()]
                 and [o.name for o in after.get_outputs()] == [o.name for o in before.get_outputs()])
        size = (original.stat().st_size, pruned.stat().st_size)
    print(f"same input/output names: {names}; output {b.shape} at batch 3, length 40; "
          f"mean cosine to the unpruned output {cosine:.3f}; file {size[0]} -> {size[1]} bytes")
    return {"macs_ratio": compiled.report.macs_before / compiled.report.macs_after,
            "cosine": cosine, "same_names": names, "shape": b.shape}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv or os.environ.get("PRUNEC_EXAMPLES_TINY") == "1")
