"""prunec.ir.calibration_checks: calibration data checked before any batch runs, and inputs
checked against the placeholders of a captured program (rank, static sizes, dtype), each
refusal naming the place and the input."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunec.errors import CalibrationError, InvalidArgumentError
from prunec.ir.calibration_checks import check_calibration, check_program_inputs
from prunec.ir.capture import capture


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, mask):
        return self.fc(x) * mask


@pytest.fixture(scope="module")
def program():
    return capture(Masked().eval(), (torch.randn(2, 4), torch.ones(2, 3)), dynamic="batch")


@pytest.mark.parametrize("data", [[torch.ones(1)], (torch.ones(1),), iter([]), [{"x": 1}]])
def test_check_calibration_returns_the_data_itself(data):
    assert check_calibration(data, "P") is data


@pytest.mark.parametrize("data, says", [
    (None, r"P: batches is None; pass calibration data"),
    (torch.ones(4, 2), r"P: batches is one tensor; pass a list of batches"),
    ({"x": torch.ones(1)}, r"P: batches must be an iterable of items .* got dict; .* in a list"),
    ("data", r"got str"),
    (5, r"got int"),
    ([], r"P: batches is empty; pass at least one batch"),
])
def test_check_calibration_refuses_naming_the_argument(data, says):
    with pytest.raises(CalibrationError, match=says):
        check_calibration(data, "P", "batches")


def test_program_inputs_accept_another_batch_size(program):
    check_program_inputs(program, (torch.randn(5, 4), torch.ones(5, 3)), {}, where="run")


@pytest.mark.parametrize("args, says", [
    ((torch.randn(2, 5), torch.ones(2, 3)),
     r"run: input 'x' has size 5 on axis 1, but that axis was captured static with size 4 \(shape \(\*, 4\)\)"),
    ((torch.randn(2, 4, 1), torch.ones(2, 3)),
     r"run: input 'x' has 3 axes \(2, 4, 1\), but the model was captured with 2 \(\*, 4\)"),
    ((torch.randn(2, 4), torch.ones(2, 3, dtype=torch.int64)),
     r"run: input 'mask' has dtype torch.int64, but the model was captured with torch.float32"),
    ((torch.randn(2, 4), 3.0), r"run: input 'mask' must be a tensor, got float"),
])
def test_program_inputs_refuse_naming_the_input(program, args, says):
    with pytest.raises(InvalidArgumentError, match=says):
        check_program_inputs(program, args, {}, where="run")


def test_program_inputs_error_class_and_dtype_leniency(program):
    mixed = (torch.randn(2, 4), torch.ones(2, 3, dtype=torch.int64))
    check_program_inputs(program, mixed, {}, where="calibration", dtypes=False)
    with pytest.raises(CalibrationError, match=r"^calibration item 0: "):
        check_program_inputs(program, (torch.randn(2, 4),), {}, where="calibration item 0",
                             error=CalibrationError)
