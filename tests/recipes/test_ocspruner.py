"""OneCyclePruner and the ocspruner loop: the shrink, pruning mid-training with sliced
optimizer state, the stability decision, resuming, misuse errors, and DDP equivalence."""
from __future__ import annotations

import copy
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from prunec.errors import PrunecError
from prunec.recipes import OneCyclePruner, ocspruner
from tests.recipes import _ocs_dist_worker as worker


class Net(nn.Module):
    """conv(2->8) -> BN -> ReLU -> conv(8->8) -> BN -> ReLU -> conv(8->3, bias) -> mean."""

    def __init__(self, width: int = 8, inner: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, inner, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(inner)
        self.conv3 = nn.Conv1d(inner, 3, 1)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.conv3(x).mean(2)


G1, G2 = "conv1.weight:0", "conv2.weight:0"


def _setup(**options):
    torch.manual_seed(0)
    model = Net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, 10, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    options = {"macs_reduction": 0.4, "monitor_start": 0, **options}
    pruner = OneCyclePruner(model, x[:4], **options)
    return model, pruner, x, y


def _sgd(params, lr=0.1):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _step(net, opt, x, y):
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------- the shrink
def test_shrink_touches_exactly_the_selected_slices():
    _, pruner, x, y = _setup(shrink=2.0, shrink_growth=0.0)
    opt = _sgd(pruner.module.parameters(), lr=0.1)
    _step(pruner.module, opt, x, y)
    pruner.after_step(opt)  # before any selection: nothing
    pruner.end_epoch(0, opt)
    removed = pruner.selection.removed
    assert removed, "the selection must remove something at 40 % of the MACs"
    before = _state(pruner.module)
    pruner.after_step(opt)  # epoch 1 = shrink_start: lambda = 2, lr = 0.1, factor 0.8
    after = _state(pruner.module)
    r1, r2 = removed.get(G1, []), removed.get(G2, [])
    expected = copy.deepcopy(before)
    for name in ("conv1.weight", "bn1.weight", "bn1.bias"):
        expected[name][r1] *= 0.8
    expected["conv2.weight"][:, r1] *= 0.8
    for name in ("conv2.weight", "bn2.weight", "bn2.bias"):
        expected[name][r2] *= 0.8
    expected["conv3.weight"][:, r2] *= 0.8
    for name in before:  # running statistics, conv3.bias, the rest of every weight: untouched
        assert torch.equal(after[name], expected[name]), name


def test_shrink_schedule():
    _, pruner, _, _ = _setup(shrink=1e-4, shrink_growth=2e-4, shrink_start=3, shrink_interval=2)
    assert [pruner.shrink_factor(e) for e in range(2, 8)] == pytest.approx(
        [0.0, 1e-4, 1e-4, 3e-4, 3e-4, 5e-4])


# ---------------------------------------------------------------------------- pruning mid-training
def _hand_sliced(state: dict, k1: list[int], k2: list[int]) -> dict:
    """Net's tensors with the removed channels cut out by hand."""
    out = {}
    for name, t in state.items():
        if name.startswith("conv1.") or name.startswith("bn1."):
            t = t[k1] if t.dim() else t
        elif name == "conv2.weight":
            t = t[k2][:, k1]
        elif name.startswith("bn2."):
            t = t[k2] if t.dim() else t
        elif name == "conv3.weight":
            t = t[:, k2]
        out[name] = t.clone()
    return out


def test_step_after_pruning_equals_a_model_built_pruned():
    model, pruner, x, y = _setup(last_search_epoch=1)
    net = pruner.module
    opt = _sgd(net.parameters())
    for _ in range(3):
        _step(net, opt, x, y)
        pruner.after_step(opt)
    pruner.end_epoch(0, opt)
    _step(net, opt, x, y)
    pruner.after_step(opt)
    before = _state(net)
    momentum = {n: opt.state[p]["momentum_buffer"].clone() for n, p in net.named_parameters()}
    kept_bias = net.get_submodule("conv3").bias
    event = pruner.end_epoch(1, opt)  # forced at last_search_epoch
    assert event["pruned"] and pruner.forced and pruner.stable_epoch == 1
    assert pruner.module is net and net.get_submodule("conv3").bias is kept_bias
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in net.parameters()}
    kept = pruner.selection.kept({G1: 8, G2: 8})
    k1, k2 = kept[G1], kept[G2]
    assert len(k1) < 8 or len(k2) < 8
    ref = Net(len(k1), len(k2))
    ref.load_state_dict(_hand_sliced(before, k1, k2))
    ref_opt = _sgd(ref.parameters())
    ref_opt.step()  # creates the state entries; grads are None so nothing moves
    sliced_momentum = _hand_sliced(momentum, k1, k2)
    for name, p in ref.named_parameters():
        ref_opt.state[p]["momentum_buffer"] = sliced_momentum[name].clone()
    ref.train()
    _step(ref, ref_opt, x, y)
    _step(net, opt, x, y)
    got, want = _state(net), _state(ref)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6), name


# ---------------------------------------------------------------------------- stability
def test_prunes_at_the_first_stable_epoch():
    _, pruner, _, _ = _setup(monitor_start=1, last_search_epoch=30)
    opt = _sgd(pruner.module.parameters(), lr=0.0)  # weights never change: J = 1 once defined
    events = [pruner.end_epoch(e, opt) for e in range(8)]
    assert [e["selected"] for e in events[:2]] == [False, True]
    assert pruner.jaccard == [0.0, 0.0, 1.0, 1.0, 1.0]  # selections at epochs 1..5
    assert [e["pruned"] for e in events] == [False] * 5 + [True, False, False]
    assert pruner.stable_epoch == 5 and not pruner.forced


def test_a_changing_selection_is_not_stable():
    _, pruner, _, _ = _setup(monitor_start=0, last_search_epoch=30)
    opt = _sgd(pruner.module.parameters(), lr=0.0)
    gen = torch.Generator().manual_seed(3)
    for epoch in range(6):
        with torch.no_grad():  # reshuffle which channels look weakest
            for p in pruner.module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        assert not pruner.end_epoch(epoch, opt)["pruned"]
    assert min(pruner.jaccard[2:]) < 0.999 and pruner.stable_epoch is None


# ---------------------------------------------------------------------------- resume
def test_resume_replays_selection_state_and_pruning(tmp_path):
    model, pruner, x, y = _setup(last_search_epoch=3)
    opt = _sgd(pruner.module.parameters())
    for epoch in range(5):
        _step(pruner.module, opt, x, y)
        pruner.after_step(opt)
        pruner.end_epoch(epoch, opt)
    assert pruner.pruned
    torch.save({"pruner": pruner.state_dict(), "model": pruner.module.state_dict(),
                "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt")
    resumed = OneCyclePruner(model, x[:4], macs_reduction=0.4, monitor_start=0, last_search_epoch=3)
    resumed.load_state_dict(saved["pruner"])
    resumed.module.load_state_dict(saved["model"])
    opt2 = _sgd(resumed.module.parameters())
    opt2.load_state_dict(saved["opt"])
    assert resumed.jaccard == pruner.jaccard and resumed.stable_epoch == pruner.stable_epoch
    for net, o, p in ((pruner.module, opt, pruner), (resumed.module, opt2, resumed)):
        _step(net, o, x, y)
        p.after_step(o)
        p.end_epoch(5, o)
    a, b = _state(pruner.module), _state(resumed.module)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_before_pruning_reaches_the_same_stable_epoch():
    _, a, _, _ = _setup(monitor_start=1, last_search_epoch=30)
    model, b, x, _ = _setup(monitor_start=1, last_search_epoch=30)
    opt_a = _sgd(a.module.parameters(), lr=0.0)
    for e in range(4):
        a.end_epoch(e, opt_a)
    c = OneCyclePruner(model, x[:4], macs_reduction=0.4, monitor_start=1, last_search_epoch=30)
    c.load_state_dict(a.state_dict())
    opt_c = _sgd(c.module.parameters(), lr=0.0)
    for e in range(4, 7):
        a.end_epoch(e, opt_a)
        c.end_epoch(e, opt_c)
    assert a.stable_epoch == c.stable_epoch == 5 and a.jaccard == c.jaccard


# ---------------------------------------------------------------------------- misuse
def test_misuse_gives_clear_errors():
    model, pruner, x, y = _setup(last_search_epoch=0)
    with pytest.raises(PrunecError, match="original model's parameters"):
        pruner.after_step(_sgd(model.parameters()))
    opt = _sgd(pruner.module.parameters())
    stale = _sgd(pruner.module.parameters())
    assert pruner.end_epoch(0, opt)["pruned"]
    with pytest.raises(PrunecError, match="replaced"):
        pruner.after_step(stale)
    with pytest.raises(PrunecError, match="epoch must increase"):
        pruner.end_epoch(0, opt)
    with pytest.raises(PrunecError, match="prunes once"):
        pruner.prune(opt)
    with pytest.raises(PrunecError, match="fresh pruner"):
        pruner.load_state_dict(pruner.state_dict())
    with pytest.raises(PrunecError, match="at most"):  # the cap keeps over a quarter of each group
        OneCyclePruner(model, x[:4], macs_reduction=0.95)
    with pytest.raises(PrunecError, match="macs_reduction"):
        OneCyclePruner(model, x[:4], macs_reduction=50)
    with pytest.raises(PrunecError, match="shrink_start"):
        OneCyclePruner(model, x[:4], macs_reduction=0.5, monitor_start=3, shrink_start=2)


# ---------------------------------------------------------------------------- the loop
def test_ocspruner_loop_reports_and_returns_an_eval_model():
    torch.manual_seed(0)
    model = Net()
    original = _state(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, 10, generator=gen)
    y = (x[:, 0].mean(1) > 0).long()
    compiled = ocspruner(model, x[:4], (x, y), epochs=6, macs_reduction=0.4, val_data=(x, y),
                         lr=0.05, monitor_start=0, last_search_epoch=3, batch_size=16)
    report = compiled.report
    assert report.stable_epoch is not None and report.stable_epoch <= 3
    assert len(report.jaccard) == report.stable_epoch + 1  # one per monitored epoch
    assert 1 - report.macs_after / report.macs_before == pytest.approx(0.4, abs=0.06)
    assert [h["epoch"] for h in report.epochs] == list(range(6))
    assert [h["lr"] for h in report.epochs] == pytest.approx([0.05, 0.05, 0.01, 0.01, 0.002, 0.0004])
    assert all(0.0 <= h["val_acc"] <= 1.0 and h["loss"] > 0 for h in report.epochs)
    with pytest.warns(DeprecationWarning, match="renamed OCSReport.epochs"):
        assert report.history is report.epochs  # the old name still works, and says so
    data = report.to_dict()
    assert data["epochs"] == data["history"] and len(data["epochs"]) == 6
    assert len(compiled.plans) == 1
    # The report reads the lineage: OCSPruner's step, with what it removed and when.
    (step,) = compiled.program.lineage
    (entry,) = report.passes
    assert step.name == entry["pass"] == "OCSPruner" and entry["stats"] is step.stats
    assert entry["modified"] and entry["plan"] is compiled.plans[0]
    assert step.stats.units_removed > 0 and entry["stable_epoch"] == report.stable_epoch
    out = compiled.module(x)
    assert torch.allclose(compiled.module(x[:5]), out[:5], atol=1e-5)  # eval-mode batch norm
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # untouched
    with pytest.raises(PrunecError, match="epochs"):
        ocspruner(model, x[:4], (x, y), epochs=0, macs_reduction=0.4)
    from torch.utils.data import DataLoader, TensorDataset
    with pytest.raises(PrunecError, match=r"got DataLoader\. Pass the loader's dataset"):
        ocspruner(model, x[:4], DataLoader(TensorDataset(x, y), batch_size=8), epochs=1,
                  macs_reduction=0.4)
    with pytest.raises(PrunecError, match="list of \\(inputs, labels\\) batches"):
        ocspruner(model, x[:4], [(x[:8], y[:8]), (x[8:], y[8:])], epochs=1, macs_reduction=0.4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out_dir: str, timeout: float = 120.0) -> dict:
    """Run the two ranks and, meanwhile, the single-process reference; return the latter."""
    ctx = mp.start_processes(worker.worker, args=(2, _free_port(), out_dir), nprocs=2,
                             join=False, start_method="spawn")
    single = worker.run()
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout:.0f} s")
    return single


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    try:
        single = _spawn(str(tmp_path))
    except mp.ProcessRaisedException as exc:  # another test may take the free port first
        if "address already in use" not in str(exc).lower():
            raise
        single = _spawn(str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["stable_epoch"] == r1["stable_epoch"] == single["stable_epoch"] == 1
    assert r0["state"].keys() == single["state"].keys()
    model, _, _ = worker.build()
    assert sum(v.numel() for v in single["state"].values()) < sum(
        p.numel() for p in model.parameters())  # it pruned
    for k in single["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
        assert torch.allclose(r0["state"][k], single["state"][k], atol=1e-5), k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ocspruner_runs_with_mixed_precision_on_cuda():
    torch.manual_seed(0)
    model = Net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, 10, generator=gen)
    y = (x[:, 0].mean(1) > 0).long()
    compiled = ocspruner(model, x[:4], (x, y), epochs=4, macs_reduction=0.4, val_data=(x, y),
                         lr=0.05, monitor_start=0, last_search_epoch=2, batch_size=16,
                         device="cuda")
    assert compiled.report.stable_epoch is not None and compiled.report.macs_after < compiled.report.macs_before
    out = compiled.module(x.cuda())
    assert out.is_cuda and torch.isfinite(out).all()


def test_ocspruner_that_never_pruned_is_a_step_that_changed_nothing():
    """A run that ends before any selection is still in the lineage (and so in the report):
    a step that changed nothing, with no plan."""
    torch.manual_seed(0)
    x = torch.randn(32, 2, 10, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0].mean(1) > 0).long()
    compiled = ocspruner(Net(), x[:4], (x, y), epochs=1, macs_reduction=0.4, monitor_start=2,
                         batch_size=16)
    (step,) = compiled.program.lineage
    assert (step.name, step.modified, compiled.plans) == ("OCSPruner", False, [])
    (entry,) = compiled.report.passes
    assert entry["stats"] is step.stats and not entry["modified"] and entry["units_removed"] == 0
    assert compiled.report.macs_after == compiled.report.macs_before
