"""Training goes on after pruning: optimizer state follows apply_plan's slices."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.rewrite import PruningPlan, apply_plan
from prunec.train import slice_optimizer_state


class MLP(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, hidden), nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True,
                                          weight_decay=5e-4),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01),
}


def _step(module, optimizer, x, y):
    optimizer.zero_grad()
    F.cross_entropy(module(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_step_after_pruning_equals_a_fresh_pruned_model_with_hand_sliced_state(kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(3)]
    program = capture(MLP(), (data[0][0],), train=True)
    optimizer = OPTIMIZERS[kind](list(program.gm.parameters()))
    for x, y in data[:2]:
        _step(program.gm, optimizer, x, y)
    old = {n: p.detach().clone() for n, p in program.gm.named_parameters()}
    old_state = {n: {k: v.clone() if torch.is_tensor(v) else v
                     for k, v in optimizer.state[p].items()}
                 for n, p in program.gm.named_parameters()}
    untouched = program.get_tensor("fc2.bias")

    group = next(g for g in analyze_channels(program).prunable() if g.size == 16)
    keep = [0, 2, 3, 5, 8, 9, 12, 15]
    slices = apply_plan(program, PruningPlan({group.key: keep}))
    slice_optimizer_state(optimizer, slices)
    assert program.get_tensor("fc2.bias") is untouched  # not sliced: same Parameter
    assert set(slices) == {"fc1.weight", "fc1.bias", "fc2.weight"}
    assert slices["fc2.weight"][1].tolist() == keep
    _step(program.gm, optimizer, *data[2])

    # The same step on a model built pruned, its optimizer state sliced by hand.
    fresh = MLP(hidden=len(keep))
    idx = torch.tensor(keep)
    cut = {"fc1.weight": lambda t: t[idx], "fc1.bias": lambda t: t[idx],
           "fc2.weight": lambda t: t[:, idx], "fc2.bias": lambda t: t}
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            param.copy_(cut[name](old[name]))
    reference = OPTIMIZERS[kind](list(fresh.parameters()))
    for name, param in fresh.named_parameters():
        reference.state[param] = {k: cut[name](v) if torch.is_tensor(v) and v.dim() else v
                                  for k, v in old_state[name].items()}
    _step(fresh, reference, *data[2])
    got = dict(program.gm.named_parameters())
    for name, param in fresh.named_parameters():
        assert torch.allclose(got[name], param, atol=1e-6, rtol=0), name
        for key, value in reference.state[param].items():
            if torch.is_tensor(value):
                assert torch.allclose(optimizer.state[got[name]][key], value, atol=1e-6), key


def test_optimizer_holds_no_stale_parameters():
    program = capture(MLP(), (torch.randn(4, 6),), train=True)
    optimizer = torch.optim.SGD(program.gm.parameters(), lr=0.1, momentum=0.9)
    group = next(g for g in analyze_channels(program).prunable() if g.size == 16)
    slice_optimizer_state(optimizer, apply_plan(program, PruningPlan({group.key: [1, 4]})))
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in program.gm.parameters()}
