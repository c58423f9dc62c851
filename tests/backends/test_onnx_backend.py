"""The onnx and onnxruntime backends: parity against torch on every test model.

Tolerances (``max|ref - out| <= atol + rtol * max|ref|``): fp32 1e-4 / 1e-4, fp16 1e-2 / 1e-2
(``prunec.backends.onnx_backend.TOLERANCES``); the lowering itself enforces them on random
inputs, and these tests check again on other inputs and a batch size of their own.
"""
from __future__ import annotations

import sys

import onnx
import pytest
import torch

from prunec.backends import lower
from prunec.backends.base import IOSpec, check_parity
from prunec.backends.onnx_backend import TOLERANCES, OnnxArtifact
from prunec.backends.onnxruntime_backend import OnnxRuntimeArtifact, pick_providers
from prunec.errors import BackendUnavailable, PrunecError
from tests.backends.models import MODELS, inputs, model, program


def _check(name, art, batch, precision):
    args, kwargs = inputs(name, batch)
    with torch.no_grad():
        ref = model(name)(*args, **kwargs)
    out = art(*args, **kwargs)
    assert type(out) is type(ref)
    atol, rtol = TOLERANCES[precision]
    check_parity(ref, out, atol=atol, rtol=rtol, backend=art.name)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_fp32_parity_dynamic_batch_and_reload(name, tmp_path):
    art = lower(program(name), "onnx")
    dims = art.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    _check(name, art, 5, "fp32")
    path = art.save(tmp_path / f"{name}.onnx")
    onnx.checker.check_model(str(path))
    _check(name, OnnxArtifact.load(path), 4, "fp32")


@pytest.mark.parametrize("name", ["cnn", "attention", "kwargs"])
def test_onnxruntime_fp16_parity(name):
    art = lower(program(name), "onnxruntime", fp16=True)
    types = {i.data_type for i in art.model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types
    out = _check(name, art, 3, "fp16")
    # the fp32 interface is kept: outputs come back in the model's dtype
    assert all(t.dtype == torch.float32 for t in torch.utils._pytree.tree_leaves(out)
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def test_onnxruntime_session_settings_and_reload(tmp_path):
    art = lower(program("mlp"), "onnxruntime", intra_op_threads=1)
    assert art.settings["intra_op_threads"] == 1
    assert art.session.get_providers() == ["CPUExecutionProvider"]
    loaded = OnnxRuntimeArtifact.load(art.save(tmp_path / "mlp.onnx"))
    assert loaded.settings["intra_op_threads"] == 2
    _check("mlp", loaded, 6, "fp32")


def test_onnxruntime_spinning_option():
    from prunec.backends.onnxruntime_backend import session_options

    art = lower(program("mlp"), "onnxruntime", spinning=False)
    assert art.settings["spinning"] is False
    _check("mlp", art, 6, "fp32")
    opts = session_options(2, 1, spinning=False)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default (spinning) applies
        session_options(2, 1).get_session_config_entry("session.intra_op.allow_spinning")


def test_pick_providers_prefers_cuda():
    assert pick_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert pick_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_static_batch_when_asked():
    art = lower(program("mlp"), "onnx", dynamic_batch=False)
    dims = art.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 16]


def test_onnx_axes_follow_the_program_for_a_batch_one_capture():
    prog = program("mlp", batch=1)
    art = lower(prog, "onnx")
    dims = art.model.graph.input[0].type.tensor_type.shape.dim
    expected = IOSpec.from_program(prog).input_shapes[0]
    assert [d.dim_value if d.dim_value else None for d in dims] == expected
    if expected[0] is None:  # a dynamic batch runs at another size
        assert art(torch.randn(3, 16)).shape == (3, 4)


def test_structured_outputs_survive_the_file(tmp_path):
    art = lower(program("kwargs"), "onnx", check=False)
    args, kwargs = inputs("kwargs", 2)
    out = OnnxArtifact.load(art.save(tmp_path / "k.onnx"))(*args, **kwargs)
    assert set(out) == {"logits", "extra"} and out["extra"][1] is None


def test_parity_failure_names_the_output():
    with pytest.raises(PrunecError, match=r"onnx: output 'output' differs .* max abs diff"):
        lower(program("mlp"), "onnx", atol=0.0, rtol=-1.0)  # an impossible bound


def test_missing_onnxruntime_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    for backend in ("onnx", "onnxruntime"):
        with pytest.raises(BackendUnavailable, match="pip install"):
            lower(program("mlp"), backend)


def test_graph_is_cleaned_up():
    art = lower(program("cnn"), "onnx")
    ops = [n.op_type for n in art.model.graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops  # folded into Conv
    assert ops.count("Conv") == 2


@pytest.mark.slow
def test_transformers_model_output_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    from prunec.ir.capture import capture

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32)
    bert = transformers.BertModel(config).eval()
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    art = lower(capture(bert, (ids,), {"attention_mask": mask}), "onnxruntime")
    ids3, mask3 = torch.randint(0, 100, (3, 8)), torch.ones(3, 8, dtype=torch.long)
    with torch.no_grad():
        ref = bert(ids3, attention_mask=mask3)
    out = OnnxArtifact.load(art.save(tmp_path / "bert.onnx"))(ids3, attention_mask=mask3)
    assert type(out) is type(ref)
    check_parity(ref, out, atol=TOLERANCES["fp32"][0], rtol=TOLERANCES["fp32"][1],
                 backend="onnx")


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_dynamic_axes_are_named_from_the_inputs():
    import re

    cnn = lower(program("cnn"), "onnx").model.graph
    assert _dims(cnn.input[0]) == ["batch", 3, "height", "width"]
    kwargs = lower(program("kwargs"), "onnx").model.graph
    assert [_dims(i) for i in kwargs.input] == [["batch", "sequence"]] * 2  # one shared axis
    attention = lower(program("attention"), "onnx").model.graph
    assert _dims(attention.input[0]) == _dims(attention.output[0]) == ["batch", "sequence", 32]
    for graph in (cnn, kwargs, attention):  # no torch symbol (s85) left, expressions included
        every = [*graph.input, *graph.output, *graph.value_info]
        assert not any(re.search(r"\bs\d+\b", d) for v in every for d in _dims(v)
                       if isinstance(d, str))


def test_axis_names_unknown_axes_and_clashes():
    from types import SimpleNamespace as T

    from prunec.backends.onnx_backend import axis_names

    inputs = [T(name="ids", shape=["s0", "s1"]), T(name="mask", shape=["s0", "s1"]),
              T(name="decoder_ids", shape=["s0", "s2"]),
              T(name="x", shape=["s0", 3, "s3", 4, 5, 6])]
    assert axis_names(inputs, ["ids", "mask", "decoder_ids", "x"]) == {
        "s0": "batch", "s1": "sequence", "s2": "decoder_ids_sequence", "s3": "x_dim2"}


@pytest.mark.parametrize("start,end", [(1, 3), (2, None), (-2, None), (0, -1)])
def test_optimize_onnx_folds_shape_with_start_and_end(start, end):
    """``Shape(x, start, end)`` of a static ``x`` feeding a ``Reshape``: the optimised graph
    computes what the original does (onnx-graphsurgeon 0.6.1's fold_constants folded it to
    the whole shape of ``x``)."""
    import numpy as np
    import onnx.helper as h
    import onnxruntime as ort

    from prunec.backends.onnx_backend import optimize_onnx

    f = onnx.TensorProto.FLOAT
    shape_attrs = {"start": start, **({"end": end} if end is not None else {})}
    nodes = [h.make_node("Shape", ["X"], ["s"], **shape_attrs),
             h.make_node("Constant", [], ["m1"],
                         value=h.make_tensor("m1", onnx.TensorProto.INT64, [1], [-1])),
             h.make_node("Concat", ["m1", "s"], ["target"], axis=0),
             h.make_node("Reshape", ["X", "target"], ["Y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("X", f, [2, 3, 4, 5])],
                         [h.make_tensor_value_info("Y", f, None)])
    original = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)

    def run(model):
        return ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]

    expected = run(original)
    assert expected.shape[1:] == x.shape[slice(start, end)]
    got = run(optimize_onnx(original))
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_a_forward_that_updates_its_buffers_is_refused():
    """An ONNX graph cannot keep a step counter: the artifact would answer the first call's
    value forever. The export says so, naming the buffer; batch-norm statistics of an
    eval-mode model are read, not written, and export as before."""
    import prunec
    from tests.test_api import StepCounter

    with pytest.raises(PrunecError, match=r"updates 'steps'.*backend='torch'"):
        prunec.compile(StepCounter().eval(), torch.randn(3, 4), backend="onnx")
    from prunec.ir.interpret import written_attributes

    assert written_attributes(program("cnn").gm) == []  # eval-mode batch norm writes nothing


def test_export_keeps_torchvision_registration_warnings_off_stderr():
    """torch.onnx warns at every export that torchvision's ops are skipped; prunec never
    installs torchvision, so the user sees none of it (the logger is put back after)."""
    import logging

    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        lower(program("mlp"), "onnx")
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "torchvision" in r.getMessage()]
    assert logger.level == logging.NOTSET
