"""prunec.backends.onnx_verify: the second set of feeds a written-back ONNX file is checked
on (every dynamic axis resized, valid token ids kept). The check of written-back files end to
end (pruned file against the stand-in's reference) is in tests/frontends/test_onnx.py and
tests/test_cli_onnx.py."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from prunec.backends.onnx_verify import other_feeds  # noqa: E402
from prunec.frontends.source import OnnxSource  # noqa: E402


def _source(inputs, feeds, initializer_inputs=()) -> OnnxSource:
    specs = [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [1], [0.0]) for n in initializer_inputs]
    specs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in initializer_inputs]
    graph = helper.make_graph([], "g", specs, [], inits)
    return OnnxSource(helper.make_model(graph), None, False, feeds,
                      [name for name, _, _ in inputs])


def test_the_batch_grows_other_symbols_shrink_and_fixed_axes_stay():
    ids = np.arange(2 * 5).reshape(2, 5)
    x = np.zeros((2, 5, 4), dtype=np.float32)
    source = _source([("ids", TensorProto.INT64, ["batch", "seq"]),
                      ("x", TensorProto.FLOAT, ["batch", "seq", 4])], {"ids": ids, "x": x},
                     initializer_inputs=["w"])
    feeds = other_feeds(source, seed=3)
    assert set(feeds) == {"ids", "x"}  # an initializer listed as an input is no feed
    assert feeds["ids"].shape == (3, 4) and feeds["x"].shape == (3, 4, 4)  # one symbol, one size
    np.testing.assert_array_equal(feeds["ids"], ids[[0, 1, 0]][:, :4])  # repeated, cropped
    assert feeds["x"].dtype == np.float32 and feeds["x"].std() > 0.5  # N(0, 1), not zeros
    np.testing.assert_array_equal(other_feeds(source, seed=3)["x"], feeds["x"])  # seeded


def test_short_axes_grow_and_unnamed_dynamic_axes_are_sized_alone():
    mask = np.ones((1, 2), dtype=bool)
    y = np.ones((1, 6), dtype=np.float64)
    source = _source([("mask", TensorProto.BOOL, ["b", "n"]),
                      ("y", TensorProto.DOUBLE, ["b", None])], {"mask": mask, "y": y})
    feeds = other_feeds(source)
    assert feeds["mask"].shape == (2, 3) and feeds["mask"].all()  # n = 2 grows to 3
    assert feeds["y"].shape == (2, 5) and feeds["y"].dtype == np.float64  # its own axis: 6 -> 5


def test_a_static_graph_gets_feeds_of_the_same_shapes():
    x = np.ones((2, 3), dtype=np.float32)
    feeds = other_feeds(_source([("x", TensorProto.FLOAT, [2, 3])], {"x": x}))
    assert feeds["x"].shape == (2, 3) and not np.array_equal(feeds["x"], x)
