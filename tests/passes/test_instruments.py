"""prunec.passes.instruments: the random batch CheckOutputs adds, its comparison of outputs
(structure, shapes, dtypes, NaN, scale-aware tolerance), its unchecked reasons, and DumpIR's
files. Catching a wrong rewrite and a dishonest ``modified`` flag end to end is in
tests/passes/test_pass_manager.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunec.errors import VerificationError
from prunec.ir.capture import capture
from prunec.passes import MagnitudePruning, PassContext
from prunec.passes.instruments import CheckOutputs, DumpIR, _compare, random_inputs
from tests.rewrite.models import captured_mlp

TOL = CheckOutputs.TOLERANCES


class Tagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(10, 4), nn.Linear(4, 4)

    def forward(self, ids, scale):
        return self.fc(self.emb(ids)) * scale


def test_random_inputs_grow_the_batch_draw_floats_and_reuse_integers():
    ids, scale = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.ones(2, 3, 1)
    program = capture(Tagged().eval(), (ids, scale))
    label, (args, kwargs) = random_inputs(program, seed=0)
    assert label == "a random batch of 3" and kwargs == {}
    new_ids, new_scale = args
    assert new_ids.tolist() == [[1, 2, 3], [4, 5, 6], [1, 2, 3]]  # rows repeated, valid ids
    assert new_scale.shape == (3, 3, 1) and not torch.equal(new_scale, torch.ones(3, 3, 1))
    assert torch.equal(random_inputs(program, seed=0)[1][0][1], new_scale)  # seeded
    static = capture(Tagged().eval(), (ids, scale), dynamic=False)
    label, (args, _) = random_inputs(static)
    assert label == "a random batch" and args[1].shape == (2, 3, 1)


def test_compare_returns_the_worst_difference_within_tolerance():
    ref = torch.tensor([100.0, -2.0])
    assert _compare((ref,), (ref + torch.tensor([0.005, 0.0]),), "P", TOL, "zeroing") == \
        pytest.approx(0.005, rel=1e-3)  # allowed: 1e-5 + 1e-4 * 100


@pytest.mark.parametrize("got, says", [
    ((torch.zeros(2), torch.zeros(2)), "changed structure"),
    ((torch.zeros(3),), r"output 0 is \(3,\) torch.float32, expected \(2,\) torch.float32"),
    ((torch.zeros(2, dtype=torch.float64),), "torch.float64, expected"),
    ((torch.tensor([float("nan"), 0.0]),), "NaN/inf where the reference has none"),
    ((torch.tensor([1.0, 0.0]),), r"P: output 0 differs from the zeroing-equivalent reference by "
                                  r"max abs diff 1 \(allowed 1e-05\)"),
])
def test_compare_refuses_naming_the_output(got, says):
    with pytest.raises(VerificationError, match=says):
        _compare((torch.zeros(2),), got, "P", TOL, "zeroing")


def test_compare_integer_outputs_must_be_equal():
    ints = torch.tensor([1, 2])
    assert _compare(ints, ints.clone(), "P", TOL, "zeroing") == 0.0
    with pytest.raises(VerificationError, match="integer output 0 differs"):
        _compare(ints, torch.tensor([1, 3]), "P", TOL, "zeroing")


def test_unchecked_passes_say_why_in_their_stats():
    program = capture(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                      torch.randn(2, 4), train=True)
    result = PassContext([CheckOutputs()]).run(MagnitudePruning(0.5, round_to=1), program)
    assert result.modified and result.stats.verified.startswith("not checked: train-mode program")
    checked = PassContext([CheckOutputs()]).run(MagnitudePruning(0.5, round_to=1), captured_mlp())
    assert checked.stats.verified.startswith("zeroing equivalence, max abs diff")


def test_dump_ir_numbers_one_file_per_pass(tmp_path):
    program = captured_mlp()
    ctx = PassContext([DumpIR(tmp_path / "ir")])
    ctx.run(MagnitudePruning(0.25, round_to=1), program)
    ctx.run(MagnitudePruning(0.5, round_to=1), program)
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == ["01_MagnitudePruning.py", "02_MagnitudePruning.py"]
    assert "linear" in (tmp_path / "ir" / files[1]).read_text()
