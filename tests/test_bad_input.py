"""What a demanding user tries: every case ends in a clear PrunecError subclass whose message
names the argument (or module / input), or in a correct result. Nothing of the caller's is
changed either way."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import prunec
from prunec.errors import (
    CalibrationError, CaptureError, InvalidArgumentError, PrunecError,
)
from prunec.passes import MagnitudePruning, RandomPruning, VarianceBasedPruning
from tests.helpers import Recurrent


# ---------------------------------------------------------------------------- tiny models
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, ids, mask):
        return self.fc2(torch.relu(self.fc1(self.emb(ids)))) * mask.unsqueeze(-1)


class NoParams(nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2


class WritesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        x.mul_(2)
        return self.fc2(torch.relu(self.fc1(x)))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # Python control flow on a value: export cannot trace it
            return y
        return -y


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


X = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict) -> bool:
    after = model.state_dict()
    return all(torch.equal(before[k], after[k]) for k in before)


def _raises(error: type[PrunecError], names: str, fn) -> PrunecError:
    """``fn()`` raises ``error`` whose message contains every ``|``-separated word in
    ``names`` (the argument, module or input it is about)."""
    with pytest.raises(error) as info:
        fn()
    text = str(info.value)
    for word in names.split("|"):
        assert word in text, f"{word!r} not in {text!r}"
    return info.value


# ---------------------------------------------------------------------------- the model
def test_model_none():
    _raises(InvalidArgumentError, "model", lambda: prunec.compile(None, X))


def test_model_class_not_instance():
    _raises(InvalidArgumentError, "model|class MLP|instance", lambda: prunec.compile(MLP, X))


def test_model_function():
    _raises(InvalidArgumentError, "model|nn.Module", lambda: prunec.compile(torch.relu, X))


def test_model_is_a_checkpoint_path(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_mlp().state_dict(), path)
    _raises(InvalidArgumentError, "model|model.pt|nn.Module|state dict|.onnx",
            lambda: prunec.compile(str(path), X))
    _raises(InvalidArgumentError, "model|model.pt", lambda: prunec.compile(path, X))


def test_model_is_a_program():
    from prunec.ir.capture import capture

    program = capture(_mlp(), X)
    _raises(InvalidArgumentError, "model|Program", lambda: prunec.compile(program, X))


def test_torchscript_module():
    _raises(CaptureError, "model|TorchScript", lambda: prunec.compile(torch.jit.script(_mlp()), X))


def test_traced_module():
    traced = torch.jit.trace(_mlp(), X)
    _raises(CaptureError, "model|TorchScript", lambda: prunec.compile(traced, X))


def test_data_parallel_wrapper():
    _raises(CaptureError, "model|DataParallel|model.module",
            lambda: prunec.compile(nn.DataParallel(_mlp()), X))


def test_torch_compile_wrapper():
    _raises(CaptureError, "model|torch.compile|_orig_mod",
            lambda: prunec.compile(torch.compile(_mlp()), X))


def test_meta_device_model():
    with torch.device("meta"):
        model = MLP()
    _raises(InvalidArgumentError, "model|meta", lambda: prunec.compile(model, X))


def test_data_dependent_control_flow_names_module():
    _raises(CaptureError, "DataDependent", lambda: prunec.compile(DataDependent(), X))


def test_model_without_parameters_is_a_no_op():
    model = NoParams()
    compiled = prunec.compile(model, X, [MagnitudePruning(0.5)])
    assert compiled.report.passes[0]["modified"] is False
    torch.testing.assert_close(compiled(X), model(X))


def test_lstm_with_default_dynamic_shapes():
    torch.manual_seed(0)
    model = Recurrent().eval()
    x = torch.randn(2, 5, 8)
    compiled = prunec.compile(model, x, [MagnitudePruning(0.5, round_to=1)])
    assert compiled.program.capture_notes
    assert compiled(x).shape == (2, 5, 4) and bool(torch.isfinite(compiled(x)).all())


def test_model_in_train_mode_stays_in_train_mode():
    model = _mlp().train()
    before = _state(model)
    prunec.compile(model, X, [MagnitudePruning(0.5)])
    assert model.training and _unchanged(model, before)


# ---------------------------------------------------------------------------- example inputs
def test_example_inputs_none():
    _raises(InvalidArgumentError, "example_inputs", lambda: prunec.compile(_mlp(), None))


def test_example_inputs_dict():
    _raises(InvalidArgumentError, "example_inputs|example_kwargs",
            lambda: prunec.compile(_mlp(), {"x": X}))


def test_example_inputs_numpy():
    _raises(InvalidArgumentError, "example_inputs|ndarray",
            lambda: prunec.compile(_mlp(), X.numpy()))


def test_example_inputs_without_tensor():
    _raises(InvalidArgumentError, "example_inputs|no tensor",
            lambda: prunec.compile(_mlp(), (1.0,)))


def test_extra_positional_example_input():
    _raises(InvalidArgumentError, "forward(x)|too many positional|2 positional",
            lambda: prunec.compile(_mlp(), (X, X)))


def test_missing_example_input():
    ids = torch.randint(0, 20, (2, 5))
    _raises(InvalidArgumentError, "forward(ids, mask)|mask",
            lambda: prunec.compile(Tokens(), ids))


def test_unknown_keyword_example_input():
    _raises(InvalidArgumentError, "forward(x)|unexpected keyword|attention_mask",
            lambda: prunec.compile(_mlp(), X, example_kwargs={"attention_mask": X}))


def test_example_kwargs_not_a_dict():
    _raises(InvalidArgumentError, "example_kwargs", lambda: prunec.compile(_mlp(), X,
                                                                      example_kwargs=[X]))


def test_example_input_on_meta_device():
    _raises(InvalidArgumentError, "example_inputs[0]|meta",
            lambda: prunec.compile(_mlp(), torch.empty(4, 8, device="meta")))


def test_example_input_of_zero_size():
    _raises(InvalidArgumentError, "example_inputs[0]|zero-size",
            lambda: prunec.compile(_mlp(), torch.randn(0, 8)))


def test_example_input_with_nan():
    x = X.clone()
    x[0, 0] = math.nan
    _raises(InvalidArgumentError, "example_inputs[0]|NaN", lambda: prunec.compile(_mlp(), x))


def test_example_input_sparse():
    _raises(InvalidArgumentError, "example_inputs[0]|sparse",
            lambda: prunec.compile(_mlp(), X.to_sparse()))


def test_float_input_to_embedding_names_module_and_op():
    mask = torch.ones(2, 5)
    _raises(CaptureError, "'emb' (Embedding)|embedding|dtype",
            lambda: prunec.compile(Tokens(), (torch.randn(2, 5), mask)))


def test_float64_input_to_float32_model_names_module():
    _raises(CaptureError, "'fc1' (Linear)|dtype", lambda: prunec.compile(_mlp(), X.double()))


def test_integer_input_to_float_model():
    _raises(CaptureError, "'fc1' (Linear)|dtype", lambda: prunec.compile(_mlp(), X.long()))


def test_wrong_feature_size_names_module():
    _raises(CaptureError, "'fc1' (Linear)|shape", lambda: prunec.compile(_mlp(), X[:, :7]))


def test_example_input_requiring_grad_is_fine_and_untouched():
    model = _mlp()
    x = X.clone().requires_grad_(True)
    compiled = prunec.compile(model, x, [MagnitudePruning(0.5)])
    assert x.requires_grad and x.grad is None and torch.equal(x.detach(), X)
    assert compiled(X).shape == (4, 4)


def test_model_writing_into_its_input_leaves_the_callers_tensor():
    torch.manual_seed(0)
    model = WritesInput().eval()
    x = X.clone()
    compiled = prunec.compile(model, x, [MagnitudePruning(0.5)])
    assert torch.equal(x, X)
    y = X.clone()
    compiled(y)
    assert torch.equal(y, X)
    reference = prunec.compile(model, X.clone(), verify=False)
    torch.testing.assert_close(reference(X.clone()), model(X.clone()))


def test_batch_one_example_runs_at_batch_two():
    model = _mlp()
    compiled = prunec.compile(model, X[:1], [MagnitudePruning(0.25)])
    assert compiled(X[:2]).shape == (2, 4)
    unpruned = prunec.compile(model, X[:1], verify=False)
    torch.testing.assert_close(unpruned(X), model(X))


# ---------------------------------------------------------------------------- passes
@pytest.mark.parametrize("passes, names", [
    ([3], "passes[0]|int"),
    ([MagnitudePruning], "passes[0]|class MagnitudePruning|MagnitudePruning(0.5)"),
    (MagnitudePruning(0.5), "passes|single MagnitudePruning|passes=[MagnitudePruning(...)]"),
    ("magnitude", "passes|str"),
    ([MagnitudePruning(0.5), None], "passes[1]|NoneType"),
    ({"magnitude": 0.5}, "passes|dict"),
])
def test_bad_passes(passes, names):
    _raises(InvalidArgumentError, names, lambda: prunec.compile(_mlp(), X, passes))


@pytest.mark.parametrize("passes", [[], None, (p for p in [])], ids=["empty", "none", "gen"])
def test_no_passes_is_the_original_model(passes):
    model = _mlp()
    torch.testing.assert_close(prunec.compile(model, X, passes)(X), model(X))


def test_passes_as_generator_run():
    compiled = prunec.compile(_mlp(), X, (p for p in [MagnitudePruning(0.5)]))
    assert compiled.report.params_after < compiled.report.params_before


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, math.nan, math.inf, "0.5", None, True],
                         ids=str)
def test_bad_ratio(ratio):
    _raises(InvalidArgumentError, "MagnitudePruning|ratio", lambda: MagnitudePruning(ratio))


def test_ratio_zero_is_identity():
    model = _mlp()
    compiled = prunec.compile(model, X, [MagnitudePruning(0.0)])
    assert compiled.report.params_after == compiled.report.params_before
    torch.testing.assert_close(compiled(X), model(X), rtol=0, atol=0)


def test_numpy_ratio_accepted():
    compiled = prunec.compile(_mlp(), X, [RandomPruning(np.float64(0.5))])
    assert compiled.report.params_after < compiled.report.params_before


@pytest.mark.parametrize("round_to", [None, 3.5, 0, -8, "8", True], ids=str)
def test_bad_round_to(round_to):
    _raises(InvalidArgumentError, "MagnitudePruning|round_to",
            lambda: MagnitudePruning(0.5, round_to=round_to))


def test_integral_float_round_to_accepted():
    assert MagnitudePruning(0.5, round_to=8.0).round_to == 8


def test_scope_typo_suggests():
    _raises(InvalidArgumentError, "scope|'globl'|Did you mean 'global'",
            lambda: MagnitudePruning(0.5, scope="globl"))


def test_targets_typo():
    _raises(InvalidArgumentError, "targets|'mlps'", lambda: MagnitudePruning(0.5, targets="mlps"))


@pytest.mark.parametrize("norm", [0, -1, math.nan, "l2"], ids=str)
def test_bad_norm(norm):
    _raises(InvalidArgumentError, "MagnitudePruning|norm", lambda: MagnitudePruning(0.5, norm=norm))


def test_bad_seed():
    _raises(InvalidArgumentError, "RandomPruning|seed", lambda: RandomPruning(0.5, seed="a"))


@pytest.mark.parametrize("argument, value, names", [
    ("train", "no", "train"), ("verify", 1, "verify"), ("dynamic", "auto", "dynamic"),
    ("instruments", 5, "instruments"), ("plans", "plan.json", "plans"),
])
def test_bad_compile_flags(argument, value, names):
    _raises(InvalidArgumentError, names, lambda: prunec.compile(_mlp(), X, **{argument: value}))


# ---------------------------------------------------------------------------- backends
def test_backend_typo_suggests():
    _raises(InvalidArgumentError, "backend|'onx'|Did you mean 'onnx'",
            lambda: prunec.compile(_mlp(), X, backend="onx"))


def test_backend_none():
    _raises(InvalidArgumentError, "backend|None", lambda: prunec.compile(_mlp(), X, backend=None))


def test_unknown_backend_option_suggests():
    _raises(InvalidArgumentError, "backend_options|'opst'|did you mean 'opset'",
            lambda: prunec.compile(_mlp(), X, backend="onnx", backend_options={"opst": 17}))


def test_torch_backend_takes_no_options():
    _raises(InvalidArgumentError, "backend_options|'threads'|'torch'",
            lambda: prunec.compile(_mlp(), X, backend_options={"threads": 2}))


def test_backend_options_not_a_dict():
    _raises(InvalidArgumentError, "backend_options",
            lambda: prunec.compile(_mlp(), X, backend="onnx", backend_options=[("opset", 17)]))


def test_bad_options_fail_before_capture(monkeypatch):
    import prunec.api

    def no_capture(*_args, **_kwargs):
        raise AssertionError("capture ran before the arguments were checked")

    monkeypatch.setattr(prunec.api, "capture", no_capture)
    with pytest.raises(InvalidArgumentError):
        prunec.compile(_mlp(), X, [MagnitudePruning(0.5)], backend="onnx",
                       backend_options={"opst": 17})


# ---------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="module")
def compiled():
    return prunec.compile(_mlp(), X, [MagnitudePruning(0.5)])


def test_artifact_wrong_dtype(compiled):
    _raises(InvalidArgumentError, "float32|float64", lambda: compiled(X.double()))


def test_artifact_wrong_rank(compiled):
    _raises(InvalidArgumentError, "shape", lambda: compiled(X[0]))


def test_artifact_wrong_fixed_size(compiled):
    _raises(InvalidArgumentError, "shape|[*, 8]", lambda: compiled(X[:, :6]))


def test_artifact_other_batch_is_fine(compiled):
    assert compiled(torch.randn(7, 8)).shape == (7, 4)


def test_save_to_missing_directory_is_an_oserror_with_the_path(compiled, tmp_path: Path):
    path = tmp_path / "no" / "such" / "model.pt2"
    with pytest.raises(OSError) as info:
        compiled.save(path)
    assert str(path.parent) in str(info.value) and not isinstance(info.value, PrunecError)


def test_load_missing_file():
    _raises(PrunecError, "missing.pt2", lambda: prunec.load("missing.pt2"))


# ---------------------------------------------------------------------------- calibration
def _vbp(calibration, **options) -> VarianceBasedPruning:
    return VarianceBasedPruning(0.5, calibration, round_to=1, **options)


@pytest.mark.parametrize("calibration, names", [
    (None, "VarianceBasedPruning|calibration|None"),
    ([], "VarianceBasedPruning|calibration|empty"),
    (X, "VarianceBasedPruning|calibration|one tensor"),
    (42, "VarianceBasedPruning|calibration|int"),
    ({"x": X}, "VarianceBasedPruning|calibration|dict"),
], ids=["none", "empty", "tensor", "int", "dict"])
def test_bad_calibration_argument(calibration, names):
    _raises(CalibrationError, names, lambda: _vbp(calibration))


@pytest.mark.parametrize("items, names", [
    ([X[0]], "calibration item 0|1 axes|2"),
    ([X, X[:, :6]], "calibration item 1|axis 1|8"),
    ([X.double()], "calibration item 0|float64|float32"),
    ([X.long()], "calibration item 0|int64"),
    ([(X, torch.zeros(4))], "calibration item 0|(x for x, _ in loader)"),
], ids=["rank", "size", "float64", "int", "pairs"])
def test_bad_calibration_batches(items, names):
    _raises(CalibrationError, names, lambda: prunec.compile(_mlp(), X, [_vbp(items)]))


def test_single_calibration_sample_is_not_enough():
    _raises(CalibrationError, "at least 2|calibration",
            lambda: prunec.compile(_mlp(), X, [_vbp([X[:1]])]))


def test_calibration_of_length_one_is_fine():
    model = _mlp()
    compiled = prunec.compile(model, X, [_vbp([torch.randn(64, 8)])])
    assert compiled.report.params_after < compiled.report.params_before


def test_calibration_batches_not_written():
    batches = [torch.randn(16, 8) for _ in range(2)]
    copies = [b.clone() for b in batches]
    prunec.compile(WritesInput().eval(), X, [_vbp(batches)])
    assert all(torch.equal(b, c) for b, c in zip(batches, copies))


def test_users_loader_error_passes_through():
    class LoaderBroke(Exception):
        pass

    def loader():
        yield torch.randn(16, 8)
        raise LoaderBroke("disk on fire")

    with pytest.raises(LoaderBroke, match="disk on fire"):
        prunec.compile(_mlp(), X, [_vbp(loader())])


@pytest.mark.parametrize("options, names", [
    ({"mask": 3}, "mask"), ({"max_batches": 0}, "max_batches"),
    ({"max_batches": 1.5}, "max_batches"),
], ids=["mask", "max0", "maxfloat"])
def test_bad_vbp_options(options, names):
    _raises(InvalidArgumentError, "VarianceBasedPruning|" + names, lambda: _vbp([X], **options))


# ---------------------------------------------------------------------------- finetune
@pytest.mark.parametrize("options, names", [
    ({"epochs": 0}, "epochs"), ({"epochs": 1.5}, "epochs"), ({"lr": -1.0}, "lr"),
    ({"lr": math.nan}, "lr"), ({"alpha": 2.0}, "alpha"), ({"batch_size": 0}, "batch_size"),
    ({"temperature": 0}, "temperature"), ({"weight_decay": -0.1}, "weight_decay"),
    ({"teacher": "resnet"}, "teacher"), ({"loss_fn": "mse"}, "loss_fn"),
    ({"label_key": 3}, "label_key"),
], ids=lambda v: str(v) if not isinstance(v, dict) else next(iter(v)))
def test_bad_finetune_options(compiled, options, names):
    data = [(X, torch.zeros(4, dtype=torch.long))]
    _raises(InvalidArgumentError, "finetune|" + names,
            lambda: prunec.finetune(compiled, data, original=_mlp(), **options))


def test_finetune_without_data():
    _raises(InvalidArgumentError, "train_data", lambda: prunec.finetune(
        prunec.compile(_mlp(), X, verify=False), None, original=_mlp()))


def test_finetune_target_not_compiled():
    _raises(InvalidArgumentError, "target|MLP",
            lambda: prunec.finetune(_mlp(), [(X, None)], original=_mlp()))


def test_finetune_loader_error_passes_through():
    class LoaderBroke(Exception):
        pass

    class Data:
        def __len__(self):
            return 2

        def __iter__(self):
            raise LoaderBroke("no shards")

    with pytest.raises(LoaderBroke, match="no shards"):
        prunec.finetune(prunec.compile(_mlp(), X, verify=False), Data(), original=_mlp(),
                        teacher=_mlp())
