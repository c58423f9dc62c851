"""Capture: shared weights, the caller untouched, dynamic batch from a batch-1 example,
retries with static axes, inputs never written, errors that name the module."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunec.errors import CaptureError, InvalidArgumentError
from prunec.ir.capture import capture, share_weights_copy
from tests.helpers import Recurrent


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 8)

    def forward(self, ids, mask):
        return self.fc(self.emb(ids)) * mask.unsqueeze(-1)


class WritesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        x.mul_(2)  # in place into the caller's tensor
        x[:, :2].zero_()  # and through a view
        return self.fc(x)


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_parameters_shared_buffers_copied():
    model = MLP().eval()
    program = capture(model, torch.randn(4, 8))
    assert program.get_tensor("fc1.weight") is model.fc1.weight
    assert program.get_tensor("fc2.bias") is model.fc2.bias
    assert program.get_tensor("bn.running_mean") is not model.bn.running_mean
    assert torch.equal(program.get_tensor("bn.running_mean"), model.bn.running_mean)


def test_tied_parameters_stay_tied_in_the_copy():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    work = share_weights_copy(model)
    assert work[0].weight is model[0].weight and work[1].weight is model[0].weight


@pytest.mark.parametrize("mode", [True, False])
def test_caller_flag_and_state_untouched(mode: bool):
    model = MLP().train(mode)
    before = _state(model)
    program = capture(model, torch.randn(4, 8), train=not mode)
    assert model.training is mode and all(m.training is mode for m in model.modules())
    # A train-mode program updates batch-norm statistics: never in the caller's buffers.
    program.gm(torch.randn(4, 8) * 3 + 1)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batch_one_example_keeps_batch_dynamic():
    model = MLP().eval()
    x1 = torch.randn(1, 8)
    program = capture(model, x1)
    assert program.capture_notes == []
    assert program.example_args[0].shape == (1, 8)
    for batch in (1, 2, 5):
        x = torch.randn(batch, 8)
        torch.testing.assert_close(program.gm(x), model(x))


def test_batch_shared_between_inputs():
    model = TwoInputs().eval()
    ids, mask = torch.randint(0, 20, (1, 6)), torch.ones(1, 6)
    program = capture(model, (ids, mask))
    ids3, mask3 = torch.randint(0, 20, (3, 9)), torch.rand(3, 9)
    torch.testing.assert_close(program.gm(ids3, mask3), model(ids3, mask3))


def test_inputs_never_written():
    model = WritesInput().eval()
    x = torch.randn(3, 8)
    original = x.clone()
    program = capture(model, x)
    assert torch.equal(x, original)
    assert any("writes in place into input" in note for note in program.capture_notes)
    y = torch.randn(3, 8)
    y_before = y.clone()
    out = program.gm(y)
    assert torch.equal(y, y_before)
    torch.testing.assert_close(out, model(y_before.clone()))


def test_symbolic_size_failure_retries_static_and_notes_it():
    model = Recurrent().eval()
    x = torch.randn(2, 5, 8)
    program = capture(model, x)
    assert program.capture_notes and "captured with" in program.capture_notes[0]
    torch.testing.assert_close(program.gm(x), model(x))


def test_wrong_dtype_names_module_and_op():
    with pytest.raises(CaptureError) as info:
        capture(TwoInputs(), (torch.randn(2, 6), torch.ones(2, 6)))
    text = str(info.value)
    assert "'emb' (Embedding)" in text and "embedding" in text and "dtype" in text


def test_extra_positional_input_named():
    with pytest.raises(InvalidArgumentError, match="too many positional"):
        capture(MLP(), (torch.randn(2, 8), torch.randn(2, 8)))


def test_script_module_rejected():
    with pytest.raises(CaptureError, match="TorchScript"):
        capture(torch.jit.script(nn.Linear(4, 4)), torch.randn(2, 4))


def test_failure_inside_a_submodule_names_it():
    class Bad(nn.Module):
        def forward(self, x):
            return x.reshape(3, -1, 5)  # 2 * 8 elements cannot be viewed so

    model = nn.Sequential(nn.Linear(8, 8), Bad())
    with pytest.raises(CaptureError, match=r"module '1' \(Bad\)"):
        capture(model, torch.randn(2, 8), dynamic=False)


def test_batch_one_example_costs_one_sample():
    from prunec.ir.cost import count_macs

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 36, 5)).eval()
    one = count_macs(capture(model, torch.randn(1, 3, 6, 6)))
    four = count_macs(capture(model, torch.randn(4, 3, 6, 6)))
    assert one == 16 * 3 * 9 * 36 + 16 * 36 * 5 and four == 4 * one


def test_training_a_train_mode_capture_never_writes_the_callers_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    program = capture(model, (torch.randn(3, 4),), train=True)
    optimizer = torch.optim.SGD(program.gm.parameters(), lr=0.5)
    program.gm(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class WindowMix(nn.Module):
    """Pads the image to a multiple of the window and mixes channels per window (the shape
    arithmetic of Swin's window partitioning)."""

    def __init__(self, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.proj = nn.Linear(6, 6)

    def forward(self, x):  # (B, H, W, C)
        b, h, w, c = x.shape
        pad_h, pad_w = (-h) % self.window, (-w) % self.window
        x = torch.nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        win = x.view(b, hp // self.window, self.window, wp // self.window, self.window, c)
        return self.proj(win.permute(0, 1, 3, 2, 4, 5).reshape(-1, self.window * self.window, c))


@pytest.mark.parametrize("dynamic", ["batch", True])
def test_window_partition_from_batch_1_example(dynamic):
    # aten.pad's fake kernel needs concrete sizes: propagating metadata at the batch-1 hint
    # contradicted the guards the doubled-batch trace recorded ("Invalid ranges [2:1]").
    model = WindowMix().eval()
    x = torch.randn(1, 10, 10, 6)
    program = capture(model, x, dynamic=dynamic)
    x3 = torch.randn(3, 10, 10, 6)
    torch.testing.assert_close(program.gm(x3), model(x3))
    torch.testing.assert_close(program.gm(x), model(x))
    from prunec.ir.cost import count_macs

    macs = count_macs(program)
    program.finalize()  # full fake propagation after capture keeps the batch-1 hints
    assert count_macs(program) == macs == 9 * 16 * 6 * 6  # batch 1: 9 windows of 16 tokens
    if dynamic == "batch":
        assert program.capture_notes == []
        with pytest.raises(Exception):
            program.gm(torch.randn(3, 12, 12, 6))  # image axes are static


@pytest.mark.parametrize("bad", ["auto", "Batch", 1, None])
def test_dynamic_argument_checked(bad):
    with pytest.raises(InvalidArgumentError, match="dynamic"):
        capture(MLP().eval(), torch.randn(2, 8), dynamic=bad)


class MaskScale(nn.Module):
    """``x * mask[..., None]``: traces with any sizes, static or symbolic."""

    def forward(self, x, mask):
        return x * mask[..., None]


def test_static_retry_traces_clean_tensors(monkeypatch):
    """A failed dynamic attempt may leave dynamic-dimension marks on the tensors it traced
    (torch sets ``_dynamo_weak_dynamic_indices``); the static retry must not inherit them:
    every attempt traces fresh copies, and the retried export declares no symbolic axis."""
    real_export = torch.export.export
    seen = []

    def export(module, args, kwargs=None, *, dynamic_shapes=None, strict=False):
        tensors = [*args, *(kwargs or {}).values()]
        seen.append((dynamic_shapes, tensors,
                     [getattr(t, "_dynamo_dynamic_indices", None) for t in tensors]))
        if len(seen) < 3:  # the two dynamic attempts fail, marking the mask's axis 1
            for t in tensors:
                t._dynamo_weak_dynamic_indices = {1}
                t._dynamo_dynamic_indices = {1}
            raise RuntimeError("SymIntArrayRef expected to contain only concrete integers")
        return real_export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=strict)

    monkeypatch.setattr(torch.export, "export", export)
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5)
    program = capture(MaskScale().eval(), (x,), {"mask": mask})
    assert len(seen) == 3 and seen[2][0] is None  # the static retry
    assert seen[2][2] == [None, None]  # its tensors carry no marks ...
    assert not {id(t) for t in seen[2][1]} & {id(t) for t in seen[0][1] + seen[1][1]}
    shapes = [n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder"]
    assert shapes == [(2, 5, 8), (2, 5)] and all(isinstance(s, int) for sh in shapes for s in sh)
    assert "captured with all axes static" in program.capture_notes[0]
    assert not any(hasattr(t, "_dynamo_dynamic_indices") for t in (x, mask))


class Alibi(nn.Module):
    """BLOOM's attention scores: ``baddbmm(bias, q, k^T)`` with a ``[B, 1, N]`` bias, whose
    meta kernel cannot expand symbolic sizes (the dynamic attempts fail, the static one
    succeeds)."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)

    def forward(self, x, mask):
        q = self.q(x)
        return torch.baddbmm(mask[:, None, :].to(q.dtype), q, q.transpose(1, 2))


def test_successful_retry_keeps_torch_error_log_off_stderr(capfd, caplog, monkeypatch):
    import logging

    caplog.set_level(logging.DEBUG, logger="prunec")
    # Only caplog listens to the prunec log here: the CLI's setup (run by other tests) stops
    # it propagating and prints it at the level asked, which -v users want to see.
    monkeypatch.setattr(logging.getLogger("prunec"), "handlers", [caplog.handler])
    # The CLI (run in-process by other tests) silences this logger; here torch logs as usual.
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.NOTSET)
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5)
    model = Alibi().eval()
    try:
        program = capture(model, (x,), {"mask": mask})
    finally:
        fake_log.setLevel(level)
    err = capfd.readouterr().err
    assert "fake_tensor" not in err and "SymIntArrayRef" not in err and "Traceback" not in err
    notes = " | ".join(program.capture_notes)
    assert "captured with all axes static" in notes and "torch logged" in notes
    assert "/__w/" not in notes  # the C++ build path is cut from the reason
    logged = [r.getMessage() for r in caplog.records if r.name == "prunec"]
    assert any("failed while attempting to run meta for aten.baddbmm" in m for m in logged)
    torch.testing.assert_close(program.gm(x, mask=mask), model(x, mask))
    assert logging.getLogger("torch").handlers  # torch's own logging is back as it was


class _FlagThroughKwargs(nn.Module):
    """A forward that takes a bool through ``**kwargs`` (as transformers models take
    ``output_hidden_states``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x, **kwargs):
        y = self.lin(x)
        return (y, y * 2) if kwargs.get("both") else y


def test_bool_keyword_through_var_kwargs_captures_static_with_a_note():
    """torch.export refuses every dynamic-shapes spec next to a non-tensor input reached
    through ``**kwargs``; capture falls back to static shapes and says so, instead of a
    CaptureError."""
    model = _FlagThroughKwargs().eval()
    x = torch.randn(2, 4)
    program = capture(model, (x,), {"both": True})
    assert any("all axes static" in note for note in program.capture_notes)
    got = program.gm(x, both=True)
    want = model(x, both=True)
    assert len(got) == 2 and all(torch.allclose(g, w) for g, w in zip(got, want))
