"""prunec.recipes.neuron_kl: the one global sort that picks PEEAO's neurons, and the
reduction of per-position terms to per-sample channel sums. The scores themselves (the
Fisher estimate against the measured KL, on a ResNet) are in tests/recipes/test_peeao.py."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from prunec.recipes.neuron_kl import _per_sample_channel, select_units


def _groups(**sizes: int) -> dict:
    return {key: (SimpleNamespace(size=size), []) for key, size in sizes.items()}


def test_the_lowest_scores_go_first_across_groups():
    groups = _groups(a=3, b=2)
    scores = {"a": torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64),
              "b": torch.tensor([0.2, 0.3], dtype=torch.float64)}
    assert select_units(groups, scores, 2).keep == {"a": [0, 2], "b": [1]}
    assert select_units(groups, scores, 0).keep == {}


def test_every_group_keeps_its_best_unit_whatever_the_count():
    groups = _groups(a=3, b=2)
    scores = {"a": torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64),
              "b": torch.tensor([0.0, 0.0], dtype=torch.float64)}
    plan = select_units(groups, scores, 10)
    assert plan.keep == {"a": [0], "b": [0]}  # ties: the first best stays
    assert select_units({}, {}, 3).keep == {}


def test_the_scores_given_are_not_changed():
    scores = {"a": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    select_units(_groups(a=2), scores, 1)
    assert scores["a"].tolist() == [1.0, 2.0]


def test_per_sample_channel_sums_positions_for_each_row():
    x = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)  # [B, N, C], channel axis 2
    torch.testing.assert_close(_per_sample_channel(x, 2, rows=2), x.sum(1))
    torch.testing.assert_close(_per_sample_channel(x, 2, rows=6), x.reshape(6, 4))  # token rows
    conv = torch.arange(16, dtype=torch.float64).reshape(2, 2, 2, 2)  # [B, C, H, W], axis 1
    torch.testing.assert_close(_per_sample_channel(conv, 1, rows=2), conv.sum((2, 3)))
    torch.testing.assert_close(_per_sample_channel(conv, 1, rows=5), conv.sum((0, 2, 3))[None])
