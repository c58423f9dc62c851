"""The ONNX Runtime backend: session settings, providers, lowering parity and its options."""
from __future__ import annotations

import pytest

from prunec.backends.onnxruntime_backend import (
    OnnxRuntimeArtifact, lower_onnxruntime, pick_providers, session_options,
)
from prunec.errors import InvalidArgumentError
from prunec.backends import registry
from tests.backends.models import inputs, program
from tests.helpers import max_diff

ort = pytest.importorskip("onnxruntime")


def test_session_options_follow_the_threads_and_spinning():
    opts = session_options(intra_op_threads=3, inter_op_threads=1, spinning=False)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(inter_op_threads=2).execution_mode == ort.ExecutionMode.ORT_PARALLEL


def test_providers_prefer_cuda_and_fall_back_to_cpu():
    assert pick_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert pick_providers(["TensorrtExecutionProvider"]) == ["CPUExecutionProvider"]


def test_lowering_matches_the_program_at_another_batch_and_keeps_its_settings():
    prog = program("mlp")
    artifact = lower_onnxruntime(prog, intra_op_threads=1, providers=["CPUExecutionProvider"])
    assert isinstance(artifact, OnnxRuntimeArtifact)
    assert artifact.settings["intra_op_threads"] == 1
    assert artifact.settings["providers"] == ["CPUExecutionProvider"]
    args, kwargs = inputs("mlp", 5)
    assert max_diff(artifact(*args, **kwargs), prog.gm(*args, **kwargs)) < 1e-4


def test_unknown_options_are_refused_before_export():
    with pytest.raises(InvalidArgumentError, match="intra_op_threads"):
        registry.lower(program("mlp"), "onnxruntime", intra_threads=1)
