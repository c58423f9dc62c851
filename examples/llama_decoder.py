"""Prune a Llama-shaped decoder: SwiGLU MLP neurons with variance-based pruning, then whole
key/value heads (with their query heads) with magnitude pruning.

The model is a small ``LlamaForCausalLM`` built from a ``LlamaConfig`` with random weights
(grouped-query attention: 8 query heads sharing 4 key/value heads). prunec finds that a
key/value head, the query heads that read it and the matching rows of ``o_proj`` go together,
and rewrites the head counts of the attention reshapes. For a real model use
``LlamaForCausalLM.from_pretrained(...)`` and real text for calibration.

    python examples/llama_decoder.py            # about a minute on 2 CPU cores
    python examples/llama_decoder.py --tiny
"""
from __future__ import annotations

import os
import sys

import torch

import prunec
from prunec.passes import HeadPruning, VarianceBasedPruning


def build(tiny: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64 if tiny else 256,
                         intermediate_size=128 if tiny else 688,
                         num_hidden_layers=2 if tiny else 4, num_attention_heads=8,
                         num_key_value_heads=4, head_dim=8 if tiny else 32,
                         max_position_embeddings=128, use_cache=False,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), config


def main(tiny: bool = False) -> dict:
    model, config = build(tiny)
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, config.vocab_size, (4, 32), generator=g) for _ in range(4 if tiny else 16)]
    calibration = [{"input_ids": t, "attention_mask": torch.ones_like(t)} for t in tokens]
    example = calibration[0]

    passes = [VarianceBasedPruning(0.5, calibration, targets="mlp"),
              # each layer keeps half its key/value heads (with their query heads)
              HeadPruning(0.5, uniform=True)]
    compiled = prunec.compile(model, (), passes, example_kwargs=example)
    print(compiled.report)
    print(compiled.report.layers_markdown(changed_only=True))

    held_out = torch.randint(0, config.vocab_size, (4, 32), generator=g)
    with torch.no_grad():
        ref = model(input_ids=held_out, attention_mask=torch.ones_like(held_out)).logits
        out = compiled(input_ids=held_out, attention_mask=torch.ones_like(held_out)).logits
    agreement = float((ref.argmax(-1) == out.argmax(-1)).float().mean())
    print(f"next-token agreement with the unpruned model: {agreement:.1%} (random weights; "
          f"fine-tune with prunec.finetune to recover)")
    heads = [r.after.outputs for r in compiled.report.layers() if r.kind == "attention"]
    return {"heads_after": heads, "macs_ratio": compiled.report.macs_ratio,
            "agreement": agreement}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:] or os.environ.get("PRUNEC_EXAMPLES_TINY") == "1")
