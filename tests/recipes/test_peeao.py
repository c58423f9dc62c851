"""PEEAO: the recipe's decisions (higher CKA kept, tie -> layer, stop at the target, matched
filter counts, stage rules), the neuron score's math, linear CKA."""
from __future__ import annotations

import copy
import functools
import importlib

import pytest
import torch
import torch.nn.functional as F

from prunec.errors import PrunecError
from prunec.ir.blocks import analyze_blocks
from prunec.ir.capture import capture
from prunec.ir.interpret import run_with_overrides
from prunec.ir.similarity import linear_cka, penultimate_features
from prunec.recipes.neuron_kl import inner_groups, neuron_kl_exact, neuron_kl_scores, select_units
from prunec.recipes.peeao import choose, peeao
from prunec.rewrite import recapture
from prunec.zoo import ResNet1d
from tests.captured import one_thread  # noqa: F401 (autouse fixture)


peeao_module = importlib.import_module("prunec.recipes.peeao")  # the module, not the function


@functools.lru_cache(maxsize=1)
def _setup():
    torch.manual_seed(0)
    model = ResNet1d(3, (8, 16, 16), num_classes=4).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 40, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    train = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 64, 32)]
    val = [(x[64:], y[64:])]
    return model, x[:2], train, val


@functools.lru_cache(maxsize=2)
def _capture(train: bool):
    model, example, _, _ = _setup()
    return capture(model, (example,), train=train)


def _run(monkeypatch, ckas=None, **options):
    """The recipe on the tiny model, without training; captured once per process."""
    model, example, train, val = _setup()
    monkeypatch.setattr(peeao_module, "capture",
                        lambda m, args, train=False: _capture(train).clone())
    if ckas is not None:  # scripted CKA values, in call order (layer first, then neuron)
        values = iter(ckas)
        monkeypatch.setattr(peeao_module, "linear_cka", lambda a, b: next(values))
    return peeao(model, example, train, val, trainer=lambda program, epochs: None,
                 calibration=[x for x, _ in train], progress=False, **options)


def test_choose_rule():
    assert choose(0.9, 0.8) == "layer" and choose(0.8, 0.9) == "neuron"
    assert choose(0.5, 0.5) == "layer"  # tie keeps the layer candidate
    assert choose(None, 0.1) == "neuron" and choose(0.1, None) == "layer"
    with pytest.raises(PrunecError):
        choose(None, None)


@pytest.mark.slow
def test_kept_candidate_is_the_one_with_higher_cka(monkeypatch):
    compiled = _run(monkeypatch, ckas=[0.90, 0.95], macs_reduction=0.01, max_iterations=1)
    (row,) = compiled.report.iterations
    assert row["choice"] == "neuron" and row["cka_layer"] == 0.90 and row["cka_neuron"] == 0.95
    assert len(analyze_blocks(compiled.program)) == 9  # no block dropped
    assert row["blocks_dropped"] == 0
    compiled = _run(monkeypatch, ckas=[0.90, 0.80], macs_reduction=0.01, max_iterations=1)
    assert compiled.report.iterations[0]["choice"] == "layer"
    assert len(analyze_blocks(compiled.program)) == 8


def test_exact_neuron_scores_choose_the_filters_with_lowest_measured_kl(monkeypatch):
    compiled = _run(monkeypatch, ckas=[0.1, 0.9], macs_reduction=0.01, max_iterations=1,
                    neuron_scores="exact")
    (row,) = compiled.report.iterations
    assert row["choice"] == "neuron"
    program = _capture(False)
    groups = inner_groups(program)
    model, example, train, _ = _setup()
    expected = select_units(groups, neuron_kl_exact(program, groups, [x for x, _ in train]),
                            row["filters_removed"])
    assert expected.keep and compiled.plans[-1].keep == expected.keep


def test_report_entries_are_the_kept_candidates_lineage_steps(monkeypatch):
    """Two iterations, a neuron step then a layer step: the report lists the lineage of the
    program PEEAO returns, one step per iteration, named by what made it."""
    with pytest.warns(UserWarning, match="short of macs_reduction"):
        compiled = _run(monkeypatch, ckas=[0.1, 0.9, 0.9, 0.1], macs_reduction=0.9,
                        max_iterations=2)
    assert [r["choice"] for r in compiled.report.iterations] == ["neuron", "layer"]
    lineage = compiled.program.lineage
    assert [s.name for s in lineage] == ["PEEAO", "DepthPruning"]
    assert lineage[0].config["unit"] == "neuron" and lineage[0].stats.units_removed == \
        compiled.report.iterations[0]["filters_removed"] > 0
    assert [e["pass"] for e in compiled.report.passes] == ["PEEAO", "DepthPruning"]
    assert "PEEAO" in str(compiled.report) and "DepthPruning" in str(compiled.report)
    replayed = recapture(_setup()[0], compiled.program)  # the lineage rebuilds the program
    assert [s.name for s in replayed.lineage] == ["PEEAO", "DepthPruning"]


def test_tie_keeps_the_layer(monkeypatch):
    compiled = _run(monkeypatch, ckas=[0.7, 0.7], macs_reduction=0.01, max_iterations=1)
    assert compiled.report.iterations[0]["choice"] == "layer"


def test_real_cka_decides_and_neuron_count_matches_the_block(monkeypatch):
    model, example, train, val = _setup()
    compiled = _run(monkeypatch, macs_reduction=0.01, max_iterations=1)
    (row,) = compiled.report.iterations
    assert row["choice"] == choose(row["cka_layer"], row["cka_neuron"])
    assert 0 < row["cka_layer"] <= 1 and 0 < row["cka_neuron"] <= 1
    # the layer candidate dropped one basic block: two convs of its stage's width
    assert row["filters_removed"] in (2 * 8, 2 * 16)
    # the CKA recorded is the CKA of the kept candidate against the parent
    parent = _capture(False)
    kept = linear_cka(penultimate_features(parent, val), penultimate_features(compiled.program, val))
    assert kept == pytest.approx(row[f"cka_{row['choice']}"], abs=1e-9)


@pytest.mark.slow
def test_stops_at_target_and_respects_stages(monkeypatch):
    compiled = _run(monkeypatch, ckas=[1.0, 0.0] * 20, macs_reduction=0.25)
    rows = compiled.report.iterations
    assert rows[-1]["macs_reduction"] >= 0.25
    assert all(r["macs_reduction"] < 0.25 for r in rows[:-1])
    assert [r["macs"] for r in rows] == sorted((r["macs"] for r in rows), reverse=True)
    blocks = analyze_blocks(compiled.program)
    stages = blocks.stages()
    assert all(len(v) >= 2 for v in stages.values())
    assert [b.key for b in blocks if b.first_in_stage] == ["layer1.0", "layer2.0", "layer3.0"]
    assert {"iteration", "cka_layer", "cka_neuron", "choice", "macs", "params",
            "val_accuracy"} <= set(rows[0])


@pytest.mark.slow
def test_no_block_left_removes_half_the_filters(monkeypatch):
    with pytest.warns(UserWarning, match=r"short of macs_reduction=0.9 \(max_iterations=4"):
        compiled = _run(monkeypatch, ckas=[1.0, 0.0] * 3 + [0.5], macs_reduction=0.9,
                        max_iterations=4)
    rows = compiled.report.iterations
    assert [r["choice"] for r in rows] == ["layer"] * 3 + ["neuron"]
    assert rows[-1]["cka_layer"] is None and rows[-1]["filters_removed"] is None


def test_argument_errors():
    model, example, train, val = _setup()
    with pytest.raises(PrunecError, match="macs_reduction"):
        peeao(model, example, train, val, macs_reduction=1.5)
    with pytest.raises(PrunecError, match="criterion"):
        peeao(model, example, train, val, macs_reduction=0.5, criterion="l1")
    with pytest.raises(PrunecError, match="neuron_scores must be one of"):
        peeao(model, example, train, val, macs_reduction=0.5, neuron_scores="kl")
    # val_data is checked before any capture: pairs, re-iterable, not empty
    for bad, match in (([x for x, _ in val], "pairs of tensors; the first item is Tensor"),
                       ((item for item in val), "re-iterable"), ([], "empty"),
                       (3, "iterable of")):
        with pytest.raises(PrunecError, match=match):
            peeao(model, example, train, bad, macs_reduction=0.5)


def test_model_without_residual_blocks_is_refused():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    data = [(torch.randn(4, 8), torch.randint(0, 4, (4,)))]
    with pytest.raises(PrunecError, match="Sequential has no removable residual block"):
        peeao(mlp, torch.randn(2, 8), data, data, macs_reduction=0.5, progress=False)


# ---------------------------------------------------------------------------- neuron score
def test_neuron_score_is_the_second_order_kl():
    """KL(q_eps || p) for h_i -> (1 - eps) h_i equals eps^2 * score_i as eps -> 0."""
    model, example, train, val = _setup()
    program = capture(copy.deepcopy(model).double(), (example.double(),))
    batch = train[0][0].double()
    groups = inner_groups(program)
    assert len(groups) == 9  # the conv1 filters of every basic block
    scores = neuron_kl_scores(program, groups, [batch])
    key, (group, values) = next(iter(groups.items()))
    (mv,) = values
    log_p = F.log_softmax(run_with_overrides(program, batch, {}).double(), -1)
    eps = 1e-3
    for unit in (0, 3):
        idx = group.indices(mv.slot, [unit])

        def shrink(v, idx=idx):
            v = v.clone()
            v.index_copy_(mv.axis, idx, v.index_select(mv.axis, idx) * (1 - eps))
            return v

        log_q = F.log_softmax(run_with_overrides(program, batch, {mv.node: shrink}).double(), -1)
        kl = float((log_q.exp() * (log_q - log_p)).sum(-1).mean())
        assert kl / eps ** 2 == pytest.approx(float(scores[key][unit]), rel=2e-2)


def test_exact_neuron_score_is_the_kl_of_zeroing_the_unit():
    model, example, train, val = _setup()
    program = _capture(False)
    groups = dict(list(inner_groups(program).items())[:2])
    batches = [x for x, _ in train]
    scores = neuron_kl_exact(program, groups, batches)
    for key, (group, (mv,)) in groups.items():
        for unit in (0, group.size - 1):
            idx = group.indices(mv.slot, [unit])

            def zero(v, idx=idx):
                return v.index_fill(mv.axis, idx, 0.0)

            kl = 0.0
            for batch in batches:
                log_p = F.log_softmax(run_with_overrides(program, batch, {}).double(), -1)
                log_q = F.log_softmax(run_with_overrides(program, batch, {mv.node: zero}).double(), -1)
                kl += float((log_q.exp() * (log_q - log_p)).sum())
            assert float(scores[key][unit]) == pytest.approx(kl / 64, rel=1e-9, abs=1e-15)
    # the second-order estimate ranks the units much as the measured KL does
    approx = neuron_kl_scores(program, groups, batches)
    for key in groups:
        ranks = [torch.argsort(torch.argsort(s[key])).double() for s in (scores, approx)]
        assert torch.corrcoef(torch.stack(ranks))[0, 1] > 0.9


def test_select_units_global_sort_keeps_one_per_group():
    class G:
        def __init__(self, size):
            self.size = size

    groups = {"a": (G(3), None), "b": (G(2), None)}
    scores = {"a": torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64),
              "b": torch.tensor([0.05, 0.2], dtype=torch.float64)}
    plan = select_units(groups, scores, 3)
    assert plan.keep == {"a": [2], "b": [1]}  # 0.05, 0.1, 0.5 go; each best unit stays
    assert select_units(groups, scores, 10).keep == {"a": [2], "b": [1]}


# ---------------------------------------------------------------------------- CKA
def test_linear_cka_hand_computation_and_invariances():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 4, generator=gen, dtype=torch.float64) + x[:, :4]
    xc, yc = x - x.mean(0), y - y.mean(0)
    hand = (yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert linear_cka(x, y) == pytest.approx(float(hand), rel=1e-12)
    assert linear_cka(x[:5], y[:5]) == pytest.approx(  # Gram form when N < features
        float(_gram_cka(x[:5], y[:5])), rel=1e-10)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(3.5 * x, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, rel=1e-12)
    assert linear_cka(x + 7.0, y) == pytest.approx(linear_cka(x, y), rel=1e-10)  # centring
    with pytest.raises(PrunecError):
        linear_cka(x, y[:10])


def _gram_cka(x, y):
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return (k * l).sum() / (k.norm() * l.norm())
