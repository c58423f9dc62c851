"""HeadPruning: scored heads, whole key/value groups under GQA, uniform counts per layer."""
from __future__ import annotations

import pytest
import torch

import prunec
from prunec.errors import PlanError, PrunecError
from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.passes import HeadPruning
from prunec.passes.base import PassContext
from prunec.rewrite import PruningPlan
from tests.helpers import max_diff, zeroed_copy

transformers = pytest.importorskip("transformers")


def _llama(layers: int = 2):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        use_cache=False)
    return transformers.LlamaForCausalLM(config).eval()


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(seed))


def _key(i: int) -> str:
    return f"model.layers.{i}.self_attn.q_proj.weight:0"


def test_gqa_units_are_kv_groups_and_zeroing_equals_removal():
    model = _llama()
    program = capture(model, (_ids(),))
    analysis = analyze_channels(program)
    before = program.clone()
    result = HeadPruning(0.5, uniform=True)(program, PassContext())
    assert result.modified and set(result.plan.keep) == {_key(0), _key(1)}
    assert all(len(kept) == 1 for kept in result.plan.keep.values())  # 1 of 2 kv groups
    attn = program.gm.get_submodule("model.layers.0.self_attn")
    # a kv head goes with its two query heads: q 32 -> 16 rows, k and v 16 -> 8, o 32 -> 16
    assert tuple(program.get_tensor("model.layers.0.self_attn.q_proj.weight").shape) == (16, 32)
    assert tuple(program.get_tensor("model.layers.0.self_attn.k_proj.weight").shape) == (8, 32)
    assert tuple(program.get_tensor("model.layers.0.self_attn.o_proj.weight").shape) == (32, 16)
    del attn
    zeroed = zeroed_copy(model, analysis, result.plan)
    with torch.no_grad():
        assert max_diff(program.gm(_ids(1)), zeroed(_ids(1))) < 1e-5
        assert max_diff(before.gm(_ids(1)), model(_ids(1))) < 1e-5


def test_ratio_zero_and_second_run_change_nothing():
    model = _llama()
    program = capture(model, (_ids(),))
    assert not HeadPruning(0.0)(program, PassContext()).modified
    compiled = prunec.compile(model, (_ids(),), [HeadPruning(0.5, uniform=True),
                                                 HeadPruning(0.5, uniform=True)])
    assert [p["modified"] for p in compiled.report.passes] == [True, False]


def test_activation_criterion_removes_the_silent_group():
    model = _llama(layers=1)
    with torch.no_grad():  # kv group 0 of layer 0 writes nothing: its value rows are zero
        model.model.layers[0].self_attn.v_proj.weight[:8].zero_()
    calib = [_ids(s) for s in range(2)]
    compiled = prunec.compile(model, (_ids(),), [HeadPruning(
        0.5, criterion="activation", calibration=calib)], backend="module")
    assert compiled.plans[0].keep == {_key(0): [1]}
    assert compiled.module.config.num_attention_heads == 2
    assert compiled.module.config.num_key_value_heads == 1


def test_uneven_heads_are_a_clear_error_for_a_config():
    plan = PruningPlan({_key(0): [0], _key(1): [0, 1]})
    with pytest.raises(PlanError, match="num_attention_heads.*uniform=True"):
        prunec.compile(_llama(), (_ids(),), plans=[plan], backend="module")


def test_argument_errors():
    with pytest.raises(prunec.errors.CalibrationError, match="calibration"):
        HeadPruning(0.5, criterion="activation")
    with pytest.raises(prunec.errors.InvalidArgumentError, match="criterion"):
        HeadPruning(0.5, criterion="taylor")
    program = capture(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                          torch.nn.Linear(8, 2)), (torch.randn(2, 4),))
    with pytest.raises(PrunecError, match="no prunable attention heads"):
        HeadPruning(0.5)(program, PassContext())


@pytest.mark.parametrize("kv_heads, words", [
    (2, "removed 2 of 4 key/value heads (each with its 2 query heads)"),
    (4, "removed 4 of 8 attention heads"),
])
def test_the_report_names_kv_heads_under_gqa(kv_heads, words):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
        use_cache=False)
    model = transformers.LlamaForCausalLM(config).eval()
    compiled = prunec.compile(model, (_ids(),), passes=[HeadPruning(0.5)])
    assert words in str(compiled.report)
