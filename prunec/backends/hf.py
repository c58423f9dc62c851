"""Hugging Face write-back: the config says what the pruned weights are.

After :mod:`prunec.backends.module` wrote a plan back into a copy of a ``transformers``
``PreTrainedModel``, :func:`update_config` sets the config fields the family reads, so that
``generate()`` (its KV cache is sized from the config), ``save_pretrained`` and
``from_pretrained`` work on the pruned model:

| family (detected by structure) | widths | heads | layers | biases |
|---|---|---|---|---|
| Llama-like decoders (Llama, Mistral, Qwen2/3, ...: ``layers[i].mlp.up_proj``, ``self_attn.q_proj``) | ``intermediate_size`` | ``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` | ``num_hidden_layers``, ``layer_types``, ``layer_idx`` renumbered | ``mlp_bias``, ``attention_bias`` (zero biases elsewhere) |
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
    if _get(first, "mlp.up_proj") is not None and _get(first, "self_attn.q_proj") is not None:
        return "llama"
    if _get(first, "mlp.c_fc") is not None and _get(first, "attn.c_attn") is not None:
        return "gpt2"
    if _get(first, "intermediate.dense") is not None and _get(first, "attention.self.query") is not None:
        return "bert"
    return "unknown"


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
    if family == "llama":
        _llama(model, config, path, layers, structure)
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


def _llama(model, config, path: str, layers, structure: dict) -> None:
    attn0 = layers[0].self_attn
    head_dim = int(attn0.head_dim)
    widths = [layer.mlp.up_proj.out_features for layer in layers]
    _set(config, "intermediate_size", _uniform(widths, "intermediate_size", config,
                                               "the MLPs", _WIDTH_FIX))
    heads = [layer.self_attn.q_proj.out_features // head_dim for layer in layers]
    kv = [layer.self_attn.k_proj.out_features // head_dim for layer in layers]
    n_heads = _uniform(heads, "num_attention_heads", config, "the attention layers", _HEAD_FIX)
    n_kv = _uniform(kv, "num_key_value_heads", config, "the key/value heads", _HEAD_FIX)
    hidden = model.get_input_embeddings().weight.shape[1]
    if (n_heads, n_kv, hidden) != (config.num_attention_heads, config.num_key_value_heads,
                                   config.hidden_size) or getattr(config, "head_dim", None):
        _set(config, "head_dim", head_dim)  # families that read it (Qwen2 through getattr)
    _set(config, "num_attention_heads", n_heads)
    _set(config, "num_key_value_heads", n_kv)
    _set(config, "hidden_size", int(hidden))
    added = {b[len(path) + 1:] for b in structure.get("biases", []) if b.startswith(path + ".")}
    _llama_biases(config, layers, "mlp", ("gate_proj", "up_proj", "down_proj"), "mlp_bias",
                  added)
    _llama_biases(config, layers, "self_attn", ("q_proj", "k_proj", "v_proj", "o_proj"),
                  "attention_bias", added)


def _llama_biases(config, layers, part: str, names: tuple, field: str, added: set) -> None:
    """Turn on ``field`` when a compensation gave one of ``names`` a bias (``added``: module
    paths relative to the layer list); the family's other such layers get zero biases, so
    their outputs do not change and the config describes every layer alike."""
    linears = [(f"{i}.{part}.{n}", getattr(getattr(layer, part), n)) for i, layer in enumerate(layers)
               for n in names if isinstance(getattr(getattr(layer, part), n, None), nn.Linear)]
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
    _set(config, "hidden_size", int(model.get_input_embeddings().weight.shape[1]))
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
            f"differ). prunec does not know how this family's config names that width; "
            f"use backend='torch', or prune only what the config describes (targets='mlp', "
            f"scope='local', compensate=False).")


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
