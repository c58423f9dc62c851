"""prunec.backends.onnx_graph.GraphEditor: copy-on-write initializers, inserted nodes and
dead-node removal, each checked by running the edited model on ONNX Runtime against numpy."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from prunec.backends.onnx_graph import GraphEditor  # noqa: E402

W = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
B = np.array([1.0, -1.0, 0.5, 2.0], dtype=np.float32)


def _model(*, output_is_add: bool = True) -> onnx.ModelProto:
    """``h = x @ W; a = h + B; b = a * B`` (B read twice); outputs ``a`` and ``b``; plus an
    Identity ``x_id`` of ``x`` read by nobody (the user's own dead node)."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "B"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "B"], ["b"], name="mul"),
             helper.make_node("Identity", ["x"], ["x_id"], name="unused")]
    outputs = [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 4])]
    if output_is_add:
        outputs.insert(0, helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 4]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              outputs, [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session.run(None, {"x": x})))


X = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)


def test_the_unedited_model_computes_what_numpy_does():
    out = _run(_model(), X)
    np.testing.assert_allclose(out["a"], X @ W + B, rtol=1e-6)
    np.testing.assert_allclose(out["b"], (X @ W + B) * B, rtol=1e-6)


def test_a_single_reader_initializer_is_written_in_place_in_its_dtype():
    model = _model()
    editor = GraphEditor(model)
    editor.set_input("h", 1, (W * 2).astype(np.float64))  # MatMul's W: read once
    assert editor.nodes["h"].input[1] == "W" and len(model.graph.initializer) == 2
    assert editor.value("W").dtype == np.float32
    np.testing.assert_allclose(_run(model, X)["a"], X @ (2 * W) + B, rtol=1e-6)


def test_a_shared_initializer_is_copied_on_write_and_the_other_reader_keeps_it():
    model = _model()
    editor = GraphEditor(model)
    assert editor.readers("B") == 2
    editor.set_input("a", 1, np.zeros(4, dtype=np.float32))  # the Add's B only
    new = editor.nodes["a"].input[1]
    assert new != "B" and new.startswith("B__prunec") and editor.nodes["b"].input[1] == "B"
    np.testing.assert_array_equal(editor.value("B"), B)
    out = _run(model, X)
    np.testing.assert_allclose(out["a"], X @ W, rtol=1e-6)
    np.testing.assert_allclose(out["b"], (X @ W) * B, rtol=1e-6)


def test_insert_after_rewires_readers_and_keeps_an_output_name():
    model = _model()
    editor = GraphEditor(model)
    editor.set_input("h", 1, W)  # unchanged values; makes sure edits compose
    model.graph.initializer.append(numpy_helper.from_array(np.float32([3.0]), "three"))
    result = editor.insert_after("a", "Mul", "three", "scale_a")
    assert result == "a"  # `a` is a graph output: the new node takes its name, and the Mul
    # reading `a` inside the graph reads the new value too, as the output does
    out = _run(model, X)
    np.testing.assert_allclose(out["a"], 3 * (X @ W + B), rtol=1e-6)
    np.testing.assert_allclose(out["b"], 3 * (X @ W + B) * B, rtol=1e-6)
    inner = GraphEditor(_model(output_is_add=False))
    result = inner.insert_after("h", "Mul", "B", "scale_h")  # `h` is internal: a fresh name
    assert result.startswith("h__prunec") and inner.nodes["a"].input[0] == result


def test_drop_dead_removes_what_the_edits_left_unread_only():
    model = _model(output_is_add=False)
    editor = GraphEditor(model)
    # b = a * B no longer reads a: the Add and (through it) nothing else becomes dead
    editor.nodes["b"].input[0] = "h"
    editor.drop_dead()
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["MatMul", "Mul", "Identity"]  # the user's unused Identity stays
    assert {t.name for t in model.graph.initializer} == {"W", "B"}
    np.testing.assert_allclose(_run(model, X)["b"], (X @ W) * B, rtol=1e-6)


def test_fresh_names_never_collide():
    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(np.float32([0]), "B__prunec1"))
    editor = GraphEditor(model)
    names = {editor.fresh("B") for _ in range(3)}
    assert len(names) == 3 and "B__prunec1" not in names
