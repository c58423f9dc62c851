"""prunec.frontends.source: the Use map's inverse and how an OnnxSource hands its feeds and
calibration items to the stand-in."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from prunec.frontends.source import OnnxSource, Use


def test_use_to_onnx_inverts_transpose_and_scale():
    onnx_value = np.arange(6, dtype=np.float32).reshape(2, 3)
    use = Use("mm", 1, transpose=True, scale=0.5)
    stand_in = (onnx_value * use.scale).T  # what the stand-in holds
    np.testing.assert_array_equal(use.to_onnx(stand_in), onnx_value)
    plain = Use("add", 1)
    assert plain.to_onnx(onnx_value) is onnx_value


def _source(names: list[str]) -> OnnxSource:
    feeds = {n: np.full((1, 2), i, dtype=np.float32) for i, n in enumerate(names)}
    return OnnxSource(model=None, path=None, external=False, feeds=feeds, input_names=names)


def test_example_args_follow_the_graph_input_order():
    source = _source(["b", "a"])
    args = source.example_args
    assert [float(t[0, 0]) for t in args] == [0.0, 1.0]
    assert all(isinstance(t, torch.Tensor) for t in args)
    assert source.name == "ModelProto"


def test_calibration_items_become_tensors_keyed_or_in_input_order():
    plain = _source(["ids", "mask"])
    items = plain.calibration_items([{"mask": np.ones(2), "ids": np.zeros(2)},
                                     (np.ones(1), 3), np.zeros(2)])
    assert set(items[0]) == {"ids", "mask"} and isinstance(items[0]["ids"], torch.Tensor)
    assert isinstance(items[1], tuple) and isinstance(items[1][0], torch.Tensor) and items[1][1] == 3
    assert isinstance(items[2], torch.Tensor)
    odd = _source(["input.1", "attention-mask"])  # not identifiers: a tuple in graph order
    (item,) = odd.calibration_items([{"attention-mask": np.ones(1), "input.1": np.zeros(1)}])
    assert isinstance(item, tuple) and [float(t[0]) for t in item] == [0.0, 1.0]
    stream = iter([])
    assert odd.calibration_items(stream) is stream  # a stream is converted where it is read


def test_a_source_is_shared_by_copies_and_finds_nodes_by_first_output():
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="n")], "g", [], [])
    source = _source(["x"])
    source.model = helper.make_model(graph)
    assert copy.deepcopy(source) is source
    assert source.node("y").op_type == "Relu"
    with pytest.raises(KeyError):
        source.node("x")
    assert isinstance(source.model, onnx.ModelProto)
