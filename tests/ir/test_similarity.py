"""prunec.ir.similarity: the features PEEAO compares (the input of the last linear layer,
gathered over the data). Linear CKA's own hand computation and invariances are in
tests/recipes/test_peeao.py; here its edges, and the features against torch."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunec.errors import CalibrationError, PrunecError
from prunec.ir.capture import capture
from prunec.ir.similarity import gather_rows, linear_cka, penultimate_features, penultimate_node


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.hidden = nn.Linear(12, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        features = torch.relu(self.hidden(torch.flatten(self.conv(x), 1)))
        return self.head(features)


@pytest.fixture(scope="module")
def model_and_program():
    torch.manual_seed(0)
    model = Classifier().eval()
    return model, capture(model, torch.randn(2, 2, 2, 2))


def test_penultimate_node_is_the_input_of_the_last_linear(model_and_program):
    _, program = model_and_program
    node = penultimate_node(program)
    assert node.op == "call_function" and "relu" in str(node.target)


def test_penultimate_features_equal_the_models_own(model_and_program):
    model, program = model_and_program
    torch.manual_seed(1)
    data = [(torch.randn(3, 2, 2, 2), None), (torch.randn(5, 2, 2, 2), torch.zeros(5))]
    features = penultimate_features(program, data)
    with torch.no_grad():
        expected = torch.cat([torch.relu(model.hidden(torch.flatten(model.conv(x), 1)))
                              for x, _ in data])
    assert features.dtype == torch.float64 and features.shape == (8, 6)
    torch.testing.assert_close(features, expected.double(), rtol=1e-6, atol=1e-6)
    assert penultimate_features(program, data, max_batches=1).shape == (3, 6)
    conv = penultimate_features(program, data, node="conv2d")  # another value, flattened
    assert conv.shape == (8, 12)


def test_penultimate_features_refusals(model_and_program):
    _, program = model_and_program
    with pytest.raises(CalibrationError, match="data is empty"):
        penultimate_features(program, [])
    with pytest.raises(CalibrationError, match=r"\(inputs, target\) pairs"):
        penultimate_features(program, [torch.randn(1, 2, 2, 2)])
    no_linear = capture(nn.Conv2d(2, 2, 1).eval(), torch.randn(1, 2, 2, 2))
    with pytest.raises(PrunecError, match="no linear layer; pass node="):
        penultimate_node(no_linear)


def test_linear_cka_edges():
    x = torch.randn(6, 3)
    assert linear_cka(x, torch.ones(6, 2)) == 0.0  # a constant side has no variance
    assert linear_cka(x.reshape(6, 3, 1), x) == pytest.approx(1.0)  # trailing axes flatten
    with pytest.raises(PrunecError, match="at least 2 examples"):
        linear_cka(x[:1], x[:1])
    with pytest.raises(PrunecError, match=r"y must be \[N, features\], got shape \(6,\)"):
        linear_cka(x, torch.randn(6))


def test_gather_rows_is_the_identity_without_torchrun():
    rows = torch.randn(4, 3)
    assert gather_rows(rows) is rows
