"""Prune a Hugging Face causal LM and get a Hugging Face model back: generate with the KV
cache, fine-tune with the causal-LM loss, save_pretrained, from_pretrained.

The model is a small ``LlamaForCausalLM`` (grouped-query attention: 4 query heads sharing 2
key/value heads), trained here for a moment on the standard library's documentation with byte
tokens so that it has something to lose. ``backend="module"`` writes the plan back into a copy
of it: the result is a ``LlamaForCausalLM`` whose config (``intermediate_size``,
``num_attention_heads``, ``num_key_value_heads``, ``num_hidden_layers``, ``mlp_bias``) says
what its weights are, checked against the pruned program. For a real model use
``AutoModelForCausalLM.from_pretrained(...)`` with ``config.use_cache = False`` for capture,
and real text for calibration.

    python examples/prune_hf_causal_lm.py            # about two minutes on 2 busy CPU cores
    python examples/prune_hf_causal_lm.py --tiny
"""
from __future__ import annotations

import os
import sys
import tempfile

import torch

import prunec
from prunec.passes import DepthPruning, HeadPruning, VarianceBasedPruning
from prunec.train.causal_lm import next_token_loss


def text_batches(count: int, batch: int = 8, length: int = 64) -> list[torch.Tensor]:
    from pydoc_data.topics import topics

    data = torch.tensor(list("\n".join(topics.values()).encode("utf-8")))
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(data) - length, (count, batch), generator=g)
    return [torch.stack([data[s:s + length] for s in row.tolist()]) for row in starts]


def build_and_train(steps: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=192,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, use_cache=False, pad_token_id=0,
                         bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for ids in text_batches(steps):
        loss = next_token_loss(model(ids).logits, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main(tiny: bool = False) -> dict:
    model = build_and_train(5 if tiny else 150)
    calibration = text_batches(2 if tiny else 8)
    passes = [
        # half the MLP width, the same in every layer (one intermediate_size in the config);
        # the means of the removed neurons become down_proj biases (config.mlp_bias = True)
        VarianceBasedPruning(0.5, calibration, targets="mlp", scope="local"),
        # one of the two key/value groups of every layer, with its two query heads
        HeadPruning(0.5, uniform=True, criterion="activation", calibration=calibration),
        # the whole decoder layer that changes the residual stream least
        DepthPruning(1, unit="layer", calibration=calibration, compensate=False),
    ]
    compiled = prunec.compile(model, (calibration[0],), passes, backend="module")
    print(compiled.report)
    pruned = compiled.module  # a LlamaForCausalLM; `model` is untouched
    print({k: getattr(pruned.config, k) for k in ("intermediate_size", "num_attention_heads",
                                                  "num_key_value_heads", "num_hidden_layers",
                                                  "mlp_bias")})

    prunec.finetune(compiled, text_batches(2 if tiny else 40), teacher=model, lr=1e-3,
                    loss="causal_lm", progress=False)
    pruned = compiled.module  # written back again with the fine-tuned weights

    prompt = torch.tensor([list(b"The import statement")])
    with torch.no_grad():
        out = pruned.generate(prompt, max_new_tokens=40, do_sample=False, use_cache=True)
    text = bytes(out[0, prompt.shape[1]:].tolist()).decode("utf-8", "replace")
    print(f"generated: {text!r}")

    with tempfile.TemporaryDirectory() as folder:
        compiled.save(f"{folder}/pruned")  # save_pretrained + plan.json + prunec.json
        reloaded = type(model).from_pretrained(f"{folder}/pruned")
        with torch.no_grad():
            same = torch.equal(reloaded(prompt).logits, pruned(prompt).logits)
    print(f"from_pretrained gives the same logits: {same}")
    return {"same_class": type(pruned) is type(model), "round_trip_equal": same,
            "layers": pruned.config.num_hidden_layers, "generated": out.shape[1] - prompt.shape[1],
            "params": (sum(p.numel() for p in model.parameters()),
                       sum(p.numel() for p in pruned.parameters()))}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:] or os.environ.get("PRUNEC_EXAMPLES_TINY") == "1")
