"""round_to counts the channels a matmul sees, not the head axis."""
from __future__ import annotations

import numpy as np

from prunec.ir.channels import ChannelGroup, Slot
from prunec.passes.base import unit_step


def _group(widths, size=4):
    slots = [Slot(f"n{i}", 1, size * w, w) for i, w in enumerate(widths)]
    return ChannelGroup("g", size, slots, True, unit_index={s: np.repeat(np.arange(size), s.width)
                                                            for s in slots})


def test_heads_of_64_channels_prune_one_at_a_time_at_round_to_8():
    assert unit_step(_group([1, 64]), 8) == 1


def test_heads_of_4_channels_keep_pairs_at_round_to_8():
    assert unit_step(_group([1, 4]), 8) == 2


def test_plain_channels_follow_round_to():
    assert unit_step(_group([1, 1]), 8) == 8
