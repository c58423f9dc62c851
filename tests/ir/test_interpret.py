"""Tests for prunec.ir.interpret: recording values and running with overrides."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunec.errors import CalibrationError
from prunec.ir.capture import capture
from prunec.ir.interpret import (
    ProgramInterpreter,
    flatten_inputs,
    record_values,
    run_with_overrides,
    split_inputs,
)


class TokenMLP(nn.Module):
    """``y = fc2(gelu(fc1(x)))`` on ``[B, N, 8]`` tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MaskedDict(nn.Module):
    """Keyword input and a dict output, to exercise both pytree specs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        h = torch.relu(self.fc1(x)) * attention_mask.unsqueeze(-1)
        return {"logits": self.fc2(h), "hidden": h}


def conv_net() -> nn.Module:
    """Conv -> BN -> in-place ReLU -> pool -> linear (export keeps ``aten.relu_``)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = TokenMLP().eval()
    return model, capture(model, (torch.randn(2, 5, 8),))


@pytest.fixture(scope="module")
def masked():
    torch.manual_seed(1)
    model = MaskedDict().eval()
    return model, capture(model, (torch.randn(2, 5, 8),), {"attention_mask": torch.ones(2, 5)})


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(2)
    model = conv_net().eval()
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model, capture(model, (torch.randn(2, 3, 8, 8),))


def node_by_target(program, target: str, index: int = 0) -> str:
    names = [n.name for n in program.graph.nodes if str(n.target) == target]
    return names[index]


# ---------------------------------------------------------------------------- inputs
def test_split_inputs_forms():
    x = torch.zeros(1)
    assert split_inputs(x) == ((x,), {})
    assert split_inputs([x, x]) == ((x, x), {})
    assert split_inputs({"x": x}) == ((), {"x": x})
    with pytest.raises(CalibrationError, match="calibration item"):
        split_inputs(3)


def test_flatten_inputs_accepts_positional_or_keyword(masked):
    _, program = masked
    x, m = torch.randn(3, 4, 8), torch.ones(3, 4)
    by_kw = flatten_inputs(program, (x,), {"attention_mask": m})
    by_pos = flatten_inputs(program, (x, m), {})
    by_name = flatten_inputs(program, (), {"x": x, "attention_mask": m})
    for flat in (by_pos, by_name):
        assert all(a is b for a, b in zip(flat, by_kw))
    assert len(by_kw) == 2


def test_inputs_not_fitting_the_signature_raise(mlp):
    _, program = mlp
    x = torch.randn(2, 5, 8)
    with pytest.raises(CalibrationError, match=r"\(input, label\)"):
        run_with_overrides(program, (x, torch.zeros(2)), {})


# ---------------------------------------------------------------------------- plain runs
def test_no_overrides_equals_graph_module_and_model(masked):
    model, program = masked
    x, m = torch.randn(3, 6, 8), (torch.rand(3, 6) > 0.3).float()
    out = run_with_overrides(program, {"x": x, "attention_mask": m}, {})
    ref = program.gm(x, attention_mask=m)
    assert set(out) == {"logits", "hidden"}
    for key in out:
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)
        torch.testing.assert_close(out[key], model(x, m)[key])


def test_runs_without_grad_by_default(mlp):
    _, program = mlp
    x = torch.randn(2, 5, 8)
    assert not run_with_overrides(program, x, {}).requires_grad
    assert run_with_overrides(program, x, {}, grad=True).requires_grad


def test_interpreter_is_reusable(conv):
    model, program = conv
    interp = ProgramInterpreter(program)
    with torch.no_grad():
        for batch in (1, 4):
            x = torch.randn(batch, 3, 8, 8)
            torch.testing.assert_close(interp.call_item(x), model(x))


# ---------------------------------------------------------------------------- recording
def test_record_values_match_direct_computation(mlp):
    model, program = mlp
    x = torch.randn(3, 7, 8)
    lin, lin2 = node_by_target(program, "aten.linear.default", 0), node_by_target(
        program, "aten.linear.default", 1)
    gelu = node_by_target(program, "aten.gelu.default")
    values = record_values(program, x, [lin, gelu, lin2, "x"])
    with torch.no_grad():
        pre = model.fc1(x)
        torch.testing.assert_close(values[lin], pre)
        torch.testing.assert_close(values[gelu], F.gelu(pre))
        torch.testing.assert_close(values[lin2], model(x))
    assert values["x"] is x


def test_record_sees_value_before_inplace_op(conv):
    model, program = conv
    bn = node_by_target(program, "aten.batch_norm.default")
    relu = node_by_target(program, "aten.relu_.default")
    x = torch.randn(4, 3, 8, 8)
    values = record_values(program, x, [bn, relu])
    with torch.no_grad():
        ref = model[1](model[0](x))
    assert (values[bn] < 0).any()  # not overwritten by the later relu_
    torch.testing.assert_close(values[bn], ref)
    torch.testing.assert_close(values[relu], ref.relu())


def test_unknown_node_names_raise_with_suggestion(mlp):
    _, program = mlp
    with pytest.raises(CalibrationError, match="'linear'"):
        record_values(program, torch.randn(1, 2, 8), ["linearr"])
    with pytest.raises(CalibrationError, match="no node named 'fc1'"):
        run_with_overrides(program, torch.randn(1, 2, 8), {"fc1": lambda v: v})


# ---------------------------------------------------------------------------- overrides
def test_zeroing_channels_matches_manual(mlp):
    model, program = mlp
    gelu = node_by_target(program, "aten.gelu.default")
    keep = torch.ones(16)
    keep[[0, 3, 9]] = 0
    x = torch.randn(2, 4, 8)
    out = run_with_overrides(program, x, {gelu: lambda v: v * keep})
    with torch.no_grad():
        ref = model.fc2(F.gelu(model.fc1(x)) * keep)
    torch.testing.assert_close(out, ref)


def test_mean_replacement_matches_bias_folding(mlp):
    """``fc2(h with h_P <- mu_P) == fc2'(h_K)`` with ``b' = b + W[:, P] @ mu[P]``."""
    model, program = mlp
    gelu = node_by_target(program, "aten.gelu.default")
    pruned = torch.tensor([1, 2, 5])
    kept = torch.tensor([i for i in range(16) if i not in (1, 2, 5)])
    mu = torch.randn(16)

    def substitute(v: torch.Tensor) -> torch.Tensor:
        v = v.clone()
        v[..., pruned] = mu[pruned]
        return v

    x = torch.randn(2, 4, 8)
    out = run_with_overrides(program, x, {gelu: substitute})
    with torch.no_grad():
        h = F.gelu(model.fc1(x))
        bias = model.fc2.bias + model.fc2.weight[:, pruned] @ mu[pruned]
        ref = h[..., kept] @ model.fc2.weight[:, kept].T + bias
    torch.testing.assert_close(out, ref)


def test_override_of_inplace_input_is_not_mutated(conv):
    model, program = conv
    bn = node_by_target(program, "aten.batch_norm.default")
    x = torch.randn(2, 3, 8, 8)
    replacement = -torch.ones(2, 8, 8, 8)
    out = run_with_overrides(program, x, {bn: lambda v: replacement})
    assert (replacement == -1).all()  # relu_ wrote into a copy
    torch.testing.assert_close(out, model[-1].bias.expand(2, 5).detach())


def test_record_with_overrides_sees_replaced_values(mlp):
    _, program = mlp
    gelu = node_by_target(program, "aten.gelu.default")
    values = record_values(program, torch.randn(1, 3, 8), [gelu],
                           overrides={gelu: torch.zeros_like})
    assert (values[gelu] == 0).all()


@pytest.mark.parametrize("bad", [lambda v: v[..., :4], lambda v: v.double(), lambda v: None])
def test_override_must_keep_shape_and_dtype(mlp, bad):
    _, program = mlp
    gelu = node_by_target(program, "aten.gelu.default")
    with pytest.raises(CalibrationError, match="override of node 'gelu'"):
        run_with_overrides(program, torch.randn(1, 3, 8), {gelu: bad})


def test_runs_leave_written_buffers_as_they_were():
    """A train-mode program updates batch-norm statistics in its forward: recording values
    or running with overrides works on copies, and the program's buffers keep their values
    (the same tensor objects)."""
    from prunec.ir.interpret import scratch_state, written_attributes

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    program = capture(model, torch.randn(2, 3, 8, 8), train=True)
    written = written_attributes(program.gm)
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(written)
    before = {t: program.get_tensor(t) for t in written}
    values = {t: v.clone() for t, v in before.items()}
    x = torch.randn(2, 3, 8, 8) + 3.0
    record_values(program, x, ["relu"])
    run_with_overrides(program, x, {})
    with scratch_state(program.gm):
        program.gm(x)
        assert float(program.get_tensor("1.num_batches_tracked")) == 1.0  # the copy moved
    for target, tensor in before.items():
        assert program.get_tensor(target) is tensor
        torch.testing.assert_close(tensor, values[target], rtol=0, atol=0)
    program.gm(x)  # a plain call (training) still updates them
    assert float(program.get_tensor("1.num_batches_tracked")) == 1.0


def test_weight_overrides_live_only_while_their_consumer_runs():
    """Zeroing a weight through its ``get_attr`` override makes a full-size copy; the copies
    of a deep model's weights must not all be alive at once (weights are read at the top of
    the graph), only while the layer using each runs, and the outputs stay those of the
    model with the weights zeroed."""
    import weakref

    torch.manual_seed(3)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)]).eval()
    x = torch.randn(2, 8)
    program = capture(model, (x,))
    weights = [n for n in program.graph.nodes
               if n.op == "get_attr" and n.target.endswith("weight")]
    assert len(weights) == 6
    live, most = [0], [0]

    def released() -> None:
        live[0] -= 1

    def zero_first_row(value: torch.Tensor) -> torch.Tensor:
        new = value.index_fill(0, torch.tensor([0]), 0.0)
        live[0] += 1
        most[0] = max(most[0], live[0])
        weakref.finalize(new, released)
        return new

    out = run_with_overrides(program, x, {n.name: zero_first_row for n in weights})
    with torch.no_grad():
        for layer in model:
            layer.weight[0] = 0.0
        expected = model(x)
    torch.testing.assert_close(out, expected)
    assert most[0] == 1
