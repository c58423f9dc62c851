"""The 1-D ResNet and MNIST-1D data of :mod:`prunec.zoo`, and the MNIST-1D benchmark helpers."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.ir.cost import count_macs
from prunec.passes import MagnitudePruning
from prunec.zoo import ResNet1d, mnist1d_data, resnet56_1d
from tests.helpers import max_diff, zeroed_copy

pytest.importorskip("mnist1d")


def test_resnet56_1d_structure_and_shapes():
    model = resnet56_1d()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 1 + 2 * 27 + 2  # stem, 27 blocks of two, two projections
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [9, 9, 9]
    assert len(model.layer2[0].shortcut) == 2 and len(model.layer2[1].shortcut) == 0
    out = model.eval()(torch.randn(3, 1, 40))
    assert out.shape == (3, 10)
    small = resnet56_1d(num_classes=4, blocks_per_stage=2)
    assert isinstance(small, ResNet1d) and len(small.layer3) == 2
    assert small(torch.randn(2, 1, 40)).shape == (2, 4)


def test_mnist1d_data_shapes_splits_and_determinism():
    np.random.seed(7)
    random.seed(7)
    before = (np.random.get_state()[1].copy(), random.getstate())
    a = mnist1d_data(num_samples=400, seed=0)
    assert np.array_equal(np.random.get_state()[1], before[0]) and random.getstate() == before[1]
    x_tr, y_tr, x_va, y_va, x_te, y_te = a
    assert x_tr.shape == (288, 1, 40) and x_va.shape == (32, 1, 40) and x_te.shape == (80, 1, 40)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert set(torch.cat([y_tr, y_va, y_te]).tolist()) == set(range(10))
    b = mnist1d_data(num_samples=400, seed=0)
    assert all(torch.equal(s, t) for s, t in zip(a, b))
    a[0].zero_()  # a caller's in-place edit must not reach the cache
    assert torch.equal(mnist1d_data(num_samples=400, seed=0)[0], b[0])
    c = mnist1d_data(num_samples=400, seed=1)
    assert not torch.equal(c[0], b[0])
    with pytest.raises(ValueError, match="num_samples"):
        mnist1d_data(num_samples=10)


def test_resnet56_1d_captures_and_magnitude_prunes_exactly():
    torch.manual_seed(0)
    model = resnet56_1d().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BN so that zeroing cannot hide behind gamma = 1
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    x = torch.randn(4, 1, 40, generator=gen)
    program = capture(model, x)
    analysis = analyze_channels(program)
    assert len(analysis.prunable()) == 30  # stem/stage streams, 27 block interiors, 2 projections
    macs = count_macs(program)
    result = MagnitudePruning(0.5)(program)
    plan = result.plan
    assert result.modified and count_macs(program) < 0.3 * macs
    reference = zeroed_copy(model, analysis, plan)
    assert max_diff(program.run(x), reference(x)) < 1e-4


def test_benchmark_helpers_train_and_evaluate():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import mnist1d_common as common
    finally:
        sys.path.pop(0)
    data = common.load_data(num_samples=400)
    torch.manual_seed(0)
    model = resnet56_1d(blocks_per_stage=1)
    assert common.milestones(300) == [90, 180, 240, 270]
    history = common.train(model, data, epochs=3, lr=0.05, batch_size=64)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["loss"] < history[0]["loss"]
    assert model.training  # evaluate restores the mode
    assert 0.0 <= history[-1]["val_acc"] <= 1.0
