"""Captures of zoo models shared by the tests of one process (capture is the slow part).

Tests that rewrite a program work on ``program.clone()``; the cached one is never mutated.
"""
from __future__ import annotations

import functools

import pytest
import torch

from prunec.ir.capture import capture
from prunec.ir.program import Program
from tests.zoo import ZooCase, get_case

__all__ = ["captured", "one_thread"]


@functools.lru_cache(maxsize=None)
def captured(name: str) -> tuple[ZooCase, Program]:
    """The zoo case ``name`` and its eval-mode capture (do not mutate: clone it)."""
    case = get_case(name)
    return case, capture(case.model, case.args, case.kwargs)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread while a module's tests run: on a shared 2-core machine two
    threads spin against each other and small ops take 100x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def bottleneck_resnet() -> tuple[torch.nn.Module, torch.Tensor, Program]:
    """A Hugging Face bottleneck ResNet with two blocks per stage (the second of each has
    an identity shortcut; the zoo's ``hf_resnet`` has projections only), captured."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[2, 2],
                          layer_type="bottleneck", num_labels=10)
    model = ResNetForImageClassification(config).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, x, capture(model, (x,))
