"""finetune(..., loss="causal_lm"): shifted next-token cross-entropy over real tokens plus
distillation from the teacher's logits."""
from __future__ import annotations

import pytest
import torch

import prunec
from prunec.errors import PrunecError
from prunec.passes import MagnitudePruning
from prunec.train.causal_lm import IGNORE, causal_lm_batch, masked_distillation, next_token_loss

transformers = pytest.importorskip("transformers")


def _llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        use_cache=False)
    return transformers.LlamaForCausalLM(config).eval()


def _ids(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (batch, 12), generator=torch.Generator().manual_seed(seed))


def test_next_token_loss_is_the_models_own_and_padding_is_ignored():
    model = _llama()
    ids = _ids()
    with torch.no_grad():
        out = model(ids, labels=ids)
        assert torch.allclose(next_token_loss(out.logits, ids), out.loss, atol=1e-5)
        mask = torch.ones_like(ids)
        mask[:, 8:] = 0  # right padding: only the first 8 tokens count
        _, labels = causal_lm_batch({"input_ids": ids, "attention_mask": mask})
        assert (labels[:, 8:] == IGNORE).all()
        short = model(ids[:, :8], labels=ids[:, :8]).loss
        assert torch.allclose(next_token_loss(out.logits, labels), short, atol=1e-5)
        teacher = out.logits + torch.randn_like(out.logits)
        teacher[:, 8:] = out.logits[:, 8:] + 100.0  # padded rows must not count
        d_pad = masked_distillation(out.logits, teacher, labels, 1.0)
        d_short = masked_distillation(out.logits[:, :8], teacher[:, :8], ids[:, :8], 1.0)
        assert torch.allclose(d_pad, d_short)


def test_finetune_causal_lm_trains_the_pruned_module_and_keeps_the_teacher():
    model = _llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = prunec.compile(model, (_ids(2),), [MagnitudePruning(0.5, targets="mlp",
                                                                     scope="local")],
                              backend="module")
    old = compiled.module
    batches = [_ids(seed=s) for s in range(6)]
    _, history = prunec.finetune(compiled, batches, epochs=2, teacher=model, lr=5e-3,
                                 loss="causal_lm", progress=False)
    assert history[-1]["task"] < history[0]["task"] and history[-1]["kl"] >= 0
    new = compiled.module  # the write-back follows the trained program
    assert new is not old and type(new) is type(model)
    assert not torch.equal(new.model.layers[0].mlp.up_proj.weight,
                           old.model.layers[0].mlp.up_proj.weight)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_token_labels_under_the_default_loss_say_causal_lm():
    model = _llama()
    compiled = prunec.compile(model, (_ids(2),), [])
    with pytest.raises(PrunecError, match="loss='causal_lm'"):
        prunec.finetune(compiled, [(_ids(), _ids())], teacher=model, progress=False)
    with pytest.raises(prunec.errors.InvalidArgumentError, match="loss"):
        prunec.finetune(compiled, [_ids()], teacher=model, loss="mse", progress=False)
