"""Program: the lineage and its views, cloning, and the mutation helpers."""
from __future__ import annotations

import pytest
import torch

from prunec.ir.program import Program, Step
from prunec.rewrite import PruningPlan, apply_plan
from tests.rewrite.models import captured_mlp, mlp


def _program() -> Program:
    return captured_mlp()


def test_plans_and_history_are_views_of_the_lineage():
    program = _program()
    plan_a, plan_b = PruningPlan({"x": [0]}), PruningPlan({"y": [1]})
    program.record(Step("MagnitudePruning", {"pass": "MagnitudePruning", "ratio": 0.5}, plan_a))
    program.record(Step("replay", {}, plan_b))
    # a pass that kept everything: in the lineage, in no view (it changed nothing)
    program.record(Step("RandomPruning", {"pass": "RandomPruning", "ratio": 0.1}, PruningPlan(),
                        modified=False))
    assert program.plans == [plan_a, plan_b]
    assert program.history == [{"pass": "MagnitudePruning", "ratio": 0.5}]  # replays have no config
    program.plans.append(plan_a)  # a copy: the lineage is appended only by record()
    assert len(program.lineage) == 3


def test_origin_is_derived_from_the_lineage():
    """Group sizes at first sight come from the steps (``before`` of the first step that
    changed a group); ratios count against them, across passes and replays."""
    from prunec.passes import MagnitudePruning
    from prunec.rewrite import recapture

    program = _program()
    assert program.origin == {}
    MagnitudePruning(0.5, targets="mlp", scope="local", round_to=1)(program)
    first = program.lineage[0]
    assert first.before == {"0.fc1.weight:0": 32, "1.fc1.weight:0": 32}
    MagnitudePruning(0.75, targets="mlp", scope="local", round_to=1)(program)
    assert program.lineage[1].before == {"0.fc1.weight:0": 16, "1.fc1.weight:0": 16}
    assert program.origin == {"0.fc1.weight:0": 32, "1.fc1.weight:0": 32}
    # 0.75 of the original 64 hidden units are gone, not 0.75 of the 32 left
    assert [program.get_tensor(f"{i}.fc1.weight").shape[0] for i in (0, 1)] == [8, 8]
    again = recapture(mlp(), program)
    assert again.origin == program.origin and [s.before for s in again.lineage] == \
        [s.before for s in program.lineage]
    # a third pass on the replay still counts against the original sizes: its target is met
    assert not MagnitudePruning(0.7, targets="mlp", scope="local", round_to=1)(again).modified


def test_apply_plan_records_one_step_with_what_it_changed():
    program = _program()
    apply_plan(program, PruningPlan({"0.fc1.weight:0": list(range(8))}), config={"pass": "P", "k": 1})
    (step,) = program.lineage
    assert (step.name, step.config) == ("P", {"pass": "P", "k": 1})
    assert step.changed == {"0.fc1.weight": (8, 16), "0.fc1.bias": (8,), "0.fc2.weight": (16, 8)}
    apply_plan(program, PruningPlan({"1.fc1.weight:0": list(range(16))}))
    assert program.lineage[-1].name == "replay" and program.lineage[-1].config == {}


def test_a_plan_that_changes_nothing_is_not_recorded_by_apply_plan():
    program = _program()
    apply_plan(program, PruningPlan({"0.fc1.weight:0": list(range(32))}))
    assert program.lineage == []


def test_clone_copies_the_lineage_and_capture_options():
    program = _program()
    apply_plan(program, PruningPlan({"0.fc1.weight:0": list(range(8))}))
    clone = program.clone()
    assert clone.lineage == program.lineage and clone.capture_options == {"dynamic": True}
    apply_plan(clone, PruningPlan({"1.fc1.weight:0": list(range(8))}))
    assert len(program.lineage) == 1 and len(clone.lineage) == 2


def test_mutations_bump_the_version_and_keep_tensor_kinds():
    program = _program()
    version = program.version
    weight = program.get_tensor("0.fc1.weight")
    program.set_tensor("0.fc1.weight", weight[:4] * 1)
    new = program.get_tensor("0.fc1.weight")
    assert isinstance(new, torch.nn.Parameter) and new.shape == (4, 16)
    assert program.version > version
    program.add_tensor("0.fc1.extra", torch.ones(2), parameter=False)
    assert "0.fc1.extra" in dict(program.gm.named_buffers())
    program.remove_tensor("0.fc1.extra")
    assert "0.fc1.extra" not in dict(program.gm.named_buffers())
    with pytest.raises(ValueError, match="still read"):
        program.remove_tensor("0.fc1.bias")


def test_analyses_are_cached_per_version():
    program = _program()
    calls = []
    program.analysis("n", lambda p: calls.append(1) or len(calls))
    assert program.analysis("n", lambda p: calls.append(1) or len(calls)) == 1
    program.bump()
    assert program.analysis("n", lambda p: calls.append(1) or len(calls)) == 2


def test_rewrite_remakes_only_the_fake_values_whose_sizes_changed():
    """finalize(sizes=...) keeps the fake value of every node whose shape the rewrite did not
    change, symbolic batch axis included (it once compared two reads of a symbolic shape by
    identity and re-made every node with a symbolic axis)."""
    from prunec.ir.capture import capture
    from prunec.ir.channels import analyze_channels
    from prunec.passes import MagnitudePruning
    from prunec.passes.base import candidate_groups

    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 6)).eval()
    program = capture(model, (torch.randn(1, 6),))
    before = {n.name: n.meta["val"] for n in program.graph.nodes
              if n.op != "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)}
    assert any(isinstance(v.shape[0], torch.SymInt) for v in before.values())
    groups = candidate_groups(analyze_channels(program), "mlp")
    plan = MagnitudePruning(0.5, targets="mlp").plan(program, groups, None)
    apply_plan(program, plan)
    after = {n.name: n.meta["val"] for n in program.graph.nodes if n.name in before}
    changed = {name for name, val in after.items() if val is not before[name]}
    resized = {name for name, val in after.items()
               if [str(s) for s in val.shape] != [str(s) for s in before[name].shape]}
    assert changed == resized and resized  # the pruned layers' values, and only those
    assert any(isinstance(after[n].shape[0], torch.SymInt) for n in changed)
    x = torch.randn(3, 6)
    assert program.gm(x).shape == (3, 6)
