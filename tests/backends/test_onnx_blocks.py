"""prunec.backends.onnx_blocks: a residual block dropped from the user's ONNX graph - its
branch gone, the Add fed by the skip (plus the branch's mean when compensated) - checked
against the original graph with that branch's output replaced by the mean, by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import prunec  # noqa: E402
from prunec.passes import DepthPruning  # noqa: E402
from tests.helpers import require_onnx2torch  # noqa: E402

require_onnx2torch()

RNG = np.random.default_rng(2)
INITS = {f"{b}.{k}": RNG.standard_normal(s).astype(np.float32) * (0.1 if b == "b0" else 1.0)
         for b in ("b0", "b1") for k, s in (("w1", (8, 16)), ("c1", (16,)), ("w2", (16, 8)),
                                            ("c2", (8,)))}


def _model() -> onnx.ModelProto:
    """Two residual blocks ``x + W2 relu(W1 x + c1) + c2``; block b0 has small weights, so
    its branch changes the stream least and is the one dropped."""
    nodes, stream = [], "x"
    for b in ("b0", "b1"):
        nodes += [helper.make_node("MatMul", [stream, f"{b}.w1"], [f"{b}.mm1"], name=f"{b}/mm1"),
                  helper.make_node("Add", [f"{b}.mm1", f"{b}.c1"], [f"{b}.h"], name=f"{b}/add1"),
                  helper.make_node("Relu", [f"{b}.h"], [f"{b}.r"], name=f"{b}/relu"),
                  helper.make_node("MatMul", [f"{b}.r", f"{b}.w2"], [f"{b}.mm2"], name=f"{b}/mm2"),
                  helper.make_node("Add", [f"{b}.mm2", f"{b}.c2"], [f"{b}.branch"], name=f"{b}/add2"),
                  helper.make_node("Add", [stream, f"{b}.branch"], [f"{b}.out"], name=f"{b}/residual")]
        stream = f"{b}.out"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info(stream, TensorProto.FLOAT, ["B", 8])],
        [numpy_helper.from_array(v, k) for k, v in INITS.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _branch(b: str, x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ INITS[f"{b}.w1"] + INITS[f"{b}.c1"], 0)
    return h @ INITS[f"{b}.w2"] + INITS[f"{b}.c2"]


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def dropped():
    batches = [RNG.standard_normal((4, 8)).astype(np.float32) for _ in range(2)]
    calibration = [torch.from_numpy(b) for b in batches]  # items as the stand-in takes them
    return prunec.compile(_model(), {"x": batches[0]},
                          passes=[DepthPruning(1, calibration=calibration)], backend="onnxruntime")


def test_numerical_the_file_equals_the_original_with_the_branch_at_its_mean(dropped):
    (plan,) = dropped.plans
    (block,) = plan.blocks
    mean = block.mean.numpy().astype(np.float32) if block.mean is not None else np.zeros(8, np.float32)
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    stream = x + mean  # the dropped first block: its branch replaced by its mean
    expected = stream + _branch("b1", stream)
    np.testing.assert_allclose(_run(dropped.artifact.model, x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(_model(), x), x + _branch("b0", x) + _branch("b1", x + _branch("b0", x)),
                               rtol=1e-5, atol=1e-5)  # the hand computation is the graph's


def test_structural_the_branch_nodes_and_weights_are_gone(dropped):
    model = dropped.artifact.model
    names = [n.name for n in model.graph.node]
    assert not any(n.startswith("b0/") and n != "b0/residual" for n in names), names
    assert all(f"b1/{k}" in names for k in ("mm1", "add1", "relu", "mm2", "add2", "residual"))
    inits = {t.name for t in model.graph.initializer}
    assert not {"b0.w1", "b0.c1", "b0.w2"} & inits and {"b1.w1", "b1.w2"} <= inits


def test_idempotence_the_same_depth_pass_on_the_program_changes_nothing(dropped):
    program = dropped.program.clone()
    assert not DepthPruning(1, calibration=[torch.zeros(1, 8)])(program).modified
