"""prunec.ir.state: which tensors a graph writes (through views and batch norm's undeclared
writes too) and running it on scratch copies of them. The train-mode capture case is in
tests/ir/test_interpret.py; here hand-built graphs pin each rule."""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from prunec.ir.state import has_mutation, is_written, scratch_state, written_attributes

aten = torch.ops.aten


def _module(build) -> fx.GraphModule:
    """A GraphModule with buffer ``buf`` [2, 3], parameter ``w`` [3] and ``build(graph, x,
    buf, w)`` returning the output node."""
    root = nn.Module()
    root.register_buffer("buf", torch.zeros(2, 3))
    root.w = nn.Parameter(torch.ones(3))
    graph = fx.Graph()
    x = graph.placeholder("x")
    buf, w = graph.get_attr("buf"), graph.get_attr("w")
    graph.output(build(graph, x, buf, w))
    return fx.GraphModule(root, graph)


def _nodes(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


def test_a_write_into_a_view_writes_its_base_and_reads_do_not():
    def build(g, x, buf, w):
        row = g.call_function(aten.select.int, (buf, 0, 1))
        g.call_function(aten.add_.Tensor, (row, x))  # buf[1] += x
        return g.call_function(aten.mul.Tensor, (x, w))

    gm = _module(build)
    nodes = _nodes(gm)
    assert is_written(nodes["buf"])
    assert not is_written(nodes["x"]) and not is_written(nodes["w"])
    assert written_attributes(gm) == ["buf"] and has_mutation(gm)


def test_a_pure_graph_writes_nothing():
    gm = _module(lambda g, x, buf, w: g.call_function(aten.add.Tensor, (x, w)))
    assert written_attributes(gm) == [] and not has_mutation(gm)
    assert not any(is_written(n) for n in gm.graph.nodes)


def test_batch_norm_writes_its_running_statistics_only_in_training():
    def bn(training):
        def build(g, x, buf, w):
            # aten.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
            return g.call_function(aten.batch_norm.default,
                                   (x, w, None, buf, buf, training, 0.1, 1e-5, False))
        return _module(build)

    assert written_attributes(bn(True)) == ["buf"]
    assert written_attributes(bn(False)) == []
    assert not has_mutation(bn(True))  # the write is undeclared in the schema


def test_scratch_state_runs_on_copies_and_puts_the_same_objects_back():
    def build(g, x, buf, w):
        row = g.call_function(aten.select.int, (buf, 0, 0))
        g.call_function(aten.add_.Tensor, (row, x))
        g.call_function(aten.mul_.Tensor, (w, 2.0))
        return g.call_function(aten.clone.default, (buf,))

    gm = _module(build)
    buf, w = gm.buf, gm.w
    w.requires_grad_(False)
    assert set(written_attributes(gm)) == {"buf", "w"}
    with torch.no_grad(), scratch_state(gm) as inner:
        assert inner is gm and gm.buf is not buf and gm.w is not w
        assert isinstance(gm.w, nn.Parameter) and not gm.w.requires_grad
        assert "buf" in dict(gm.named_buffers())
        out = gm(torch.full((3,), 5.0))
        torch.testing.assert_close(out[0], torch.full((3,), 5.0))
        torch.testing.assert_close(gm.w, torch.full((3,), 2.0))
    assert gm.buf is buf and gm.w is w
    assert torch.equal(buf, torch.zeros(2, 3)) and torch.equal(w, torch.ones(3))
    with torch.no_grad():  # outside, the writes land
        gm(torch.full((3,), 5.0))
    assert float(buf[0, 0]) == 5.0


def test_scratch_state_restores_on_error_and_takes_explicit_targets():
    gm = _module(lambda g, x, buf, w: g.call_function(aten.add.Tensor, (x, w)))
    buf = gm.buf
    try:
        with scratch_state(gm, targets=["buf"]):
            assert gm.buf is not buf
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert gm.buf is buf
