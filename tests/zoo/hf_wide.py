"""The wide zoo: Hugging Face ``transformers`` architectures from tiny configs, plus torch's
own ``nn.TransformerEncoder``.

Every factory builds its model offline from ``XConfig(...)`` (no download), seeded, in eval
mode, with sizes picked so one forward takes milliseconds: hidden sizes 32-64, two layers
(or one block per stage), images of 32-64 pixels, 16 tokens, a fraction of a second of audio.
Hidden, intermediate and head sizes are multiples of 8 where the config allows, so that
``round_to=8`` leaves room to prune. Attention uses ``attn_implementation="sdpa"`` where the
model offers it; decoders run with ``use_cache=False``.

``WIDE[name]()`` returns a :class:`~tests.zoo.ZooCase`; ``SLOW`` names the cases whose
capture takes the longest (the suite samples those, :mod:`benchmarks.coverage` runs all).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from tests.zoo import ZooCase

__all__ = ["WIDE", "SLOW", "FAMILIES"]

_ATTN = {"attn_implementation": "sdpa"}


def _pixels(size: int = 32, channels: int = 3, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(123))


def _ids(vocab: int = 128, batch: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(123))


def _mask(batch: int = 2, length: int = 16) -> torch.Tensor:
    """Second row padded on its last 4 positions."""
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, -4:] = 0
    return mask


def _build(name: str, cls: str, config_cls: str, config: dict[str, Any], args: tuple,
           kwargs: dict | None = None) -> ZooCase:
    import transformers

    config = getattr(transformers, config_cls)(**config)
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config).eval()
    return ZooCase(name, model, args, kwargs or {}, dict(STATIC_CAPTURE.get(name, {})))


# Capture options per case. SwinV2 and YOLOS (window padding / position embeddings
# interpolated to the image size) and BLOOM (ALiBi slopes) fail with ``Dim.AUTO`` on their
# image or sequence axes: they go through capture's retry ladder here (batch axis dynamic,
# other axes static; noted in ``capture_notes``). Swin captures fully dynamic, but its
# symbolic rewrite and checks take about 10x longer than with static sizes, so the zoo runs
# it static.
STATIC_CAPTURE: dict[str, dict] = {
    "hf_swin": {"dynamic": False},
}


# --------------------------------------------------------------------------- vision
def _vit_like(**extra) -> dict:
    return dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                image_size=32, patch_size=8, num_labels=10, **extra)


VISION_SPECS: dict[str, tuple] = {
    "hf_swin": ("SwinForImageClassification", "SwinConfig", dict(
        image_size=32, patch_size=2, embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4,
        mlp_ratio=2.0, num_labels=10), (_pixels(32),)),
    "hf_swinv2": ("Swinv2ForImageClassification", "Swinv2Config", dict(
        image_size=32, patch_size=2, embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4,
        mlp_ratio=2.0, num_labels=10), (_pixels(32),)),
    "hf_segformer": ("SegformerForImageClassification", "SegformerConfig", dict(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[32, 64],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[2, 4], mlp_ratios=[2, 2],
        num_labels=10), (_pixels(32),)),
    "hf_mobilevit": ("MobileViTForImageClassification", "MobileViTConfig", dict(
        image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[16, 16, 24, 24, 32, 32, 64],
        num_attention_heads=4, num_labels=10), (_pixels(64),)),
    "hf_mobilevitv2": ("MobileViTV2ForImageClassification", "MobileViTV2Config", dict(
        image_size=64, width_multiplier=0.25, num_labels=10), (_pixels(64),)),
    "hf_levit": ("LevitForImageClassification", "LevitConfig", dict(
        image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
        key_dim=[8, 8, 8], num_labels=10), (_pixels(64),)),
    "hf_efficientnet": ("EfficientNetForImageClassification", "EfficientNetConfig", dict(
        image_size=32, width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320,
        num_labels=10), (_pixels(32),)),
    "hf_regnet": ("RegNetForImageClassification", "RegNetConfig", dict(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], groups_width=8,
        num_labels=10), (_pixels(32),)),
    "hf_mobilenet_v1": ("MobileNetV1ForImageClassification", "MobileNetV1Config", dict(
        image_size=32, depth_multiplier=0.25, num_labels=10), (_pixels(32),)),
    "hf_mobilenet_v2": ("MobileNetV2ForImageClassification", "MobileNetV2Config", dict(
        image_size=32, depth_multiplier=0.35, num_labels=10), (_pixels(32),)),
    "hf_poolformer": ("PoolFormerForImageClassification", "PoolFormerConfig", dict(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10), (_pixels(32),)),
    "hf_beit": ("BeitForImageClassification", "BeitConfig", dict(
        _vit_like(use_relative_position_bias=True)), (_pixels(32),)),
    "hf_data2vec_vision": ("Data2VecVisionForImageClassification", "Data2VecVisionConfig", dict(
        _vit_like(use_mean_pooling=True)), (_pixels(32),)),
    "hf_dinov2": ("Dinov2ForImageClassification", "Dinov2Config", dict(
        _vit_like(mlp_ratio=2)), (_pixels(32),)),
    "hf_convnextv2": ("ConvNextV2ForImageClassification", "ConvNextV2Config", dict(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], image_size=32, num_labels=10),
        (_pixels(32),)),
    "hf_yolos": ("YolosForObjectDetection", "YolosConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=[32, 32], patch_size=8, num_detection_tokens=8, num_labels=10, **_ATTN),
        (_pixels(32),)),
    "hf_clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8, **_ATTN), (_pixels(32),)),
    "hf_siglip_vision": ("SiglipVisionModel", "SiglipVisionConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8, **_ATTN), (_pixels(32),)),
    "hf_pvt_v2": ("PvtV2ForImageClassification", "PvtV2Config", dict(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[32, 64],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[2, 4], mlp_ratios=[2, 2],
        num_labels=10), (_pixels(32),)),
    "hf_bit": ("BitForImageClassification", "BitConfig", dict(
        embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], num_groups=8,
        num_labels=10), (_pixels(32),)),
    "hf_focalnet": ("FocalNetForImageClassification", "FocalNetConfig", dict(
        image_size=32, patch_size=4, embed_dim=32, depths=[1, 1], focal_levels=[2, 2],
        focal_windows=[3, 3], num_labels=10), (_pixels(32),)),
    "hf_cvt": ("CvtForImageClassification", "CvtConfig", dict(
        embed_dim=[16, 32, 64], num_heads=[1, 2, 4], depth=[1, 2, 3], drop_path_rate=[0.0] * 3,
        num_labels=10), (_pixels(32),)),
}

# --------------------------------------------------------------------------- text encoders
_BERTISH = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=64, num_labels=3)

TEXT_SPECS: dict[str, tuple] = {
    "hf_roberta": ("RobertaForSequenceClassification", "RobertaConfig", dict(
        _BERTISH, pad_token_id=1, **_ATTN), True),
    "hf_xlm_roberta": ("XLMRobertaForSequenceClassification", "XLMRobertaConfig", dict(
        _BERTISH, pad_token_id=1, **_ATTN), True),
    "hf_electra": ("ElectraForSequenceClassification", "ElectraConfig", dict(
        _BERTISH, embedding_size=32, **_ATTN), True),
    "hf_albert": ("AlbertForSequenceClassification", "AlbertConfig", dict(
        _BERTISH, embedding_size=32, **_ATTN), True),
    "hf_deberta_v2": ("DebertaV2ForSequenceClassification", "DebertaV2Config", dict(
        _BERTISH, relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"]), True),
    "hf_distilbert": ("DistilBertForSequenceClassification", "DistilBertConfig", dict(
        vocab_size=128, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64,
        num_labels=3, **_ATTN), True),
    "hf_mpnet": ("MPNetForSequenceClassification", "MPNetConfig", dict(_BERTISH), True),
    "hf_convbert": ("ConvBertForSequenceClassification", "ConvBertConfig", dict(
        _BERTISH, embedding_size=64, head_ratio=2, conv_kernel_size=3), True),
    "hf_clip_text": ("CLIPTextModel", "CLIPTextConfig", dict(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, **_ATTN), False),
    "hf_t5_encoder": ("T5EncoderModel", "T5Config", dict(
        vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", **_ATTN), True),
    "hf_bart": ("BartModel", "BartConfig", dict(
        vocab_size=128, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_position_embeddings=64, use_cache=False, **_ATTN), True),
}

# --------------------------------------------------------------------------- decoders
_DECODER = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, use_cache=False, **_ATTN)

DECODER_SPECS: dict[str, tuple] = {
    "hf_gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(
        vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=64,
        use_cache=False, **_ATTN)),
    "hf_gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(_DECODER, rotary_pct=0.5)),
    "hf_gptj": ("GPTJForCausalLM", "GPTJConfig", dict(
        vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=64,
        rotary_dim=8, use_cache=False, attn_implementation="eager")),
    "hf_opt": ("OPTForCausalLM", "OPTConfig", dict(
        vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=64, use_cache=False, **_ATTN)),
    "hf_bloom": ("BloomForCausalLM", "BloomConfig", dict(
        vocab_size=128, hidden_size=64, n_layer=2, n_head=4, use_cache=False)),
    "hf_falcon": ("FalconForCausalLM", "FalconConfig", dict(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        new_decoder_architecture=True, num_kv_heads=2, use_cache=False, **_ATTN)),
    "hf_phi": ("PhiForCausalLM", "PhiConfig", dict(_DECODER, partial_rotary_factor=0.5)),
    "hf_phi3": ("Phi3ForCausalLM", "Phi3Config", dict(_DECODER, num_key_value_heads=2,
                                                      pad_token_id=0)),
    "hf_gemma": ("GemmaForCausalLM", "GemmaConfig", dict(_DECODER, num_key_value_heads=2,
                                                         head_dim=16)),
    "hf_gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(
        _DECODER, num_key_value_heads=2, head_dim=16, sliding_window=8,
        attn_implementation="eager")),
    "hf_mistral": ("MistralForCausalLM", "MistralConfig", dict(_DECODER, num_key_value_heads=2,
                                                               head_dim=16)),
    "hf_qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(_DECODER, num_key_value_heads=2)),
    "hf_qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(_DECODER, num_key_value_heads=2,
                                                         head_dim=16)),
    "hf_stablelm": ("StableLmForCausalLM", "StableLmConfig", dict(_DECODER, num_key_value_heads=2)),
    "hf_starcoder2": ("Starcoder2ForCausalLM", "Starcoder2Config", dict(_DECODER,
                                                                         num_key_value_heads=2)),
    "hf_olmo": ("OlmoForCausalLM", "OlmoConfig", dict(_DECODER, num_key_value_heads=2)),
    "hf_granite": ("GraniteForCausalLM", "GraniteConfig", dict(_DECODER, num_key_value_heads=2)),
    # MoE experts run as ``batched_mm`` (a plain ``bmm`` over gathered expert weights): the
    # default ``grouped_mm`` goes through the opaque custom op transformers::grouped_mm_fallback,
    # which has no coupling rule (its experts stay kept) and no MAC count.
    "hf_mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(
        _DECODER, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        experts_implementation="batched_mm")),
    "hf_qwen2_moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(
        _DECODER, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=64, shared_expert_intermediate_size=64,
        experts_implementation="batched_mm")),
}


# --------------------------------------------------------------------------- audio
def whisper_case() -> ZooCase:
    """WhisperForAudioClassification (the encoder): 16 mel bins x 32 frames."""
    config = dict(vocab_size=128, num_mel_bins=16, d_model=64, encoder_layers=2,
                  encoder_attention_heads=4, encoder_ffn_dim=128, max_source_positions=16,
                  decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128, num_labels=3,
                  **_ATTN)
    feats = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(123))
    return _build("hf_whisper_encoder", "WhisperForAudioClassification", "WhisperConfig", config,
                  (feats,))


def _wav2vec2_like(name: str, cls: str, config_cls: str) -> ZooCase:
    config = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_labels=3,
                  **_ATTN)
    audio = torch.randn(2, 800, generator=torch.Generator().manual_seed(123))
    return _build(name, cls, config_cls, config, (audio,))


def torch_encoder_case() -> ZooCase:
    """torch's ``nn.TransformerEncoder`` (packed ``in_proj`` multi-head attention)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(123))
    return ZooCase("torch_transformer_encoder", model, (x,))


def vit_mae_case() -> ZooCase:
    """ViTMAEModel with a fixed ``noise`` input (its token shuffle is otherwise random)."""
    case = _build("hf_vit_mae", "ViTMAEModel", "ViTMAEConfig", _vit_like(mask_ratio=0.5, **_ATTN),
                  (_pixels(32),))
    case.kwargs = {"noise": torch.rand(2, 16, generator=torch.Generator().manual_seed(7))}
    return case


def _vision_factory(name: str) -> Callable[[], ZooCase]:
    cls, config_cls, config, args = VISION_SPECS[name]
    return lambda: _build(name, cls, config_cls, config, args)


def _text_factory(name: str) -> Callable[[], ZooCase]:
    cls, config_cls, config, with_mask = TEXT_SPECS[name]
    kwargs = {"attention_mask": _mask()} if with_mask else {}
    return lambda: _build(name, cls, config_cls, config, (_ids(),), kwargs)


def _decoder_factory(name: str) -> Callable[[], ZooCase]:
    cls, config_cls, config = DECODER_SPECS[name]
    return lambda: _build(name, cls, config_cls, config, (_ids(),), {"attention_mask": _mask()})


WIDE: dict[str, Callable[[], ZooCase]] = {
    **{n: _vision_factory(n) for n in VISION_SPECS},
    "hf_vit_mae": vit_mae_case,
    **{n: _text_factory(n) for n in TEXT_SPECS},
    **{n: _decoder_factory(n) for n in DECODER_SPECS},
    "hf_whisper_encoder": whisper_case,
    "hf_wav2vec2": lambda: _wav2vec2_like("hf_wav2vec2", "Wav2Vec2ForSequenceClassification",
                                          "Wav2Vec2Config"),
    "hf_hubert": lambda: _wav2vec2_like("hf_hubert", "HubertForSequenceClassification",
                                        "HubertConfig"),
    "torch_transformer_encoder": torch_encoder_case,
}

FAMILIES: dict[str, str] = {
    **{n: "vision" for n in VISION_SPECS}, "hf_vit_mae": "vision",
    **{n: "text encoder" for n in TEXT_SPECS}, **{n: "decoder" for n in DECODER_SPECS},
    "hf_whisper_encoder": "audio", "hf_wav2vec2": "audio", "hf_hubert": "audio",
    "torch_transformer_encoder": "text encoder",
}
FAMILIES.update({n: "decoder (MoE)" for n in ("hf_mixtral", "hf_qwen2_moe")})

# The longest checks (40-220 s each with -n 2 on a 2-core machine at load 10): the suite runs a
# rotating third of them; benchmarks/coverage.py runs them all.
SLOW: set[str] = {"hf_cvt", "hf_mobilevit", "hf_mobilevitv2", "hf_levit", "hf_pvt_v2", "hf_beit",
                  "hf_mobilenet_v2", "hf_focalnet", "hf_deberta_v2", "hf_mobilenet_v1"}
