"""VarianceBasedPruning: mean-replacement exactness, the three DESIGN kinds of test, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunec
from prunec.errors import CalibrationError, PrunecError
from prunec.ir.capture import capture
from prunec.ir.channels import ChannelAnalysis, analyze_channels
from prunec.ir.interpret import record_values, run_with_overrides
from prunec.ir.program import Program
from prunec.passes import PassContext, VarianceBasedPruning
from tests.helpers import max_diff
from tests.zoo import get_case


# ---------------------------------------------------------------------------- models
class Block(nn.Module):
    """``x + fc2(gelu(fc1(x)))``; ``scale`` shrinks fc1 so its neurons vary less."""

    def __init__(self, width: int, hidden: int, scale: float = 1.0, fc2_bias: bool = True):
        super().__init__()
        self.fc1, self.act = nn.Linear(width, hidden), nn.GELU()
        self.fc2 = nn.Linear(hidden, width, bias=fc2_bias)
        with torch.no_grad():
            self.fc1.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


def mlp_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Block(16, 64), Block(16, 64, scale=0.2, fc2_bias=False)).eval()


def conv_model(kernel: int, padding: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 8, kernel, padding=padding, bias=False)).eval()


def tokens(seed: int, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 6, 16, generator=torch.Generator().manual_seed(seed))


def images(seed: int, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, 9, 9, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- reference
def consumer_input(program: Program, weight: str):
    """The activation that the linear/conv with parameter ``weight`` reads (``args[0]``)."""
    return next(n.args[0] for n in program.graph.nodes
                if n.op == "call_function" and len(n.args) > 1
                and getattr(n.args[1], "target", None) == weight)


def pooled_mean(program: Program, items: list, node: str, axis: int) -> torch.Tensor:
    """float64 per-channel mean of ``node`` over all items and positions (the test's own)."""
    rows = [record_values(program, item, [node])[node].movedim(axis, -1).double()
            for item in items]
    return torch.cat([r.reshape(-1, r.shape[-1]) for r in rows]).mean(0)


def mean_overrides(program: Program, analysis: ChannelAnalysis, plan, calibration: list,
                   consumers: list[str], replace_with_mean: bool = True) -> dict:
    """``h_P <- mu_P`` (or 0) at the input of each consumer weight, pruned channels per plan."""
    overrides = {}
    for weight in consumers:
        node = consumer_input(program, weight)
        axis = 1 if "conv" in str(next(iter(node.users)).target) else node.meta["val"].dim() - 1
        group = next(g for g in analysis.prunable()
                     if any(s.param == weight and s.axis == 1 for s in g.slots))
        if group.key not in plan.keep:
            continue
        slot = next(s for s in group.slots if s.node == node.name and s.axis == axis)
        dropped = sorted(set(range(group.size)) - set(plan.keep[group.key]))
        pruned = torch.zeros(slot.size, dtype=torch.bool)
        pruned[group.indices(slot, dropped)] = True
        mu = pooled_mean(program, calibration, node.name, axis) if replace_with_mean \
            else torch.zeros(slot.size, dtype=torch.float64)
        overrides[node.name] = _replacer(pruned, mu, axis)
    return overrides


def _replacer(pruned: torch.Tensor, mu: torch.Tensor, axis: int):
    def replace(v: torch.Tensor) -> torch.Tensor:
        shape = [1] * v.dim()
        shape[axis] = -1
        m = pruned.view(shape)
        return torch.where(m, mu.to(v.dtype).view(shape).expand_as(v), v)
    return replace


def prune(model, example, calibration, ratio=0.5, **options):
    program = capture(model, example)
    original = program.clone()
    result = VarianceBasedPruning(ratio, calibration, **options)(program, PassContext())
    return original, program, result


# ---------------------------------------------------------------------------- exactness
CASES = {
    "linear": (mlp_model, tokens, ["0.fc2.weight", "1.fc2.weight"]),
    "conv1x1": (lambda: conv_model(1, 0), images, ["3.weight"]),
    "conv3x3_valid": (lambda: conv_model(3, 0), images, ["3.weight"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pruned_equals_original_with_means(name):
    build, data, consumers = CASES[name]
    calibration = [data(1), data(2)]
    original, program, result = prune(build(), data(0), calibration)
    assert result.modified and result.stats["units_removed"] > 0
    overrides = mean_overrides(original, analyze_channels(original), result.plan,
                               calibration, consumers)
    x = data(3)
    with torch.no_grad():
        diff = max_diff(run_with_overrides(original, x, overrides), program.run(x))
    assert diff < 1e-4, diff


def test_without_mean_shift_equals_zeroed_activations():
    calibration = [tokens(1), tokens(2)]
    original, program, result = prune(mlp_model(), tokens(0), calibration, compensate=False)
    assert not result.plan.compensations
    overrides = mean_overrides(original, analyze_channels(original), result.plan,
                               calibration, ["0.fc2.weight", "1.fc2.weight"], False)
    with torch.no_grad():
        diff = max_diff(run_with_overrides(original, tokens(3), overrides), program.run(tokens(3)))
    assert diff < 1e-5, diff


def test_swiglu_llama_down_proj_input():
    case = get_case("hf_llama")
    item = {"input_ids": case.args[0], **case.kwargs}
    calibration = [item]
    program = capture(case.model, case.args, case.kwargs)
    original = program.clone()
    result = VarianceBasedPruning(0.5, calibration, mask="attention_mask")(program, PassContext())
    assert result.stats["pruned_groups"] == 2
    consumers = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(2)]
    for weight in consumers:  # the measured value is silu(gate) * up, the input of down_proj
        assert str(consumer_input(original, weight).target) == "aten.mul.Tensor"
    overrides = _masked_mean_overrides(original, result.plan, consumers, item)
    with torch.no_grad():
        ref = run_with_overrides(original, item, overrides).logits
        out = program.run(*case.args, **case.kwargs).logits
    real = case.kwargs["attention_mask"].bool()
    assert (ref - out)[real].abs().max().item() < 1e-4


class FusedGateUp(nn.Module):
    """Phi-3's MLP: one projection for gate and up, split in halves by ``chunk``."""

    def __init__(self, d: int = 16, h: int = 32) -> None:
        super().__init__()
        self.gate_up, self.down = nn.Linear(d, 2 * h, bias=False), nn.Linear(h, d, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return x + self.down(torch.nn.functional.silu(gate) * up)


def test_fused_gate_up_projection_measures_the_down_projection_input():
    """Through ``chunk``: the measured value is silu(gate) * up, the removed neurons' mean
    goes into the down projection's bias, and the pruned model equals the original with
    those neurons at their means."""
    torch.manual_seed(0)
    model = FusedGateUp().eval()
    calibration = [(torch.randn(4, 6, 16) + 0.5,) for _ in range(3)]
    program = capture(model, calibration[0])
    original = program.clone()
    result = VarianceBasedPruning(0.5, calibration, round_to=1)(program, PassContext())
    assert result.modified and result.stats["units_removed"] == 16
    assert tuple(program.get_tensor("gate_up.weight").shape) == (32, 16)
    assert tuple(program.get_tensor("down.weight").shape) == (16, 16)
    assert str(consumer_input(original, "down.weight").target) == "aten.mul.Tensor"
    node = consumer_input(original, "down.weight")
    values = torch.cat([record_values(original, c, [node.name])[node.name] for c in calibration])
    mu = values.reshape(-1, 32).double().mean(0)
    removed = torch.ones(32, dtype=torch.bool)
    removed[result.plan.keep["gate_up.weight:0"]] = False
    x = torch.randn(3, 6, 16)
    overrides = {node.name: _replacer(removed, mu, 2)}
    with torch.no_grad():
        assert max_diff(program.run(x), run_with_overrides(original, (x,), overrides)) < 1e-5


def _masked_mean_overrides(program, plan, consumers, item):
    """Means over real tokens only: the statistics must exclude padding."""
    analysis = analyze_channels(program)
    real = item["attention_mask"].bool()
    overrides = {}
    for weight in consumers:
        node = consumer_input(program, weight)
        value = record_values(program, item, [node.name])[node.name]
        mu = value[real].double().mean(0)
        group = next(g for g in analysis.prunable()
                     if any(s.param == weight and s.axis == 1 for s in g.slots))
        slot = next(s for s in group.slots if s.node == node.name)
        pruned = torch.zeros(slot.size, dtype=torch.bool)
        pruned[group.indices(slot, sorted(set(range(group.size)) - set(plan.keep[group.key])))] = True
        overrides[node.name] = _replacer(pruned, mu, value.dim() - 1)
    return overrides


def test_padded_kxk_conv_is_exact_at_the_borders_too():
    calibration = [images(1), images(2)]
    original, program, result = prune(conv_model(3, 1), images(0), calibration)
    overrides = mean_overrides(original, analyze_channels(original), result.plan,
                               calibration, ["3.weight"])
    with torch.no_grad():
        diff = (run_with_overrides(original, images(3), overrides) - program.run(images(3))).abs()
        # A bias alone would be wrong at the zero-padded border; the constant-image correction is not.
        assert diff.max().item() < 1e-4
        bigger = torch.randn(2, *images(3).shape[1:-2], 11, 13)  # other spatial sizes (dynamic)
        assert (run_with_overrides(original, bigger, overrides) - program.run(bigger)).abs().max() < 1e-4
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.new_ones.default in targets  # the border correction is in the graph


# ---------------------------------------------------------------------------- selection
def test_global_raw_variance_ranking_and_rounding():
    calibration = [tokens(1), tokens(2)]
    original, program, result = prune(mlp_model(), tokens(0), calibration, ratio=0.5)
    plan = result.plan
    kept = {k: len(v) for k, v in plan.keep.items()}
    # Block 1's fc1 is scaled by 0.2: its neurons vary far less and lose more.
    assert kept["1.fc1.weight:0"] < kept.get("0.fc1.weight:0", 64)
    assert all(k % 8 == 0 for k in kept.values())
    assert abs(result.stats["units_removed"] - 64) <= 8
    node = consumer_input(original, "1.fc2.weight").name
    var = torch.cat([record_values(original, t, [node])[node].reshape(-1, 64) for t in calibration]
                    ).double().var(0)
    expected = sorted(torch.argsort(var, descending=True)[:kept["1.fc1.weight:0"]].tolist())
    assert plan.keep["1.fc1.weight:0"] == expected


def test_calibration_mask_excludes_padding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)).eval()

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, attention_mask):
            return self.net(x) * attention_mask.unsqueeze(-1)

    x, m = tokens(0), torch.ones(4, 6)
    m[:, 4:] = 0
    x[:, 4:] = 100.0  # padding would dominate the mean if it were counted
    program = capture(Masked(), (x, m))
    result = VarianceBasedPruning(0.5, [(x, m)], mask=lambda item: item[1])(program)
    (comp,) = result.plan.compensations
    with torch.no_grad():
        h = torch.relu(model[0](x[:, :4]))
    assert torch.allclose(comp.mean, h.reshape(-1, 32).double().mean(0), atol=1e-6)


# ---------------------------------------------------------------------------- DESIGN kinds
def test_ratio_zero_is_identity():
    original, program, result = prune(mlp_model(), tokens(0), [tokens(1)], ratio=0.0)
    assert not result.modified
    with torch.no_grad():
        assert max_diff(original.run(tokens(3)), program.run(tokens(3))) == 0.0


def test_structure_after_pruning():
    original, program, result = prune(mlp_model(), tokens(0), [tokens(1), tokens(2)])
    plan, gm = result.plan, program.gm
    for i in range(2):
        k = len(plan.keep.get(f"{i}.fc1.weight:0", range(64)))
        assert gm.get_submodule(f"{i}.fc1").weight.shape == (k, 16)
        assert gm.get_submodule(f"{i}.fc2").weight.shape == (16, k)
    # fc2 of block 1 had no bias: the fold created one, wired into its linear.
    assert gm.get_submodule("1.fc2").prunec_bias.shape == (16,)
    fc2 = next(n for n in program.graph.nodes if n.op == "call_function" and len(n.args) > 1
               and getattr(n.args[1], "target", None) == "1.fc2.weight")
    assert fc2.args[2].target == "1.fc2.prunec_bias"
    # Compensations are keyed by the consumer's weight and its input axis.
    assert sorted((c.consumer, c.axis) for c in plan.compensations) == [
        ("0.fc2.weight", 1), ("1.fc2.weight", 1)]


def test_second_run_is_not_modified():
    program = capture(mlp_model(), tokens(0))
    pass_ = VarianceBasedPruning(0.5, [tokens(1)])
    assert pass_(program).modified
    assert not pass_(program).modified
    again = VarianceBasedPruning(0.5, [tokens(1)])(program)
    assert not again.modified


def test_all_targets_skip_groups_with_non_linear_consumers():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            return self.fc2(h) + h.sum(-1, keepdim=True)  # h also leaves through a sum

    program = capture(Leaky().eval(), tokens(0))
    result = VarianceBasedPruning(0.5, [tokens(1)], targets="all")(program)
    assert not result.modified


def test_all_targets_include_attention_heads():
    case = get_case("hf_vit")
    program = capture(case.model, case.args)
    result = VarianceBasedPruning(0.5, [case.args], targets="all", round_to=1)(program)
    assert any("q_proj" in key for key in result.plan.keep)


def test_compile_reports_fewer_macs():
    compiled = prunec.compile(mlp_model(), tokens(0),
                              [VarianceBasedPruning(0.5, [tokens(1), tokens(2)])])
    assert compiled.report.macs_after < compiled.report.macs_before
    assert compiled(tokens(3)).shape == (4, 6, 16)


# ---------------------------------------------------------------------------- errors
def test_empty_calibration_raises():
    with pytest.raises(CalibrationError):
        prune(mlp_model(), tokens(0), [])


def test_train_mode_program_raises():
    program = capture(mlp_model(), tokens(0), train=True)
    with pytest.raises(PrunecError, match="eval mode"):
        VarianceBasedPruning(0.5, [tokens(1)])(program)


def test_single_sample_raises():
    with pytest.raises(CalibrationError, match="at least 2"):
        prune(mlp_model(), tokens(0), [tokens(1, batch=1)[:, :1]])


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_bad_ratio_raises(ratio):
    with pytest.raises(PrunecError):
        VarianceBasedPruning(ratio, [tokens(1)])
