"""prunec's onnx2torch converters: each op's stand-in equals ONNX Runtime on the file."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from prunec.frontends.onnx import open_onnx


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _graph(opset: int) -> onnx.ModelProto:
    """x[2, 6, 4] through the ops whose converters prunec supplies, every output kept."""
    h = helper.make_node
    nodes = [
        h("ReduceMean", ["x", "axes1"], ["mean"], keepdims=1),                 # v18: axes input
        h("GreaterOrEqual", ["x", "mean"], ["ge"]), h("LessOrEqual", ["x", "mean"], ["le"]),
        h("Cast", ["ge"], ["gef"], to=TensorProto.FLOAT),
        h("Reshape", ["x", "shape0"], ["r0"], allowzero=1),                   # allowzero
        h("Reshape", ["x", "shape_copy"], ["r1"]),                            # 0 copies
        h("Slice", ["x", "starts", "ends", "axes1", "steps"], ["sl"]),        # negative step
        h("Expand", ["mean", "expand_to"], ["ex"]),
        h("Tile", ["mean", "reps"], ["ti"]),
        h("CumSum", ["x", "axis1"], ["cs"], reverse=1),
        h("Flatten", ["x"], ["fl"], axis=3),                                  # axis == rank
        h("Split", ["x", "split"], ["s0", "s1"], axis=1),
        h("ReduceMax", ["x", "axes1"], ["mx"], keepdims=0),
        h("Squeeze", ["mean", "squeeze_axes"], ["sq"]),                     # v13: axes input
    ]
    inits = [_ints("axes1", [1]), _ints("shape0", [2, 24]), _ints("shape_copy", [0, 0, 2, 2]),
             _ints("starts", [-1]), _ints("ends", [-100]), _ints("steps", [-2]),
             _ints("expand_to", [3, 2, 6, 4]), _ints("reps", [1, 6, 1]),
             numpy_helper.from_array(np.array(1, np.int64), "axis1"), _ints("split", [2, 4]),
             _ints("squeeze_axes", [-2])]
    outs = ["mean", "ge", "le", "gef", "r0", "r1", "sl", "ex", "ti", "cs", "fl", "s0", "s1", "mx", "sq"]
    graph = helper.make_graph(
        nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 4])],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("opset", [18, 20])
def test_converters_match_onnx_runtime(opset):
    model = _graph(opset)
    x = np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})
    source = open_onnx(model, {"x": x})
    with torch.no_grad():
        got = source.module(torch.from_numpy(x))
    got = [t.numpy() for t in torch.utils._pytree.tree_leaves(got)]
    assert len(got) == len(want)
    for name, g, w in zip([o.name for o in model.graph.output], got, want):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=1e-6,
                                   atol=1e-6, err_msg=name)


def _resize(opset: int, scales=None, sizes=None, **attributes) -> onnx.ModelProto:
    inputs = ["x", "", "scales" if scales else "", "sizes" if sizes else ""]
    while inputs[-1] == "":
        inputs.pop()
    inits = ([numpy_helper.from_array(np.array(scales, np.float32), "scales")] if scales else []) \
        + ([_ints("sizes", sizes)] if sizes else [])
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["y"], **attributes)], "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


RESIZES = [  # what torch's exporters write, and cases torch samples alike
    dict(scales=[1, 1, 2, 2], mode="nearest", coordinate_transformation_mode="asymmetric",
         nearest_mode="floor"),
    dict(sizes=[1, 3, 5, 7], mode="linear", coordinate_transformation_mode="half_pixel"),
    dict(sizes=[1, 3, 5, 7], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    dict(scales=[1, 1, 2, 2], mode="linear", coordinate_transformation_mode="align_corners"),
    dict(scales=[1, 1, 0.5, 0.5], mode="linear", coordinate_transformation_mode="half_pixel"),
    dict(scales=[1, 1, 3, 2], mode="nearest", coordinate_transformation_mode="half_pixel",
         nearest_mode="round_prefer_floor"),
    dict(sizes=[1, 3, 8, 12], mode="nearest"),  # the defaults: half_pixel, round_prefer_floor
]


@pytest.mark.parametrize("opset", [13, 19])
@pytest.mark.parametrize("case", range(len(RESIZES)))
def test_resize_matches_onnx_runtime(opset, case):
    model = _resize(opset, **RESIZES[case])
    x = np.random.default_rng(case).standard_normal((1, 3, 4, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    source = open_onnx(model, {"x": x})
    assert not source.opaque  # converted to F.interpolate: its channels can be pruned
    with torch.no_grad():
        got = torch.utils._pytree.tree_leaves(source.module(torch.from_numpy(x)))[0].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [
    dict(scales=[1, 1, 2, 2], mode="linear", coordinate_transformation_mode="asymmetric"),
    dict(scales=[1, 1, 2, 2], mode="cubic"),
    dict(scales=[1, 2, 1, 1], mode="nearest"),
])
def test_resize_torch_cannot_mirror_runs_opaque(case):
    """Where no torch interpolation samples the pixels ONNX does, the node is never
    converted into something that differs: ONNX Runtime runs it inside the stand-in (its
    channels are then not pruned), and the source names it."""
    from prunec.frontends.opaque import OpaqueModule

    model = _resize(19, **case)
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    source = open_onnx(model, {"x": x})
    assert [m.op_type for m in source.module.modules() if isinstance(m, OpaqueModule)] == \
        ["Resize"]
    assert len(source.opaque) == 1 and "(Resize) kept opaque" in source.opaque[0]
    with torch.no_grad():
        got = source.module(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
