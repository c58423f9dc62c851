"""Structural tests of the channel analysis: what is coupled, and what is kept and why."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunec
from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.passes import MagnitudePruning
from prunec.rewrite import PruningPlan, apply_plan
from tests.property_models import RandomTransformer
from tests.zoo import ZOO


def _group_with(analysis, param: str, axis: int = 0):
    return next(g for g in analysis if any(s.param == param and s.axis == axis for s in g.slots))


def test_attention_heads_are_units_and_gqa_stays_consistent():
    model = RandomTransformer([(4, 2, 16, True)]).eval()
    program = capture(model, (torch.randn(2, 5, 12),))
    analysis = analyze_channels(program)
    heads = _group_with(analysis, "attn.0.q.weight")
    assert heads.prunable and "attention" in heads.tags
    assert heads.size == 2  # one unit per key/value head, with its 2 query heads
    assert {s.param for s in heads.params} >= {"attn.0.q.weight", "attn.0.k.weight", "attn.0.v.weight",
                                               "attn.0.o.weight"}
    q_slot = next(s for s in heads.params if s.param == "attn.0.q.weight")
    k_slot = next(s for s in heads.params if s.param == "attn.0.k.weight")
    assert (q_slot.width, k_slot.width) == (16, 8)  # two 8-wide query heads per key/value head
    apply_plan(program, PruningPlan({heads.key: [1]}))
    q = program.get_tensor("attn.0.q.weight")
    k = program.get_tensor("attn.0.k.weight")
    assert q.shape[0] == 2 * k.shape[0] == 16
    assert torch.equal(q, model.attn[0].q.weight[16:32])
    assert program.run(torch.randn(3, 7, 12)).shape == (3, 7, 3)  # other batch and length


def test_mlp_hidden_is_mlp_and_residual_is_not():
    model = RandomTransformer([(4, 4, 32, False)], norm=True).eval()
    analysis = analyze_channels(capture(model, (torch.randn(2, 5, 12),)))
    hidden = _group_with(analysis, "mlp.0.up.weight")
    residual = _group_with(analysis, "embed.weight")
    assert hidden.is_mlp() and hidden.size == 32
    assert residual.prunable and not residual.is_mlp() and "residual" in residual.tags


def test_depthwise_conv_couples_input_and_output():
    case = ZOO["mobilenetv2"]()
    analysis = analyze_channels(capture(case.model, case.args))
    dw = [m for n, m in case.model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    name = next(n for n, m in case.model.named_modules() if m is dw[0])
    group = _group_with(analysis, f"{name}.weight")
    producers = [s for s in group.params if s.axis == 0 and s.param.endswith("weight")]
    assert len(producers) >= 2  # the expansion conv and the depthwise conv share channels


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.roll(F.relu(self.a(x)), 1, dims=-1)  # no rule for roll: its channels are kept
        return self.c(F.relu(self.b(h)))


def test_unknown_op_blocks_its_channels_and_says_why():
    model = UnknownOp().eval()
    analysis = prunec.analyze(model, (torch.randn(2, 8),))
    blocked = _group_with(analysis, "a.weight")
    assert not blocked.prunable and "roll" in blocked.reason
    assert _group_with(analysis, "b.weight").prunable
    assert "roll" in analysis.table()
    compiled = prunec.compile(model, (torch.randn(2, 8),), [MagnitudePruning(0.5)])
    x = torch.randn(3, 8)
    assert compiled.module(x).shape == (3, 4)
    assert compiled.program.get_tensor("a.weight").shape == (16, 8)
    with pytest.raises(prunec.PlanError, match="roll"):
        apply_plan(capture(model, (torch.randn(2, 8),)), PruningPlan({blocked.key: [0]}))


def test_untraceable_model_raises_capture_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x

    with pytest.raises(prunec.CaptureError, match="DataDependent"):
        prunec.compile(DataDependent(), (torch.randn(2, 3),))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half"])
def test_ratio_outside_range_raises(ratio):
    with pytest.raises(prunec.PrunecError, match="ratio"):
        MagnitudePruning(ratio)


def test_bad_targets_and_plan_errors():
    model = UnknownOp().eval()
    program = capture(model, (torch.randn(2, 8),))
    with pytest.raises(prunec.PrunecError, match="targets"):
        MagnitudePruning(0.5, targets="heads")(program)
    with pytest.raises(prunec.PlanError, match="does not have"):
        apply_plan(program, PruningPlan({"nope.weight:0": [0]}))
    key = _group_with(analyze_channels(program), "b.weight").key
    with pytest.raises(prunec.PlanError, match="non-empty"):
        apply_plan(program, PruningPlan({key: []}))


def test_plan_round_trips_through_json_and_replays():
    case = ZOO["resnet56"]()
    first = capture(case.model, case.args)
    result = MagnitudePruning(0.5)(first)
    plan = PruningPlan.from_json(result.plan.to_json())
    second = capture(case.model, case.args)
    apply_plan(second, plan)
    with torch.no_grad():
        assert torch.equal(first.run(*case.args), second.run(*case.args))


def test_train_mode_capture_keeps_batch_norm_training():
    case = ZOO["resnet56"]()
    program = capture(case.model, case.args, train=True)
    MagnitudePruning(0.3)(program)
    bn = next(n for n, _ in case.model.named_buffers() if n.endswith("running_mean"))
    before = program.get_tensor(bn).clone()
    program.run(torch.randn(4, 3, 32, 32))
    assert not torch.equal(before, program.get_tensor(bn))  # running statistics were updated
    assert case.model.training is False


def test_instruments_dump_ir_and_check_outputs(tmp_path):
    from prunec.passes.instruments import CheckOutputs, DumpIR

    model = UnknownOp().eval()
    prunec.compile(model, (torch.randn(2, 8),), [MagnitudePruning(0.5)],
                   instruments=[CheckOutputs(), DumpIR(tmp_path)])
    dumped = list(tmp_path.glob("*.py"))
    assert len(dumped) == 1 and "linear" in dumped[0].read_text()


@pytest.mark.parametrize("values", [[], [7], [3, 3, 3], [5, -2, 9, 5, 0, -2, 2**40, 9, 1],
                                    list(range(50, 0, -1)) * 3])
def test_sorted_unique_and_inverse_match_numpy_unique(values):
    """The sort-based helpers the analysis uses instead of np.unique (hash-based and ~10x
    slower on large element arrays since numpy 2.3) give np.unique's exact answers."""
    import numpy as np

    from prunec.ir.channels import _sorted_unique, _unique_inverse

    arr = np.asarray(values, dtype=np.int64)
    expected, inverse = np.unique(arr, return_inverse=True)
    assert np.array_equal(_sorted_unique(arr), expected)
    assert _sorted_unique(arr).dtype == np.int64
    assert np.array_equal(_unique_inverse(arr), inverse.reshape(-1))
    rng = np.random.default_rng(len(values))
    big = rng.integers(-1000, 1000, size=5000)
    assert np.array_equal(_sorted_unique(big), np.unique(big))
    assert np.array_equal(_unique_inverse(big), np.unique(big, return_inverse=True)[1])
