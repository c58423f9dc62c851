"""The tensorrt backend: pure helpers everywhere, the engine itself only where TensorRT and
a GPU are (tolerances fp32 1e-3 / 5e-3 for TF32, fp16 1e-2 / 2e-2)."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from prunec.backends import lower
from prunec.backends.tensorrt_backend import (
    PrecisionPlan, parse_version, precision_plan, profile_shapes, torch_dtype,
)
from prunec.errors import BackendUnavailable, PrunecError
from tests.backends.models import MODELS, inputs, model, program

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.parametrize("text, expected", [
    ("10.13.0.35", (10, 13, 0, 35)), ("11.4.0.106", (11, 4, 0, 106)),
    ("10.0.1b", (10, 0, 1)), ("9.3.0.post12.dev1", (9, 3, 0)), ("10", (10,)),
])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_parse_version_orders_numerically():
    assert parse_version("10.10.0") > parse_version("10.9.0")  # "10.10" < "10.9" as strings


def test_parse_version_rejects_garbage():
    with pytest.raises(ValueError):
        parse_version("dev")


def test_precision_plan_per_major_version():
    assert precision_plan((10, 13), fp16=True) == PrecisionPlan(False, True, False)
    assert precision_plan((10, 13), fp16=False) == PrecisionPlan(False, False, False)
    assert precision_plan((11, 4), fp16=True) == PrecisionPlan(True, False, True)
    assert precision_plan((11, 0), fp16=False) == PrecisionPlan(False, False, True)
    with pytest.raises(BackendUnavailable, match="tensorrt>=10"):
        precision_plan((8, 6, 1), fp16=False)


def test_profile_shapes_batch_and_other_dynamic_axes():
    lo, opt, hi = profile_shapes((-1, 3, -1, 16), (4, 3, 16, 16), True, max_batch=32)
    assert (lo, opt, hi) == ((1, 3, 16, 16), (4, 3, 16, 16), (32, 3, 16, 16))
    assert profile_shapes((2, 16), (2, 16), False, max_batch=8) == ((2, 16),) * 3
    assert profile_shapes((-1, 7), (2, 7), True, max_batch=8, opt_batch=8)[1] == (8, 7)
    with pytest.raises(PrunecError, match="max_batch_size"):
        profile_shapes((-1, 7), (64, 7), True, max_batch=32)


def test_torch_dtype():
    assert torch_dtype("HALF") is torch.float16 and torch_dtype("INT64") is torch.int64
    with pytest.raises(PrunecError):
        torch_dtype("FP4")


def test_missing_tensorrt_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match="pip install tensorrt"):
        lower(program("mlp"), "tensorrt")


def test_missing_cuda_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="NVIDIA GPU"):
        lower(program("mlp"), "tensorrt")


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs tensorrt and CUDA")
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_parity_and_reload(name, fp16, tmp_path):
    from prunec.backends.tensorrt_backend import TRT_TOLERANCES, TensorRTArtifact
    from prunec.backends.base import check_parity

    art = lower(program(name), "tensorrt", fp16=fp16, max_batch_size=8)
    args, kwargs = inputs(name, 5)
    with torch.no_grad():
        ref = model(name)(*args, **kwargs)
    atol, rtol = TRT_TOLERANCES["fp16" if fp16 else "fp32"]
    check_parity(ref, art(*args, **kwargs), atol=atol, rtol=rtol, backend="tensorrt")
    loaded = TensorRTArtifact.load(art.save(tmp_path / "model.plan"), trust=True)
    check_parity(ref, loaded(*args, **kwargs), atol=atol, rtol=rtol, backend="tensorrt")
