"""prunec.frontends.stand_in: the torch stand-in of an ONNX graph computes what ONNX Runtime
does, and its Use map sends every stand-in tensor back to the original initializer (through
Gemm's transB and alpha/beta scales); an op without converter is named before conversion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

from prunec.errors import UnsupportedOpError  # noqa: E402
from prunec.frontends.onnx import open_onnx  # noqa: E402
from prunec.frontends.stand_in import _check_converters  # noqa: E402
from tests.frontends import graphs  # noqa: E402
from tests.helpers import require_onnx2torch  # noqa: E402

require_onnx2torch()

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((6, 8)).astype(np.float32)  # Gemm without transB: [in, out]
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((3, 8)).astype(np.float32)  # Gemm with transB: [out, in]
B2 = RNG.standard_normal(3).astype(np.float32)


def _model() -> onnx.ModelProto:
    return graphs.scaled_gemms({"W1": W1, "B1": B1, "W2": W2, "B2": B2})


@pytest.fixture(scope="module")
def source():
    return open_onnx(_model(), {"x": RNG.standard_normal((2, 6)).astype(np.float32)})


def test_the_stand_in_computes_what_onnx_runtime_does(source):
    x = RNG.standard_normal((5, 6)).astype(np.float32)
    session = ort.InferenceSession(_model().SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    with torch.no_grad():
        got = source.module(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_every_stand_in_tensor_maps_back_to_its_initializer(source):
    original = {t.name: numpy_helper.to_array(t) for t in source.model.graph.initializer}
    state = dict(source.module.state_dict())
    assert len(source.uses) == 4 and set(source.uses) <= set(state)
    for name, use in source.uses.items():
        node = source.node(use.node)
        onnx_name = node.input[use.input]
        np.testing.assert_allclose(use.to_onnx(state[name].numpy()), original[onnx_name],
                                   rtol=1e-6)
    scales = {source.node(u.node).input[u.input]: (u.transpose, u.scale)
              for u in source.uses.values()}
    assert scales == {"W1": (True, 0.5), "B1": (False, 2.0), "W2": (False, 1.0), "B2": (False, 1.0)}
    assert set(source.modules.values()) <= {"h", "r", "y"}


def test_an_op_without_converter_is_named_before_conversion():
    model = _model()
    model.graph.node.append(helper.make_node("Frobnicate", ["y"], ["z"], name="mystery",
                                             domain="acme"))
    model.opset_import.append(helper.make_opsetid("acme", 1))
    with pytest.raises(UnsupportedOpError, match=r"ONNX op 'Frobnicate' \(domain 'acme', opset 1\) "
                                                 r"at node 'mystery' has no converter"):
        _check_converters(model)
