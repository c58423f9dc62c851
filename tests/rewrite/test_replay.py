"""recapture: a program's lineage replayed on a fresh capture, in eval and train mode."""
from __future__ import annotations

import pytest
import torch

from prunec.errors import PlanError
from prunec.passes import MagnitudePruning, VarianceBasedPruning
from prunec.rewrite import recapture
from prunec.train import assign_state
from tests.helpers import max_diff
from tests.rewrite.models import calibration, captured_mlp, mlp, tokens

aten = torch.ops.aten


def _pruned(model):
    """``model`` (an :func:`mlp`) captured and pruned by two passes."""
    program = captured_mlp()
    VarianceBasedPruning(0.5, calibration())(program)
    MagnitudePruning(0.75, targets="mlp")(program)
    return program


def _shapes(program) -> dict:
    return {n: tuple(t.shape) for n, t in [*program.gm.named_parameters(), *program.gm.named_buffers()]}


def test_eval_recapture_equals_the_program():
    model = mlp()
    program = _pruned(model)
    again = recapture(model, program)
    assert _shapes(again) == _shapes(program)
    assert max_diff(again.run(tokens(5, batch=3)), program.run(tokens(5, batch=3))) == 0.0


def test_train_recapture_folds_into_the_consumer_behind_dropout():
    model = mlp(p=0.0)  # p=0: train mode computes what eval mode does, so outputs compare
    program = _pruned(model)
    student = recapture(model, program, train=True)
    assert student.training
    # Train mode put a dropout between the measured activation and fc2; the compensation
    # found fc2 by its weight, so the fold (a bias on 1.fc2, which had none) is there.
    assert any(n.target is aten.dropout.default for n in student.graph.nodes)
    assert _shapes(student) == _shapes(program)
    assign_state(program.gm, student)
    assert max_diff(student.run(tokens(6)), program.run(tokens(6))) < 1e-6


def test_recapture_keeps_the_lineage_so_passes_stay_idempotent():
    model = mlp()
    program = _pruned(model)
    again = recapture(model, program)
    assert [s.name for s in again.lineage] == ["VarianceBasedPruning", "MagnitudePruning"]
    assert again.history == program.history and again.origin == program.origin
    assert [s.changed for s in again.lineage] == [s.changed for s in program.lineage]
    assert not VarianceBasedPruning(0.5, calibration())(again).modified
    assert not MagnitudePruning(0.75, targets="mlp")(again).modified


def test_replay_keeps_the_steps_that_changed_nothing():
    model = mlp()
    program = _pruned(model)
    assert not MagnitudePruning(0.75, targets="mlp")(program).modified  # a no-op step
    again = recapture(model, program)
    assert [(s.name, s.modified) for s in again.lineage] == [
        ("VarianceBasedPruning", True), ("MagnitudePruning", True), ("MagnitudePruning", False)]
    assert again.lineage[2].stats.already_applied and again.plans == program.plans
    first_sight = {**program.lineage[1].before, **program.lineage[0].before}  # first wins
    assert again.origin == program.origin == first_sight


def test_recapture_of_another_model_is_a_plan_error():
    program = _pruned(mlp())
    other = torch.nn.Sequential(torch.nn.Linear(16, 16)).eval()
    with pytest.raises(PlanError, match="same model"):
        recapture(other, program)
