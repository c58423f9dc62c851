"""Latency targets: tables, caching, selection and errors on tiny models.

Timing is replaced by a deterministic clock that advances by the MACs of the program being
run (plus a fixed overhead per call), so the decisions are checkable; speed itself is
measured in ``benchmarks/latency_target.py``, never here.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunec
from prunec.errors import InvalidArgumentError, PlanError, PrunecError
from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.ir.cost import count_macs
from prunec.passes import DepthPruning, MagnitudePruning, RandomPruning, VarianceBasedPruning
from prunec.passes import latency_table
from prunec.passes.latency import LatencyTarget, bind_backend, check_latency
from tests.helpers import max_diff

OVERHEAD_S = 1e-6
SECONDS_PER_MAC = 1e-9


class Layer(nn.Module):
    def __init__(self, d: int, h: int, scale: float = 1.0):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, h), nn.Linear(h, d)
        with torch.no_grad():
            self.fc1.weight.mul_(scale)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Stack(nn.Module):
    def __init__(self, scales=(1.0, 1.0, 1.0), d: int = 16, h: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(*[Layer(d, h, s) for s in scales])
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        return self.head(self.layers(x))


@pytest.fixture
def fake_time(monkeypatch, tmp_path):
    """A clock advanced by each timed call: ``1 us + 1 ns per MAC`` of its program."""
    return _fake_clock(monkeypatch, tmp_path,
                       lambda program: OVERHEAD_S + count_macs(program) * SECONDS_PER_MAC)


def _fake_clock(monkeypatch, tmp_path, seconds) -> list[float]:
    """Time every lowered program by ``seconds(program)`` on a fake clock (tables cached in
    ``tmp_path``); returns the list of the seconds of each timed call."""
    now = [0.0]
    timed: list[float] = []

    def lower(program, spec):
        cost, gm = seconds(program), program.gm

        def run(*args, **kwargs):
            now[0] += cost
            timed.append(cost)
            return gm(*args, **kwargs)
        return run

    monkeypatch.setattr(latency_table, "lower_for_timing", lower)
    monkeypatch.setattr(latency_table, "clock", lambda: now[0])
    monkeypatch.setenv(latency_table.CACHE_ENV, str(tmp_path / "cache"))
    return timed


def target(fraction: float, **options) -> LatencyTarget:
    return LatencyTarget(fraction, backend="torch", threads=1, rounds=2, max_widths=8, **options)


def example():
    return torch.randn(2, 8, 16)


def kept(program) -> dict[str, int]:
    return {g.key: g.size for g in analyze_channels(program).prunable() if g.is_mlp()}


# ---------------------------------------------------------------------------- arguments
def test_arguments_are_checked():
    with pytest.raises(PrunecError, match="exactly one of ratio"):
        MagnitudePruning(0.5, latency=0.5)
    with pytest.raises(PrunecError, match="exactly one of ratio"):
        MagnitudePruning()
    with pytest.raises(InvalidArgumentError, match=r"\(0, 1\]"):
        MagnitudePruning(latency=1.5)
    with pytest.raises(InvalidArgumentError, match="backend"):
        LatencyTarget(0.5, backend="tpu")
    with pytest.raises(InvalidArgumentError, match="max_widths"):
        LatencyTarget(0.5, max_widths=1)
    with pytest.raises(PrunecError, match="exactly one of num_blocks"):
        DepthPruning(2, latency=0.5, criterion="magnitude", compensate=False)
    assert check_latency(0.6, "x") == LatencyTarget(0.6)
    assert MagnitudePruning(0.3).ratio == 0.3  # the ratio signature is unchanged


def test_bind_backend_leaves_the_callers_pass_alone():
    pass_ = MagnitudePruning(latency=0.7)
    bound = bind_backend([pass_], "onnxruntime", {"intra_op_threads": 1})[0]
    assert pass_.latency_target.backend is None and bound is not pass_
    assert bound.latency_target.spec().backend == "onnxruntime"
    assert bound.latency_target.spec().threads == 1
    named = MagnitudePruning(latency=LatencyTarget(0.7, backend="torch"))
    assert bind_backend([named], "onnxruntime", {})[0] is named


# ---------------------------------------------------------------------------- widths
def test_width_target_met_and_repeated_structure_measured_once(fake_time):
    program = capture(Stack(), (example(),))
    result = MagnitudePruning(latency=target(0.7), targets="mlp", round_to=8)(program)
    stats = result.stats["latency"]
    assert result.modified
    assert stats["structures"] == 1 and stats["isolated"] == 3  # three equal layers
    assert stats["predicted_fraction"] <= 0.7 + 1e-9
    # Under a clock linear in MACs the additive model is exact up to the call overhead.
    dense_macs = count_macs(capture(Stack(), (example(),)))
    mac_fraction = count_macs(program) / dense_macs
    assert abs(mac_fraction - stats["predicted_fraction"]) < 0.05
    assert all(k % 8 == 0 for k in kept(program).values())


def test_knapsack_keeps_the_important_layer(fake_time):
    """Equal latency per layer, VBP's raw variances: the layer whose hidden activations vary
    10^4 x more keeps its width."""
    program = capture(Stack(scales=(0.01, 1.0, 0.01)).eval(), (example(),))
    calibration = [(torch.randn(2, 8, 16),) for _ in range(3)]
    VarianceBasedPruning(latency=target(0.75), calibration=calibration)(program)
    widths = kept(program)
    assert widths["layers.1.fc1.weight:0"] == 64
    assert widths["layers.0.fc1.weight:0"] < 64 and widths["layers.2.fc1.weight:0"] < 64


def test_pruned_program_equals_zeroed_original(fake_time):
    model = Stack().eval()
    x = example()
    compiled = prunec.compile(model, (x,), [RandomPruning(latency=target(0.8), targets="mlp")])
    assert compiled.report.passes[0]["verified"]
    assert compiled.report.latency["backend"] == "torch"
    assert compiled.report.latency["achieved_fraction"] < 1.0
    assert "latency on torch" in str(compiled.report)


def test_unreachable_target_names_the_best(fake_time):
    program = capture(Stack(), (example(),))
    with pytest.raises(PlanError, match=r"best reachable is [0-9.]+ ms \([0-9]+%\)"):
        MagnitudePruning(latency=target(0.05), targets="mlp")(program)


def test_second_run_measures_nothing(fake_time, monkeypatch, tmp_path):
    first = capture(Stack(), (example(),))
    stats = MagnitudePruning(latency=target(0.7), targets="mlp")(first).stats["latency"]
    assert len(stats["loop"]) == 1  # a clock linear in MACs: the tables' plan is on target
    files = list((tmp_path / "cache").glob("*.json"))
    assert len(files) == 3  # one structure table, one reference session, the plan timed

    def no_clock():
        raise AssertionError("a cached table was measured again")

    monkeypatch.setattr(latency_table, "clock", no_clock)
    second = capture(Stack(), (example(),))
    result = MagnitudePruning(latency=target(0.7), targets="mlp")(second)
    assert result.stats["latency"]["tables_cached"] == result.stats["latency"]["tables"] == 2
    assert kept(second) == kept(first)


def test_corrupt_cache_file_is_measured_again(fake_time, tmp_path):
    MagnitudePruning(latency=target(0.7), targets="mlp")(capture(Stack(), (example(),)))
    for path in (tmp_path / "cache").glob("*.json"):
        path.write_text("{not json")
    result = MagnitudePruning(latency=target(0.7), targets="mlp")(capture(Stack(), (example(),)))
    assert result.stats["latency"]["tables_cached"] == 0


def test_variance_with_latency_folds_means(fake_time):
    model = Stack().eval()
    x = example()
    calibration = [(torch.randn(2, 8, 16),) for _ in range(3)]
    compiled = prunec.compile(model, (x,), [VarianceBasedPruning(
        latency=target(0.75), calibration=calibration)])
    entry = compiled.report.passes[0]
    assert entry["modified"] and entry["compensations"] > 0
    assert entry["latency"]["predicted_fraction"] <= 0.75 + 1e-9
    assert max_diff(model(x), model(x)) == 0  # the caller's model is untouched


def test_reached_target_is_a_no_op(fake_time):
    program = capture(Stack(), (example(),))
    pass_ = MagnitudePruning(latency=target(0.7), targets="mlp")
    assert pass_(program).modified
    assert not pass_(program).modified


# ---------------------------------------------------------------------------- depth
def test_depth_drops_lowest_scoring_blocks(fake_time):
    model = Stack(scales=(1.0, 1.0, 1.0)).eval()
    with torch.no_grad():  # the middle branch writes almost nothing into the residual
        model.layers[1].fc2.weight.mul_(1e-3)
        model.layers[1].fc2.bias.zero_()
    program = capture(model, (example(),))
    result = DepthPruning(latency=target(0.8), criterion="magnitude", compensate=False)(program)
    assert result.stats["dropped_keys"] == ["layers.1"]
    assert result.stats["latency"]["predicted_fraction"] <= 0.8 + 1e-9


def test_depth_respects_min_per_stage(fake_time):
    """With two of three blocks kept, a third of the latency cannot go: the error says how
    far the blocks can go."""
    program = capture(Stack().eval(), (example(),))
    pass_ = DepthPruning(latency=target(0.5), criterion="magnitude", compensate=False,
                         min_per_stage=2)
    with pytest.raises(PlanError, match=r"best reachable is [0-9.]+ ms \(6[0-9]%\)"):
        pass_(program)


# ---------------------------------------------------------------------------- command line
def test_cli_latency_option_builds_a_latency_pass():
    from prunec.cli import parse_args
    from prunec.cli_commands import Setup, make_pass

    x = example()
    setup = Setup("m", Stack().eval(), (x,), {}, "Stack", calibration=[(x,)])
    args = parse_args(["prune", "--pass", "magnitude", "--latency", "0.6",
                       "--backend", "onnxruntime"])
    pass_ = make_pass(args, setup)
    assert pass_.latency_target == LatencyTarget(0.6) and pass_.targets == "all"
    variance = make_pass(parse_args(["prune", "--latency", "0.7"]), setup)
    assert variance.latency_target.fraction == 0.7
    with pytest.raises(PrunecError, match="--latency"):
        parse_args(["prune", "--latency", "0"])
    heads = make_pass(parse_args(["prune", "--pass", "heads", "--latency", "0.8"]), setup)
    assert heads.latency_target.fraction == 0.8 and heads.ratio == 0.0
    depth = make_pass(parse_args(["prune", "--pass", "depth", "--unit", "layer", "--latency",
                                  "0.75"]), setup)
    assert depth.latency_target.fraction == 0.75 and depth.unit == "layer"
    with pytest.raises(PrunecError, match="--num-blocks"):
        make_pass(parse_args(["prune", "--pass", "depth", "--latency", "0.75",
                              "--num-blocks", "1"]), setup)


def test_real_timing_on_onnxruntime(tmp_path, monkeypatch):
    """One real measurement path: ONNX Runtime tables for the repeated MLP structure."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv(latency_table.CACHE_ENV, str(tmp_path))
    program = capture(Stack(), (example(),))
    spec = LatencyTarget(0.95, backend="onnxruntime", threads=1, rounds=2, max_widths=2)
    try:
        result = MagnitudePruning(latency=spec, targets="mlp")(program)
    except PlanError as exc:  # a loaded machine may time the full width fastest
        assert "best reachable" in str(exc)
        return
    stats = result.stats["latency"]
    assert stats["backend"] == "onnxruntime" and stats["threads"] == 1
    assert stats["structures"] == 1 and stats["dense_ms"] > 0


def test_a_latency_pass_reports_its_target_not_a_ratio():
    config = MagnitudePruning(latency=0.6, targets="mlp").config()
    assert config["latency"] == 0.6 and "ratio" not in config
    assert MagnitudePruning(0.5).config()["ratio"] == 0.5


# ---------------------------------------------------------------------------- closed loop
@pytest.fixture
def sqrt_time(monkeypatch, tmp_path):
    """A backend that is not additive: a call costs ``1 us + 100 us * sqrt(MACs / 1e5)``,
    so the tables (exact at full and smallest width) misprice the widths between."""
    def seconds(program):
        return OVERHEAD_S + 1e-4 * (count_macs(program) / 1e5) ** 0.5

    _fake_clock(monkeypatch, tmp_path, seconds)
    return seconds


def test_closed_loop_resolves_with_the_corrected_budget(sqrt_time):
    from prunec.passes.latency import corrected_budget

    dense = capture(Stack(), (example(),))
    program = capture(Stack(), (example(),))
    stats = MagnitudePruning(latency=target(0.8), targets="mlp")(program).stats["latency"]
    first, second = stats["loop"][:2]
    # The tables' plan, built and timed, misses the target: the loop had work to do.
    assert first["budget"] == 0.8 and first["measured"] > 0.8 * 1.05
    # Solved again for the budget that rescales the tables' saving by the measured one.
    expected = 1 - (1 - 0.8) * (1 - first["predicted"]) / (1 - first["measured"])
    assert second["budget"] == pytest.approx(expected)
    assert corrected_budget(0.8, [first]) == pytest.approx(expected)
    assert second["budget"] < first["budget"]
    # The plan kept is on target, and its measured fraction is the program's.
    assert abs(stats["measured_fraction"] - 0.8) <= 0.05 * 0.8
    assert sqrt_time(program) / sqrt_time(dense) == pytest.approx(stats["measured_fraction"])
    open_loop = capture(Stack(), (example(),))
    plain = MagnitudePruning(latency=target(0.8, iterations=0), targets="mlp")(open_loop)
    assert plain.stats["latency"]["measured_fraction"] is None
    assert sqrt_time(open_loop) / sqrt_time(dense) == pytest.approx(first["measured"])


def test_corrected_budget_interpolates_between_plans_on_both_sides():
    from prunec.passes.latency import corrected_budget

    points = [{"budget": 0.6, "predicted": 0.6, "measured": 0.7},
              {"budget": 0.4, "predicted": 0.4, "measured": 0.5}]
    assert corrected_budget(0.6, points) == pytest.approx(0.5)
    # Not monotone (noise): the midpoint of the two budgets.
    points[1]["budget"] = 0.7
    assert corrected_budget(0.6, points) == pytest.approx(0.65)
    # Nothing saved: the budget moves down by the miss.
    assert corrected_budget(0.6, [{"budget": 0.6, "predicted": 0.9, "measured": 1.0}]) \
        == pytest.approx(0.2)


def test_closed_loop_times_each_plan_once_and_names_the_measured_best():
    from prunec.passes.latency import closed_loop

    values = [[0.0, 1.5, 2.0], [0.0, 1.5, 2.0]]
    costs = [[-4.0, -2.0, 0.0], [-4.0, -2.0, 0.0]]  # ms added to a 10 ms dense program
    timed = []

    def slow_backend(picked):  # every plan runs 50 points slower than priced
        timed.append(tuple(picked))
        return (10.0 + sum(c[j] for c, j in zip(costs, picked))) / 10.0 + 0.5

    spec = LatencyTarget(0.6, backend="torch", iterations=6)
    with pytest.raises(PlanError, match=r"best reachable is [0-9.]+ ms \(70%\) with the fastest "
                                        r"plan built and timed"):
        closed_loop(spec, values, costs, 10.0, slow_backend, where="Test")
    assert len(timed) == len(set(timed))  # no plan timed twice
    assert (0, 0) in timed  # the fastest plan was tried before giving up

    def fair_backend(picked):
        return (10.0 + sum(c[j] for c, j in zip(costs, picked))) / 10.0 + 0.01

    picked, stats = closed_loop(spec, values, costs, 10.0, fair_backend, where="Test")
    assert len(stats["loop"]) == 1 and stats["measured_fraction"] == pytest.approx(0.61)
    assert picked == [1, 1]  # 60 % priced, the most importance kept


def test_tolerance_and_iterations_are_checked():
    with pytest.raises(InvalidArgumentError, match="tolerance"):
        LatencyTarget(0.5, tolerance=0)
    with pytest.raises(InvalidArgumentError, match="iterations"):
        LatencyTarget(0.5, iterations=-1)


def test_inductor_target_measures_on_inductor_at_its_threads(monkeypatch, tmp_path):
    """Every program a LatencyTarget(backend="inductor") times is lowered by the inductor
    backend, with the target's thread count set while it is lowered (Inductor's C++ kernels
    take theirs when generated). Inductor itself is timed in benchmarks/latency_target.py."""
    seen = []

    def lower(program, backend, **options):
        seen.append((backend, torch.get_num_threads()))
        return program.gm

    monkeypatch.setattr(latency_table, "lower", lower)
    monkeypatch.setenv(latency_table.CACHE_ENV, str(tmp_path))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spec = LatencyTarget(0.95, backend="inductor", threads=1, rounds=2, max_widths=2,
                             iterations=1)
        MagnitudePruning(latency=spec, targets="mlp")(capture(Stack(), (example(),)))
    except PlanError as exc:  # real (eager) timings: the full width may time fastest
        assert "best reachable" in str(exc)
    finally:
        torch.set_num_threads(previous)
    assert seen and set(seen) == {("inductor", 1)}


def test_closed_loop_times_the_plan_the_pass_applies(fake_time, monkeypatch):
    """The plan timed is the one delivered: the pass's own units and its compensations
    (mean folding adds ops, which cost time), for width and depth passes."""
    from prunec.passes import latency

    timed = []
    measure = latency._measure_plan

    def spy(program, dense, plan, target, lowered):
        timed.append(delivered(plan))
        return measure(program, dense, plan, target, lowered)

    def delivered(plan):  # what the plan does (apply_plan adds which pass made it)
        data = json.loads(plan.to_json())
        data.pop("source", None)
        return data

    monkeypatch.setattr(latency, "_measure_plan", spy)
    program = capture(Stack(scales=(0.01, 1.0, 0.3)).eval(), (example(),))
    calibration = [(torch.randn(2, 8, 16),) for _ in range(3)]
    result = VarianceBasedPruning(latency=target(0.75), calibration=calibration)(program)
    assert result.plan.compensations and timed[-1] == delivered(result.plan)

    timed.clear()
    model = Stack().eval()
    with torch.no_grad():
        model.layers[1].fc2.weight.mul_(1e-3)
    program = capture(model, (example(),))
    result = DepthPruning(latency=target(0.8), calibration=calibration)(program)
    assert result.plan.blocks[0].mean is not None and timed[-1] == delivered(result.plan)


def test_closed_loop_keeps_a_faster_plan_and_never_delivers_a_slower_one():
    from prunec.passes.latency import closed_loop

    values = [[0.0, 1.0, 1.5, 2.0]]
    costs = [[-6.0, -4.0, -2.0, 0.0]]  # ms added to a 10 ms dense program
    spec = LatencyTarget(0.7, backend="torch", iterations=2)

    def fast_backend(picked):  # saves twice what the tables say
        return 1.0 + 2 * costs[0][picked[0]] / 10.0

    picked, stats = closed_loop(spec, values, costs, 10.0, fast_backend, where="Test")
    assert stats["measured_fraction"] < 0.7 * 0.95 and picked == [2]  # 60 %: the slowest fast one

    fine_values = [[float(v) for v in range(7)]]
    fine_costs = [[-6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0]]
    timed = []

    def stuck_backend(picked):  # only the fastest plan gets below 78 %
        timed.append(picked[0])
        return 0.78 if picked[0] else 0.4

    with pytest.raises(PlanError, match=r"not met by the 2 plans measured.*best reachable is "
                                        r"[0-9.]+ ms \(78%\) so far.*iterations="):
        closed_loop(spec, fine_values, fine_costs, 10.0, stuck_backend, where="Test")
    assert timed == [3, 1]  # 70 % priced, then the corrected budget (59 %): 50 % priced


def _llama_program(layers: int, intermediate: int, kv_heads: int):
    """A tiny Llama (hidden 32, 4 heads) captured at 2 sequences of 12 tokens."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
        use_cache=False)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    return capture(model, (ids,))


def test_head_pruning_takes_a_latency_target_and_keeps_min_heads(fake_time, monkeypatch):
    """HeadPruning(latency=...): heads chosen by the knapsack, every layer keeps min_heads,
    the knapsack offers no fewer (so it prices the plan applied: under a clock linear in
    MACs prediction and measurement agree), and the plan the loop timed is the one
    applied."""
    from prunec.passes import HeadPruning, latency

    timed = []
    measure = latency._measure_plan

    def spy(program, dense, plan, target, lowered):
        timed.append({k: list(v) for k, v in plan.keep.items()})
        return measure(program, dense, plan, target, lowered)

    monkeypatch.setattr(latency, "_measure_plan", spy)
    program = _llama_program(layers=2, intermediate=16, kv_heads=4)
    result = HeadPruning(latency=target(0.8), min_heads=3)(program)
    stats = result.stats["latency"]
    assert result.modified
    assert stats["predicted_fraction"] == pytest.approx(stats["measured_fraction"], abs=1e-9)
    assert abs(stats["measured_fraction"] - 0.8) <= 0.05 * 0.8
    assert all(len(kept) >= 3 for plan in timed for kept in plan.values())
    assert all(len(kept) >= 3 for kept in result.plan.keep.values())
    assert timed and timed[-1] == {k: list(v) for k, v in result.plan.keep.items()}
    assert "ratio" not in HeadPruning(latency=0.5).config()
    with pytest.raises(prunec.errors.InvalidArgumentError, match="uniform"):
        HeadPruning(latency=0.5, uniform=True)


def test_depth_pruning_drops_whole_layers_for_a_latency_target(fake_time):
    """DepthPruning(unit="layer", latency=...): the knapsack picks whole decoder layers (both
    residual blocks of each) and the target is met as measured."""
    program = _llama_program(layers=4, intermediate=64, kv_heads=2)
    ids = program.example_args[0]
    result = DepthPruning(latency=target(0.7), unit="layer", compensate=False,
                          criterion="magnitude")(program)
    stats = result.stats
    assert result.modified and stats["dropped"] >= 1
    layers = {key.split("/")[0] for key in stats["dropped_keys"]}
    assert len(stats["dropped_keys"]) == 2 * len(layers)  # attention and MLP of each layer
    assert stats["latency"]["measured_fraction"] <= 0.7 * 1.05
    assert program.run(ids).logits.shape == (2, 12, 64)
    assert "ratio" not in DepthPruning(latency=0.5, unit="layer", compensate=False,
                                       criterion="magnitude").config()
