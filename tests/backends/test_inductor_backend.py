"""The inductor backend: lazy just-in-time artifacts and one AOTInductor package build
(compiling is slow on CPU: about 25 s, so there is exactly one real compile here).
Tolerance: 1e-4 / 1e-4 (``INDUCTOR_TOLERANCES``)."""
from __future__ import annotations

import shutil

import pytest
import torch

from prunec.backends import lower
from prunec.backends.base import check_parity
from prunec.backends.inductor_backend import (
    INDUCTOR_TOLERANCES, AOTInductorArtifact, InductorArtifact,
)
from prunec.errors import BackendUnavailable
from tests.backends.models import inputs, model, program


def test_jit_artifact_compiles_lazily():
    # Saving compiles an AOTInductor package: tests/backends/test_artifacts.py covers it.
    art = lower(program("mlp"), "inductor", mode="reduce-overhead")
    assert isinstance(art, InductorArtifact) and not art.compiled
    assert art.settings["mode"] == "reduce-overhead"
    (x,), _ = inputs("mlp", 3)
    torch.testing.assert_close(art.module(x), model("mlp")(x))


def test_no_compiler_is_backend_unavailable(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BackendUnavailable, match="C\\+\\+"):
        lower(program("mlp"), "inductor")


@pytest.mark.slow
def test_aot_package_parity_and_reload(tmp_path):
    art = lower(program("kwargs"), "inductor", aot=True, check=True)
    assert isinstance(art, AOTInductorArtifact)
    args, kwargs = inputs("kwargs", 5)
    with torch.no_grad():
        ref = model("kwargs")(*args, **kwargs)
    atol, rtol = INDUCTOR_TOLERANCES
    check_parity(ref, art(*args, **kwargs), atol=atol, rtol=rtol, backend="inductor")
    loaded = AOTInductorArtifact.load(art.save(tmp_path / "k.pt2"), trust=True)
    out = loaded(*args, **kwargs)
    assert set(out) == {"logits", "extra"}
    check_parity(ref, out, atol=atol, rtol=rtol, backend="inductor")


@pytest.mark.slow
def test_jit_compiles_on_first_call_with_parity():
    art = lower(program("attention"), "inductor", check=True)  # compiles now
    assert art.compiled
    (x,), _ = inputs("attention", 4)
    with torch.no_grad():
        ref = model("attention")(x)
    check_parity(ref, art(x), atol=INDUCTOR_TOLERANCES[0],
                 rtol=INDUCTOR_TOLERANCES[1], backend="inductor")
