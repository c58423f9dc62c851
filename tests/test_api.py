"""Tests for prunec.compile as a new user meets it: state the forward writes, the package's
public attributes, and documented options."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import prunec


class StepCounter(nn.Module):
    """``y = fc2(relu(fc1(x))) / steps`` where every call first does ``steps += 1``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 2)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return self.fc2(torch.relu(self.fc1(x))) / self.steps


@pytest.mark.parametrize("make_pass", [
    lambda: prunec.passes.MagnitudePruning(0.0, round_to=1),
    lambda: prunec.passes.VarianceBasedPruning(0.0, [torch.randn(5, 4)], round_to=1),
], ids=["magnitude", "variance"])
def test_compiled_model_starts_from_the_callers_buffer_values(make_pass):
    torch.manual_seed(0)
    model, x = StepCounter().eval(), torch.randn(3, 4)
    twin = copy.deepcopy(model)  # called alongside the compiled model, from the same state
    compiled = prunec.compile(model, x, [make_pass()])
    assert float(model.steps) == 0.0  # the caller's model is untouched
    for _ in range(3):  # the counter advances in step: 1, 2, 3 in both
        torch.testing.assert_close(compiled(x), twin(x), rtol=0, atol=0)
    assert float(model.steps) == 0.0


def test_verification_and_pruning_run_on_copies_of_written_buffers():
    torch.manual_seed(0)
    model, x = StepCounter().eval(), torch.randn(3, 4)
    compiled = prunec.compile(model, x, [prunec.passes.MagnitudePruning(0.5, round_to=1)])
    entry = compiled.report.passes[-1]
    assert entry["units_removed"] == 8 and entry["verified"].startswith("zeroing equivalence")
    assert float(compiled.program.gm.steps) == 0.0
    compiled(x)
    assert float(compiled.program.gm.steps) == 1.0  # the deployed model still counts


def test_recipes_are_reachable_from_the_package():
    """``import prunec`` alone gives ``prunec.recipes`` (a fresh interpreter: in this one
    another test may have imported the subpackage already)."""
    code = ("import prunec; print(prunec.recipes.ocspruner.__name__, prunec.recipes.peeao"
            ".__name__, 'recipes' in prunec.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["ocspruner", "peeao", "True"]


def test_backend_options_in_the_docstring_are_real_options():
    """Every option ``prunec.compile``'s docstring names for a backend is a keyword of that
    backend's lowering (it once said ``threads`` for ``intra_op_threads``)."""
    import importlib
    import inspect
    import re

    doc = prunec.compile.__doc__
    text = " ".join(doc[doc.index("backend_options:"):doc.index("train:")].split())
    named = re.findall(r"``(\w+)``: ((?:``\w+``,? ?)+)", text)
    assert {backend for backend, _ in named} >= {"onnxruntime", "onnx", "tensorrt", "inductor"}
    assert "``threads``" not in text
    for backend, options in named:
        module = importlib.import_module(f"prunec.backends.{backend}_backend")
        accepted = inspect.signature(getattr(module, f"lower_{backend}")).parameters
        for option in re.findall(r"``(\w+)``", options):
            assert option in accepted, f"{backend} has no option {option!r}"


def test_compile_with_plans_from_json_records_the_pass_that_made_them():
    """A saved plan says which pass made it: compile(plans=) records that pass and config,
    so the report names it and running the same pass again is a no-op; a plan that does
    not say (an older file) is recorded as "replay", and the report says so."""
    import json

    from prunec.passes import MagnitudePruning
    from prunec.rewrite.plan import PruningPlan, plans_from_metadata

    torch.manual_seed(0)
    model, x = StepCounter().eval(), torch.randn(3, 4)
    first = prunec.compile(model, x, [MagnitudePruning(0.5, round_to=1)], verify=False)
    config = first.program.lineage[0].config
    saved = json.dumps([json.loads(p.to_json()) for p in first.plans])
    assert json.loads(saved)[0]["source"] == config
    plans = [PruningPlan.from_json(json.dumps(p)) for p in json.loads(saved)]
    again = prunec.compile(model, x, [MagnitudePruning(0.5, round_to=1)], plans=plans,
                           verify=False)
    steps = again.program.lineage
    assert [(s.name, s.config, s.modified) for s in steps] == [
        ("MagnitudePruning", config, True), ("MagnitudePruning", config, False)]
    assert steps[1].stats.already_applied  # the replay counts for idempotence
    text = str(again.report)
    assert "MagnitudePruning(ratio=0.5, scope=global, targets=all, round_to=1, norm=2.0), " \
           "replayed from a saved plan" in text
    assert "MagnitudePruning: replayed a saved plan: pruned 1 channel group" in text
    # an older plan (no "source") replays as "replay", and the header says the pass is unknown
    old = json.loads(saved)[0]
    del old["source"]
    older = prunec.compile(model, x, plans=[PruningPlan.from_json(json.dumps(old))], verify=False)
    assert [s.name for s in older.program.lineage] == ["replay"]
    assert "replay of a saved plan (the plan does not say which pass made it)" in str(older.report)
    # ...unless the artifact metadata it came from names the pass in its lineage
    metadata = {"plans": [json.dumps(old)], "lineage": [{"name": "MagnitudePruning",
                                                         "config": config, "modified": True}]}
    (plan,) = plans_from_metadata(metadata)
    assert plan.source == config and plan == plans[0]
