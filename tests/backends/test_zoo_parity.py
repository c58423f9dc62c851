"""Backend parity on the whole test zoo after ``MagnitudePruning(0.5)``.

For every zoo model (all eleven: resnet56, vgg16_bn, mobilenetv2, se_net, coverage_net, hf_vit,
hf_deit, hf_bert, hf_convnext, hf_resnet, hf_llama) the model is pruned by
``prunec.compile(..., [MagnitudePruning(0.5)])`` and the pruned program's eager graph module is
the reference. Each backend's artifact is compared with it on fresh random inputs (seeded,
another seed than the lowering's own check) at batch 3, not the capture batch of 2, so the
dynamic batch axis is exercised too.

Tolerances (``max|ref - out| <= atol + rtol * max|ref|`` per output, see
:func:`prunec.backends.base.check_parity`):

- ``torch``: exact (``atol = rtol = 0``): the artifact runs a copy of the same graph module;
- ``onnx`` and ``onnxruntime``: fp32 ``atol = 1e-4``, ``rtol = 1e-4``
  (:data:`prunec.backends.onnx_backend.TOLERANCES`), the bound the lowerings promise.

Cost: ONNX export dominates (about a second or two per model on 2 cores). The ``onnx`` and
``onnxruntime`` lowerings differ only in the ``InferenceSession`` they build around the same
exported model (ORT defaults vs ``ORT_ENABLE_ALL`` with 2 intra-op threads, whose fusions can
change numerics), so the model is exported once per zoo entry with
:func:`~prunec.backends.onnx_backend.export_onnx` and wrapped in both artifact classes; a
separate test runs the public ``lower(program, "onnxruntime")`` end to end on one model
(``hf_llama``: keyword inputs, grouped-query attention). Each
zoo model is built, pruned and exported once per module (a cached fixture).
"""
from __future__ import annotations

import functools

import pytest
import torch

from prunec import compile as prunec_compile
from prunec.backends import lower
from prunec.backends.base import IOSpec, check_parity, sample_inputs
from prunec.backends.onnx_backend import TOLERANCES, OnnxArtifact, export_onnx
from prunec.backends.onnxruntime_backend import OnnxRuntimeArtifact
from prunec.passes import MagnitudePruning
from tests.zoo import ZOO

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL, RTOL = TOLERANCES["fp32"]
BATCH = 3


@functools.lru_cache(maxsize=None)
def _pruned(name: str):
    """``(compiled, io, onnx_model)`` of zoo model ``name`` after magnitude pruning at 0.5."""
    case = ZOO[name]()
    compiled = prunec_compile(case.model, case.args, [MagnitudePruning(0.5)],
                              example_kwargs=case.kwargs)
    model, io = export_onnx(compiled.program)
    return compiled, io, model


def _inputs(name: str, seed: int = 7):
    compiled, io, _ = _pruned(name)
    program = compiled.program
    return sample_inputs(io, program.example_args, program.example_kwargs, batch=BATCH, seed=seed)


def _reference(name: str, args: tuple, kwargs: dict):
    with torch.no_grad():
        return _pruned(name)[0].program.gm(*args, **kwargs)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_is_pruned(name):
    report = _pruned(name)[0].report
    assert report.macs_after < report.macs_before, f"{name}: MagnitudePruning(0.5) removed nothing"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_torch_backend_is_exact(name):
    compiled = _pruned(name)[0]
    args, kwargs = _inputs(name)
    ref = _reference(name, args, kwargs)
    check_parity(ref, lower(compiled.program, "torch")(*args, **kwargs), atol=0.0, rtol=0.0,
                 backend="torch")


@pytest.mark.parametrize("backend", ["onnx", "onnxruntime"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_onnx_backends_match_eager(name, backend):
    _, io, model = _pruned(name)
    artifact = OnnxArtifact(model, io) if backend == "onnx" else OnnxRuntimeArtifact(model, io)
    args, kwargs = _inputs(name)
    ref = _reference(name, args, kwargs)
    out = artifact(*args, **kwargs)
    assert type(out) is type(ref)
    check_parity(ref, out, atol=ATOL, rtol=RTOL, backend=backend,
                 names=IOSpec.from_program(_pruned(name)[0].program).output_names)


@pytest.mark.parametrize("name", ["hf_llama"])
def test_lower_onnxruntime_end_to_end(name):
    """The public lowering (export + tuned session + its own parity check) on a pruned
    transformer with keyword inputs."""
    compiled = _pruned(name)[0]
    artifact = lower(compiled.program, "onnxruntime", intra_op_threads=2)
    assert artifact.settings["intra_op_threads"] == 2
    args, kwargs = _inputs(name, seed=11)
    check_parity(_reference(name, args, kwargs), artifact(*args, **kwargs), atol=ATOL,
                 rtol=RTOL, backend="onnxruntime")
