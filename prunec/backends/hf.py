"""Hugging Face write-back: the config says what the pruned weights are.

After :mod:`prunec.backends.module` wrote a plan back into a copy of a ``transformers``
``PreTrainedModel``, :func:`update_config` sets the config fields the family reads, so that
``generate()`` (its KV cache is sized from the config), ``save_pretrained`` and
``from_pretrained`` work on the pruned model:

| family (detected by structure) | widths | heads | layers | biases |
|---|---|---|---|---|
| Decoders: Llama, Mistral, Qwen2/3, Gemma, Olmo2, Mixtral (attention only), Phi-3 (fused ``qkv_proj``, ``gate_up_proj``); GPT-NeoX, OPT and ViT/DeiT (MLP; their head width is derived, so heads are refused) | ``intermediate_size`` (OPT: ``ffn_dim``) | ``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` | ``num_hidden_layers``, ``layer_types``, ``layer_idx`` renumbered | ``mlp_bias``, ``attention_bias`` (zero biases elsewhere) |
| GPT-2 (``h[i].mlp.c_fc``) | ``n_inner`` | ``n_head`` only with ``n_embd / n_head`` unchanged | ``n_layer`` | Conv1D always has one |
| BERT-like encoders (``encoder.layer[i].intermediate.dense``) | ``intermediate_size`` | as GPT-2 | ``num_hidden_layers`` | Linear layers have one |

``hidden_size`` follows the embedding width. Every family then passes one check: a fresh
model built from the new config (on the ``meta`` device, no memory) must have exactly the
pruned model's tensor shapes, and the config must survive ``to_dict`` / ``from_dict`` (the
family's own validation, e.g. Llama's ``hidden_size % num_attention_heads == 0``).
A plan the config cannot describe (layers of different widths, a bias where the family has
no bias field, head counts the family derives from ``hidden_size``) is a
:class:`~prunec.errors.PlanError` naming the field and the way to get a plan it can describe
(``scope="local"``, ``HeadPruning(..., uniform=True)``, ``compensate=False``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunec.errors import PlanError, PrunecError

__all__ = ["update_config", "save_pretrained", "load_pretrained", "decoder_layers"]


def _get(root: nn.Module, path: str) -> Any:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _layers(model: nn.Module) -> tuple[str, nn.ModuleList] | tuple[None, None]:
    base = getattr(model, "base_model", model)
    prefix = model.base_model_prefix if base is not model else ""
    for rel in ("layers", "h", "encoder.layer", "decoder.layers", "layer"):
        found = _get(base, rel)
        if isinstance(found, nn.ModuleList):
            return (f"{prefix}.{rel}" if prefix else rel), found
    return None, None


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | tuple[None, None]:
    """``(module path, ModuleList)`` of a Hugging Face model's repeated layers, if found."""
    return _layers(model)


def _family(layers: nn.ModuleList) -> str:
    first = layers[0] if len(layers) else None
    if first is None:
        return "unknown"
    if _get(first, "mlp.c_fc") is not None and _get(first, "attn.c_attn") is not None:
        return "gpt2"
    if _get(first, "intermediate.dense") is not None and _get(first, "attention.self.query") is not None:
        return "bert"
    if _attention_kind(first) is not None or _mlp_kind(first) is not None:
        return "decoder"
    return "unknown"


# A decoder layer's attention: (module, query or fused qkv, key, output projection).
# Llama, Mistral, Qwen2/3, Gemma, Olmo2, Mixtral...: separate q/k/v and o_proj; Phi-3: one
# fused qkv_proj (queries, then keys, then values); OPT: out_proj; ViT/DeiT (transformers
# 5: ``attention.q_proj``, ``mlp.fc1``/``fc2``); GPT-NeoX: a fused query_key_value
# interleaved per head and dense.
_ATTENTION_KINDS = (("self_attn", "q_proj", "k_proj", "o_proj"),
                    ("self_attn", "qkv_proj", None, "o_proj"),
                    ("self_attn", "q_proj", "k_proj", "out_proj"),
                    ("attention", "q_proj", "k_proj", "o_proj"),
                    ("attention", "query_key_value", None, "dense"))
# A decoder layer's MLP: its down projection (whose input width is the MLP's) and the config
# field that names that width.
_MLP_KINDS = (("mlp.down_proj", "intermediate_size"), ("mlp.dense_4h_to_h", "intermediate_size"),
              ("mlp.fc2", "intermediate_size"), ("fc2", "ffn_dim"))


def _attention_kind(layer: nn.Module) -> tuple | None:
    for kind in _ATTENTION_KINDS:
        attn, query, key, out = kind
        if all(isinstance(_get(layer, f"{attn}.{n}"), nn.Linear) for n in (query, key, out) if n):
            return kind
    return None


def _mlp_kind(layer: nn.Module) -> tuple | None:
    for kind in _MLP_KINDS:
        if isinstance(_get(layer, kind[0]), nn.Linear):
            return kind
    return None


def _uniform(values: list[int], field: str, config, what: str, fix: str) -> int:
    distinct = sorted(set(values))
    if len(distinct) > 1:
        raise PlanError(
            f"the plan gives {what} different sizes per layer ({values}); "
            f"{type(config).__name__} has one '{field}' for all layers, so the pruned model "
            f"cannot be described by its config. {fix}")
    return distinct[0]


_WIDTH_FIX = ("Prune with scope='local' (every layer loses the same count), or use "
              "backend='torch' / backend='module' on a model without a config.")
_HEAD_FIX = "Prune heads with HeadPruning(..., uniform=True) or scope='local'."


def update_config(model: nn.Module, structure: dict) -> dict:
    """Make ``model.config`` describe ``model``'s pruned weights; returns the changed fields.

    Raises:
        PlanError: a plan the family's config cannot describe (see the module docstring).
    """
    config = model.config
    before = config.to_dict()
    path, layers = _layers(model)
    family = _family(layers) if layers is not None else "unknown"
    removed = [e for e in structure.get("removed", []) if e["list"] == path]
    if family == "decoder":
        _decoder(model, config, path, layers, structure)
    elif family == "gpt2":
        _gpt2(model, config, layers)
    elif family == "bert":
        _bert(model, config, layers)
    if layers is not None:
        _layer_count(config, layers, removed, family)
    _check_describes(model, config)
    after = config.to_dict()
    return {k: v for k, v in after.items() if before.get(k) != v}


def _set(config, field: str, value: Any) -> None:
    if getattr(config, field, None) != value:
        setattr(config, field, value)


def _hidden_width(model: nn.Module, config) -> int:
    """The residual width: a token embedding's columns, or a patch embedding convolution's
    output channels (ViT); else the config's own (a model built from it must then agree)."""
    embeddings = model.get_input_embeddings()
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[1])
    convs = [m for m in embeddings.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if len(convs) == 1:
        return int(convs[0].out_channels)
    return int(config.hidden_size)


def _decoder(model, config, path: str, layers, structure: dict) -> None:
    """Decoder families (see ``_ATTENTION_KINDS`` and ``_MLP_KINDS``): the MLP width, the
    head counts and ``head_dim``, ``hidden_size`` and the bias switches."""
    mlp = _mlp_kind(layers[0])
    if mlp is not None and hasattr(config, mlp[1]):
        widths = [layer.get_submodule(mlp[0]).in_features for layer in layers]
        _set(config, mlp[1], _uniform(widths, mlp[1], config, "the MLPs", _WIDTH_FIX))
    hidden = _hidden_width(model, config)
    kind = _attention_kind(layers[0])
    if kind is not None and hasattr(config, "num_attention_heads"):
        _decoder_heads(config, layers, kind, hidden)
    if hasattr(config, "hidden_size"):
        _set(config, "hidden_size", hidden)
    added = {b[len(path) + 1:] for b in structure.get("biases", []) if b.startswith(path + ".")}
    _llama_biases(config, layers, "mlp", ("gate_proj", "up_proj", "down_proj"), "mlp_bias",
                  added)
    _llama_biases(config, layers, "self_attn", ("q_proj", "k_proj", "v_proj", "o_proj"),
                  "attention_bias", added)


def _decoder_heads(config, layers, kind: tuple, hidden: int) -> None:
    """``num_attention_heads``, ``num_key_value_heads`` and ``head_dim`` from the layers'
    projections (the head width is the attention module's own ``head_dim``/``head_size``,
    which pruning never changes)."""
    attn, query, key, out = kind
    first = layers[0].get_submodule(attn)
    head_dim = int(getattr(first, "head_dim", None) or getattr(first, "head_size", None)
                   or config.hidden_size // config.num_attention_heads)
    heads = [layer.get_submodule(f"{attn}.{out}").in_features // head_dim for layer in layers]
    n_heads = _uniform(heads, "num_attention_heads", config, "the attention layers", _HEAD_FIX)
    has_kv = getattr(config, "num_key_value_heads", None) is not None
    n_kv = None
    if has_kv and key is not None:
        kv = [layer.get_submodule(f"{attn}.{key}").out_features // head_dim for layer in layers]
        n_kv = _uniform(kv, "num_key_value_heads", config, "the key/value heads", _HEAD_FIX)
    elif has_kv:  # fused queries, keys, values: the rest after the queries is keys + values
        kv = [(layer.get_submodule(f"{attn}.{query}").out_features - h * head_dim)
              // (2 * head_dim) for layer, h in zip(layers, heads)]
        n_kv = _uniform(kv, "num_key_value_heads", config, "the key/value heads", _HEAD_FIX)
    changed = (n_heads, hidden) != (config.num_attention_heads, config.hidden_size) or \
        (has_kv and n_kv != config.num_key_value_heads)
    if changed or getattr(config, "head_dim", None):
        _set(config, "head_dim", head_dim)  # families that read it (some through getattr)
    _set(config, "num_attention_heads", n_heads)
    if has_kv:
        _set(config, "num_key_value_heads", n_kv)


def _llama_biases(config, layers, part: str, names: tuple, field: str, added: set) -> None:
    """Turn on ``field`` when a compensation gave one of ``names`` a bias (``added``: module
    paths relative to the layer list); the family's other such layers get zero biases, so
    their outputs do not change and the config describes every layer alike."""
    linears = [(f"{i}.{part}.{n}", getattr(getattr(layer, part), n)) for i, layer in enumerate(layers)
               for n in names if isinstance(getattr(getattr(layer, part, None), n, None), nn.Linear)]
    new = [rel for rel, _ in linears if rel in added]
    if not new:
        return
    if not isinstance(getattr(config, field, None), bool):
        raise PlanError(
            f"the mean compensation gives layers.{new[0]} a bias, but {type(config).__name__} "
            f"has no '{field}' to turn such biases on (its bias layout is fixed), so the "
            f"config cannot describe the pruned model. Prune with compensate=False.")
    for _, lin in linears:
        if lin.bias is None:
            lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                device=lin.weight.device),
                                    requires_grad=lin.weight.requires_grad)
    _set(config, field, True)


def _derived_head_dim(config, layers, attn: str, family: str) -> None:
    hidden = config.hidden_size
    for i, layer in enumerate(layers):
        sub = layer.get_submodule(attn)
        heads = getattr(sub, "num_heads", None) or getattr(sub, "num_attention_heads", None)
        head_dim = getattr(sub, "head_dim", None) or getattr(sub, "attention_head_size", None)
        if heads != config.num_attention_heads:
            _uniform([getattr(l.get_submodule(attn), "num_heads", None)
                      or l.get_submodule(attn).num_attention_heads for l in layers],
                     "num_attention_heads", config, "the attention layers", _HEAD_FIX)
            config.num_attention_heads = heads
        if hidden // config.num_attention_heads != head_dim or hidden % config.num_attention_heads:
            raise PlanError(
                f"{type(config).__name__} derives the head width as hidden_size / "
                f"num_attention_heads ({hidden} / {config.num_attention_heads}), but layer {i} "
                f"has heads of width {head_dim}: the config cannot describe pruned heads or a "
                f"pruned hidden size in the {family} family. Prune with targets='mlp' (or "
                f"depth), or use backend='torch'.")


def _gpt2(model, config, layers) -> None:
    widths = [layer.mlp.c_fc.nf for layer in layers]
    _set(config, "n_inner", _uniform(widths, "n_inner", config, "the MLPs", _WIDTH_FIX))
    _set(config, "n_embd", int(model.get_input_embeddings().weight.shape[1]))
    _derived_head_dim(config, layers, "attn", "GPT-2")


def _bert(model, config, layers) -> None:
    widths = [layer.intermediate.dense.out_features for layer in layers]
    _set(config, "intermediate_size", _uniform(widths, "intermediate_size", config, "the MLPs",
                                               _WIDTH_FIX))
    _set(config, "hidden_size", _hidden_width(model, config))
    _derived_head_dim(config, layers, "attention.self", "BERT")


def _layer_count(config, layers, removed: list, family: str) -> None:
    """``num_hidden_layers`` (or ``n_layer``), ``layer_types`` and every ``layer_idx``."""
    n = len(layers)
    field = "n_layer" if family == "gpt2" else "num_hidden_layers"
    if removed and getattr(config, "layer_types", None) is not None:
        types = list(config.layer_types)
        for entry in removed:  # indices are those of the list before that removal
            types = [t for i, t in enumerate(types) if i not in set(entry["indices"])]
        config.layer_types = types
    _set(config, field, n)
    for i, layer in enumerate(layers):  # the KV cache is indexed by layer_idx
        for sub in layer.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = i


def _check_describes(model: nn.Module, config) -> None:
    """A fresh model from ``config`` has the pruned model's tensor shapes, and the config
    passes the family's validation (what ``save_pretrained`` / ``from_pretrained`` need)."""
    try:
        fresh_config = type(config).from_dict(config.to_dict())
    except Exception as exc:  # the family's own validation, e.g. hidden_size % heads
        raise PlanError(
            f"the pruned model's {type(config).__name__} is refused by its family's "
            f"validation: {exc}. Choose head counts or widths the family accepts (with GQA, "
            f"num_attention_heads must divide hidden_size: HeadPruning(..., uniform=True) "
            f"with a ratio that keeps such a count), or use backend='torch'.") from exc
    with torch.device("meta"):
        fresh = type(model)(fresh_config)
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [(k, have.get(k), want.get(k)) for k in sorted(set(want) | set(have))
             if have.get(k) != want.get(k)]
    if wrong:
        k, h, w = wrong[0]
        raise PlanError(
            f"{type(config).__name__} cannot describe the pruned model: '{k}' has shape {h} "
            f"but a model built from the updated config has {w} ({len(wrong)} tensors "
            f"differ). prunec does not know how this family's config names that width (a "
            f"family that derives the head width as hidden_size / num_attention_heads cannot "
            f"describe pruned heads); use backend='torch', or prune only what the config "
            f"describes (targets='mlp', scope='local', compensate=False).")


def save_pretrained(model: nn.Module, path: Path) -> None:
    """``model.save_pretrained(path)`` in safetensors (never pickled)."""
    model.save_pretrained(str(path), safe_serialization=True)


def load_pretrained(path: str | Path) -> nn.Module:
    """Load a Hugging Face directory saved by the ``module`` backend with the class its
    config names, taken from the installed ``transformers`` (never code from the
    directory: ``trust_remote_code`` stays off).

    Raises:
        PrunecError: no config, or an architecture the installed transformers lacks.
    """
    import transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise PrunecError(f"'{path}' has no config.json; it is not a Hugging Face save.")
    config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise PrunecError(f"'{path}': the installed transformers has no class "
                          f"{names[:1] or '(no architectures in config.json)'}.")
    return cls.from_pretrained(str(path), trust_remote_code=False)


def copy_config(config) -> Any:
    return copy.deepcopy(config)
