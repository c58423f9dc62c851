"""PruningPlan: plain data that saves, loads (old files too) and names only stable things."""
from __future__ import annotations

import json

import pytest
import torch

from prunec.errors import PlanError
from prunec.passes import VarianceBasedPruning
from prunec.rewrite import (BlockDrop, MeanCompensation, PruningPlan, ValueCompensation, apply_plan,
                            convert_plan)
from prunec.rewrite.compensation import consumer_node
from tests.helpers import max_diff
from tests.rewrite.models import calibration, captured_mlp, tokens


def _vbp_plan():
    program = captured_mlp()
    return VarianceBasedPruning(0.5, calibration())(program).plan


def test_json_round_trip_keeps_every_field():
    plan = PruningPlan({"a.weight:0": [0, 2]},
                       [MeanCompensation("b.weight", 1, torch.tensor([0.5, 1.5, -2.0]))],
                       [BlockDrop("layer1.0", torch.tensor([1.0])), BlockDrop("layer1.1")])
    again = PruningPlan.from_json(plan.to_json())
    assert again.keep == plan.keep
    (comp,) = again.compensations
    assert (comp.consumer, comp.axis) == ("b.weight", 1) and comp.mean.dtype == torch.float64
    assert torch.equal(comp.mean, plan.compensations[0].mean.double())
    assert [b.key for b in again.blocks] == ["layer1.0", "layer1.1"]
    assert again.blocks[0].mean.tolist() == [1.0] and again.blocks[1].mean is None
    assert not again.needs_conversion()


def test_summary_and_truthiness():
    assert not PruningPlan() and str(PruningPlan()) == "(empty plan)"
    plan = PruningPlan({"g.weight:0": [0, 1]}, blocks=[BlockDrop("b", torch.zeros(1))])
    assert plan and str(plan) == "g.weight:0: keep 2\ndrop block b (mean compensated)"


def test_compensations_name_consumer_weights_not_graph_values():
    plan = _vbp_plan()
    assert plan.compensations
    assert {(c.consumer, c.axis) for c in plan.compensations} <= {("0.fc2.weight", 1),
                                                                   ("1.fc2.weight", 1)}
    assert "value" not in plan.to_json()


def _old_json(plan: PruningPlan, program) -> str:
    """The plan as an older prunec saved it: compensations keyed by graph value."""
    data = json.loads(plan.to_json())
    for entry in data["compensations"]:
        user = consumer_node(program.graph, entry.pop("consumer"), 1)
        entry["value"], entry["axis"] = user.args[0].name, user.args[0].meta["val"].dim() - 1
    return json.dumps(data)


def test_old_value_keyed_plan_converts_on_its_capture_and_equals_the_new_one():
    plan = _vbp_plan()
    program = captured_mlp()
    old = PruningPlan.from_json(_old_json(plan, program))
    assert old.needs_conversion()
    assert all(isinstance(c, ValueCompensation) for c in old.compensations)
    converted = convert_plan(program, old)
    assert [(c.consumer, c.axis) for c in converted.compensations] == \
        [(c.consumer, c.axis) for c in plan.compensations]
    new = captured_mlp()
    apply_plan(new, plan)
    apply_plan(program, old)
    assert max_diff(program.run(tokens(7)), new.run(tokens(7))) == 0.0
    # The lineage records the converted plan, so a replay needs no graph names.
    assert not program.lineage[-1].plan.needs_conversion()


def test_old_plan_on_another_graph_says_how_to_convert():
    old = PruningPlan.from_json(json.dumps({"keep": {"0.fc1.weight:0": [0, 1, 2, 3, 4, 5, 6, 7]},
                                            "compensations": [{"value": "no_such_node", "axis": 2,
                                                               "mean": [0.0] * 32}]}))
    with pytest.raises(PlanError, match="older prunec.*convert_plan"):
        apply_plan(captured_mlp(), old)


@pytest.mark.parametrize("text", ["not json", "[]", '{"keep": 3}', '{"blocks": []}'])
def test_not_a_plan_is_a_plan_error(text):
    with pytest.raises(PlanError, match="plan.to_json"):
        PruningPlan.from_json(text)


def test_numerical_a_reloaded_plan_rewrites_to_the_same_outputs():
    plan = _vbp_plan()
    assert plan.keep and plan.compensations
    direct, reloaded = captured_mlp(), captured_mlp()
    apply_plan(direct, plan)
    apply_plan(reloaded, PruningPlan.from_json(plan.to_json()))
    x = tokens(8)
    assert max_diff(direct.run(x), reloaded.run(x)) == 0.0
    assert max_diff(direct.run(x), captured_mlp().run(x)) > 1e-3  # the plan did change it


def test_idempotence_saving_a_loaded_plan_gives_the_same_text_and_conversion_is_a_no_op():
    plan = _vbp_plan()
    text = plan.to_json()
    assert PruningPlan.from_json(text).to_json() == text
    assert convert_plan(captured_mlp(), plan) is plan  # nothing keyed by graph values
    program = captured_mlp()
    old = PruningPlan.from_json(_old_json(plan, program))
    once = convert_plan(program, old)
    assert convert_plan(program, once) is once


def test_a_plan_applied_for_a_pass_names_it_in_its_json():
    """apply_plan gives a pass's plan the pass's config (``source``); the JSON keeps it, an
    older reader's text (no source) still loads, and a malformed source is a PlanError."""
    program = captured_mlp()
    plan = PruningPlan({"0.fc1.weight:0": list(range(8))})
    assert "source" not in json.loads(plan.to_json())
    apply_plan(program, plan, config={"pass": "MagnitudePruning", "ratio": 0.5})
    assert plan.source == {"pass": "MagnitudePruning", "ratio": 0.5}
    again = PruningPlan.from_json(plan.to_json())
    assert again.source == plan.source and again == PruningPlan(plan.keep)  # not in equality
    replayed = PruningPlan({"1.fc1.weight:0": [0, 1]})
    apply_plan(program, replayed)  # a replay of unknown origin says nothing
    assert replayed.source == {} and program.lineage[-1].name == "replay"
    with pytest.raises(PlanError, match="'source' must be a pass config"):
        PruningPlan.from_json(json.dumps({"keep": {}, "source": {"ratio": 0.5}}))


def test_plans_from_metadata_name_their_pass_from_a_lineage_or_a_report():
    from prunec.rewrite.plan import plans_from_metadata

    old = {"keep": {"0.fc1.weight:0": [0, 1]}, "compensations": [], "blocks": []}  # no source
    config = {"pass": "MagnitudePruning", "ratio": 0.5}
    lineage = [{"name": "RandomPruning", "config": {"pass": "RandomPruning"}, "modified": False},
               {"name": "MagnitudePruning", "config": config, "modified": True}]
    assert plans_from_metadata({"plans": [json.dumps(old)], "lineage": lineage})[0].source == config
    passes = [{"pass": "RandomPruning", "options": {}, "modified": False},
              {"pass": "MagnitudePruning", "options": {"ratio": 0.5}, "modified": True}]
    assert plans_from_metadata({"plans": [old], "passes": passes})[0].source == config
    replayed = [{"pass": "replay", "options": {}, "modified": True}]
    assert plans_from_metadata({"plans": [old], "passes": replayed})[0].source == {}
    own = dict(old, source={"pass": "RandomPruning", "ratio": 0.1})  # its own source wins
    assert plans_from_metadata({"plans": [own], "lineage": lineage[1:]})[0].source == own["source"]
    assert plans_from_metadata({"plans": [old, old], "lineage": lineage})[1].source == {}  # unmatched
