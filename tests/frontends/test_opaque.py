"""prunec.frontends.opaque: an ONNX node without a converter to torch is run by ONNX Runtime
inside the stand-in; only the channels that reach it or leave it stay, everything else in
the file prunes, is written back and is verified (the write-back's own check against the
original with the removed units zeroed or mean-replaced, at the example and other shapes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import prunec  # noqa: E402
from prunec.errors import UnsupportedOpError  # noqa: E402
from prunec.frontends.onnx import open_onnx  # noqa: E402
from prunec.frontends.opaque import OpaqueModule  # noqa: E402
from prunec.ir.capture import capture  # noqa: E402
from prunec.ir.channels import analyze_channels  # noqa: E402
from prunec.passes import MagnitudePruning, VarianceBasedPruning  # noqa: E402
from tests.frontends import graphs  # noqa: E402
from tests.frontends.test_onnx import assert_same_interface  # noqa: E402
from tests.helpers import require_onnx2torch  # noqa: E402

require_onnx2torch()

RNG = np.random.default_rng(0)
GRU_INPUTS = ("onnx::GRU_121", "onnx::GRU_122", "onnx::GRU_123")


def _x(batch: int = 2, length: int = 7) -> np.ndarray:
    return RNG.standard_normal((batch, 3, length)).astype(np.float32)


def _run(model: "onnx.ModelProto", feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _gru(model: "onnx.ModelProto") -> "onnx.NodeProto":
    return next(n for n in model.graph.node if n.op_type == "GRU")


def _check_pruned_around_the_gru(original: "onnx.ModelProto", compiled, conv: bool) -> None:
    """Same interface; the head's hidden layer (and conv 1 where ``conv``) shrank; conv 2
    (which feeds the GRU), the GRU's node and weights and the head's input width are as in
    the file."""
    pruned = compiled.artifact.model
    assert_same_interface(original, pruned)
    assert "zeroed original" in compiled.artifact.verified
    before = {t.name: t for t in original.graph.initializer}
    after = {t.name: t for t in pruned.graph.initializer}
    assert (after["c1.weight"].dims[0] < 8) == conv
    assert after["c2.weight"].dims[1] == after["c1.weight"].dims[0]
    assert after["c2.weight"].dims[0] == 8 and list(after["c2.bias"].dims) == [8]
    assert after["fc1.weight"].dims[0] < 16 and after["fc1.weight"].dims[1] == 6
    assert after["fc2.weight"].dims[1] == after["fc1.weight"].dims[0]
    for name in GRU_INPUTS:  # read only by the GRU: never sliced, bit for bit the same
        assert after[name].SerializeToString() == before[name].SerializeToString()
    assert _gru(pruned).SerializeToString() == _gru(original).SerializeToString()
    note = next(n for n in compiled.report.capture_notes if "kept opaque" in n)
    assert "'/gru/GRU' (GRU)" in note
    other = {"x": _x(5, 4)}  # any batch and length the file took
    assert compiled(other)["y"].shape == (5, 4) == _run(original, other)[0].shape


def test_magnitude_prunes_around_a_gru():
    original = graphs.conv_gru()
    snapshot = original.SerializeToString()
    compiled = prunec.compile(original, {"x": _x()}, backend="onnxruntime",
                              passes=[MagnitudePruning(0.5, scope="local", round_to=1)])
    assert original.SerializeToString() == snapshot
    _check_pruned_around_the_gru(original, compiled, conv=True)
    # the plan (named by the file's tensors) replays from JSON on a fresh stand-in
    plan = prunec.PruningPlan.from_json(compiled.plans[0].to_json())
    replay = prunec.compile(original, {"x": _x()}, plans=[plan], backend="onnxruntime")
    other = {"x": _x(3, 5)}
    np.testing.assert_array_equal(replay(other)["y"], compiled(other)["y"])


def test_variance_based_pruning_calibrates_through_the_gru():
    """VBP runs the stand-in on its calibration batches (the GRU by ONNX Runtime: the head's
    statistics come from its real outputs) and folds the means of the removed head units
    into fc2's bias; the written file equals the original with those units replaced by
    their means."""
    original = graphs.conv_gru()
    batches = [{"x": torch.from_numpy(_x())} for _ in range(3)]
    compiled = prunec.compile(original, {"x": _x()}, backend="onnxruntime", passes=[
        VarianceBasedPruning(0.5, calibration=batches, round_to=1)])
    assert compiled.plans[0].compensations
    _check_pruned_around_the_gru(original, compiled, conv=False)


def test_the_stand_in_runs_the_gru_with_onnx_runtime():
    original = graphs.conv_gru()
    source = open_onnx(original, {"x": _x()})
    opaque = [m for m in source.module.modules() if isinstance(m, OpaqueModule)]
    assert [m.op_type for m in opaque] == ["GRU"]
    x = _x()
    with torch.no_grad():
        got = source.module(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), _run(original, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert source.opaque == ["ONNX node '/gru/GRU' (GRU) kept opaque: ONNX Runtime runs it, "
                             "the channels it reads and writes are not pruned"]


def test_the_channel_analysis_blocks_every_channel_of_the_opaque_op():
    """The custom op has no coupling rule: every axis it reads (conv 2's output, through the
    transpose; the GRU's weights) and writes (the head's input) is unprunable, naming the
    ONNX node; conv 1's and the head's hidden channels stay prunable."""
    source = open_onnx(graphs.conv_gru(), {"x": _x()})
    program = capture(source.module, source.example_args, dynamic=False)
    groups = {g.key: g for g in analyze_channels(program)}
    assert groups["c1/Conv.weight:0"].prunable and groups["fc1/Gemm.weight:0"].prunable
    for key in ("c2/Conv.weight:0", "fc1/Gemm.weight:1"):
        assert not groups[key].prunable
        assert "no coupling rule for run_node" in groups[key].reason
        assert "in module 'gru/GRU'" in groups[key].reason
    weights = [k for k in groups if k.startswith("initializers.onnx__GRU")]
    assert weights and not any(groups[k].prunable for k in weights)


def test_an_op_from_another_domain_that_onnx_runtime_runs():
    """``com.microsoft.Gelu``: onnx's shape inference does not know it, ONNX Runtime's does;
    the layer before it prunes, its own width stays."""
    original = graphs.contrib_mlp()
    compiled = prunec.compile(original, {"x": RNG.standard_normal((2, 8)).astype(np.float32)},
                              passes=[MagnitudePruning(0.5)], backend="onnxruntime")
    assert "zeroed original" in compiled.artifact.verified
    shapes = {t.name: list(t.dims) for t in compiled.artifact.model.graph.initializer}
    assert shapes == {"w1": [8, 8], "b1": [8], "w2": [8, 8], "w3": [8, 4]}
    assert any("'special' (com.microsoft.Gelu) kept opaque" in n
               for n in compiled.report.capture_notes)


def test_an_op_onnx_runtime_cannot_run_is_refused_by_name():
    model = graphs.contrib_mlp("FancyRelu", "com.example")
    with pytest.raises(UnsupportedOpError, match=r"ONNX op 'FancyRelu' \(domain 'com.example', "
                                                 r"opset 1\) at node 'special' has no converter "
                                                 r"to torch, and prunec cannot keep it opaque: "
                                                 r"ONNX Runtime cannot run it either"):
        prunec.compile(model, {"x": np.ones((2, 8), np.float32)}, backend="onnxruntime")


def test_an_output_whose_size_depends_on_the_data_is_refused_by_name():
    feeds = {"boxes": RNG.random((1, 6, 4)).astype(np.float32),
             "scores": RNG.random((1, 1, 6)).astype(np.float32)}
    with pytest.raises(UnsupportedOpError, match=r"'NonMaxSuppression' .* at node 'nms' .*no "
                                                 r"static shape .* output 0 \('kept'\)"):
        prunec.compile(graphs.nms(), feeds, passes=[MagnitudePruning(0.5)],
                       backend="onnxruntime")


def test_the_fake_refuses_other_shapes_than_recorded():
    source = open_onnx(graphs.conv_gru(), {"x": _x()})
    with pytest.raises(UnsupportedOpError, match=r"'/gru/GRU' \(GRU\) runs opaque at the shapes "
                                                 r"of the example inputs"):
        capture(source.module, (torch.from_numpy(_x(3)),), dynamic=False)


def test_the_cli_names_the_opaque_node(tmp_path, capsys):
    from prunec.cli import main

    onnx.save(graphs.conv_gru(), str(tmp_path / "gru.onnx"))
    code = main(["prune", "--model", str(tmp_path / "gru.onnx"), "--input", "x:float32:2x3x7",
                 "--pass", "magnitude", "--ratio", "0.5", "--output", str(tmp_path / "out")])
    assert code == 0
    assert "ONNX node '/gru/GRU' (GRU) kept opaque" in capsys.readouterr().out
    pruned = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert _gru(pruned).SerializeToString() == _gru(graphs.conv_gru()).SerializeToString()


def test_an_lstm_with_an_omitted_output_and_a_graph_output():
    """An LSTM whose ``Y_h`` the file omits (outputs ``y, "", c``), ``y`` a graph output and
    ``c`` read by the head: fc1's hidden units prune, fc2 (which feeds the LSTM) keeps its
    width, and the LSTM's weights stay as they were."""
    original = graphs.lstm()
    compiled = prunec.compile(original, {"x": RNG.standard_normal((3, 2, 5)).astype(np.float32)},
                              passes=[MagnitudePruning(0.5)], backend="onnxruntime")
    assert "zeroed original" in compiled.artifact.verified
    before = {t.name: t for t in original.graph.initializer}
    after = {t.name: t for t in compiled.artifact.model.graph.initializer}
    assert list(after["w1"].dims) == [5, 8] and list(after["w2"].dims) == [8, 6]
    for name in ("W", "R", "B", "w3"):
        assert after[name].SerializeToString() == before[name].SerializeToString()
    lstm = next(n for n in compiled.artifact.model.graph.node if n.op_type == "LSTM")
    assert list(lstm.output) == ["y", "", "c"]


def test_roi_align_without_torchvision():
    """RoiAlign (onnx2torch's converter needs torchvision) runs opaque: conv1's channels
    prune, conv2's (which RoiAlign pools) stay."""
    from prunec.frontends.converters import import_onnx2torch, torchvision_missing

    import_onnx2torch()
    if not torchvision_missing():
        pytest.skip("torchvision is installed: onnx2torch converts RoiAlign itself")
    feeds = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32),
             "rois": np.array([[0, 0, 4, 4], [2, 1, 7, 6]], np.float32),
             "idx": np.zeros(2, np.int64)}
    compiled = prunec.compile(graphs.roi_align(), feeds, passes=[MagnitudePruning(0.5)],
                              backend="onnxruntime")
    assert "zeroed original" in compiled.artifact.verified
    shapes = {t.name: list(t.dims) for t in compiled.artifact.model.graph.initializer}
    assert shapes["w1"] == [8, 3, 3, 3] and shapes["w2"] == [8, 8, 3, 3]
    assert any("'roi' (RoiAlign) kept opaque" in n for n in compiled.report.capture_notes)


def test_a_resize_torch_cannot_mirror_keeps_its_channels_instead_of_refusing_the_file():
    """A cubic Resize runs opaque: the convolution it reads keeps its channels (nothing else
    is prunable in this file), the file is written back unchanged in size and verified."""
    original = graphs.upsample(mode="cubic")
    compiled = prunec.compile(original, {"x": RNG.standard_normal((2, 4, 8, 8)).astype(
        np.float32)}, passes=[MagnitudePruning(0.5)], backend="onnxruntime")
    shapes = {t.name: list(t.dims) for t in compiled.artifact.model.graph.initializer}
    assert shapes == {t.name: list(t.dims) for t in original.graph.initializer}
    assert any("'up' (Resize) kept opaque" in n for n in compiled.report.capture_notes)
    assert compiled.artifact.verified.startswith("equal to the pruned program")


def test_an_if_whose_branches_read_the_main_graph():
    """An ``If`` on the data: its branches read ``a`` from the main graph, which the one-node
    model takes as an input; the stand-in follows the branch the data picks, fc2's hidden
    units prune, ``a`` (fc1's output) keeps its width."""
    original = graphs.branch()
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    compiled = prunec.compile(original, {"x": x}, passes=[MagnitudePruning(0.5)],
                              backend="onnxruntime")
    assert "zeroed original" in compiled.artifact.verified
    shapes = {t.name: list(t.dims) for t in compiled.artifact.model.graph.initializer}
    assert shapes["w1"] == [8, 16] and shapes["w2"] == [16, 8] and shapes["w3"] == [8, 4]
    source = open_onnx(original, {"x": x})
    for sign in (1.0, -1.0):  # both branches, in the stand-in and in the pruned file
        feeds = {"x": np.abs(x) * np.float32(sign)}
        with torch.no_grad():
            got = source.module(torch.from_numpy(feeds["x"])).numpy()
        np.testing.assert_allclose(got, _run(original, feeds)[0], rtol=1e-5, atol=1e-6)


def test_a_new_export_of_the_stand_in_names_the_opaque_node():
    """Only the write-back into the file holds an opaque node: exporting the stand-in anew
    is refused naming the node, not a converter error (latency timing takes the write-back,
    see below)."""
    from prunec.backends.onnx_backend import export_onnx
    from prunec.errors import PrunecError

    source = open_onnx(graphs.conv_gru(), {"x": _x()})
    program = capture(source.module, source.example_args, dynamic=False)
    with pytest.raises(PrunecError, match=r"runs ONNX node\(s\) '/gru/GRU' \(GRU\) of its "
                                          r"\.onnx file by ONNX Runtime"):
        export_onnx(program, dynamic_batch=False)


def test_a_latency_target_times_the_written_back_file(tmp_path, monkeypatch):
    """Latency tables and plans of a program from an .onnx file are timed as the file
    written back (what compile delivers), not a re-export, which a stand-in running an
    opaque node cannot give: the dense program times the original graph, a pruned one its
    written-back graph, and a latency target on such a file plans (or refuses by the
    latency reached, never by the export)."""
    from prunec.backends.onnx_original import OriginalOnnxArtifact
    from prunec.errors import PlanError
    from prunec.frontends.source import SOURCE_KEY
    from prunec.passes import latency_table
    from prunec.rewrite import PruningPlan, apply_plan

    source = open_onnx(graphs.conv_gru(), {"x": _x()})
    program = capture(source.module, source.example_args, dynamic=False)
    program.gm.meta[SOURCE_KEY] = source
    spec = prunec.LatencyTarget(0.9, backend="onnxruntime", threads=1).spec()
    dense = latency_table.lower_for_timing(program, spec)
    assert isinstance(dense, OriginalOnnxArtifact)
    assert _gru(dense.model).SerializeToString() == _gru(source.model).SerializeToString()
    variant = program.clone(share_tensors=True)
    apply_plan(variant, PruningPlan({"c1/Conv.weight:0": [0, 2, 4, 6]}))
    pruned = latency_table.lower_for_timing(variant, spec)
    shapes = {t.name: list(t.dims) for t in pruned.model.graph.initializer}
    assert shapes["c1.weight"][0] == 4 and shapes["c2.weight"][1] == 4
    x = torch.from_numpy(_x())
    np.testing.assert_allclose(pruned(x)["y"].numpy(), variant.run(x).detach().numpy(),
                               rtol=1e-4, atol=1e-5)

    monkeypatch.setenv(latency_table.CACHE_ENV, str(tmp_path))
    target = prunec.LatencyTarget(0.95, backend="onnxruntime", threads=1, rounds=2)
    try:
        compiled = prunec.compile(graphs.conv_gru(), {"x": _x()}, backend="onnxruntime",
                                  passes=[MagnitudePruning(latency=target, round_to=1)])
    except PlanError as exc:  # the GRU may dominate: then the reachable latency is named
        assert "best reachable" in str(exc)
    else:
        assert compiled.report.latency["backend"] == "onnxruntime"
        assert "zeroed original" in compiled.artifact.verified


@pytest.mark.parametrize("op", ["Opaque", "Linear"])
def test_a_file_using_prunecs_own_domain_is_refused(op):
    """``prunec.Opaque`` / ``prunec.Linear`` are prunec's private nodes: one in the user's
    file would run a spec the file wrote (a one-node model of its choosing) or be taken for
    a fused layer; the file is refused naming the node before anything is converted."""
    model = graphs.contrib_mlp(op, "prunec")
    with pytest.raises(UnsupportedOpError, match=r"node 'special' .*domain 'prunec'.*reserved"):
        prunec.compile(model, {"x": np.ones((2, 8), np.float32)}, backend="onnxruntime")


def test_onnx_runtime_failing_on_the_data_names_the_node_and_the_input():
    """Calibration items of another dtype than the file's reach the opaque node first: ONNX
    Runtime's refusal becomes an error naming the node and the input it got (and
    calibration names the item's input), not a bare ONNX Runtime error."""
    from prunec.errors import CalibrationError
    from prunec.frontends.opaque import OpaqueRunError

    model = graphs.contrib_mlp()
    source = open_onnx(model, {"x": np.ones((2, 8), np.float32)})
    opaque = next(m for m in source.module.modules() if isinstance(m, OpaqueModule))
    with pytest.raises(OpaqueRunError, match=r"ONNX node 'special' \(com.microsoft.Gelu\).*"
                                             r"ONNX Runtime.*float64\[2, 8\]"):
        opaque(torch.ones(2, 8, dtype=torch.float64))
    h = onnx.helper.make_node  # the same op first: the data reaches it before any torch op
    first = onnx.helper.make_graph(
        [h("Gelu", ["x"], ["g"], name="special", domain="com.microsoft"),
         h("MatMul", ["g", "w1"], ["a"], name="fc1"), h("Relu", ["a"], ["r"], name="act"),
         h("MatMul", ["r", "w2"], ["y"], name="fc2")], "first",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n)
         for n, s in (("w1", (8, 16)), ("w2", (16, 4)))])
    model = onnx.helper.make_model(first, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid(
                                                             "com.microsoft", 1)])
    model.ir_version = 8
    with pytest.raises(CalibrationError, match=r"calibration item 0: input 'x'.*float64"):
        prunec.compile(model, {"x": np.ones((2, 8), np.float32)}, backend="onnxruntime",
                       passes=[VarianceBasedPruning(0.5, calibration=[
                           torch.ones(2, 8, dtype=torch.float64)])])


def test_many_opaque_nodes_keep_their_sessions(monkeypatch):
    """A file with more opaque nodes than a small cache holds (an ONNX Runtime-optimised
    transformer has several contrib ops per layer): every node's session is made once, not
    again at every call of the stand-in."""
    from prunec.frontends import opaque

    h = onnx.helper.make_node
    count = 70
    nodes = [h("Gelu", [f"v{i}"], [f"v{i + 1}"], name=f"gelu{i}", domain="com.microsoft")
             for i in range(count)]
    nodes.append(h("MatMul", [f"v{count}", "w"], ["y"], name="fc"))
    graph = onnx.helper.make_graph(
        nodes, "many", [onnx.helper.make_tensor_value_info("v0", onnx.TensorProto.FLOAT, [2, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [onnx.numpy_helper.from_array(RNG.standard_normal((8, 4)).astype(np.float32), "w")])
    model = onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    source = open_onnx(model, {"v0": np.ones((2, 8), np.float32)})
    x = torch.randn(2, 8)
    with torch.no_grad():
        first = source.module(x)
    made = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: made.append(1) or real(*a, **k))
    with torch.no_grad():
        second = source.module(x)
    assert not made and torch.equal(first, second)


def test_an_opaque_node_reading_values_computed_from_another():
    """Two contrib ops, directly chained and with an ``Add`` between: onnx's shape inference
    types none of the values after the first; the types ONNX Runtime gave its outputs serve
    the next ones, so every node runs opaque instead of the file being refused."""
    h = onnx.helper.make_node
    nodes = [h("Gelu", ["x"], ["a"], name="g1", domain="com.microsoft"),
             h("Gelu", ["a"], ["b"], name="g2", domain="com.microsoft"),
             h("Add", ["b", "bias"], ["c"], name="add"),
             h("Gelu", ["c"], ["d"], name="g3", domain="com.microsoft"),
             h("MatMul", ["d", "w"], ["y"], name="fc")]
    graph = onnx.helper.make_graph(
        nodes, "chain", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [onnx.numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n)
         for n, s in (("bias", (8,)), ("w", (8, 4)))])
    model = onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    source = open_onnx(model, {"x": x})
    assert len([m for m in source.module.modules() if isinstance(m, OpaqueModule)]) == 3
    with torch.no_grad():
        got = source.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_a_cubic_resize_after_an_opaque_node_runs_opaque_too():
    """onnx's shape inference stops at a contrib op, so the cubic ``Resize`` after it had no
    input shape at conversion: its converter could not decide then, and the file was refused
    at capture. The opaque node's output types reach the converters: the Resize runs opaque
    as well, and the first conv still prunes."""
    h = onnx.helper.make_node
    nodes = [h("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             h("Relu", ["c0"], ["a"], name="act"),
             h("Conv", ["a", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h("Gelu", ["c1"], ["g"], name="special", domain="com.microsoft"),
             h("Resize", ["g", "", "scales"], ["r"], name="resize", mode="cubic"),
             h("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    inits = [onnx.numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n)
             for n, s in (("w0", (8, 3, 3, 3)), ("w1", (4, 8, 3, 3)), ("w2", (2, 4, 3, 3)))]
    inits.append(onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    graph = onnx.helper.make_graph(
        nodes, "resize_after", [onnx.helper.make_tensor_value_info(
            "x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2, 8, 8])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    compiled = prunec.compile(model, {"x": x}, passes=[MagnitudePruning(0.5, round_to=1)],
                              backend="onnxruntime")
    assert "zeroed original" in compiled.artifact.verified
    notes = " ".join(compiled.report.capture_notes)
    assert "'special' (com.microsoft.Gelu) kept opaque" in notes
    assert "'resize' (Resize) kept opaque" in notes
    shapes = {t.name: list(t.dims) for t in compiled.artifact.model.graph.initializer}
    assert shapes["w0"][0] < 8 and shapes["w1"] == [4, shapes["w0"][0], 3, 3]


def test_an_op_no_shape_inference_knows_is_refused_saying_so():
    """``com.microsoft.FusedMatMul``: ONNX Runtime runs it, but neither onnx's nor ONNX
    Runtime's symbolic shape inference types its output; the message says that may be why,
    not only that its size depends on the data."""
    model = graphs.contrib_mlp("FusedMatMul")
    node = next(n for n in model.graph.node if n.name == "special")
    node.input.append("w2b")
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        RNG.standard_normal((8, 8)).astype(np.float32), "w2b"))
    with pytest.raises(UnsupportedOpError, match=r"'FusedMatMul' .* at node 'special' .*an op "
                                                 r"neither inference knows"):
        prunec.compile(model, {"x": np.ones((2, 8), np.float32)}, backend="onnxruntime")
