"""prunec.finetune: train-mode replay, batch norm / dropout behaviour, distillation, DDP."""
from __future__ import annotations

import copy
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import prunec
from prunec.errors import PrunecError
from prunec.passes import MagnitudePruning, VarianceBasedPruning
from prunec.train import distillation_loss, train_program
from tests.helpers import max_diff, state_equal
from tests.train import _dist_worker
from tests.zoo import get_case


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 48), nn.GELU(), nn.Linear(48, 6, bias=False)).eval()


def batches(n: int = 4, seed: int = 1) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 12, generator=gen), torch.randint(0, 6, (8,), generator=gen))
            for _ in range(n)]


def compiled_mlp():
    model = mlp()
    calibration = [x for x, _ in batches(2, seed=7)]
    return model, prunec.compile(model, calibration[0], [VarianceBasedPruning(0.5, calibration)])


def test_train_program_replays_structure_and_folded_bias():
    model, compiled = compiled_mlp()
    student = train_program(compiled, model)
    assert student.training and student is not compiled.program
    assert "2.prunec_bias" in dict(student.gm.named_buffers())  # created by mean folding
    x = batches(1, seed=3)[0][0]
    with torch.no_grad():  # no dropout or batch norm: train and eval graphs agree
        assert max_diff(student.gm(x), compiled(x)) < 1e-6


def test_train_program_replays_padded_conv_border_correction():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.Flatten(1),
                          nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.randn(4, 3, 6, 6)
    compiled = prunec.compile(model, x, [VarianceBasedPruning(0.5, [x], targets="all")])
    student = train_program(compiled, model)
    assert any(k.endswith("prunec_mean_kernel") for k, _ in student.gm.named_buffers())
    with torch.no_grad():
        assert max_diff(student.gm(x), compiled(x)) < 1e-6
    _, history = prunec.finetune(compiled, [(x, torch.tensor([0, 1, 2, 3]))], teacher=model)
    assert len(history) == 1


def test_batch_norm_and_dropout_behave_as_in_training():
    model, example, data = _dist_worker.build()
    compiled = prunec.compile(model, example, [MagnitudePruning(0.5, targets="all")])
    student = train_program(compiled, model)
    x = data.tensors[0][:8]
    with torch.no_grad():
        assert not torch.equal(student.gm(x), student.gm(x))  # dropout is active
    buffers = {k: v.clone() for k, v in compiled.module.named_buffers()}
    params = {k: v.clone() for k, v in compiled.module.named_parameters()}
    version = compiled.program.version
    prunec.finetune(compiled, data, epochs=1, teacher=model, lr=0.0, batch_size=8)
    after = dict(compiled.module.named_buffers())
    assert not torch.equal(after["1.running_mean"], buffers["1.running_mean"])
    assert int(after["1.num_batches_tracked"]) == int(buffers["1.num_batches_tracked"]) + 4
    assert state_equal(params, {k: v for k, v in compiled.module.named_parameters()})  # lr 0
    assert compiled.program.version > version


def test_distillation_lowers_the_kl():
    model, compiled = compiled_mlp()
    _, history = prunec.finetune(compiled, batches(), epochs=6, teacher=model, alpha=1.0,
                                 lr=3e-3, temperature=2.0)
    assert len(history) == 24
    first, last = history[0]["kl"], sum(h["kl"] for h in history[-4:]) / 4
    assert last < 0.5 * first
    assert history[-1]["lr"] < history[0]["lr"]  # cosine schedule
    assert all(h["task"] == 0.0 for h in history)  # alpha 1: no task term


def test_weights_come_back_into_the_eval_program():
    model, compiled = compiled_mlp()
    before = {k: v.clone() for k, v in compiled.module.named_parameters()}
    prunec.finetune(compiled, batches(), epochs=1, teacher=model, lr=1e-2)
    after = dict(compiled.module.named_parameters())
    assert after.keys() == before.keys()
    assert all(not torch.equal(after[k], before[k]) for k in before)


def test_caller_models_untouched():
    model, compiled = compiled_mlp()
    model.train()
    state = copy.deepcopy(model.state_dict())
    prunec.finetune(compiled, batches(), epochs=1, teacher=model, lr=1e-2)
    assert model.training and state_equal(state, model.state_dict())


def test_hf_model_output_logits():
    case = get_case("hf_vit")
    x = case.args[0]
    compiled = prunec.compile(case.model, x, [VarianceBasedPruning(0.5, [x])])
    data = [(x, torch.tensor([1, 2]))] * 2
    _, history = prunec.finetune(compiled, data, epochs=1, teacher=case.model, lr=1e-3)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert compiled(x).logits.shape == (2, 10)


def test_distillation_loss_is_scaled_kl():
    s, t = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    p = F.softmax(t / 2, -1)
    expected = (p * (p.log() - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert torch.allclose(distillation_loss(s, t, 2.0), expected, atol=1e-6)


def test_needs_the_unpruned_model():
    _, compiled = compiled_mlp()
    with pytest.raises(PrunecError, match="unpruned model"):
        prunec.finetune(compiled, batches(), epochs=1)


def test_malformed_items_raise():
    model, compiled = compiled_mlp()
    with pytest.raises(PrunecError, match="pairs"):
        prunec.finetune(compiled, [(torch.randn(8, 12),) * 3], teacher=model)


# ---------------------------------------------------------------------------- distributed
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(out_dir: str, timeout: float = 300.0) -> None:
    ctx = mp.start_processes(_dist_worker.worker, args=(2, free_port(), out_dir),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout:.0f} s")


@pytest.mark.distributed
def test_ddp_ranks_end_identical(tmp_path):
    try:
        spawn(str(tmp_path))
    except mp.ProcessRaisedException as exc:  # another test may take the free port first
        if "address already in use" not in str(exc).lower():
            raise
        spawn(str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["steps"] == r1["steps"] == 8  # 32 items / 2 ranks / batch 4, 2 epochs
    assert state_equal(r0["state"], r1["state"])
    assert not torch.equal(r0["state"]["6.weight"], r0["before"]["6.weight"])  # it trained
