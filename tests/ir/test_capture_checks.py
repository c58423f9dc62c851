"""prunec.ir.capture_checks: the model, example inputs and ``dynamic`` checked before export
runs, each refusal naming the argument or input; accepted inputs come back as clones. The
same checks seen through prunec.compile are in tests/test_bad_input.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunec.errors import CaptureError, InvalidArgumentError
from prunec.ir.capture_checks import check_dynamic, check_example_inputs, check_model, clone_inputs


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, mask=None):
        return self.fc(x if mask is None else x * mask)


def test_clone_inputs_clones_tensors_detached_and_keeps_other_leaves():
    x = torch.randn(2, 3, requires_grad=True)
    tree = {"x": x, "n": 3, "pair": (x, "s")}
    out = clone_inputs(tree)
    assert out["n"] == 3 and out["pair"][1] == "s"
    for t in (out["x"], out["pair"][0]):
        assert torch.equal(t, x) and not t.requires_grad
        assert t.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("model, error, says", [
    (TwoInputs, InvalidArgumentError, r"net is the class TwoInputs, not a model.*TwoInputs\(\.\.\.\)"),
    ("ckpt.pt", InvalidArgumentError, r"net is the path 'ckpt.pt', not an .onnx file"),
    (lambda x: x, InvalidArgumentError, r"net must be a torch.nn.Module .* got function"),
    (nn.DataParallel(nn.Linear(2, 2)), CaptureError, r"net is wrapped in DataParallel; pass net.module"),
])
def test_check_model_refuses_naming_the_argument(model, error, says):
    with pytest.raises(error, match=says):
        check_model(model, "net")


def test_check_model_refuses_script_and_compiled_modules_and_returns_a_module_as_is():
    model = TwoInputs()
    assert check_model(model) is model
    with pytest.raises(CaptureError, match="model is a TorchScript module"):
        check_model(torch.jit.script(nn.Linear(2, 2)))
    with pytest.raises(CaptureError, match=r"torch.compile wrapper; pass the module it wraps \(model._orig_mod\)"):
        check_model(torch.compile(nn.Linear(2, 2)))


def test_check_example_inputs_returns_clones_by_position_and_keyword():
    model, x, mask = TwoInputs(), torch.randn(3, 4), torch.ones(3, 4)
    for given in (x, (x,), [x]):
        args, kwargs = check_example_inputs(model, given)
        assert len(args) == 1 and torch.equal(args[0], x) and args[0] is not x and kwargs == {}
    args, kwargs = check_example_inputs(model, (x,), {"mask": mask})
    assert torch.equal(kwargs["mask"], mask) and kwargs["mask"] is not mask


@pytest.mark.parametrize("inputs, kwargs, says", [
    ({"x": torch.ones(1, 4)}, None, r"example_inputs is a dict; pass keyword inputs as example_kwargs"),
    (3, None, r"example_inputs must be a tensor or a tuple .* got int"),
    ((torch.ones(1, 4),), [1], r"example_kwargs must be a dict of keyword inputs, got list"),
    ((torch.ones(1, 4),), {1: torch.ones(1)}, r"example_kwargs keys must be"),
    ((1, 2), None, r"hold no tensor"),
    ((torch.ones(1, 4),), {"mask": torch.ones(0, 4)}, r"example_kwargs\['mask'\] has a zero-size axis \(0, 4\)"),
    ((torch.ones(1, 4, device="meta"),), None, r"example_inputs\[0\] is on the meta device"),
    ((torch.tensor([[1.0, float("nan"), 0, 0]]),), None, r"example_inputs\[0\] holds NaN or inf"),
    ((torch.ones(1, 4).to_sparse(),), None, r"example_inputs\[0\] is a torch.sparse_coo tensor"),
    ((torch.ones(1, 4), torch.ones(1, 4), torch.ones(1)), None,
     r"do not fit TwoInputs.forward\(x, mask=None\).*3 positional and 0 keyword"),
    ((torch.ones(1, 4),), {"maks": torch.ones(1, 4)}, r"maks"),
])
def test_check_example_inputs_refuses_naming_the_input(inputs, kwargs, says):
    with pytest.raises(InvalidArgumentError, match=says):
        check_example_inputs(TwoInputs(), inputs, kwargs)


def test_nested_tensors_are_checked_under_their_argument_name():
    class Nested(nn.Module):
        def forward(self, pair):
            return pair[0] + pair[1]

    with pytest.raises(InvalidArgumentError, match=r"example_inputs\[0\] holds NaN"):
        check_example_inputs(Nested(), ((torch.ones(2), torch.tensor([0.0, float("inf")])),))
    args, _ = check_example_inputs(Nested(), ((torch.ones(2), torch.zeros(2)),))
    assert isinstance(args[0], tuple) and len(args[0]) == 2


@pytest.mark.parametrize("dynamic", [True, False, "batch", ({0: None},), [{0: None}], {"x": {0: None}}])
def test_check_dynamic_accepts(dynamic):
    assert check_dynamic(dynamic) is None


@pytest.mark.parametrize("dynamic", ["batches", 0, None, 1.5])
def test_check_dynamic_refuses_naming_the_choices(dynamic):
    with pytest.raises(InvalidArgumentError, match=r"dynamic must be True, False, 'batch'"):
        check_dynamic(dynamic)
