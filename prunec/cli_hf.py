"""Hugging Face models and LLM passes on the command line (``--model hf:DIR``).

``prunec prune --model hf:DIR --backend module --output OUT`` loads the model that
``DIR`` holds with the class its ``config.json`` names, taken from the installed
``transformers`` (never code from the directory), prunes it, and writes ``OUT`` as a Hugging
Face model directory: ``from_pretrained(OUT)`` loads it; the tokenizer files of ``DIR`` are
copied beside the weights, and ``plan.json`` and the report too.

The example input is ``input_ids`` of shape ``2x16`` drawn from the vocabulary (``--input``
overrides it); ``--data module:function`` gives calibration and training batches (dicts with
``input_ids`` and an ``attention_mask``). The model is captured with ``use_cache=False`` (a
KV cache is not a tensor output); the saved config keeps the model's own setting.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch

from prunec import passes
from prunec.backends.hf import load_pretrained
from prunec.cli_specs import CliError, make_inputs

__all__ = ["HF_PREFIX", "is_hf_spec", "check_hf_dir", "load_hf_model", "make_llm_pass",
           "copy_tokenizer", "TOKENIZER_FILES"]

HF_PREFIX = "hf:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
                   "added_tokens.json", "chat_template.jinja")


def is_hf_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(HF_PREFIX)


def check_hf_dir(spec: str) -> Path:
    """The directory of ``hf:DIR``; it must hold a ``config.json``."""
    folder = Path(spec[len(HF_PREFIX):]).expanduser()
    if not (folder / "config.json").is_file():
        raise CliError(f"--model {spec}: '{folder}' has no config.json (a Hugging Face model "
                       f"directory, as save_pretrained writes, is needed)")
    return folder


def load_hf_model(spec: str, inputs: list) -> tuple[torch.nn.Module, tuple, dict, Any]:
    """``(model, args, kwargs, use_cache)``: the model in eval mode with ``use_cache`` off
    for capture (its previous value is returned so the saved config keeps it)."""

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the command shows its own progress
    folder = check_hf_dir(spec)
    model = load_pretrained(folder).eval()
    use_cache = getattr(model.config, "use_cache", None)
    if use_cache is not None:
        model.config.use_cache = False
    if inputs:
        args, kwargs = make_inputs(inputs)
        return model, args, kwargs, use_cache
    vocab = int(getattr(model.config, "vocab_size", 0) or model.get_input_embeddings().num_embeddings)
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    return model, (ids,), {}, use_cache


def make_llm_pass(args: argparse.Namespace, calibration: list | None):
    """``--pass heads`` (:class:`~prunec.passes.HeadPruning`) or ``--pass depth``
    (:class:`~prunec.passes.DepthPruning`) from the command line's options."""

    criterion = getattr(args, "criterion", None)
    latency = getattr(args, "latency", None)  # replaces --ratio / --num-blocks when given
    if args.pass_name == "heads":
        return passes.HeadPruning(args.ratio if latency is None else None,
                                  criterion=criterion or "magnitude",
                                  calibration=calibration, scope=args.scope,
                                  uniform=getattr(args, "uniform", False), latency=latency)
    compensate = not getattr(args, "no_compensate", False)
    number = getattr(args, "num_blocks", None)
    criterion = criterion or ("cosine" if calibration is not None else "magnitude")
    if calibration is None and (criterion != "magnitude" or compensate):
        raise CliError(f"--pass depth with criterion {criterion!r}"
                       f"{' and mean compensation' if compensate else ''} needs --data for "
                       f"calibration; or give --criterion magnitude --no-compensate")
    if latency is not None and number is not None:
        raise CliError("--latency and --num-blocks both say how much to drop; give one")
    ratio = None if number is not None or latency is not None else args.ratio
    return passes.DepthPruning(number, ratio=ratio, calibration=calibration,
                               criterion=criterion, compensate=compensate,
                               unit=getattr(args, "unit", "block"), latency=latency)


def copy_tokenizer(spec: str, out: Path) -> list[str]:
    """Copy ``DIR``'s tokenizer files into ``out``; returns the names copied."""
    folder = check_hf_dir(spec)
    copied = []
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
            copied.append(name)
    return copied


def restore_use_cache(compiled, use_cache: Any) -> None:
    """The saved config keeps the model's own ``use_cache`` (off only for capture)."""
    module = getattr(compiled.artifact, "module", None)
    if use_cache is not None and hasattr(getattr(module, "config", None), "use_cache"):
        module.config.use_cache = use_cache


def add_llm_options(group) -> None:
    """The options of ``--pass heads`` / ``--pass depth`` and of mean compensation."""
    group.add_argument("--uniform", action="store_true",
                       help="heads: remove the same number from every attention layer "
                            "(what a Hugging Face config can describe)")
    group.add_argument("--unit", choices=("block", "layer"), default="block",
                       help="depth: remove residual blocks, or whole layers (attention + MLP)")
    group.add_argument("--num-blocks", type=int, default=None, metavar="N",
                       help="depth: how many blocks (or layers) to remove, instead of --ratio")
    group.add_argument("--criterion", default=None, metavar="NAME",
                       help="heads: magnitude or activation; depth: cosine, angular, kl or "
                            "magnitude (default: magnitude without --data)")
    group.add_argument("--no-compensate", action="store_true",
                       help="variance and depth: do not fold means of what is removed (a "
                            "Hugging Face config without bias fields needs this)")
