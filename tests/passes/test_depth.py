"""DepthPruning: identity at 0, mean/zero replacement exactness, structure, idempotence,
criteria, plan replay, stage constraints and errors."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunec.errors import CalibrationError, PlanError, PrunecError
from prunec.ir.blocks import analyze_blocks
from prunec.ir.capture import capture
from prunec.ir.cost import count_macs, count_params
from prunec.ir.interpret import ProgramInterpreter
from prunec.passes import DepthPruning
from prunec.rewrite import BlockDrop, PruningPlan, apply_plan
from prunec.rewrite.drop import block_overrides
from tests.captured import bottleneck_resnet, captured, one_thread  # noqa: F401 (autouse fixture)
from tests.helpers import max_diff


# ---------------------------------------------------------------------------- models
class Branch(nn.Module):
    """``relu(x + gamma * bn(conv(relu(conv(x)))))``: ``gamma`` sets the branch's weight."""

    def __init__(self, c: int, gamma: float):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.gamma = nn.Parameter(torch.tensor(gamma))

    def forward(self, x):
        return F.relu(x + self.gamma * self.bn(self.conv2(F.relu(self.conv1(x)))))


class Tiny(nn.Module):
    def __init__(self, gammas=(1.0, 0.01, 1.0, 0.5)):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[Branch(8, g) for g in gammas])
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.blocks(F.relu(self.stem(x))), 1).flatten(1))


def _tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


@functools.lru_cache(maxsize=1)
def _tiny_capture():
    return capture(_tiny(), (_batches()[0],))


def _tiny_program():
    """A fresh copy of the captured tiny model (captured once per process)."""
    return _tiny_capture().clone()


def _batches(n=3, shape=(4, 3, 8, 8)):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=gen) for _ in range(n)]


def _reference(program, plan, item):
    """The program before ``plan`` with every dropped branch replaced as the plan says."""
    interp = ProgramInterpreter(program, overrides=block_overrides(program, plan))
    with torch.no_grad():
        return interp.call_item(item)


def _run(program, item):
    with torch.no_grad():
        return ProgramInterpreter(program).call_item(item)


# ---------------------------------------------------------------------------- kinds of test
def test_zero_blocks_is_identity():
    program = _tiny_program()
    before = _run(program, _batches()[0])
    result = DepthPruning(0, calibration=_batches())(program.clone())
    assert not result.modified
    assert max_diff(_run(result.program, _batches()[0]), before) == 0.0


@pytest.mark.parametrize("compensate", [True, False])
def test_pruned_equals_branch_replaced_by_mean_or_zero(compensate):
    data = _batches()
    program = _tiny_program()
    before = program.clone()
    result = DepthPruning(2, calibration=data, compensate=compensate)(program)
    plan = result.plan
    assert [b.mean is not None for b in plan.blocks] == [compensate] * 2
    for item in data:
        assert max_diff(_run(result.program, item), _reference(before, plan, item)) < 1e-5
    if compensate:  # the mean really is the branch output's per-channel mean
        block = analyze_blocks(before).by_key()[plan.blocks[0].key]
        outs = []
        interp = ProgramInterpreter(before, observers={block.output: outs.append})
        with torch.no_grad():
            for item in data:
                interp.call_item(item)
        mean = torch.cat([o.transpose(0, 1).reshape(8, -1) for o in outs], 1).double().mean(1)
        assert torch.allclose(plan.blocks[0].mean, mean, atol=1e-6)


def test_structure_ops_and_parameters_are_gone():
    data = _batches()
    program = _tiny_program()
    blocks = analyze_blocks(program).by_key()
    macs, params = count_macs(program), count_params(program)
    result = DepthPruning(1, calibration=data, criterion="kl")(program)
    (key,) = result.stats["dropped_keys"]
    assert key == "blocks.1"  # gamma = 0.01: the branch that matters least
    block = blocks[key]
    names = {n.name for n in program.graph.nodes}
    assert not names & set(block.nodes) and block.add not in names
    named = dict(program.gm.named_parameters())
    assert not any(k.startswith("blocks.1.") for k in named) and "blocks.0.gamma" in named
    assert "blocks.1.prunec_block_mean" in dict(program.gm.named_buffers())
    assert count_macs(program) == macs - block.macs
    # the branch's parameters go; its per-channel mean (8 values) is stored in its place
    mean = result.plan.blocks[0].mean
    assert count_params(program) == params - block.param_count + mean.numel()
    assert [b.key for b in analyze_blocks(program)] == ["blocks.0", "blocks.2", "blocks.3"]


def test_idempotent():
    data = _batches()
    program = _tiny_program()
    pass_ = DepthPruning(2, calibration=data)
    assert pass_(program).modified
    version = program.version
    again = pass_(program)
    assert not again.modified and program.version == version
    assert DepthPruning(ratio=0.5, calibration=data)(program).modified is False  # 2 of 4


@pytest.mark.parametrize("criterion", ["kl", "cosine", "angular", "magnitude"])
def test_every_criterion_finds_the_negligible_branch(criterion):
    data = _batches()
    program = _tiny_program()
    result = DepthPruning(1, calibration=data, criterion=criterion)(program)
    scores = result.stats["scores"]
    assert min(scores, key=scores.get) == "blocks.1" == result.stats["dropped_keys"][0]


def test_stage_constraints():
    data = _batches()
    program = _tiny_program()
    pass_ = DepthPruning(4, calibration=data, protect_first=True, min_per_stage=2)
    result = pass_(program)
    assert sorted(result.stats["dropped_keys"]) == ["blocks.1", "blocks.3"]  # 4 -> 2, first kept
    assert [b.key for b in analyze_blocks(program)] == ["blocks.0", "blocks.2"]


def test_plan_json_round_trip_and_replay_on_fresh_capture():
    data = _batches()
    model = _tiny()
    program = capture(model, (data[0],))
    plan = DepthPruning(2, calibration=data)(program).plan
    again = PruningPlan.from_json(plan.to_json())
    assert [b.key for b in again.blocks] == [b.key for b in plan.blocks]
    assert all(torch.equal(a.mean, b.mean.double()) for a, b in zip(again.blocks, plan.blocks))
    assert "drop block blocks.1 (mean compensated)" in str(again)
    fresh = capture(model, (data[0],))
    apply_plan(fresh, again)
    assert max_diff(_run(fresh, data[1]), _run(program, data[1])) < 1e-6


def test_plan_errors():
    program = _tiny_program()
    with pytest.raises(PlanError, match="does not have"):
        apply_plan(program, PruningPlan(blocks=[BlockDrop("blocks.9")]))
    with pytest.raises(PlanError, match="channels"):
        apply_plan(program, PruningPlan(blocks=[BlockDrop("blocks.0", torch.zeros(3))]))


def test_argument_errors():
    with pytest.raises(PrunecError, match="exactly one"):
        DepthPruning(1, ratio=0.5, calibration=[])
    with pytest.raises(PrunecError, match="exactly one"):
        DepthPruning(calibration=[])
    with pytest.raises(PrunecError, match="criterion"):
        DepthPruning(1, calibration=[], criterion="taylor")
    with pytest.raises(CalibrationError, match="calibration"):
        DepthPruning(1)
    DepthPruning(1, criterion="magnitude", compensate=False)  # data-free is allowed
    assert DepthPruning(1, calibration=[]).guarantee == "mean"
    assert DepthPruning(1, calibration=[], compensate=False).guarantee == "zeroing"


# ---------------------------------------------------------------------------- zoo
def _item(case):
    if not case.kwargs:
        return case.args if len(case.args) > 1 else case.args[0]
    import inspect

    names = list(inspect.signature(case.model.forward).parameters)
    return {**dict(zip(names, case.args)), **case.kwargs}


@pytest.mark.slow
@pytest.mark.parametrize("name,criterion", [("resnet56", "cosine"), ("hf_llama", "kl"),
                                            ("hf_bert", "angular"), ("hf_vit", "cosine"),
                                            ("hf_convnext", "magnitude")])
def test_zoo_models(name, criterion):
    case, original = captured(name)
    program = original.clone()
    item = _item(case)
    result = DepthPruning(2, calibration=[item], criterion=criterion)(program)
    plan = result.plan
    assert result.modified and len(plan.blocks) == 2
    assert max_diff(_run(program, item), _reference(original, plan, item)) < 1e-4
    blocks = analyze_blocks(original).by_key()
    assert count_macs(original) - count_macs(program) == sum(blocks[b.key].macs for b in plan.blocks)
    assert count_params(original) - count_params(program) == \
        sum(blocks[b.key].param_count - (b.mean.numel() if b.mean is not None else 0)
            for b in plan.blocks)


def test_bottleneck_resnet():
    _, x, original = bottleneck_resnet()
    program = original.clone()
    plan = DepthPruning(2, calibration=[x])(program).plan
    assert len(plan.blocks) == 2  # the two identity bottlenecks (in-place add_ in the model)
    assert max_diff(_run(program, x), _reference(original, plan, x)) < 1e-4


@pytest.mark.parametrize("compensate", [True, False])
def test_compile_verifies_the_guarantee_and_plans_replay(compensate):
    import prunec

    data = _batches()
    model = _tiny()
    compiled = prunec.compile(model, data[0], passes=[
        DepthPruning(2, calibration=data, compensate=compensate)])
    entry = compiled.report.passes[0]
    assert entry["verified"].startswith("mean" if compensate else "zeroing")
    again = prunec.compile(model, data[0], plans=compiled.plans)
    assert max_diff(again(data[1]), compiled(data[1])) < 1e-6


def test_finetune_replays_dropped_blocks_in_train_mode():
    import prunec

    data = _batches()
    model = _tiny()
    program = _tiny_program()
    DepthPruning(1, calibration=data)(program)
    params = {k: v.clone() for k, v in program.gm.named_parameters()}
    items = [(x, torch.zeros(len(x), dtype=torch.long)) for x in data]
    prunec.finetune(program, items, epochs=1, original=model, lr=1e-2)
    changed = [k for k, v in program.gm.named_parameters() if not torch.equal(v, params[k])]
    assert changed and "blocks.1.conv1.weight" not in params


def test_mask_excludes_padding_from_the_mean():
    case, original = captured("hf_bert")
    item = _item(case)
    program = original.clone()
    result = DepthPruning(1, calibration=[item], criterion="cosine", mask="attention_mask")(program)
    (drop,) = result.plan.blocks
    block = analyze_blocks(original).by_key()[drop.key]
    outs = []
    with torch.no_grad():
        ProgramInterpreter(original, observers={block.output: outs.append}).call_item(item)
    keep = item["attention_mask"].bool()
    assert not keep.all()  # the example has padding
    assert torch.allclose(drop.mean, outs[0][keep].double().mean(0), atol=1e-6)
    assert not torch.allclose(drop.mean, outs[0].reshape(-1, outs[0].shape[-1]).double().mean(0),
                              atol=1e-6)


@pytest.mark.parametrize("compensate", [True, False])
def test_consecutive_layer_scaled_blocks_behind_a_permute(compensate):
    """Hugging Face ConvNeXt: ``x + permute(gamma * mlp(...))``, and a stage's second block
    takes the first block's add as its skip. Dropping both (every block here) reads that skip
    through what replaced the first add; the result equals the original with each branch
    replaced by its mean (or zero)."""
    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(0)
    config = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[2, 2], num_stages=2,
                            image_size=16, layer_scale_init_value=0.5)
    model = ConvNextModel(config).eval()
    data = _batches(2, (2, 3, 16, 16))
    original = capture(model, (data[0],))
    program = original.clone()
    result = DepthPruning(4, calibration=data, compensate=compensate)(program)
    assert len(result.plan.blocks) == 4
    assert [b.mean is not None for b in result.plan.blocks] == [compensate] * 4
    assert not any(n.target is torch.ops.aten.mul.Tensor for n in program.graph.nodes
                   if n.op == "call_function")  # every layer-scale multiply is gone
    for item in data:
        assert max_diff(_run(program, item), _reference(original, result.plan, item)) < 1e-5
