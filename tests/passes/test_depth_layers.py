"""DepthPruning(unit="layer"): whole decoder layers (attention + MLP) go together."""
from __future__ import annotations

import pytest
import torch

import prunec
from prunec.errors import PlanError
from prunec.passes import DepthPruning
from tests.helpers import max_diff

transformers = pytest.importorskip("transformers")


def _qwen2(layers: int = 3):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        use_cache=False)
    return transformers.Qwen2ForCausalLM(config).eval()


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(seed))


def test_cosine_drops_the_identity_layer_and_the_module_renumbers(tmp_path):
    model = _qwen2()
    with torch.no_grad():  # layer 1 writes nothing into the residual stream
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    calib = [_ids(s) for s in range(2)]
    compiled = prunec.compile(model, (_ids(),), [DepthPruning(
        1, unit="layer", calibration=calib, compensate=False)], backend="module")
    entry = compiled.report.passes[0]
    assert entry["dropped_layers"] == ["model.layers.1"] and len(entry["dropped_keys"]) == 2
    pruned = compiled.module
    assert len(pruned.model.layers) == 2 and len(model.model.layers) == 3
    assert pruned.config.num_hidden_layers == 2 and len(pruned.config.layer_types) == 2
    assert [l.self_attn.layer_idx for l in pruned.model.layers] == [0, 1]
    with torch.no_grad():
        assert max_diff(pruned(_ids(1)).logits, model(_ids(1)).logits) < 1e-5
        prompt = _ids(2)[:1, :4]
        cached = pruned.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True,
                                 pad_token_id=0)
        plain = pruned.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False,
                                pad_token_id=0)
    assert torch.equal(cached, plain)
    out = compiled.save(tmp_path / "short")
    reloaded = type(model).from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(reloaded(_ids()).logits, pruned(_ids()).logits)


def test_second_run_is_a_no_op_and_counts_layers():
    compiled = prunec.compile(_qwen2(), (_ids(),), [
        DepthPruning(1, unit="layer", criterion="magnitude", compensate=False),
        DepthPruning(1, unit="layer", criterion="magnitude", compensate=False)])
    assert [p["modified"] for p in compiled.report.passes] == [True, False]


def test_kl_with_means_verifies_in_the_graph_and_the_module_says_compensate_false():
    calib = [_ids(s) for s in range(2)]
    compiled = prunec.compile(_qwen2(2), (_ids(),), [DepthPruning(
        1, unit="layer", criterion="kl", calibration=calib)])
    assert "mean equivalence" in compiled.report.passes[0]["verified"]
    with pytest.raises(PlanError, match="compensate=False"):
        prunec.compile(_qwen2(2), (_ids(),), plans=compiled.plans, backend="module")


def test_unit_is_checked():
    with pytest.raises(prunec.PrunecError, match="unit"):
        DepthPruning(1, unit="stage", criterion="magnitude", compensate=False)
