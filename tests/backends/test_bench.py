"""The benchmark harness on a fake clock: statistics, interleaving, speedup and efficiency."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prunec.backends.bench import (
    BenchResult, benchmark, environment, interleaved_order, summarize,
)
from prunec.errors import PrunecError


class FakeClock:
    """A clock that only moves when an artifact "runs"."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_artifact(clock: FakeClock, calls: list, name: str, costs: dict[int, list[float]]):
    """Advances the clock by the next cost (seconds) for the batch size it is fed."""
    counters: dict[int, int] = {}

    def run(x):
        batch = x.shape[0]
        i = counters.get(batch, 0)
        counters[batch] = i + 1
        clock.now += costs[batch][i % len(costs[batch])]
        calls.append((name, batch))

    return run


def make_inputs(batch):
    return (torch.zeros(batch, 2),), {}


def _run(costs_a, costs_b, **kw):
    clock, calls = FakeClock(), []
    arts = {"dense/torch": fake_artifact(clock, calls, "A", costs_a),
            "pruned/torch": fake_artifact(clock, calls, "B", costs_b)}
    return benchmark(arts, make_inputs, timer=clock, **kw), calls


def test_statistics_from_known_latencies():
    a = {1: [i / 1000 for i in range(1, 101)]}  # 1..100 ms
    b = {1: [0.002]}
    result, _ = _run(a, b, batch_sizes=(1,), warmup=0, iters=100)
    row = result.row("dense/torch", 1)
    ms = np.arange(1, 101, dtype=float)
    assert row.median_ms == pytest.approx(50.5)
    assert row.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert row.p95_ms == pytest.approx(95.05) and row.p99_ms == pytest.approx(99.01)
    assert row.min_ms == pytest.approx(1.0) and row.max_ms == pytest.approx(100.0)
    assert row.mean_ms == pytest.approx(50.5)
    assert row.throughput == pytest.approx(1 / 0.0505)
    assert len(row.samples_ms) == 100


def test_interleaving_alternates_order_and_includes_warmup():
    result, calls = _run({2: [0.001]}, {2: [0.001]}, batch_sizes=(2,), warmup=2, iters=3)
    assert calls == [("A", 2), ("B", 2), ("B", 2), ("A", 2),  # warmup rounds
                     ("A", 2), ("B", 2), ("B", 2), ("A", 2), ("A", 2), ("B", 2)]
    assert interleaved_order(["x", "y", "z"], 1) == ["z", "y", "x"]


def test_speedup_ideal_and_efficiency():
    costs_a = {1: [0.010], 8: [0.040]}
    costs_b = {1: [0.005], 8: [0.032]}
    macs = {"dense/torch": 4_000_000, "pruned/torch": 1_000_000}
    result, _ = _run(costs_a, costs_b, batch_sizes=(1, 8), warmup=1, iters=5, macs=macs)
    assert result.baseline == "dense/torch"
    b1, b8 = result.row("pruned/torch", 1), result.row("pruned/torch", 8)
    assert b1.speedup == pytest.approx(2.0) and b8.speedup == pytest.approx(1.25)
    assert b1.ideal_speedup == pytest.approx(4.0) and b1.efficiency == pytest.approx(0.5)
    assert b8.efficiency == pytest.approx(1.25 / 4)
    base = result.row("dense/torch", 8)
    assert base.speedup == pytest.approx(1.0) and base.efficiency == pytest.approx(1.0)
    assert base.throughput == pytest.approx(8 / 0.040)


def test_explicit_baseline_and_missing_macs():
    result, _ = _run({1: [0.01]}, {1: [0.02]}, batch_sizes=(1,), warmup=0, iters=2,
                     baseline="pruned/torch", macs={"pruned/torch": 5})
    assert result.row("dense/torch", 1).speedup == pytest.approx(2.0)
    assert result.row("dense/torch", 1).efficiency is None
    with pytest.raises(PrunecError, match="Baseline"):
        _run({1: [0.01]}, {1: [0.01]}, batch_sizes=(1,), baseline="nope")


def test_outputs_json_markdown_plot(tmp_path):
    macs = {"dense/torch": 2_000_000, "pruned/torch": 1_000_000}
    result, _ = _run({1: [0.004], 8: [0.02]}, {1: [0.002], 8: [0.01]}, warmup=0, iters=4,
                     macs=macs)
    data = json.loads(result.to_json(tmp_path / "r.json").read_text())
    assert data["settings"]["interleaved"] is True and len(data["rows"]) == 4
    assert {"device", "cpu", "python", "versions", "torch_threads"} <= set(data["environment"])
    table = result.to_markdown().splitlines()
    assert table[0].startswith("| artifact | batch | median ms") and len(table) == 2 + 4
    assert "| pruned/torch | 8 | 10.000 |" in table[-1]
    assert table[-1].endswith("| 2.00 | 2.00-2.00 | 2.00 | 1.00 |")
    png = result.plot(tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_needs_macs(tmp_path):
    result = BenchResult(rows=[summarize("a", 1, [0.001])], environment={}, settings={})
    with pytest.raises(PrunecError, match="macs"):
        result.plot(tmp_path / "x.png")


def test_real_clock_smoke():
    result = benchmark({"mlp": torch.nn.Linear(4, 4)}, lambda b: ((torch.randn(b, 4),), {}),
                       batch_sizes=(1,), warmup=1, iters=3)
    row = result.row("mlp", 1)
    assert 0 < row.min_ms <= row.median_ms <= row.max_ms
    assert environment()["versions"]["torch"] is not None


# ---------------------------------------------------------------------------- noise, budget
def test_speedup_interval_and_no_warning_when_clear():
    result, _ = _run({1: [0.010]}, {1: [0.005]}, batch_sizes=(1,), warmup=0, iters=30)
    row = result.row("pruned/torch", 1)
    assert row.speedup == pytest.approx(2.0) and row.speedup_ci95 == pytest.approx((2.0, 2.0))
    assert result.warnings == []


def test_warns_when_noise_hides_the_difference():
    # pruned alternates 6 and 14 ms against a steady 10 ms: the median ratio is not to be trusted
    result, _ = _run({1: [0.010]}, {1: [0.006, 0.014]}, batch_sizes=(1,), warmup=0, iters=41)
    lo, hi = result.row("pruned/torch", 1).speedup_ci95
    assert lo <= 1.0 <= hi
    assert any("within timer noise" in w for w in result.warnings)
    assert "Warning: pruned/torch at batch 1" in result.to_markdown()


def test_warns_on_busy_machine_and_on_slower_with_fewer_macs():
    costs = {1: [0.010] * 9 + [0.200]}  # one call in ten stalls 20x
    result, _ = _run(costs, {1: [0.012]}, batch_sizes=(1,), warmup=0, iters=100,
                     macs={"dense/torch": 2_000_000, "pruned/torch": 1_000_000})
    text = " ".join(result.warnings)
    assert "dense/torch at batch 1: the slowest 1% of calls" in text
    assert "measured slower than dense/torch (0.83x) although it has 2.00x fewer MACs" in text


def test_iterations_follow_the_time_budget():
    # each round costs 10 + 10 ms: 1 s of budget buys 50 rounds
    result, calls = _run({1: [0.010]}, {1: [0.010]}, batch_sizes=(1,), warmup=2, iters=None,
                         time_budget=1.0)
    assert result.settings["iters"] == {1: 50} and result.settings["time_budget_s"] == 1.0
    assert len(result.row("dense/torch", 1).samples_ms) == 50 and len(calls) == 2 * (2 + 50)
    # clamped: a tiny budget still gives min_iters rounds
    result, _ = _run({1: [0.010]}, {1: [0.010]}, batch_sizes=(1,), warmup=1, iters=None,
                     time_budget=0.001, min_iters=20)
    assert result.settings["iters"] == {1: 20}
    with pytest.raises(PrunecError, match="iters"):
        _run({1: [0.01]}, {1: [0.01]}, batch_sizes=(1,), iters=0)
