"""PassManager: chaining, instruments, failures named; CheckOutputs compares numbers."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunec
from prunec.errors import CalibrationError, PassError, VerificationError
from prunec.ir.capture import capture
from prunec.passes import MagnitudePruning, RandomPruning, VarianceBasedPruning
from prunec.passes.base import PassManager, PassResult
from prunec.passes.instruments import CheckOutputs, Timing
from prunec.rewrite import PruningPlan, apply_plan


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def program():
    return capture(Net().eval(), (torch.randn(4, 8),))


class ReplaceProgram:
    """A pass that returns another Program (the manager must hand that one on)."""

    guarantee = None

    def __init__(self, replacement):
        self.replacement = replacement

    def __call__(self, program, ctx):
        return PassResult(self.replacement, False)


class Seen:
    guarantee = None

    def __init__(self):
        self.seen = None

    def __call__(self, program, ctx):
        self.seen = program
        return PassResult(program, False)


class Boom:
    guarantee = None

    def config(self):
        return {"pass": "Boom", "depth": 3}

    def __call__(self, program, ctx):
        raise KeyError("inner detail")


class WrongRewrite:
    """Applies a plan, then scales a weight: not what its zeroing guarantee promises."""

    guarantee = "zeroing"

    def __call__(self, program, ctx):
        group = next(g for g in prunec.ir.channels.analyze_channels(program).prunable())
        plan = PruningPlan({group.key: list(range(0, group.size, 2))})
        apply_plan(program, plan)
        weight = program.get_tensor("fc3.weight")
        program.set_tensor("fc3.weight", weight * 1.01)
        return PassResult(program, True, plan)


class Dishonest:
    """Changes the program but reports modified=False."""

    guarantee = "zeroing"

    def __call__(self, program, ctx):
        program.set_tensor("fc3.bias", program.get_tensor("fc3.bias") + 1)
        return PassResult(program, False)


def test_each_pass_gets_the_program_the_previous_returned():
    first, other, seen = program(), program(), Seen()
    manager = PassManager([ReplaceProgram(other), seen])
    assert manager.run(first) is other
    assert seen.seen is other
    assert [r.modified for r in manager.results] == [False, False]


def test_failure_names_the_pass_its_options_and_the_passes_before():
    manager = PassManager([MagnitudePruning(0.25), Boom()])
    with pytest.raises(PassError) as info:
        manager.run(program())
    text = str(info.value)
    assert "Boom(depth=3)" in text and "after MagnitudePruning(ratio=0.25" in text
    assert isinstance(info.value.__cause__, KeyError)


def test_a_prunec_error_keeps_its_class_and_gains_the_pass_name():
    bad = VarianceBasedPruning(0.5, iter([]))  # no data, seen only when the pass runs
    with pytest.raises(CalibrationError) as info:
        PassManager([bad]).run(program())
    assert "VarianceBasedPruning(ratio=0.5" in str(info.value)


def test_should_run_skips_and_timing_records():
    class OnlyMagnitude:
        def should_run(self, pass_, program):
            return isinstance(pass_, MagnitudePruning)

    timing = Timing()
    manager = PassManager([RandomPruning(0.5), MagnitudePruning(0.5)], [OnlyMagnitude(), timing])
    manager.run(program())
    assert manager.results[0].stats == {"skipped": True}
    assert manager.results[1].modified and isinstance(manager.results[1].plan, PruningPlan)
    assert [name.split("(")[0] for name, _ in timing.seconds] == ["MagnitudePruning"]


def test_check_outputs_catches_a_wrong_rewrite():
    with pytest.raises(VerificationError, match="zeroing-equivalent"):
        PassManager([WrongRewrite()], [CheckOutputs()]).run(program())


def test_check_outputs_catches_a_dishonest_modified_flag():
    with pytest.raises(VerificationError, match="modified=False"):
        PassManager([Dishonest()], [CheckOutputs()]).run(program())


def test_compile_verifies_by_default_and_verify_false_turns_it_off():
    x = torch.randn(4, 8)
    checked = prunec.compile(Net().eval(), (x,), [MagnitudePruning(0.5)])
    entry = checked.report.passes[0]
    assert entry["verified"].startswith("zeroing equivalence")
    unchecked = prunec.compile(Net().eval(), (x,), [MagnitudePruning(0.5)], verify=False)
    assert "verified" not in unchecked.report.passes[0]
    with pytest.raises(VerificationError):
        prunec.compile(Net().eval(), (x,), [WrongRewrite()])


def test_vbp_is_verified_by_mean_equivalence():
    calib = [torch.randn(16, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    compiled = prunec.compile(Net().eval(), (torch.randn(4, 8),),
                              [VarianceBasedPruning(0.5, calib, targets="all")])
    assert compiled.report.passes[0]["verified"].startswith("mean equivalence")


def test_result_plan_is_typed_and_in_the_lineage():
    p = program()
    result = MagnitudePruning(0.5)(p)
    assert isinstance(result.plan, PruningPlan) and p.plans == [result.plan]
    assert "plan" not in result.stats


def test_the_context_owns_the_instruments_and_always_times():
    from prunec.passes.base import PassContext

    ctx = PassContext()
    assert [type(i).__name__ for i in ctx.instruments] == ["Timing"]
    order = []

    class Trace:
        def __init__(self, name):
            self.name = name

        def before(self, pass_, program):
            order.append(f"before {self.name}")

        def after(self, pass_, program, result):
            order.append(f"after {self.name}")

    ctx = PassContext([Trace("a"), Trace("b")])
    result = ctx.run(MagnitudePruning(0.5), program())
    assert result.stats["seconds"] > 0  # the one timer: no pass and no runner sets it
    assert order == ["before a", "before b", "after b", "after a"]  # each wraps the next
    with pytest.raises(PassError, match=r"failed after MagnitudePruning\(ratio=0.5"):
        ctx.run(Boom(), program())


def test_every_pass_builds_on_pass_base_and_refuses_bad_options_alike():
    from prunec.errors import InvalidArgumentError
    from prunec.passes import DepthPruning, HeadPruning, PassBase

    for cls in (MagnitudePruning, RandomPruning, VarianceBasedPruning, DepthPruning, HeadPruning):
        assert issubclass(cls, PassBase)
    depth = DepthPruning(1, criterion="magnitude", compensate=False)
    assert depth.config()["pass"] == "DepthPruning" and depth.config()["num_blocks"] == 1
    for bad in ({"num_blocks": -1}, {"num_blocks": 1, "criterion": "loss"},
                {"num_blocks": 1, "unit": "stage"}, {"num_blocks": None, "ratio": 2.0}):
        with pytest.raises(InvalidArgumentError):
            DepthPruning(**{"criterion": "magnitude", "compensate": False, **bad})


def test_verification_does_not_analyse_the_program_again(monkeypatch):
    """The reference CheckOutputs builds reuses the channel analysis of the program before
    the pass (same graph, same version) instead of analysing it anew: one analysis per
    program version in a verified compile, and the check still runs."""
    import prunec.ir.channels as channels

    versions, real = [], channels._analyze
    monkeypatch.setattr(channels, "_analyze", lambda p: versions.append(p.version) or real(p))
    compiled = prunec.compile(Net().eval(), (torch.randn(4, 8),), [MagnitudePruning(0.5)])
    assert compiled.report.passes[0]["verified"].startswith("zeroing equivalence")
    assert versions and len(versions) == len(set(versions))


def test_lineage_steps_hold_the_passes_typed_stats():
    """Each pass hands its PassStats to apply_plan: the step in program.lineage is the object
    the result carries, so it also has what the instruments add (seconds, verified) and
    recapture copies it; a pass that changes nothing records no step."""
    from prunec.passes import DepthPruning, PassContext, PassStats
    from prunec.rewrite import recapture

    from prunec.passes.instruments import CheckOutputs

    ctx = PassContext([CheckOutputs()])
    p = program()
    result = ctx.run(MagnitudePruning(0.5), p)
    (step,) = p.lineage
    assert isinstance(step.stats, PassStats) and step.stats is result.stats
    assert step.stats.units_removed > 0 and step.stats.seconds > 0
    assert step.stats.verified.startswith("zeroing equivalence")
    again = ctx.run(MagnitudePruning(0.5), p)  # already applied: a no-op step
    assert not again.modified and again.stats.already_applied and len(p.lineage) == 2
    noop = p.lineage[1]
    assert not noop.modified and not noop.plan and noop.stats is again.stats
    assert p.plans == [step.plan] and p.history == [step.config]
    fresh = recapture(Net().eval(), p)
    assert fresh.lineage[0].stats.units_removed == step.stats.units_removed
    assert isinstance(DepthPruning(1, criterion="magnitude", compensate=False)(program()).stats,
                      PassStats)


def test_pass_signature_names_a_pass_and_differs_from_the_reports_words():
    """``pass_signature`` is how timings and errors name a pass; ``report.describe_pass``
    says what a pass did: two names for two things."""
    import prunec.passes.base as base
    from prunec.report import describe_pass

    assert base.pass_signature(MagnitudePruning(0.5, round_to=4)) == \
        "MagnitudePruning(ratio=0.5, scope='global', targets='all', round_to=4, norm=2.0)"
    assert not hasattr(base, "describe_pass") and "pass_signature" in base.__all__
    assert describe_pass({"pass": "X", "already_applied": True}).startswith("nothing")


def test_a_protocol_pass_is_recorded_by_the_runner():
    """A pass without PassBase that changes nothing, or one an instrument skips, is still in
    the lineage (a step that changed nothing), so the report lists it."""
    from prunec.passes import PassContext

    class Noop:
        guarantee = None

        def __call__(self, program, ctx=None):
            return PassResult(program, False, stats={"custom": 1})

    class SkipAll:
        def should_run(self, pass_, program):
            return False

    p = program()
    result = PassContext().run(Noop(), p)
    (step,) = p.lineage
    assert (step.name, step.modified, step.config) == ("Noop", False, {})
    assert step.stats is result.stats and step.stats["custom"] == 1
    PassContext([SkipAll()]).run(MagnitudePruning(0.5), p)
    assert p.lineage[-1].stats.skipped and p.lineage[-1].config["pass"] == "MagnitudePruning"
    assert p.plans == [] and p.history == []


def test_a_protocol_pass_returning_a_clone_is_recorded_once():
    """A pass without PassBase that prunes a clone through apply_plan (no stats) and returns
    it: its one step is kept (and gets the result's stats), not recorded a second time."""
    from prunec.passes import PassContext

    class CloneAndPrune:
        guarantee = None

        def __call__(self, program, ctx=None):
            clone = program.clone()
            plan = MagnitudePruning(0.5).plan(clone, MagnitudePruning(0.5).candidates(
                prunec.ir.channels.analyze_channels(clone)), None)
            apply_plan(clone, plan)
            return PassResult(clone, True, plan)

    p = program()
    result = PassContext().run(CloneAndPrune(), p)
    assert p.lineage == [] and len(result.program.lineage) == 1
    assert result.program.lineage[0].stats is result.stats
