"""Hugging Face ``transformers`` models of the test zoo, from small configs (no downloads).

Sizes are chosen for pruning with ``round_to=8``: hidden 64 = 4 heads x 16, intermediate 256
(BERT, ViT, DeiT); Llama has 4 query heads and 2 key/value heads of 16 (grouped-query
attention), hidden 64 and intermediate 128; ConvNeXt and ResNet have stage widths 16 ... 256.
Attention uses ``attn_implementation="sdpa"``, so graphs hold
``aten.scaled_dot_product_attention``.

Outputs are ``ModelOutput`` dataclasses; ``transformers`` registers them as pytree nodes, so
``torch.export`` captures them as they are and the captured program returns the same class.
No factory needed an export workaround with transformers 5.x and torch 2.13; Llama only
needs ``use_cache=False`` (no ``DynamicCache`` object in the outputs).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from tests.zoo import ZooCase

__all__ = ["TRANSFORMERS"]

_ATTN = {"attn_implementation": "sdpa"}


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build().eval()


def _pixels(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(123))


def _tokens(vocab: int, batch: int = 2, length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and an attention mask whose second row has 4 padding positions."""
    gen = torch.Generator().manual_seed(123)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, -4:] = 0
    return ids, mask


def _vit_kwargs() -> dict[str, Any]:
    return dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=256, image_size=32, patch_size=8, num_labels=10, **_ATTN)


def vit_case() -> ZooCase:
    """ViTForImageClassification: 2 layers, hidden 64, 4 heads, 17 tokens of 32x32 / 8."""
    from transformers import ViTConfig, ViTForImageClassification

    model = _seeded(lambda: ViTForImageClassification(ViTConfig(**_vit_kwargs())))
    return ZooCase("hf_vit", model, (_pixels(),))


def deit_case() -> ZooCase:
    """DeiTForImageClassification (CLS + distillation token): same sizes as ``hf_vit``."""
    from transformers import DeiTConfig, DeiTForImageClassification

    model = _seeded(lambda: DeiTForImageClassification(DeiTConfig(**_vit_kwargs())))
    return ZooCase("hf_deit", model, (_pixels(),))


def bert_case() -> ZooCase:
    """BertForSequenceClassification with a padded ``attention_mask`` keyword."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=256,
                        max_position_embeddings=64, num_labels=3, **_ATTN)
    model = _seeded(lambda: BertForSequenceClassification(config))
    ids, mask = _tokens(config.vocab_size)
    return ZooCase("hf_bert", model, (ids,), {"attention_mask": mask})


def convnext_case() -> ZooCase:
    """ConvNextForImageClassification: 4 stages (16/32/64/128, depths 1/1/2/1)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1],
                            image_size=32, num_labels=10)
    model = _seeded(lambda: ConvNextForImageClassification(config))
    return ZooCase("hf_convnext", model, (_pixels(),))


def resnet_case() -> ZooCase:
    """ResNetForImageClassification: bottleneck stages 32/64/128/256, one block each."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256],
                          depths=[1, 1, 1, 1], layer_type="bottleneck", num_labels=10)
    model = _seeded(lambda: ResNetForImageClassification(config))
    return ZooCase("hf_resnet", model, (_pixels(),))


def llama_case() -> ZooCase:
    """LlamaForCausalLM with grouped-query attention (4 query / 2 key-value heads of 16)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=64, use_cache=False, **_ATTN)
    model = _seeded(lambda: LlamaForCausalLM(config))
    ids, mask = _tokens(config.vocab_size)
    return ZooCase("hf_llama", model, (ids,), {"attention_mask": mask})


TRANSFORMERS: dict[str, Callable[[], ZooCase]] = {
    "hf_vit": vit_case,
    "hf_deit": deit_case,
    "hf_bert": bert_case,
    "hf_convnext": convnext_case,
    "hf_resnet": resnet_case,
    "hf_llama": llama_case,
}
