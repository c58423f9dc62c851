"""Output sensitivity: the measured scale that makes a pass's scores comparable across groups
for a latency target (prunec.passes.sensitivity)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunec.errors import CalibrationError
from prunec.ir.capture import capture
from prunec.passes import VarianceBasedPruning
from prunec.ir.channels import analyze_channels
from prunec.ir.cost import count_macs
from prunec.passes.base import _keep_plan, candidate_groups
from prunec.passes.sensitivity import (OutputProbe, output_sensitivity, probe_width,
                                      relative_distortion)
from tests.helpers import max_diff
from tests.passes.test_latency import OVERHEAD_S, SECONDS_PER_MAC, _fake_clock, target


class Mlp(nn.Module):
    """``fc2(relu(fc1 x))`` with fc1's rows scaled by ``up`` and fc2 by ``down``: the hidden
    variances grow by ``up^2`` while the output moves by ``up * down``."""

    def __init__(self, d: int = 16, h: int = 32, up: float = 1.0, down: float = 1.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)
        with torch.no_grad():
            self.fc1.weight.mul_(up)
            self.fc1.bias.mul_(up)
            self.fc2.weight.mul_(down)

    def forward(self, x):
        return x + self.fc2(F.relu(self.fc1(x)))


class Two(nn.Module):
    def __init__(self, first: Mlp, second: Mlp):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = first, second

    def forward(self, x):
        return self.b(self.a(x))


def test_probe_width_is_the_widest_removing_a_positive_score():
    scores = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert probe_width(scores, [2, 4, 6, 8]) == (4, 3.0)  # 6 removes two zeros only
    assert probe_width(torch.zeros(8), [4, 8]) is None
    assert probe_width(scores, [8]) is None


def test_relative_distortion():
    ref = [[torch.tensor([1.0, 3.0])], [torch.tensor([5.0, 7.0])]]
    out = [[torch.tensor([1.0, 4.0])], [torch.tensor([5.0, 5.0])]]
    # sum (out - ref)^2 = 1 + 4; sum (ref - 4)^2 = 9 + 1 + 1 + 9
    assert relative_distortion(ref, out) == pytest.approx(5 / 20)
    assert relative_distortion(ref, ref) == 0.0


def test_sensitivity_is_the_closed_form_mean_replacement_error():
    """One MLP: with mean folding, removing set P changes the output by
    ``W2[:, P] (mu_P - h_P)``; the probe's distortion over the removed variance must be
    exactly that, computed here from the activations themselves."""
    torch.manual_seed(0)
    model = Mlp().eval()
    x = torch.randn(4, 16)
    program = capture(model, (x,))
    calibration = [(torch.randn(4, 16),) for _ in range(3)]
    vbp = VarianceBasedPruning(ratio=0.5, calibration=calibration, round_to=8)
    groups = [g for g in candidate_groups(analyze_channels(program), "mlp")]
    scores = vbp.score(program, groups, None)

    def realize(counts):
        plan = _keep_plan(groups, scores, counts)
        vbp.compensate(program, groups, plan, None)
        return plan
    before = {k: v.clone() for k, v in program.gm.state_dict().items()}
    probe = OutputProbe(program, calibration, items=2)
    got = output_sensitivity(probe, groups, scores, {groups[0].key: [8, 16, 24, 32]}, realize)
    assert all(torch.equal(before[k], v) for k, v in program.gm.state_dict().items())

    (key,) = got
    var = scores[key].double()
    removed = torch.argsort(var)[:8]  # width 24 removes the 8 lowest variances
    with torch.no_grad():
        hs = [F.relu(model.fc1(c[0])).double() for c in calibration]
        mu = torch.cat(hs).mean(0)
        w2 = model.fc2.weight.double()[:, removed]
        refs = [model(c[0]).double() for c in calibration[:2]]
        num = sum(float(((w2 @ (mu[removed] - h[:, removed]).T) ** 2).sum()) for h in hs[:2])
        y = torch.cat(refs)
        den = float(((y - y.mean()) ** 2).sum())
    assert got[key] == pytest.approx(num / den / float(var[removed].sum()), rel=1e-6)


def test_empty_calibration_is_a_clear_error():
    program = capture(Mlp().eval(), (torch.randn(2, 16),))
    with pytest.raises(CalibrationError, match="output probe: calibration is empty"):
        OutputProbe(program, [])
    with pytest.raises(CalibrationError, match="output probe needs calibration items"):
        OutputProbe(program, iter([]))  # no length: found empty when read


@pytest.fixture
def fake_time(monkeypatch, tmp_path):
    return _fake_clock(monkeypatch, tmp_path,
                       lambda program: OVERHEAD_S + count_macs(program) * SECONDS_PER_MAC)


def test_latency_target_prunes_where_the_output_is_insensitive(fake_time):
    """Block ``a`` has hidden variances 10^4 x block ``b``'s but moves the output 10x less
    (its fc2 is scaled by 1e-3); both cost the same. Raw variances would keep ``a`` whole
    and prune ``b``; scaled by the measured sensitivity, ``a`` is the one pruned, and the
    pruned model is closer to the original."""
    torch.manual_seed(0)
    model = Two(Mlp(up=100.0, down=1e-3), Mlp()).eval()
    x = torch.randn(8, 16)
    calibration = [(torch.randn(8, 16),) for _ in range(4)]
    program = capture(model, (x,))
    result = VarianceBasedPruning(latency=target(0.8), calibration=calibration,
                                  targets="mlp")(program)
    sizes = {g.key: g.size for g in analyze_channels(program).prunable()}
    a, b = "a.fc1.weight:0", "b.fc1.weight:0"
    assert sizes[a] < 32 and sizes[b] == 32, sizes
    stats = result.stats["latency"]
    assert stats["sensitivity"][a] < stats["sensitivity"][b] * 1e-2
    # Both value sets were solved and disagreed; the judge kept the scaled one.
    assert stats["scores"] == "sensitivity-scaled"
    assert stats["judged"] > 0

    # Without the probe (raw variance only), the knapsack makes the other choice and is
    # worse.
    class Raw(VarianceBasedPruning):
        def output_probe(self, program):
            return None
    raw = capture(model, (x,))
    Raw(latency=target(0.8), calibration=calibration, targets="mlp")(raw)
    raw_sizes = {g.key: g.size for g in analyze_channels(raw).prunable()}
    assert raw_sizes[a] == 32 and raw_sizes[b] < 32
    y = model(x)
    assert max_diff(program.run(x), y) < max_diff(raw.run(x), y)


def test_judge_keeps_the_pass_scores_when_they_move_the_output_less(fake_time, monkeypatch):
    """The judge decides on the model: block ``b``'s hidden activations are 10x ``a``'s and
    move the output 10x more, so the raw variances rightly prune ``a``. Feed the knapsack
    wrong sensitivities (``a`` precious, ``b`` free): the scaled plan prunes ``b``, moves the
    output more, and the plan of the pass's own scores must be kept."""
    torch.manual_seed(0)
    model = Two(Mlp(), Mlp(up=10.0)).eval()
    x = torch.randn(8, 16)
    calibration = [(torch.randn(8, 16),) for _ in range(4)]
    a, b = "a.fc1.weight:0", "b.fc1.weight:0"

    def wrong(probe, groups, scores, widths, realize, progress=None):
        return {a: 1e6, b: 1e-6}
    monkeypatch.setattr("prunec.passes.base.output_sensitivity", wrong)
    judged: dict = {}
    distortion = OutputProbe.distortion

    def recorded(self, plan):
        judged[plan.to_json()] = distortion(self, plan)
        return judged[plan.to_json()]
    monkeypatch.setattr(OutputProbe, "distortion", recorded)
    program = capture(model, (x,))
    stats = VarianceBasedPruning(latency=target(0.8), calibration=calibration,
                                 targets="mlp")(program).stats["latency"]
    sizes = {g.key: g.size for g in analyze_channels(program).prunable()}
    assert stats["scores"] == "pass scores"
    assert sizes[a] < 32 and sizes[b] == 32
    # both plans were judged: the kept one moved the output less
    assert len(judged) >= 2 and stats["judged"] == min(judged.values())


def test_closed_loop_takes_the_judged_plan_of_two_value_sets():
    """Pure closed loop: two value sets that disagree; the judge's lower score wins, is
    reported, and without a judge the first set decides alone."""
    from prunec.passes.latency import LatencyTarget, closed_loop

    spec = LatencyTarget(0.7, backend="torch", threads=1)
    costs = [[-3.0, 0.0], [-3.0, 0.0]]  # ms added to a 10 ms program: one class must go
    pass_values = [[0.0, 1.0], [0.0, 2.0]]  # prefers keeping class 1
    scaled = [[0.0, 2.0], [0.0, 1.0]]  # prefers keeping class 0

    def measure(picked):
        return (10.0 + sum(c[j] for c, j in zip(costs, picked))) / 10.0

    seen = []

    def judge(picked):
        seen.append(tuple(picked))
        return 1.0 if picked == [0, 1] else 0.5  # pruning class 0 moves the output more
    picked, stats = closed_loop(spec, pass_values, costs, 10.0, measure, where="Test",
                                alternatives=(scaled,), judge=judge)
    assert picked == [1, 0] and sorted(set(seen)) == [(0, 1), (1, 0)]
    assert stats["scores"] == 1 and stats["judged"] == 0.5
    assert stats["loop"][0]["scores"] == 1
    picked, stats = closed_loop(spec, pass_values, costs, 10.0, measure, where="Test",
                                alternatives=(scaled,))
    assert picked == [0, 1] and "scores" not in stats


def test_head_pruning_with_calibration_probes_the_output(fake_time):
    """HeadPruning with calibration data judges its plans on the output like VBP; the plan
    applied is the judged one; without data it takes its scores as they are."""
    from prunec.passes import HeadPruning
    from tests.passes.test_latency import _llama_program

    program = _llama_program(layers=2, intermediate=16, kv_heads=4)
    calibration = [torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(s))
                   for s in range(3)]
    result = HeadPruning(latency=target(0.85), criterion="activation",
                         calibration=calibration)(program)
    stats = result.stats["latency"]
    assert len(stats["sensitivity"]) == 2 and set(result.plan.keep) <= set(stats["sensitivity"])
    assert stats["scores"] in ("pass scores", "sensitivity-scaled") and stats["judged"] >= 0
    plain = _llama_program(layers=2, intermediate=16, kv_heads=4)
    assert "sensitivity" not in HeadPruning(latency=target(0.85))(plain).stats["latency"]


class Labels(nn.Module):
    """A model whose only output is integer (class ids): no float output to measure."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).argmax(-1)


def test_a_probe_with_no_float_output_spread_leaves_the_pass_scores_alone(fake_time):
    """Integer outputs only (or a reference constant over the items): every plan's measured
    distortion would be 0 (every sensitivity 0, every plan judged alike, the plan within the
    tolerance then chosen by speed, not importance). The probe says it is blind and the
    knapsack takes the pass's scores as they are, the same plan as without a probe."""
    torch.manual_seed(0)
    model = Labels(Two(Mlp(up=100.0, down=1e-3), Mlp())).eval()
    x = torch.randn(8, 16)
    calibration = [(torch.randn(8, 16),) for _ in range(4)]
    assert OutputProbe(capture(model, (x,)), calibration).blind
    assert not OutputProbe(capture(model.inner, (x,)), calibration).blind

    class Raw(VarianceBasedPruning):
        def output_probe(self, program):
            return None
    program, raw = capture(model, (x,)), capture(model, (x,))
    stats = VarianceBasedPruning(latency=target(0.8), calibration=calibration,
                                 targets="mlp")(program).stats["latency"]
    Raw(latency=target(0.8), calibration=calibration, targets="mlp")(raw)
    assert "sensitivity" not in stats and "scores" not in stats
    assert ({g.key: g.size for g in analyze_channels(program).prunable()}
            == {g.key: g.size for g in analyze_channels(raw).prunable()})


def test_the_probe_checks_its_calibration_items_before_running_them():
    """HeadPruning(criterion='magnitude') reads its calibration data only through the probe:
    one bare tensor, or an item of the wrong shape, is a CalibrationError naming it, not an
    error deep in an op."""
    program = capture(Mlp().eval(), (torch.randn(2, 16),))
    with pytest.raises(CalibrationError, match="one tensor"):
        OutputProbe(program, torch.randn(4, 2, 16))
    with pytest.raises(CalibrationError, match="calibration item 1"):
        OutputProbe(program, [(torch.randn(2, 16),), (torch.randn(2, 5),)])


def test_a_one_shot_iterator_is_refused_with_a_latency_target():
    """Statistics then the probe read the data twice: a generator is refused up front, by
    name; a list is fine, and a ratio (one read) still takes a generator."""
    from prunec.passes import HeadPruning

    batches = [(torch.randn(8, 16),) for _ in range(2)]
    with pytest.raises(CalibrationError, match="VarianceBasedPruning: .*one-shot iterator"):
        VarianceBasedPruning(latency=0.8, calibration=(b for b in batches))
    with pytest.raises(CalibrationError, match="HeadPruning: .*list or a DataLoader"):
        HeadPruning(latency=0.8, criterion="activation", calibration=iter(batches))
    VarianceBasedPruning(latency=0.8, calibration=batches)
    VarianceBasedPruning(0.5, calibration=(b for b in batches))
