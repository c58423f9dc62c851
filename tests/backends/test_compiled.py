"""prunec.backends.compiled.CompiledModel: the artifact follows the program (lowered again
only when the program changed), calls run it, and a bad save path is refused before any
lowering."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunec
import prunec.backends.compiled as compiled_module
from prunec.passes import MagnitudePruning


@pytest.fixture
def counted(monkeypatch):
    """``prunec.compile`` of a tiny MLP; ``calls`` counts lowerings from then on."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 4)
    compiled = prunec.compile(model, (x,), [MagnitudePruning(0.5, round_to=1)])
    calls = []
    real = compiled_module.lower

    def lower(program, backend, **options):
        calls.append(program.version)
        return real(program, backend, **options)

    monkeypatch.setattr(compiled_module, "lower", lower)
    return compiled, x, calls


def test_calls_run_the_pruned_program_and_lower_only_once(counted):
    compiled, x, calls = counted
    expected = compiled.program.run(x)
    torch.testing.assert_close(compiled(x), expected, rtol=0, atol=0)
    compiled(x)
    assert calls == []  # compile lowered already; nothing changed since
    assert compiled.module is compiled.program.gm
    assert [p.keep for p in compiled.plans] == [s.plan.keep for s in compiled.program.lineage]
    assert "backend='torch' plans=1 MACs" in repr(compiled)


def test_a_changed_program_is_lowered_again_before_its_next_use(counted):
    compiled, x, calls = counted
    with torch.no_grad():
        compiled.program.get_tensor("2.bias").add_(1.0)
    compiled.program.bump()  # what assign_state does after changing weights
    out = compiled(x)
    assert calls == [compiled.program.version]
    torch.testing.assert_close(out, compiled.program.run(x), rtol=0, atol=0)


def test_a_save_path_in_a_missing_directory_is_refused_before_lowering(counted, tmp_path):
    compiled, _, calls = counted
    compiled.program.bump()  # the artifact is stale: saving would lower it first
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compiled.save(tmp_path / "missing" / "model.pt2")
    assert calls == []
    saved = compiled.save(tmp_path / "model.pt2")
    assert saved.exists() and len(calls) == 1
