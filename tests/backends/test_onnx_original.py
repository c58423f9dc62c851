"""prunec.backends.onnx_original: the plan written back into the user's own ONNX graph
(Gemm with alpha, beta and transB here), checked against the original graph with the removed
units zeroed by hand; and its atomic save, with external data. Round trips of many exported
graphs are in tests/frontends/test_onnx.py."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

import prunec  # noqa: E402
from prunec.backends.onnx_original import save_model, write_back  # noqa: E402
from prunec.frontends.onnx import onnx_source  # noqa: E402
from prunec.passes import MagnitudePruning  # noqa: E402
from tests.frontends import graphs  # noqa: E402
from tests.helpers import require_onnx2torch  # noqa: E402

require_onnx2torch()

RNG = np.random.default_rng(1)
INITS = {"W1": RNG.standard_normal((6, 16)).astype(np.float32),  # no transB: [in, out]
         "B1": RNG.standard_normal(16).astype(np.float32),
         "W2": RNG.standard_normal((3, 16)).astype(np.float32),  # transB: [out, in]
         "B2": RNG.standard_normal(3).astype(np.float32)}


def _model(inits=INITS) -> onnx.ModelProto:
    return graphs.scaled_gemms(inits)


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def pruned():
    original = _model()
    compiled = prunec.compile(original, {"x": RNG.standard_normal((2, 6)).astype(np.float32)},
                              passes=[MagnitudePruning(0.5, round_to=1)], backend="onnxruntime")
    return original, compiled


def test_numerical_the_file_equals_the_original_with_removed_units_zeroed(pruned):
    original, compiled = pruned
    (plan,) = compiled.plans
    (kept,) = plan.keep.values()
    removed = sorted(set(range(16)) - set(kept))
    zeroed = {k: v.copy() for k, v in INITS.items()}
    zeroed["W1"][:, removed] = 0
    zeroed["B1"][removed] = 0
    zeroed["W2"][:, removed] = 0
    x = RNG.standard_normal((5, 6)).astype(np.float32)  # another batch size
    np.testing.assert_allclose(_run(compiled.artifact.model, x), _run(_model(zeroed), x),
                               rtol=1e-5, atol=1e-5)
    assert np.abs(_run(original, x) - _run(_model(zeroed), x)).max() > 1e-3


def test_structural_same_ops_and_names_smaller_initializers(pruned):
    original, compiled = pruned
    model = compiled.artifact.model
    assert [(n.op_type, n.name) for n in model.graph.node] == \
        [(n.op_type, n.name) for n in original.graph.node]
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert shapes == {"W1": (6, 8), "B1": (8,), "W2": (3, 8), "B2": (3,)}
    gemm = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert gemm["alpha"] == 0.5 and gemm["beta"] == 2.0  # scales kept: the stand-in's undone
    assert {t.name: tuple(t.dims) for t in original.graph.initializer}["W1"] == (6, 16)


def test_idempotence_writing_back_twice_gives_the_same_file_and_a_rerun_changes_nothing(pruned):
    original, compiled = pruned
    source = onnx_source(compiled.program)
    first, second = write_back(source, compiled.program), write_back(source, compiled.program)
    assert first.SerializeToString() == second.SerializeToString()
    assert source.model.SerializeToString() == original.SerializeToString()  # never edited
    program = compiled.program.clone()
    assert not MagnitudePruning(0.5, round_to=1)(program).modified


def test_save_model_with_external_data_is_whole_and_leaves_no_scratch(tmp_path):
    big = dict(INITS, W1=RNG.standard_normal((6, 256)).astype(np.float32),
               B1=RNG.standard_normal(256).astype(np.float32),
               W2=RNG.standard_normal((3, 256)).astype(np.float32))
    model = _model(big)
    path = save_model(model, tmp_path / "m.onnx", external=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    loaded = onnx.load(str(path))
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(loaded, x), _run(model, x))
    assert all(t.HasField("raw_data") for t in model.graph.initializer)  # the caller's copy
    save_model(model, tmp_path / "small.onnx", external=False)
    assert not (tmp_path / "small.onnx.data").exists()


def _big(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return dict(INITS, W1=rng.standard_normal((6, 256)).astype(np.float32),
                B1=rng.standard_normal(256).astype(np.float32),
                W2=rng.standard_normal((3, 256)).astype(np.float32))


def test_overwriting_an_external_data_model_never_pairs_old_graph_and_new_weights(
        tmp_path, monkeypatch):
    """A save over an existing model with external weights: the new weights go to a new file
    until the graph is replaced; a save cut off before that leaves the old model whole; the
    old weights are removed once nothing reads them."""
    import os

    from prunec.backends import onnx_original

    first, second = _model(_big(1)), _model(_big(2))
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    path = save_model(first, tmp_path / "m.onnx", external=True)

    real_replace = os.replace

    def cut_off(src, dst):  # the save dies before the graph is renamed into place
        if str(dst).endswith("m.onnx"):
            raise OSError("disk full")
        return real_replace(src, dst)
    monkeypatch.setattr(onnx_original.os, "replace", cut_off)
    with pytest.raises(OSError, match="disk full"):
        save_model(second, path, external=True)
    monkeypatch.setattr(onnx_original.os, "replace", real_replace)
    np.testing.assert_array_equal(_run(onnx.load(str(path)), x), _run(first, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]

    save_model(second, path, external=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "m.onnx" and len(names) == 2
    assert names[1].startswith("m.onnx.") and names[1].endswith(".data")
    assert names[1] != "m.onnx.data"  # the old model's weights were never overwritten
    np.testing.assert_array_equal(_run(onnx.load(str(path)), x), _run(second, x))
    save_model(first, path, external=True)  # and back: the usual name is free again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    np.testing.assert_array_equal(_run(onnx.load(str(path)), x), _run(first, x))


def test_saving_the_pruned_model_never_touches_the_sources_own_weights(tmp_path):
    """The source graph ``orig.onnx`` reads ``m.onnx.data`` (a graph copied or renamed after
    export); the pruned model saved as ``m.onnx`` beside it must neither overwrite that file
    (its usual data name) nor remove it on a later save: the source still loads, whole."""
    original = _model(_big(3))
    onnx.save_model(_model(_big(3)), str(tmp_path / "orig.onnx"), save_as_external_data=True,
                    location="m.onnx.data", size_threshold=0)
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    compiled = prunec.compile(str(tmp_path / "orig.onnx"), {"x": x}, backend="onnxruntime",
                              passes=[MagnitudePruning(0.5, round_to=1)])
    for _ in range(2):  # a new file, then a save over it
        compiled.artifact.save(tmp_path / "m.onnx")
        np.testing.assert_array_equal(_run(onnx.load(str(tmp_path / "orig.onnx")), x),
                                      _run(original, x))
        np.testing.assert_array_equal(_run(onnx.load(str(tmp_path / "m.onnx")), x),
                                      compiled({"x": x})["y"])
