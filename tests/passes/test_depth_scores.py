"""prunec.passes.depth_scores: the block importances DepthPruning ranks by, each compared
with the same quantity computed by hand on the eager model (forward hooks)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prunec.errors import CalibrationError
from prunec.ir.blocks import analyze_blocks
from prunec.passes.depth_scores import (
    block_scores, branch_scale, calibration_items, log_softmax_rows,
)
from tests.rewrite.models import Residual, captured_residual, tokens


@pytest.fixture(scope="module")
def setup():
    model = Residual().eval()
    program = captured_residual()
    blocks = sorted(analyze_blocks(program).blocks, key=lambda b: b.key)
    return model, program, blocks


def _block_io(model, x):
    """Per block ``(input, output)`` of the eager model (the output after the residual add)."""
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_blocks_are_the_two_residual_branches(setup):
    _, _, blocks = setup
    assert [b.key for b in blocks] == ["blocks.0", "blocks.1"]
    assert all(b.channel_axis == 2 for b in blocks)


def test_magnitude_is_the_rms_of_the_last_weight_of_the_branch(setup):
    model, program, blocks = setup
    scores = block_scores(program, blocks, "magnitude", None)
    for i, b in enumerate(blocks):
        w = model.blocks[i].fc2.weight.detach().double()
        assert scores[b.key] == pytest.approx(float(w.pow(2).mean().sqrt()), rel=1e-12)
        assert branch_scale(program, b) == scores[b.key]


@pytest.mark.parametrize("criterion", ["cosine", "angular"])
def test_similarity_scores_equal_the_hand_computed_mean_over_positions(setup, criterion):
    model, program, blocks = setup
    items = [tokens(1), tokens(2, batch=3)]
    sums, count = [0.0, 0.0], 0
    for x in items:
        for i, (inp, out) in enumerate(_block_io(model, x)):
            cos = F.cosine_similarity(inp.double(), out.double(), dim=-1)
            dist = 1 - cos if criterion == "cosine" else torch.arccos(cos.clamp(-1, 1)) / math.pi
            sums[i] += float(dist.sum())
        count += x.shape[0] * x.shape[1]
    scores = block_scores(program, blocks, criterion, items)
    for i, b in enumerate(blocks):
        assert scores[b.key] == pytest.approx(sums[i] / count, rel=1e-9)


def test_a_padding_mask_leaves_masked_positions_out(setup):
    model, program, blocks = setup
    x = tokens(3, batch=2)
    keep = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    scores = block_scores(program, blocks, "cosine", [x], mask=lambda item: keep)
    inp, out = _block_io(model, x)[0]
    cos = F.cosine_similarity(inp.double(), out.double(), dim=-1)[keep.bool()]
    assert scores["blocks.0"] == pytest.approx(float((1 - cos).mean()), rel=1e-9)
    with pytest.raises(CalibrationError, match="has no key 'keep'"):
        block_scores(program, blocks, "cosine", [x], mask="keep")


def test_kl_is_the_divergence_of_the_output_with_the_branch_zeroed(setup):
    model, program, blocks = setup
    items = [tokens(4), tokens(5)]
    scores = block_scores(program, blocks, "kl", items)
    for i, b in enumerate(blocks):
        total, rows = 0.0, 0
        for x in items:
            with torch.no_grad():
                log_p = F.log_softmax(model(x).reshape(-1, 16).double(), dim=-1)
                hook = model.blocks[i].fc2.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
                log_q = F.log_softmax(model(x).reshape(-1, 16).double(), dim=-1)
                hook.remove()
            total += float((log_q.exp() * (log_q - log_p)).sum())
            rows += log_p.shape[0]
        assert scores[b.key] == pytest.approx(total / rows, rel=1e-6)
        assert scores[b.key] > 0


def test_calibration_items_take_the_first_batches_and_refuse_none_or_empty():
    assert calibration_items(iter(range(5)), 2) == [0, 1]
    assert calibration_items((1, 2), None) == [1, 2]
    with pytest.raises(CalibrationError, match="needs calibration data; pass calibration="):
        calibration_items(None, None)
    with pytest.raises(CalibrationError, match="empty"):
        calibration_items([], None)


def test_log_softmax_rows_flattens_leading_axes_in_float64():
    logits = torch.randn(2, 3, 5)
    out = log_softmax_rows(logits)
    assert out.shape == (6, 5) and out.dtype == torch.float64
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(6, dtype=torch.float64))
