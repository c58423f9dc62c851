"""RandomPruning: seeded scores; numerical (zeroing equivalence), structural and idempotence
tests on a tiny MLP."""
from __future__ import annotations

import pytest
import torch

from prunec.errors import InvalidArgumentError
from prunec.ir.channels import analyze_channels
from prunec.passes import RandomPruning
from tests.helpers import max_diff, zeroed_copy
from tests.rewrite.models import captured_mlp, mlp, tokens


def test_the_same_seed_removes_the_same_units_and_another_seed_others():
    plans = [RandomPruning(0.5, seed=s, round_to=1)(captured_mlp()).plan.keep for s in (3, 3, 4)]
    assert plans[0] == plans[1] and plans[0] != plans[2]


def test_numerical_pruned_equals_the_original_with_the_removed_units_zeroed():
    model, program = mlp(), captured_mlp()
    analysis = analyze_channels(program)
    result = RandomPruning(0.5, seed=1, targets="mlp", round_to=1)(program)
    zeroed = zeroed_copy(model, analysis, result.plan)
    with torch.no_grad():
        for seed, batch in ((2, 4), (3, 2)):
            assert max_diff(program.run(tokens(seed, batch)), zeroed(tokens(seed, batch))) < 1e-5


def test_structural_half_of_each_mlp_hidden_layer_goes_under_local_scope():
    program = captured_mlp()
    result = RandomPruning(0.5, scope="local", targets="mlp", round_to=8)(program)
    assert result.modified
    assert {k: len(v) for k, v in result.plan.keep.items()} == {"0.fc1.weight:0": 16,
                                                                 "1.fc1.weight:0": 16}
    for block in ("0", "1"):
        assert program.get_tensor(f"{block}.fc1.weight").shape == (16, 16)
        assert program.get_tensor(f"{block}.fc2.weight").shape == (16, 16)


def test_idempotence_the_same_pass_twice_changes_nothing_the_second_time():
    program = captured_mlp()
    assert RandomPruning(0.5, seed=2, targets="mlp")(program).modified
    version = program.version
    assert not RandomPruning(0.5, seed=2, targets="mlp")(program).modified
    assert program.version == version


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_a_seed_that_is_not_an_integer_is_refused(seed):
    with pytest.raises(InvalidArgumentError, match="RandomPruning: seed must be an integer"):
        RandomPruning(0.5, seed=seed)
