"""ONNX in, ONNX out: prune a user's .onnx file and get the same file back, smaller.

Every pruned file is checked by the write-back itself (``compiled.artifact.verified``: equal
to the pruned program at the example, equal to the original with the removed units zeroed or
mean-compensated at the example and at another batch size and sequence length); the tests
check that this verification ran, and check what the user sees directly: names, dims,
opsets, metadata, checker, ONNX Runtime at new shapes, files on disk.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import prunec
from prunec.errors import BackendUnavailable, InvalidArgumentError, PrunecError, UnsupportedOpError
from prunec.passes import MagnitudePruning, VarianceBasedPruning
from tests.frontends import graphs

RNG = np.random.default_rng(0)


def _feeds(model: onnx.ModelProto, batch: int = 2, seq: int = 5) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else (batch if i == 0 else seq)
                for i, d in enumerate(spec.type.tensor_type.shape.dim)]
        feeds[spec.name] = RNG.standard_normal(dims).astype(np.float32)
    return feeds


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _dims(values) -> list:
    return [(v.name, v.type.tensor_type.elem_type,
             [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]


def _n_params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == 1)


def assert_same_interface(original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    """Same inputs/outputs (names, element types, dim_params, fixed dims), opsets, producer,
    user metadata, node names (of the nodes kept); prunec metadata added; checker passes."""
    assert _dims(pruned.graph.input) == _dims(original.graph.input)
    assert _dims(pruned.graph.output) == _dims(original.graph.output)
    assert [(o.domain, o.version) for o in pruned.opset_import] == \
        [(o.domain, o.version) for o in original.opset_import]
    assert (pruned.producer_name, pruned.producer_version, pruned.ir_version) == \
        (original.producer_name, original.producer_version, original.ir_version)
    meta = {p.key: p.value for p in pruned.metadata_props}
    for prop in original.metadata_props:
        assert meta[prop.key] == prop.value
    assert meta["prunec.backend"] == "onnx-original" and "prunec.version" in meta
    assert json.loads(meta["prunec.plans"])
    kept = {n.name for n in pruned.graph.node}
    assert {n.name for n in original.graph.node} <= kept
    onnx.checker.check_model(pruned, full_check=True)


HELPER_GRAPHS = {
    "mlp": (graphs.mlp, (2, 5)),
    "mlp_without_bias": (lambda: graphs.mlp(bias=False), (2, 5)),
    "gemm_transB": (lambda: graphs.gemm(True), (2, 5)),
    "gemm_no_transB": (lambda: graphs.gemm(False), (2, 5)),
    "conv_bn_residual": (graphs.conv_bn_residual, (2, 5)),
    "attention_computed_shapes": (graphs.heads, (2, 5)),
    "depthwise": (graphs.depthwise, (2, 5)),
    "depthwise_multiplier_2": (lambda: graphs.depthwise(multiplier=2), (2, 5)),
    "resize": (graphs.upsample, (2, 5)),
    "resize_to_sizes": (lambda: graphs.upsample(sizes=True), (2, 5)),
}


@pytest.mark.parametrize("name", sorted(HELPER_GRAPHS))
def test_helper_graph_magnitude_round_trip(name):
    build, (batch, seq) = HELPER_GRAPHS[name]
    original = build()
    snapshot = original.SerializeToString()
    feeds = _feeds(original, batch, seq)
    compiled = prunec.compile(original, feeds, passes=[MagnitudePruning(0.5)],
                              backend="onnxruntime")
    pruned = compiled.artifact.model
    assert original.SerializeToString() == snapshot  # the user's ModelProto is untouched
    assert_same_interface(original, pruned)
    assert "zeroed original" in compiled.artifact.verified
    assert _n_params(pruned) < _n_params(original)
    assert compiled.report.macs_after < compiled.report.macs_before
    # any batch (and sequence length) the original took
    other = _feeds(original, batch + 3, seq + 2)
    out = compiled(other)
    assert list(out) == [o.name for o in original.graph.output]
    assert out[original.graph.output[0].name].shape == _run(original, other)[0].shape


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_keeps_one_group_per_channel(multiplier):
    """Pruning the channels a depthwise Conv reads removes whole groups: its ``group``
    attribute follows (ONNX Runtime refuses the file otherwise)."""
    original = graphs.depthwise(multiplier=multiplier)
    compiled = prunec.compile(original, _feeds(original), passes=[MagnitudePruning(0.5)],
                              backend="onnxruntime")
    pruned = compiled.artifact.model
    conv = next(n for n in pruned.graph.node if n.name == "block/dw")
    group = next(a.i for a in conv.attribute if a.name == "group")
    weight = {t.name: list(t.dims) for t in pruned.graph.initializer}[conv.input[1]]
    assert group == 8 and weight == [8 * multiplier, 1, 3, 3]
    assert "zeroed original" in compiled.artifact.verified


def test_gemm_weights_keep_their_layout():
    for trans_b in (True, False):
        original = graphs.gemm(trans_b)
        compiled = prunec.compile(original, _feeds(original), passes=[MagnitudePruning(0.5)],
                                  backend="onnx")
        shapes = {t.name: list(t.dims) for t in compiled.artifact.model.graph.initializer}
        assert shapes["w1"] == ([8, 8] if trans_b else [8, 8])
        assert shapes["w2"] == ([4, 8] if trans_b else [8, 4])
        assert shapes["b1"] == [8]


def test_computed_reshape_shapes_are_patched_at_their_constant():
    original = graphs.heads()
    compiled = prunec.compile(original, _feeds(original), passes=[MagnitudePruning(0.5)],
                              backend="onnxruntime")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in compiled.artifact.model.graph.initializer}
    assert inits["heads_dims"].tolist() == [2, 4]  # 4 heads of 4 -> 2 heads of 4
    assert inits["merged"].tolist() == [8]
    assert "Shape" in {n.op_type for n in compiled.artifact.model.graph.node}  # still computed


def test_grouped_query_attention_repeat_shapes_are_patched():
    """4 query heads share 2 key/value heads through Unsqueeze -> Expand -> Reshape with
    constant shapes (shared by k and v): pruning one kv group (and its 2 query heads) patches
    the kv count in the Expand and Reshape shapes and the query head count."""
    original = graphs.gqa()
    compiled = prunec.compile(original, _feeds(original),
                              passes=[MagnitudePruning(0.5, round_to=1)], backend="onnxruntime")
    assert "zeroed original" in compiled.artifact.verified
    model = compiled.artifact.model
    inits = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in model.graph.initializer}
    shape_of = {n.name: inits[n.input[1]] for n in model.graph.node
                if n.op_type in ("Reshape", "Expand")}
    assert shape_of["q/Reshape"] == [0, 0, 2, 4]
    for name in "kv":
        assert shape_of[f"{name}/Reshape"] == [0, 0, 1, 4]
        assert shape_of[f"{name}/Expand"] == [1, 1, 2, 1, 1]
        assert shape_of[f"{name}/repeat"] == [0, 2, -1, 4]
    assert shape_of["merge/Reshape"] == [0, 0, 8]
    assert compiled.report.macs_after * 2 == compiled.report.macs_before


def test_shared_initializer_is_copied_on_write_and_vbp_adds_a_bias():
    original = graphs.shared_bias()
    feeds = _feeds(original)
    batches = [{"x": torch.from_numpy(_feeds(original)["x"])} for _ in range(3)]
    compiled = prunec.compile(original, feeds,
                              passes=[VarianceBasedPruning(0.5, calibration=batches)],
                              backend="onnxruntime")
    pruned = compiled.artifact.model
    assert "zeroed original" in compiled.artifact.verified  # mean-compensated reference
    readers = {n.name: list(n.input) for n in pruned.graph.node}
    # the two branches lost different units: each reads its own slice of the zero bias
    assert readers["a/add"][1] != readers["b/add"][1]
    inits = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert inits[readers["a/add"][1]] == [8] and inits[readers["b/add"][1]] == [8]
    # the second MatMuls had no bias: the folded means live in new Add nodes
    bias_adds = [n for n in pruned.graph.node if n.op_type == "Add" and "prunec_bias" in n.name]
    assert len(bias_adds) == 2
    assert compiled.plans[0].compensations
    # the plan (compensations keyed by the file's consumer weights) replays from JSON
    plan = prunec.PruningPlan.from_json(compiled.plans[0].to_json())
    replay = prunec.compile(original, feeds, plans=[plan], backend="onnxruntime")
    other = _feeds(original, 5)
    np.testing.assert_array_equal(replay(other)["y"], compiled(other)["y"])


def test_vbp_folds_means_into_gemm_and_conv_biases():
    for original, shape in ((graphs.gemm(True), (2, 8)), (graphs.conv_bn_residual(), (4, 4, 8, 8))):
        x = lambda: torch.from_numpy(RNG.standard_normal(shape).astype(np.float32))  # noqa: E731
        compiled = prunec.compile(original, {"x": x()},
                                  passes=[VarianceBasedPruning(0.5, calibration=[{"x": x()}] * 2,
                                                               targets="all")],
                                  backend="onnxruntime")
        assert "zeroed original" in compiled.artifact.verified
        assert compiled.plans[0].compensations


def test_numpy_calibration_and_input_names_that_are_not_identifiers():
    model = graphs.mlp(bias=False)
    model.graph.input[0].name = "input.1"  # as torch's legacy exporter names inputs
    model.graph.node[0].input[0] = "input.1"
    items = [{"input.1": RNG.standard_normal((4, 8)).astype(np.float32)} for _ in range(2)]
    pass_ = VarianceBasedPruning(0.5, calibration=items)
    compiled = prunec.compile(model, items[0], passes=[pass_], backend="onnxruntime")
    assert "zeroed original" in compiled.artifact.verified
    assert pass_.calibration is items or pass_.calibration == items  # the caller's pass as given
    assert isinstance(items[0]["input.1"], np.ndarray)
    assert compiled.plans[0].compensations


def test_layer_normalised_width_is_checked_against_a_replayed_stand_in():
    """Cutting a LayerNorm'd width is not zeroing it (no zeroed reference): at other shapes
    the file is compared with the plan replayed on the original frozen there."""
    model = graphs.mlp()
    act = next(n for n in model.graph.node if n.name == "act")
    act.input[0] = "normed"
    model.graph.node.insert(2, onnx.helper.make_node(
        "LayerNormalization", ["h1", "ln_w", "ln_b"], ["normed"], name="ln", axis=-1))
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(RNG.uniform(0.5, 1.5, 16).astype(np.float32), "ln_w"),
        onnx.numpy_helper.from_array(RNG.standard_normal(16).astype(np.float32), "ln_b")])
    compiled = prunec.compile(model, _feeds(model), passes=[MagnitudePruning(0.5)],
                              backend="onnxruntime")
    assert "norm-coupled" in compiled.artifact.verified
    assert "equal to the plans replayed on a stand-in frozen at {'x': [3, 8]}" in \
        compiled.artifact.verified
    assert _n_params(compiled.artifact.model) < _n_params(model)


def test_no_rule_keeps_channels():
    """CumSum mixes the channels it sums over: the group stays, the file is unchanged."""
    original = graphs.mlp()
    act = next(n for n in original.graph.node if n.name == "act")
    act.op_type = "CumSum"
    act.input.append("axis")
    original.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1, np.int64), "axis"))
    analysis = prunec.analyze(original, _feeds(original))
    assert not analysis.prunable()
    assert any("mixes" in g.reason for g in analysis)
    compiled = prunec.compile(original, _feeds(original), passes=[MagnitudePruning(0.5)],
                              backend="onnxruntime")
    assert _n_params(compiled.artifact.model) == _n_params(original)


@pytest.mark.parametrize("compensate", [False, True])
def test_depth_pruning_rewires_the_residual_add(compensate):
    from prunec.passes import DepthPruning

    original = graphs.conv_bn_residual()
    calibration = [{"x": torch.randn(2, 4, 8, 8)} for _ in range(3)]
    compiled = prunec.compile(original, _feeds(original, 2, 0),
                              passes=[DepthPruning(1, calibration=calibration,
                                                   compensate=compensate)],
                              backend="onnxruntime")
    pruned = compiled.artifact.model
    assert "zeroed original" in compiled.artifact.verified  # branch zeroed / mean-replaced
    ops = {n.name: (n.op_type, list(n.input)) for n in pruned.graph.node}
    assert not {"block/conv1", "block/bn1", "block/relu1", "block/conv2"} & set(ops)
    if compensate:
        op, inputs = ops["block/add"]
        assert op == "Add" and inputs[0] == "x" and "prunec_block_mean" in inputs[1]
    else:
        assert ops["block/add"] == ("Identity", ["x"])
    assert not {"c1w", "c2w", "bn_s"} & {t.name for t in pruned.graph.initializer}
    onnx.checker.check_model(pruned, full_check=True)


# ---------------------------------------------------------------------------- torch exporters
def _tiny_bert():
    import transformers

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=32)
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Encoder().eval()


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def exported(request, tmp_path_factory):
    """A tiny BERT exported by one of torch's exporters, batch and sequence dynamic."""
    model = _tiny_bert()
    ids, mask = torch.randint(0, 50, (2, 6)), torch.ones(2, 6, dtype=torch.int64)
    path = tmp_path_factory.mktemp(request.param) / "encoder.onnx"
    names = dict(input_names=["input_ids", "attention_mask"], output_names=["hidden"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if request.param == "legacy":
            axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "hidden")}
            torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17,
                              dynamic_axes=axes, **names)
        else:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            shapes = {n: {0: batch, 1: seq} for n in ("input_ids", "attention_mask")}
            torch.onnx.export(model, (ids, mask), str(path), dynamo=True, dynamic_shapes=shapes,
                              verbose=False, **names)
    return request.param, path, {"input_ids": ids, "attention_mask": mask}


def test_torch_exported_encoder(exported, tmp_path):
    kind, path, feeds = exported
    compiled = prunec.compile(str(path), feeds, passes=[MagnitudePruning(0.5)],
                              backend="onnxruntime")
    assert "zeroed original" in compiled.artifact.verified
    original = onnx.load(str(path))
    out = compiled.save(tmp_path / "pruned.onnx")
    assert (tmp_path / "pruned.onnx.data").exists() == (path.parent / "encoder.onnx.data").exists()
    pruned = onnx.load(str(out))
    assert_same_interface(original, pruned)
    assert _n_params(pruned) < _n_params(original)
    loaded = prunec.load(out)
    for batch, seq in ((1, 3), (4, 11)):
        ids = torch.randint(0, 50, (batch, seq))
        result = loaded({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        assert result["hidden"].shape == (batch, seq, 16)
    replay = prunec.compile(str(path), feeds, plans=compiled.plans, backend="onnxruntime")
    assert [list(t.dims) for t in replay.artifact.model.graph.initializer] == \
        [list(t.dims) for t in compiled.artifact.model.graph.initializer]


# ---------------------------------------------------------------------------- bad input
def test_missing_and_truncated_files(tmp_path):
    feeds = {"x": np.ones((2, 8), np.float32)}
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        prunec.compile(str(tmp_path / "nowhere.onnx"), feeds, backend="onnxruntime")
    data = graphs.mlp().SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunecError, match="cut.onnx"):
        prunec.compile(str(tmp_path / "cut.onnx"), feeds, backend="onnxruntime")


def test_checker_failure_and_missing_external_data(tmp_path):
    bad = graphs.mlp()
    bad.graph.node[0].input[1] = "no_such_tensor"
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(PrunecError, match="check_model"):
        prunec.analyze(str(tmp_path / "bad.onnx"), {"x": np.ones((2, 8), np.float32)})
    onnx.save(graphs.mlp(), str(tmp_path / "ext.onnx"), save_as_external_data=True,
              location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(PrunecError, match="external data"):
        prunec.analyze(str(tmp_path / "ext.onnx"), {"x": np.ones((2, 8), np.float32)})


@pytest.mark.parametrize("feeds, match", [
    ({}, "missing \\['x'\\]"),
    ({"x": np.ones((2, 8), np.float32), "y": np.ones(2)}, "unknown \\['y'\\]"),
    ({"x": np.ones((2, 8), np.float64)}, "must be float32"),
    ({"x": np.ones((2, 8, 1), np.float32)}, "must have shape"),
    ({"x": np.ones((2, 7), np.float32)}, "must have shape"),
    ({"x": [[1.0] * 8]}, "numpy array or a torch tensor"),
])
def test_bad_example_inputs(feeds, match):
    with pytest.raises(InvalidArgumentError, match=match):
        prunec.compile(graphs.mlp(), feeds, backend="onnxruntime")


def test_unconvertible_op_is_named():
    model = graphs.mlp()
    act = next(n for n in model.graph.node if n.name == "act")
    act.op_type, act.domain = "FancyRelu", "com.example"
    model.opset_import.add(domain="com.example", version=3)
    with pytest.raises(UnsupportedOpError, match="FancyRelu.*com.example.*opset 3.*'act'"):
        prunec.compile(model, {"x": np.ones((2, 8), np.float32)}, backend="onnxruntime")


def test_backends_an_onnx_file_cannot_take():
    feeds = {"x": np.ones((2, 8), np.float32)}
    with pytest.raises(InvalidArgumentError, match="cannot take an ONNX model"):
        prunec.compile(graphs.mlp(), feeds, backend="inductor")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable):
            prunec.compile(graphs.mlp(), feeds, passes=[MagnitudePruning(0.5)],
                           backend="tensorrt")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    compiled = prunec.compile(graphs.mlp(), _feeds(graphs.mlp()), passes=[MagnitudePruning(0.5)],
                              backend="onnxruntime")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        compiled.save(tmp_path / "missing_dir" / "model.onnx")

    def half_written(proto, path, **_):  # a serialiser that dies after writing part of a file
        with open(path, "wb") as handle:
            handle.write(b"\x08\x08partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", half_written)
    with pytest.raises(OSError, match="disk full"):
        compiled.save(tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    compiled.save(tmp_path / "ok.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.onnx"]


def test_cli_prunes_an_onnx_file(tmp_path, capsys):
    from prunec.cli import main

    onnx.save(graphs.heads(), str(tmp_path / "attn.onnx"))
    code = main(["prune", "--model", str(tmp_path / "attn.onnx"), "--input", "x:float32:1x6x16",
                 "--pass", "magnitude", "--ratio", "0.5", "--output", str(tmp_path / "out"),
                 "--quiet"])
    assert code == 0
    pruned = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert_same_interface(graphs.heads(), pruned)
    assert _n_params(pruned) < _n_params(graphs.heads())
    code = main(["analyze", "--model", str(tmp_path / "attn.onnx"), "--input",
                 "x:float32:1x6x16", "--after", "--pass", "magnitude", "--quiet"])
    assert code == 0 and "out/MatMul" in capsys.readouterr().out
    code = main(["prune", "--model", str(tmp_path / "attn.onnx"), "--pass", "magnitude",
                 "--no-save", "--quiet"])
    assert code == 2
    assert "--input NAME:DTYPE:SHAPE" in capsys.readouterr().err


def test_llama_with_grouped_query_attention(tmp_path):
    """A Llama decoder with 4 query heads sharing 2 key/value heads (GQA), exported by the
    dynamo exporter: its MLP neurons are pruned and the file verified at other shapes."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   use_cache=False)
    llama = transformers.LlamaForCausalLM(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.llama = llama

        def forward(self, input_ids):
            return self.llama(input_ids=input_ids, use_cache=False).logits

    ids = torch.randint(0, 64, (2, 8))
    seq = torch.export.Dim("seq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits().eval(), (ids,), str(tmp_path / "llama.onnx"), dynamo=True,
                          input_names=["input_ids"], output_names=["logits"], verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch"), 1: seq},))
    compiled = prunec.compile(str(tmp_path / "llama.onnx"), {"input_ids": ids},
                              passes=[MagnitudePruning(0.5, targets="mlp")],
                              backend="onnxruntime")
    assert "zeroed original" in compiled.artifact.verified
    assert compiled.report.macs_after < compiled.report.macs_before
    out = compiled({"input_ids": torch.randint(0, 64, (3, 13))})
    assert out["logits"].shape == (3, 13, 64)


@pytest.mark.gpu
def test_tensorrt_engine_from_the_pruned_file():
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    original = graphs.mlp()
    feeds = _feeds(original, 4)
    engine = prunec.compile(original, feeds, passes=[MagnitudePruning(0.5)], backend="tensorrt")
    onnx_rt = prunec.compile(original, feeds, passes=[MagnitudePruning(0.5)],
                             backend="onnxruntime")
    x = torch.from_numpy(feeds["x"])
    got = engine(x.cuda())
    got = got[0] if isinstance(got, (tuple, list)) else got
    torch.testing.assert_close(got.float().cpu(), torch.from_numpy(onnx_rt(feeds)["y"]),
                               atol=1e-3, rtol=1e-3)
