"""Hugging Face write-back: the config describes the pruned weights; generate() with the
KV cache, save_pretrained / from_pretrained round trips; clear errors for what a config
cannot describe."""
from __future__ import annotations

import pytest
import torch

import prunec
from prunec.backends.hf import load_pretrained
from prunec.errors import PlanError
from prunec.passes import MagnitudePruning, VarianceBasedPruning
from prunec.rewrite import PruningPlan
from tests.helpers import max_diff, state_equal

transformers = pytest.importorskip("transformers")

VOCAB = 64


def _llama(layers: int = 2):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        use_cache=False)
    return transformers.LlamaForCausalLM(config).eval()


def _qwen2():
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        use_cache=False)
    return transformers.Qwen2ForCausalLM(config).eval()


def _ids(batch: int = 2, length: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _compile(model, passes=(), **kw):
    return prunec.compile(model, (_ids(),), passes, backend="module", **kw)


def _generates_with_cache(model) -> None:
    prompt = _ids(1, 4, seed=1)
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True,
                                pad_token_id=0)
        plain = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False,
                               pad_token_id=0)
    assert cached.shape == (1, 10)
    assert torch.equal(cached, plain)  # the cache (sized from the config) changes nothing


def _round_trip(compiled, tmp_path) -> torch.nn.Module:
    out = compiled.save(tmp_path / "pruned")
    reloaded = type(compiled.module).from_pretrained(out)
    assert isinstance(load_pretrained(out), type(compiled.module))
    assert type(prunec.load(out).module) is type(compiled.module)
    with torch.no_grad():
        assert torch.equal(reloaded(_ids()).logits, compiled.module(_ids()).logits)
    return reloaded


def test_llama_gqa_heads_hidden_and_mlp_local(tmp_path):
    model = _llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = _compile(model, [MagnitudePruning(0.5, scope="local")])
    pruned = compiled.module
    assert type(pruned) is type(model)
    assert state_equal(model.state_dict(), before) and model.config.hidden_size == 32
    config = pruned.config
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads,
            config.hidden_size, config.head_dim) == (24, 2, 1, 16, 8)
    assert pruned.model.layers[1].self_attn.num_key_value_groups == 2
    with torch.no_grad():
        assert max_diff(pruned(_ids()), compiled.program.gm(_ids())) < 1e-5
    _generates_with_cache(pruned)
    _round_trip(compiled, tmp_path)


def test_vbp_turns_on_mlp_bias_with_zero_biases_elsewhere(tmp_path):
    model = _llama()
    calib = [_ids(seed=s) for s in range(2)]
    compiled = _compile(model, [VarianceBasedPruning(0.5, calib, targets="mlp", scope="local")])
    pruned = compiled.module
    assert pruned.config.mlp_bias is True and model.config.mlp_bias is False
    mlp = pruned.model.layers[0].mlp
    assert torch.count_nonzero(mlp.down_proj.bias) > 0
    assert torch.count_nonzero(mlp.gate_proj.bias) == torch.count_nonzero(mlp.up_proj.bias) == 0
    _generates_with_cache(pruned)
    _round_trip(compiled, tmp_path)


def test_uneven_widths_are_an_error_naming_the_field_and_scope_local():
    model = _llama()
    keys = [f"model.layers.{i}.mlp.gate_proj.weight:0" for i in range(2)]
    plan = PruningPlan({keys[0]: list(range(16)), keys[1]: list(range(32))})
    with pytest.raises(PlanError, match="intermediate_size.*scope='local'"):
        prunec.compile(model, (_ids(),), plans=[plan], backend="module")


def test_qwen2_compensation_has_no_bias_field_and_heads_keep_head_dim(tmp_path):
    calib = [_ids(seed=s) for s in range(2)]
    with pytest.raises(PlanError, match="mlp_bias.*compensate=False"):
        _compile(_qwen2(), [VarianceBasedPruning(0.5, calib, targets="mlp", scope="local")])
    compiled = _compile(_qwen2(), [MagnitudePruning(0.5, scope="local")])
    assert compiled.module.config.head_dim == 8  # Qwen2 reads it through getattr
    _generates_with_cache(compiled.module)
    reloaded = _round_trip(compiled, tmp_path)
    assert reloaded.model.layers[0].self_attn.head_dim == 8


def test_gpt2_mlp_is_a_candidate_and_conv1d_writes_back(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=64, use_cache=False, bos_token_id=0,
                                     eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    compiled = _compile(model, [MagnitudePruning(0.5, targets="mlp", scope="local")])
    pruned = compiled.module
    assert pruned.config.n_inner == 64 and pruned.transformer.h[0].mlp.c_fc.nf == 64
    _generates_with_cache(pruned)
    _round_trip(compiled, tmp_path)
    with pytest.raises(PlanError, match="hidden_size / num_attention_heads"):
        _compile(model, [MagnitudePruning(0.5, scope="local")])


def test_bert_mlp_round_trip(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=64)
    model = transformers.BertModel(config).eval()
    compiled = _compile(model, [MagnitudePruning(0.5, targets="mlp", scope="local")])
    assert compiled.module.config.intermediate_size == 24
    out = compiled.save(tmp_path / "bert")
    reloaded = transformers.BertModel.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(reloaded(_ids()).last_hidden_state,
                           compiled.module(_ids()).last_hidden_state)


def test_a_model_with_its_kv_cache_on_is_captured_without_it(tmp_path):
    """use_cache=True in the config (the default of every causal LM): capture passes
    use_cache=False (a cache is no tensor output), says so, and leaves the config alone; a
    call may leave use_cache out, calibration batches too; generate() keeps its cache."""
    model = _llama()
    model.config.use_cache = True
    batches = [{"input_ids": _ids(seed=s), "attention_mask": torch.ones(2, 10, dtype=torch.long)}
               for s in (3, 4)]
    vbp = VarianceBasedPruning(0.5, batches, targets="mlp", scope="local",
                               mask="attention_mask", round_to=8)
    compiled = prunec.compile(model, (), [vbp], example_kwargs=batches[0])
    assert model.config.use_cache is True
    assert any("use_cache=False" in note for note in compiled.program.capture_notes)
    with torch.no_grad():
        out = compiled(**batches[1])  # no use_cache: the captured constant fills in
        reference = compiled.program.run(**batches[1], use_cache=False)
    assert torch.equal(out.logits, reference.logits)
    with torch.no_grad():  # the program itself, and the ONNX Runtime artifact, alike
        assert torch.equal(compiled.program.run(**batches[1]).logits, reference.logits)
    with pytest.raises(prunec.errors.InvalidArgumentError, match="specialised"):
        compiled(**batches[1], use_cache=True)
    module = prunec.compile(model, (_ids(),), [MagnitudePruning(0.5, targets="mlp",
                                                                scope="local")],
                            backend="module").module
    assert module.config.use_cache is True
    _generates_with_cache(module)


def test_an_output_torch_cannot_flatten_names_the_class():
    """Outside Hugging Face configs, a forward returning a Cache object is still a clear
    CaptureError saying what to do."""
    from transformers.cache_utils import DynamicCache

    class ReturnsCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x), DynamicCache()

    with pytest.raises(prunec.errors.CaptureError, match="DynamicCache.*register"):
        prunec.compile(ReturnsCache().eval(), (torch.randn(2, 4),))


def _family(name: str):
    """A tiny causal LM of ``name`` with its default config (KV cache on)."""
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    gqa = dict(num_key_value_heads=2, intermediate_size=48)
    configs = {
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, gqa),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
                  dict(gqa, head_dim=8)),
        "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                    dict(gqa, num_local_experts=2, num_experts_per_tok=1)),
        "gpt_neox": (transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM,
                     dict(intermediate_size=48)),
        "opt": (transformers.OPTConfig, transformers.OPTForCausalLM,
                dict(ffn_dim=48, word_embed_proj_dim=32)),
    }
    config_cls, model_cls, extra = configs[name]
    return model_cls(config_cls(**common, **extra)).eval()


@pytest.mark.parametrize("name, field", [("phi3", "intermediate_size"),
                                         ("gpt_neox", "intermediate_size"),
                                         ("opt", "ffn_dim")])
def test_mlp_width_of_more_decoder_families(name, field, tmp_path):
    """Phi-3's fused gate_up_proj, GPT-NeoX's dense_4h_to_h and OPT's fc2: the config field
    the family reads says the pruned width; generate() with the cache; save/load."""
    model = _family(name)
    compiled = _compile(model, [MagnitudePruning(0.5, targets="mlp", scope="local")])
    module = compiled.module
    assert getattr(module.config, field) == 24 and getattr(model.config, field) == 48
    _generates_with_cache(module)
    _round_trip(compiled, tmp_path)


@pytest.mark.parametrize("name", ["phi3", "qwen3", "mixtral"])
def test_heads_of_more_decoder_families(name, tmp_path):
    """Key/value groups pruned with their query heads: Phi-3's fused qkv_proj (queries, keys,
    values), Qwen3's per-head norms, Mixtral's attention beside its experts."""
    from prunec.passes import HeadPruning

    model = _family(name)
    compiled = _compile(model, [HeadPruning(0.5, uniform=True)])
    config = compiled.module.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 1)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    _generates_with_cache(compiled.module)
    _round_trip(compiled, tmp_path)


def test_heads_of_a_family_that_derives_the_head_width_are_refused():
    from prunec.passes import HeadPruning

    with pytest.raises(PlanError, match="GPTNeoXConfig.*hidden_size / num_attention_heads"):
        _compile(_family("gpt_neox"), [HeadPruning(0.5, uniform=True)])


def test_vit_mlp_width_round_trip(tmp_path):
    """ViT (transformers 5 names: ``attention.q_proj``, ``mlp.fc1``/``fc2``, a patch
    embedding convolution): intermediate_size follows the MLPs; from_pretrained reloads it."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, image_size=16, patch_size=8,
                                    num_labels=3)
    model = transformers.ViTForImageClassification(config).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    compiled = prunec.compile(model, (x,), [MagnitudePruning(0.5, targets="mlp",
                                                             scope="local")], backend="module")
    assert compiled.module.config.intermediate_size == 32 and model.config.intermediate_size == 64
    out = compiled.save(tmp_path / "vit")
    reloaded = transformers.ViTForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, compiled.module(x).logits)
