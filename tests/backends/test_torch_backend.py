"""The torch backend: exact parity (it is the program), save as torch.export and reload."""
from __future__ import annotations

import pytest
import torch

from prunec.backends import lower
from prunec.backends.torch_backend import TorchArtifact
from tests.backends.models import MODELS, inputs, model, program


def _assert_same(ref, out, atol=0.0):
    ref_leaves = torch.utils._pytree.tree_leaves(ref)
    out_leaves = torch.utils._pytree.tree_leaves(out)
    assert len(ref_leaves) == len(out_leaves)
    for r, o in zip(ref_leaves, out_leaves):
        if isinstance(r, torch.Tensor):
            torch.testing.assert_close(o, r, atol=atol, rtol=0)
        else:
            assert r == o


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parity_with_the_model_and_reload(name, tmp_path):
    art = lower(program(name), "torch")
    args, kwargs = inputs(name, 3)
    with torch.no_grad():
        ref = model(name)(*args, **kwargs)
    _assert_same(ref, art(*args, **kwargs), atol=1e-6)
    path = art.save(tmp_path / f"{name}.pt2")
    loaded = TorchArtifact.load(path)
    _assert_same(ref, loaded(*args, **kwargs), atol=1e-6)
    loaded.save(tmp_path / "again.pt2")  # a loaded artifact saves its export as is


def test_artifact_is_isolated_from_later_program_changes():
    prog = program("mlp").clone()
    art = lower(prog, "torch")
    prog.set_tensor("fc2.bias", torch.full((4,), 100.0))
    (x,), _ = inputs("mlp", 2)
    assert art(x).abs().max() < 50
