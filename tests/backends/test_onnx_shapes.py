"""prunec.backends.onnx_shapes: a Reshape's shape input patched where pruning changed an
output size - a constant (copy on write when shared), a piece of a Concat, left alone where
it is 0 / -1 or computed from a shape - checked by running the patched graph on ONNX Runtime.
The whole write-back (heads pruned in an exported attention) is in tests/frontends/test_onnx.py."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from prunec.backends.onnx_graph import GraphEditor  # noqa: E402
from prunec.backends.onnx_shapes import _patch  # noqa: E402
from prunec.errors import UnsupportedOpError  # noqa: E402


def _model(nodes, inits, width: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", width])],
        [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, [None, None, None])
         for n in nodes if n.op_type == "Reshape"], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _pruned_width(model: onnx.ModelProto, width: int) -> None:
    """What the write-back did to the tensors: the input now has ``width`` features."""
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = width


def _patched(model, key, pos, old, new, values=None):
    editor = GraphEditor(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    _patch(editor, producers, values or {}, key, 1, pos, old, new)
    editor.drop_dead()
    return model


def test_a_shared_constant_is_patched_for_the_pruned_reader_only():
    shape = numpy_helper.from_array(np.array([0, 4, 6], dtype=np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"]),
             helper.make_node("Identity", ["x"], ["x2"]),
             helper.make_node("Reshape", ["x2", "shape"], ["z"])]
    model = _model(nodes, [shape], 24)
    model.graph.node[1].input[0] = "full"  # z reads a tensor that keeps its 24 features
    model.graph.input.append(helper.make_tensor_value_info("full", TensorProto.FLOAT, ["B", 24]))
    _pruned_width(model, 12)
    _patched(model, "y", pos=1, old=4, new=2)
    x, full = np.arange(36, dtype=np.float32).reshape(3, 12), np.ones((3, 24), np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, z = session.run(None, {"x": x, "full": full})
    np.testing.assert_array_equal(y, x.reshape(3, 2, 6))
    assert z.shape == (3, 4, 6)  # the other reader kept the original constant


def test_a_piece_of_a_concat_is_patched_and_a_computed_size_left_alone():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["batch"], axis=0),
             helper.make_node("Constant", [], ["heads"],
                              value=numpy_helper.from_array(np.array([4], np.int64))),
             helper.make_node("Concat", ["batch", "heads", "dim"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([6], np.int64), "dim")]
    model = _model(nodes, inits, 24)
    _pruned_width(model, 12)
    values = {"shape": np.array([3, 4, 6]), "batch": np.array([3])}  # at the example
    _patched(model, "y", pos=1, old=4, new=2, values=values)
    assert "Constant" not in [n.op_type for n in model.graph.node]  # replaced, then dead
    x = np.arange(60, dtype=np.float32).reshape(5, 12)  # another batch: the Gather follows
    np.testing.assert_array_equal(_run(model, x)[0], x.reshape(5, 2, 6))


@pytest.mark.parametrize("held", [0, -1])
def test_zero_and_minus_one_follow_the_input_by_themselves(held):
    shape = numpy_helper.from_array(np.array([-1 if held == 0 else 0, held, 6], np.int64), "shape")
    model = _model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [shape], 24)
    before = model.SerializeToString()
    _patched(model, "y", pos=1, old=4, new=2)
    assert model.SerializeToString() == before


def test_a_constant_holding_something_else_cannot_be_patched():
    shape = numpy_helper.from_array(np.array([0, 3, 8], np.int64), "shape")
    model = _model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="attn/reshape")],
                   [shape], 24)
    with pytest.raises(UnsupportedOpError, match=r"Shape input 'shape' of node 'attn/reshape' "
                                                 r"holds 3 at position 1, where the pruned model "
                                                 r"needs 4 -> 2"):
        _patched(model, "y", pos=1, old=4, new=2)
