"""The ``module`` backend: the plan written back into a copy of the caller's ``nn.Module``.

The pruned :class:`~prunec.ir.program.Program` decides *what* goes; this lowering gives the
user back their own model, smaller: a copy of the same class whose forward, training,
``state_dict`` and ``torch.compile`` keep working (DESIGN contract 12).

Write-back, given the pruned program and the caller's model:

1. **Copy.** The module tree is deep-copied with every parameter replaced by an empty
   placeholder (tied parameters share one), so the copy costs no second set of weights and
   the caller's model is never written to.
2. **Tensors by name.** Capture keeps fully qualified names: every parameter or buffer the
   pruned graph reads under a module name gets the graph's tensor (sliced, compensated or
   fine-tuned); every other parameter gets a clone of the caller's.
3. **Compensation constants.** A bias created by mean folding (``<layer>.prunec_bias``) becomes
   the layer's ``bias`` parameter (a ``Linear`` or ``Conv`` that had none gets one). Constants
   the module cannot hold (the border correction of a zero-padded convolution, a dropped
   branch's mean) are a :class:`~prunec.errors.PlanError` naming them, with the way out
   (``compensate=False``).
4. **Dropped layers.** A member of an ``nn.ModuleList`` / ``nn.Sequential`` whose parameters
   the graph no longer reads, after plans that dropped its residual branches without means,
   is removed from the list (``DepthPruning(unit="layer")``). A dropped branch that is not a
   whole list member cannot be written back (an error says so).
5. **Attributes.** ``Linear`` in/out features, convolution channels and ``groups`` (read from
   the graph), norm shapes, ``Embedding`` sizes, ``Conv1D`` (GPT-2) sizes, attention head
   counts (``num_heads``, ``num_attention_heads``, ``num_key_value_heads``,
   ``num_key_value_groups``, ``all_head_size``, ``split_size``) follow the weights.
6. **Hugging Face.** For a ``transformers`` ``PreTrainedModel``, :mod:`prunec.backends.hf`
   then makes the config say what the weights are (or raises naming the field).
7. **Verification.** The copy is run against the pruned program on example-shaped inputs
   (as every backend is): a mismatch is a :class:`~prunec.errors.VerificationError`.

``ModuleArtifact.save(dir)`` writes a directory: for a Hugging Face model
``save_pretrained`` (safetensors + config), otherwise ``model.safetensors`` plus the structure
record; both with ``prunec.json`` (metadata, lineage) and ``plan.json``. Nothing is pickled.
:func:`load_module` restores a plain module given a fresh instance of its class (prunec never
imports code named by a file); :func:`prunec.backends.hf.load_pretrained` restores a Hugging
Face directory.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from prunec.backends.artifact import METADATA_NAME, metadata_for
from prunec.backends.base import Artifact, IOSpec, verify_artifact
from prunec.backends.hf import load_pretrained, save_pretrained, update_config
from prunec.backends.registry import BackendSpec, Requirement, register
from prunec.errors import InvalidArgumentError, PlanError, PrunecError, VerificationError
from prunec.fileio import atomic_directory

__all__ = ["ModuleArtifact", "lower_module", "write_back", "load_module", "STRUCTURE_NAME"]

STRUCTURE_NAME = "prunec_structure.json"
_BIAS = "prunec_bias"
_UNHOLDABLE = {
    "prunec_mean_kernel": "the border correction of a mean folded into a zero-padded "
                          "convolution",
    "prunec_block_mean": "the mean of a dropped residual branch",
    "prunec_const": "a constant map added to a zero-padded convolution's output (a mean "
                    "folded at its borders)",
}


class ModuleArtifact(Artifact):
    """A pruned copy of the caller's module (same class).

    Attributes:
        module: The pruned ``nn.Module``: train it, ``state_dict`` it, ``torch.compile`` it.
        structure: What the write-back changed (removed list members, attributes, biases
            added), saved beside the weights so :func:`load_module` can rebuild the shapes.
        metadata: prunec's metadata (version, backend, lineage as plan JSON).
    """

    name = "module"

    def __init__(self, module: nn.Module, structure: dict, metadata: dict | None = None):
        self.module = module
        self.structure = structure
        self.metadata = dict(metadata or {})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Write a directory: ``save_pretrained`` for Hugging Face models, else
        ``model.safetensors`` + ``prunec_structure.json``; ``prunec.json`` and ``plan.json``
        in both. The directory appears whole or not at all
        (:func:`prunec.fileio.atomic_directory`)."""

        path = Path(path)
        _check_target_dir(path)
        with atomic_directory(path) as tmp:
            if _is_hf(self.module):
                save_pretrained(self.module, tmp)
            else:
                from safetensors.torch import save_model

                save_model(self.module, str(tmp / "model.safetensors"))
            _write_json(tmp / STRUCTURE_NAME, self.structure)
            _write_json(tmp / "prunec.json", self.metadata)
            plans = self.metadata.get("plans") or []
            _write_json(tmp / "plan.json", {"plans": [json.loads(p) for p in plans]})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ModuleArtifact":
        """Load a Hugging Face directory saved by :meth:`save` (the class named by its
        config, from the installed ``transformers``). A plain module needs its class:
        :func:`load_module` ``(path, model=YourModel())``.

        Raises:
            PrunecError: a directory without ``config.json`` (a plain module's save).
        """
        path = Path(path)
        if not (path / "config.json").is_file():
            raise PrunecError(
                f"'{path}' holds a plain nn.Module's weights; prunec does not import code "
                f"named by a file. Rebuild it from an instance of its class: "
                f"prunec.backends.module.load_module('{path}', model=YourModel()).")

        structure = _read_json(path / STRUCTURE_NAME)
        return cls(load_pretrained(path), structure, _read_json(path / "prunec.json"))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def lower_module(program, model: nn.Module | None = None, *, verify: bool = True,
                 atol: float = 1e-5, rtol: float = 1e-4) -> ModuleArtifact:
    """Write ``program``'s plan back into a copy of ``model`` (see the module docstring).

    Args:
        program: The pruned program, captured from ``model``.
        model: The caller's model (``prunec.compile`` passes it); never mutated.
        verify: Check the copy against the program (max abs diff within
            ``atol + rtol * max|ref|`` on every output).

    Raises:
        InvalidArgumentError: no model given.
        PlanError: a constant or a dropped branch the module cannot hold.
        VerificationError: the written-back module does not compute what the program does.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            "backend='module' writes the plan back into the model it was captured from: "
            "call prunec.compile(model, ..., backend='module'), or pass "
            "backend_options={'model': model}.")
    module, structure = write_back(program, model)
    io = IOSpec.from_program(program)
    artifact = ModuleArtifact(module, structure, metadata_for(program, "module", io))
    if verify:
        _verify(program, artifact, io, atol, rtol)
    return artifact


def _verify(program, artifact: ModuleArtifact, io: IOSpec, atol: float, rtol: float) -> None:
    was_training = artifact.module.training
    artifact.module.train(program.training)
    try:
        with torch.no_grad():
            verify_artifact(program, artifact, io, atol=atol, rtol=rtol, backend="module")
    except PrunecError as exc:
        raise VerificationError(
            f"the pruned module written back into {type(artifact.module).__name__} does not "
            f"compute what the pruned program does: {exc} Use backend='torch' for this "
            f"model, or report the model so that its write-back can be taught.") from exc
    finally:
        artifact.module.train(was_training)


# --------------------------------------------------------------------------- write-back
def write_back(program, model: nn.Module) -> tuple[nn.Module, dict]:
    """``(pruned copy of model, structure record)``; ``model`` is left untouched."""
    reads = _graph_tensors(program)
    module = _copy_without_weights(model)
    _assign_tensors(program, model, module, reads)
    structure: dict = {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                       "removed": [], "biases": [], "attributes": {}, "tensors": {}}
    _hold_constants(program, module, reads, structure)
    _remove_dropped_members(program, module, reads, structure)
    _update_attributes(program, module, structure)
    if _is_hf(module):
        structure["config"] = update_config(module, structure)
    structure["tensors"] = {k: list(v.shape) for k, v in module.state_dict().items()}
    return module, structure


def _graph_tensors(program) -> dict[str, torch.Tensor]:
    return {n.target: program.get_tensor(n.target) for n in program.graph.nodes
            if n.op == "get_attr" and isinstance(program.get_tensor(n.target), torch.Tensor)}


def _copy_without_weights(model: nn.Module) -> nn.Module:
    """Deep copy with each parameter an empty placeholder (ties kept: one per object)."""
    memo: dict[int, Any] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        memo.setdefault(id(p), nn.Parameter(torch.empty(0, dtype=p.dtype, device=p.device),
                                            requires_grad=p.requires_grad))
    return copy.deepcopy(model, memo)


def _assign_tensors(program, model: nn.Module, module: nn.Module, reads: dict) -> None:
    """Fill every placeholder from the graph's tensor of the same name, else the caller's."""
    originals = dict(model.named_parameters(remove_duplicate=False))
    copies = dict(module.named_parameters(remove_duplicate=False))
    filled: set[int] = set()
    for name, new in copies.items():  # graph-read names first, so ties take the graph's
        if name in reads and id(new) not in filled:
            new.data = reads[name].detach().clone()
            filled.add(id(new))
    for name, new in copies.items():
        if id(new) not in filled:
            new.data = originals[name].detach().clone()
            filled.add(id(new))
    for name, _ in list(module.named_buffers(remove_duplicate=False)):
        if name in reads:
            owner, _, attr = name.rpartition(".")
            sub = module.get_submodule(owner) if owner else module
            sub._buffers[attr] = reads[name].detach().clone()


def _hold_constants(program, module: nn.Module, reads: dict, structure: dict) -> None:
    """Turn ``<layer>.prunec_bias`` into the layer's bias; refuse what no module holds."""
    known = set(dict(module.named_parameters(remove_duplicate=False))) | \
        set(dict(module.named_buffers(remove_duplicate=False)))
    for target, tensor in reads.items():
        if target in known:
            continue
        owner, _, attr = target.rpartition(".")
        if attr == _BIAS or (attr.startswith(_BIAS + "_") and attr[len(_BIAS) + 1:].isdigit()):
            _set_bias(module, owner, tensor, structure)
        elif attr.startswith("prunec_"):
            what = next((v for k, v in _UNHOLDABLE.items() if attr.startswith(k)), attr)
            raise PlanError(
                f"backend='module' cannot write back '{target}' ({what}): "
                f"{type(module).__name__} has no place for it. Prune with compensate=False "
                f"(the constant is then not needed), or use backend='torch'.")


def _set_bias(module: nn.Module, owner: str, value: torch.Tensor, structure: dict) -> None:
    layer = module.get_submodule(owner)
    if not hasattr(layer, "bias") or not isinstance(getattr(layer, "weight", None), torch.Tensor):
        raise PlanError(
            f"backend='module': the mean compensation folded into '{owner}' needs a bias, but "
            f"{type(layer).__name__} has no 'bias' attribute to hold it. Prune with "
            f"compensate=False, or use backend='torch'.")
    old = layer.bias
    if isinstance(old, torch.Tensor):  # a bias already read by the graph was updated there
        raise PlanError(f"backend='module': '{owner}' has a bias and a separate prunec bias.")
    layer.bias = nn.Parameter(value.detach().clone().to(layer.weight.dtype),
                              requires_grad=layer.weight.requires_grad)
    structure["biases"].append(owner)


# --------------------------------------------------------------------------- dropped layers
def _dropped_block_paths(program) -> list[tuple[str, bool]]:
    """``(module path, has mean)`` of every residual branch the lineage dropped."""
    found = []
    for plan in program.plans:
        for drop in getattr(plan, "blocks", ()):
            path = drop.key.split("/")[0].split("#")[0]
            found.append((path, drop.mean is not None, drop.key))
    return found


def _remove_dropped_members(program, module: nn.Module, reads: dict, structure: dict) -> None:
    drops = _dropped_block_paths(program)
    if not drops:
        return
    for path, has_mean, key in drops:
        if has_mean:
            raise PlanError(
                f"backend='module' cannot write back dropped block '{key}' with its mean "
                f"compensation (a constant added at the residual, which {type(module).__name__} "
                f"has no place for). Use DepthPruning(..., compensate=False).")
    removed = []
    for path in dict.fromkeys(p for p, _, _ in drops):
        if not _is_list_member(module, path) or _reads_under(reads, path):
            keys = [k for p, _, k in drops if p == path]
            raise PlanError(
                f"backend='module' cannot write back dropped block(s) {keys}: only whole "
                f"members of an nn.ModuleList / nn.Sequential (a decoder layer with all its "
                f"residual branches) can be removed from the module. Use "
                f"DepthPruning(n, unit='layer'), or backend='torch'.")
        removed.append(path)
    by_parent: dict[str, list[int]] = {}
    for path in removed:
        parent, _, idx = path.rpartition(".")
        by_parent.setdefault(parent, []).append(int(idx))
    for parent, idxs in by_parent.items():
        container = module.get_submodule(parent)
        kept = [m for i, m in enumerate(container) if i not in set(idxs)]
        new = type(container)(kept) if isinstance(container, nn.ModuleList) else nn.Sequential(*kept)
        _set_submodule(module, parent, new)
        structure["biases"] = [_renumber(b, parent, idxs) for b in structure["biases"]]
        structure["removed"].append({"list": parent, "indices": sorted(idxs),
                                     "size_before": len(container)})


def _renumber(path: str, parent: str, removed: list[int]) -> str:
    """``path`` after the members ``removed`` of list ``parent`` are gone."""
    if not path.startswith(parent + "."):
        return path
    idx, _, rest = path[len(parent) + 1:].partition(".")
    if not idx.isdigit():
        return path
    new = int(idx) - sum(1 for r in removed if r < int(idx))
    return f"{parent}.{new}" + (f".{rest}" if rest else "")


def _is_list_member(module: nn.Module, path: str) -> bool:
    parent, _, idx = path.rpartition(".")
    if not idx.isdigit():
        return False
    try:
        container = module.get_submodule(parent) if parent else module
    except AttributeError:
        return False
    return isinstance(container, (nn.ModuleList, nn.Sequential)) and int(idx) < len(container)


def _reads_under(reads: dict, path: str) -> bool:
    return any(t.startswith(path + ".") for t in reads)


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


# --------------------------------------------------------------------------- attributes
def _update_attributes(program, module: nn.Module, structure: dict) -> None:
    groups = _graph_groups(program)
    for path, sub in module.named_modules():
        changed = _layer_attributes(sub, groups.get(f"{path}.weight" if path else "weight"))
        changed.update(_attention_attributes(sub))
        if changed:
            structure["attributes"][path] = changed


def _set(sub: nn.Module, attr: str, value: Any, changed: dict) -> None:
    if hasattr(sub, attr) and getattr(sub, attr) != value:
        setattr(sub, attr, value)
        changed[attr] = list(value) if isinstance(value, tuple) else value


def _layer_attributes(sub: nn.Module, groups: int | None) -> dict:
    changed: dict = {}
    weight = getattr(sub, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() == 0:
        return changed
    shape = tuple(weight.shape)
    if isinstance(sub, nn.Linear):
        _set(sub, "out_features", shape[0], changed)
        _set(sub, "in_features", shape[1], changed)
    elif isinstance(sub, nn.modules.conv._ConvNd):
        g = groups if groups is not None else sub.groups
        _set(sub, "groups", g, changed)
        transposed = sub.transposed
        _set(sub, "in_channels", shape[0] if transposed else shape[1] * g, changed)
        _set(sub, "out_channels", shape[1] * g if transposed else shape[0], changed)
    elif isinstance(sub, nn.modules.batchnorm._NormBase):
        _set(sub, "num_features", shape[0], changed)
    elif isinstance(sub, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        _set(sub, "normalized_shape", shape, changed)
    elif isinstance(sub, nn.GroupNorm):
        _set(sub, "num_channels", shape[0], changed)
        if groups is not None:
            _set(sub, "num_groups", groups, changed)
    elif isinstance(sub, nn.Embedding):
        _set(sub, "num_embeddings", shape[0], changed)
        _set(sub, "embedding_dim", shape[1], changed)
    elif type(sub).__name__ == "Conv1D" and hasattr(sub, "nf"):  # transformers' GPT-2 layer
        _set(sub, "nx", shape[0], changed)
        _set(sub, "nf", shape[1], changed)
    return changed


def _graph_groups(program) -> dict[str, int]:
    """``{weight name: groups}`` of every convolution and group norm in the graph."""
    found: dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        packet = getattr(node.target, "overloadpacket", None)
        name = getattr(packet, "__name__", "")
        if name.startswith("conv") and len(node.args) > 1 and isinstance(node.args[1], fx.Node):
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
            found[node.args[1].target] = int(groups)
        elif name == "group_norm" and len(node.args) > 2 and isinstance(node.args[2], fx.Node):
            found[node.args[2].target] = int(node.args[1])
    return found


# Attention modules (Hugging Face and timm naming): the projection whose output counts the
# query heads, the key/value one, and the attribute that holds the head width.
_Q_NAMES = ("q_proj", "query", "q", "c_attn", "qkv", "qkv_proj")
_K_NAMES = ("k_proj", "key", "k")
_HEAD_DIM = ("head_dim", "attention_head_size")


def _out_width(layer: nn.Module | None) -> int | None:
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    return int(weight.shape[1] if type(layer).__name__ == "Conv1D" else weight.shape[0])


def _attention_attributes(sub: nn.Module) -> dict:
    """Head counts of an attention module from its projections' widths."""
    head_dim = next((getattr(sub, a) for a in _HEAD_DIM if isinstance(getattr(sub, a, None), int)),
                    None)
    q_name = next((n for n in _Q_NAMES if isinstance(getattr(sub, n, None), nn.Module)), None)
    if not head_dim or q_name is None:
        return {}
    q_width = _out_width(getattr(sub, q_name))
    if q_width is None:
        return {}
    fused = q_name in ("c_attn", "qkv", "qkv_proj")  # one projection for q, k and v
    k_name = next((n for n in _K_NAMES if isinstance(getattr(sub, n, None), nn.Module)), None)
    out = getattr(sub, "o_proj", None)
    if q_name == "qkv_proj" and isinstance(out, nn.Linear):
        # queries, then keys, then values (Phi-3); with grouped-query attention the output
        # projection counts the query heads and the rest is keys and values alike
        heads = int(out.weight.shape[1]) // head_dim  # (in_features may not be updated yet)
        kv_heads = (q_width - heads * head_dim) // (2 * head_dim)
    else:
        if fused:
            q_width //= 3 if not getattr(sub, "is_cross_attention", False) else 1
        heads = q_width // head_dim
        kv_heads = (_out_width(getattr(sub, k_name)) or q_width) // head_dim if k_name else heads
    if not (heads > 0 and kv_heads > 0 and heads % kv_heads == 0):
        # never hand torch's attention kernels a head count they would divide by (a zero
        # count crashes the process instead of raising)
        raise PlanError(
            f"the written-back {type(sub).__name__} would have {heads} query and {kv_heads} "
            f"key/value heads (from its projections' widths, head width {head_dim}): prunec "
            f"cannot hold this attention's pruned heads in the module; use backend='torch'.")
    changed: dict = {}
    for attr in ("num_heads", "num_attention_heads", "n_head"):
        _set(sub, attr, heads, changed)
    _set(sub, "num_key_value_heads", kv_heads, changed)
    if kv_heads:
        _set(sub, "num_key_value_groups", heads // kv_heads, changed)
    _set(sub, "all_head_size", heads * head_dim, changed)
    if fused:
        _set(sub, "split_size", heads * head_dim, changed)
    return changed


# --------------------------------------------------------------------------- saving, loading
def _is_hf(module: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(module, PreTrainedModel)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")  # synced by the caller


def _check_target_dir(path: Path) -> None:
    if path.exists() and not (path.is_dir() and (not any(path.iterdir())
                                                 or (path / "prunec.json").is_file())):
        raise InvalidArgumentError(
            f"backend='module' saves a directory; '{path}' exists and is not an empty "
            f"directory or an earlier prunec save: choose another path.")
    path.parent.mkdir(parents=True, exist_ok=True)


def load_module(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a module saved by :meth:`ModuleArtifact.save` from a fresh ``model`` of the
    same class (prunec never imports the class named in a file): list members removed,
    attributes and biases set as recorded, then every tensor loaded from safetensors.

    Raises:
        PrunecError: the directory is not a module save, or ``model`` is of another class.
    """
    from safetensors.torch import load_file

    path = Path(path)
    record_path = path / STRUCTURE_NAME
    if not record_path.is_file():
        raise PrunecError(f"load_module: '{path}' has no {STRUCTURE_NAME}; it is not a "
                          f"directory saved by backend='module'.")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    if record.get("class") != name:
        raise PrunecError(f"load_module: '{path}' holds a {record.get('class')}, not a {name}.")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise PrunecError(f"load_module: '{path}' has no model.safetensors (a Hugging Face "
                          f"save loads with prunec.backends.hf.load_pretrained).")
    module = _copy_without_weights(model)
    for entry in record.get("removed", []):
        container = module.get_submodule(entry["list"])
        kept = [m for i, m in enumerate(container) if i not in set(entry["indices"])]
        _set_submodule(module, entry["list"], type(container)(kept)
                       if isinstance(container, nn.ModuleList) else nn.Sequential(*kept))
    for owner in record.get("biases", []):
        module.get_submodule(owner).bias = nn.Parameter(torch.empty(0))
    for sub_path, attrs in record.get("attributes", {}).items():
        sub = module.get_submodule(sub_path) if sub_path else module
        for attr, value in attrs.items():
            setattr(sub, attr, tuple(value) if isinstance(value, list) else value)
    _load_tensors(module, load_file(str(weights)), path)
    return module


def _load_tensors(module: nn.Module, tensors: dict, path: Path) -> None:
    params = dict(module.named_parameters(remove_duplicate=False))
    missing = [n for n in params if n not in tensors]
    by_id: dict[int, torch.Tensor] = {}
    for name, p in params.items():
        if name in tensors:
            by_id[id(p)] = tensors[name]
    still = [n for n in missing if id(params[n]) not in by_id]
    if still:
        raise PrunecError(f"load_module: '{path}' lacks tensors {still[:4]}.")
    for p in dict.fromkeys(params.values()):
        p.data = by_id[id(p)].to(p.dtype)
    for name, _ in list(module.named_buffers()):
        if name in tensors:
            owner, _, attr = name.rpartition(".")
            (module.get_submodule(owner) if owner else module)._buffers[attr] = tensors[name]


register(BackendSpec(
    "module", lower_module, requires=(Requirement("safetensors", "safetensors"),),
    sniff=lambda path: path.is_dir() and (path / METADATA_NAME).is_file(),
    load=ModuleArtifact.load, sniff_order=1,
    summary="the plan written back into a copy of the caller's nn.Module (HF config too); "
            "saves a directory"))
