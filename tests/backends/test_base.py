"""The lowering contract: registry, errors, the flat interface and the parity check."""
from __future__ import annotations

import sys

import pytest
import torch

from prunec.backends import BACKENDS, Artifact, IOSpec, lower, register_backend
from prunec.backends.base import check_parity, max_abs_diff, require, sample_inputs
from prunec.errors import BackendUnavailable, PrunecError
from tests.backends.models import inputs, program


def test_unknown_backend_lists_the_names():
    with pytest.raises(PrunecError) as err:
        lower(program("mlp"), "tvm")
    for name in ("torch", "onnx", "onnxruntime", "tensorrt", "inductor"):
        assert name in str(err.value)


def test_registered_callable_is_used():
    class Echo(Artifact):
        name = "echo"

        def __init__(self, program):
            self.program = program

        def __call__(self, *args, **kwargs):
            return self.program.gm(*args, **kwargs)

        def save(self, path):
            return path

    register_backend("echo", lambda program, **options: Echo(program))
    try:
        art = lower(program("mlp"), "echo")
        assert isinstance(art, Echo) and repr(art) == "<Echo backend='echo'>"
        with pytest.raises(NotImplementedError):
            Echo.load("x")
    finally:
        BACKENDS.pop("echo")


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        lower(program("mlp"), "torch", fp16=True)


def test_require_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime"):
        require("onnxruntime", backend="onnxruntime", pip="onnxruntime")


def test_iospec_round_trip_and_structure():
    prog = program("kwargs")
    io = IOSpec.from_program(prog)
    assert io.input_names == ["input_ids", "attention_mask"]
    assert io.batch_inputs == [True, True]
    assert io.output_names == ["logits", "extra_0"]
    args, kwargs = inputs("kwargs", 3)
    tensors = io.flatten_inputs(args, kwargs)
    assert [t.shape[0] for t in tensors] == [3, 3]
    back_args, back_kwargs = io.unflatten_inputs(tensors)
    assert back_kwargs["temperature"] == 2.0 and back_args[0] is args[0]
    again = IOSpec.from_json(io.to_json())
    assert again == io
    out = again.unflatten_outputs([torch.zeros(3, 3), torch.ones(3, 16)])
    assert set(out) == {"logits", "extra"} and out["extra"][1] is None


def test_iospec_rejects_other_constants_and_keywords():
    io = IOSpec.from_program(program("kwargs"))
    (ids,), kwargs = inputs("kwargs", 2)
    with pytest.raises(PrunecError, match="specialised"):
        io.flatten_inputs((ids,), {**kwargs, "temperature": 3.0})
    with pytest.raises(PrunecError, match="Keyword inputs"):
        io.flatten_inputs((ids,), {"attention_mask": kwargs["attention_mask"]})
    with pytest.raises(PrunecError, match="Keyword inputs.*temperature.*missing"):
        io.flatten_inputs((ids,), {"attention_mask": kwargs["attention_mask"]})  # not a switch
    # keyword order does not matter
    io.flatten_inputs((ids,), {"temperature": 2.0, "attention_mask": kwargs["attention_mask"]})


class _TwoTowers(torch.nn.Module):
    """Export gives each input its own batch symbol: nothing ties them together."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 2), torch.nn.Linear(3, 2)

    def forward(self, x, y, z):
        return self.a(x), self.b(y), z * 2


def test_batch_inputs_matched_by_size_not_symbol():
    from prunec.ir.capture import capture

    prog = capture(_TwoTowers(), (torch.randn(2, 4), torch.randn(2, 3), torch.randn(5, 2)))
    assert IOSpec.from_program(prog).batch_inputs == [True, True, False]
    art = lower(prog, "onnx")  # one shared "batch" dim; z keeps its own dynamic sizes
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in art.model.graph.input]
    assert dims[:2] == [["batch", 4], ["batch", 3]]
    assert all(isinstance(d, str) and d != "batch" for d in dims[2])  # dynamic, not the batch


def test_batch_flag_follows_the_program_for_a_batch_one_capture():
    prog = program("mlp", batch=1)
    io = IOSpec.from_program(prog)
    placeholder = next(n for n in prog.graph.nodes if n.op == "placeholder")
    assert io.batch_inputs == [not isinstance(placeholder.meta["val"].shape[0], int)
                               and placeholder.meta["val"].shape[0].node.maybe_as_int() is None]


def test_batch_stays_dynamic_when_captured_with_batch_one():
    io = IOSpec.from_program(program("mlp", batch=1))
    assert io.batch_inputs == [True]


def test_check_parity_names_output_and_error():
    ref = {"a": torch.zeros(3), "b": torch.ones(2)}
    ok = {"a": torch.full((3,), 1e-5), "b": torch.ones(2)}
    assert check_parity(ref, ok, atol=1e-4, rtol=0, backend="x") == pytest.approx(1e-5)
    bad = {"a": torch.zeros(3), "b": torch.tensor([1.0, 1.5])}
    with pytest.raises(PrunecError, match=r"output 'b'.*max abs diff 0\.5"):
        check_parity(ref, bad, atol=1e-4, rtol=1e-4, backend="x", names=["a", "b"])


def test_check_parity_is_relative_to_output_scale():
    ref = torch.tensor([1000.0, 0.0])
    out = torch.tensor([1000.05, 0.0])
    check_parity(ref, out, atol=1e-4, rtol=1e-4, backend="x")  # 0.05 <= 1e-4 + 0.1


def test_max_abs_diff_treats_matching_nans_as_equal():
    a = torch.tensor([float("nan"), 1.0])
    assert max_abs_diff(a, a.clone()) == 0.0


def test_sample_inputs_resizes_batch_and_keeps_integer_inputs():
    prog = program("kwargs")
    io = IOSpec.from_program(prog)
    args, kwargs = sample_inputs(io, prog.example_args, prog.example_kwargs, batch=5)
    assert args[0].shape == (5, 7) and kwargs["attention_mask"].shape == (5, 7)
    assert torch.equal(args[0][:2], prog.example_args[0])
    assert kwargs["temperature"] == 2.0
