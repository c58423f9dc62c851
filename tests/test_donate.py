"""compile(donate=True): the caller's sliced weights are released as the rewrite goes; the
result equals the verified compile's; misuse is refused before any work."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunec
from prunec.errors import InvalidArgumentError
from prunec.passes import MagnitudePruning


class TiedMLP(nn.Module):
    """An MLP whose first weight is used twice (a tied projection) beside a plain one."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 64)
        self.down = nn.Linear(64, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.up(x))
        y = x + self.down(h)
        tied = torch.nn.functional.linear(x, self.up.weight)  # reads up.weight a second time
        return self.head(y) + tied[..., :4]


def _model(cls=TiedMLP):
    torch.manual_seed(0)
    return cls().eval()


def test_donated_compile_equals_verified_one_and_releases_sliced_weights():
    x = torch.randn(3, 16)
    reference = prunec.compile(_model(), x, [MagnitudePruning(0.5, round_to=1)])
    model = _model()
    before = {n: p for n, p in model.named_parameters()}
    kept = {n: p.detach().clone() for n, p in before.items()}
    donated = prunec.compile(model, x, [MagnitudePruning(0.5, round_to=1)], verify=False,
                             donate=True)
    torch.testing.assert_close(donated(x), reference(x), rtol=0, atol=0)
    for name, param in model.named_parameters():
        assert param is before[name]  # same objects: only their storage was released
        if param.numel() == 0:
            continue
        torch.testing.assert_close(param, kept[name], rtol=0, atol=0)  # untouched ones intact
    released = {n for n, p in model.named_parameters() if p.numel() == 0}
    # up (rows, also read by the tied projection) and down's columns were sliced and
    # released; head and down.bias are not pruned and keep their values.
    assert released == {"up.weight", "up.bias", "down.weight"}

def test_donate_needs_verify_off_and_eval_mode():
    x = torch.randn(3, 16)
    with pytest.raises(InvalidArgumentError, match="verify=False"):
        prunec.compile(_model(), x, [MagnitudePruning(0.5)], donate=True)
    with pytest.raises(InvalidArgumentError, match="train"):
        prunec.compile(_model(), x, [MagnitudePruning(0.5)], donate=True, verify=False, train=True)
    with pytest.raises(InvalidArgumentError, match="donate"):
        prunec.compile(_model(), x, [MagnitudePruning(0.5)], donate="yes", verify=False)


def test_without_donate_the_caller_keeps_everything():
    x = torch.randn(3, 16)
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prunec.compile(model, x, [MagnitudePruning(0.5, round_to=1)])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_clone_with_shared_tensors_stops_releasing():
    from prunec.ir.capture import capture

    x = torch.randn(3, 16)
    model = _model()
    program = capture(model, x)
    program.donated = True
    twin = program.clone(share_tensors=True)
    assert program.donated is False
    MagnitudePruning(0.5, round_to=1)(program)
    assert program.get_tensor("up.weight").shape[0] < 64
    assert all(p.numel() > 0 for p in model.parameters())
    torch.testing.assert_close(twin.gm(x), model(x))


def test_calling_a_donated_model_says_it_was_donated():
    from prunec.errors import PrunecError

    x = torch.randn(3, 16)
    model = _model()
    compiled = prunec.compile(model, x, [MagnitudePruning(0.5, round_to=1)], donate=True,
                              verify=False)
    with pytest.raises(PrunecError, match=r"donated to prunec.compile\(.*donate=True\).*"
                                          r"compiled model"):
        model(x)
    assert compiled(x).shape == (3, 4)  # the compiled model runs
