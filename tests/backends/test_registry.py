"""The backend table: one entry per backend, read by lower, load, backend checks and the CLI."""
from __future__ import annotations

import importlib.util

import pytest

import prunec
from prunec.backends import registry
from prunec.backends.registry import BACKENDS, Requirement
from prunec.cli_specs import check_backend as cli_check_backend
from prunec.errors import BackendUnavailable, InvalidArgumentError, PrunecError
from tests.backends.models import inputs, program
from tests.helpers import max_diff


def test_every_backend_module_registered_itself():
    assert registry.names() == ["inductor", "module", "onnx", "onnxruntime", "tensorrt", "torch"]
    assert not BACKENDS["onnx-original"].selectable  # loads; chosen by an .onnx source
    for name, entry in BACKENDS.items():
        assert entry.name == name and callable(entry.lowering_function())
        assert entry.sniff is not None and entry.load is not None  # every kind reloads


def test_requirements_and_install_hints_come_from_the_table():
    onnx = {r.module for r in BACKENDS["onnx"].requires}
    assert onnx == {"onnx", "onnxruntime", "onnx_graphsurgeon", "onnxscript"}
    assert BACKENDS["onnxruntime"].requires == BACKENDS["onnx"].requires
    assert Requirement("tensorrt", "tensorrt") in BACKENDS["tensorrt"].requires
    assert BACKENDS["torch"].requires == () and registry.install_hint("torch") == ""
    assert registry.install_hint("onnx") == \
        "pip install onnx onnxruntime onnx-graphsurgeon onnxscript"


def test_a_missing_package_is_named_with_its_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx_graphsurgeon" else real(name, *a))
    assert registry.missing("onnxruntime") == [Requirement("onnx_graphsurgeon", "onnx-graphsurgeon")]
    with pytest.raises(BackendUnavailable, match="'onnx_graphsurgeon'.*pip install onnx "):
        registry.check_available("onnxruntime")
    with pytest.raises(BackendUnavailable, match="--backend onnx"):  # the CLI reads the table
        cli_check_backend("onnx")
    registry.check_available("torch")


def test_unknown_names_and_options_are_refused_before_lowering():
    with pytest.raises(InvalidArgumentError, match="'onnxruntime'.*Did you mean 'onnxruntime'"):
        registry.spec("onnxruntim")
    with pytest.raises(InvalidArgumentError, match="accepts"):
        registry.check_backend("onnxruntime", {"thread": 2})
    assert registry.check_backend("onnxruntime", {"intra_op_threads": 1}) == {"intra_op_threads": 1}


@pytest.mark.parametrize("backend, suffix, kind", [
    ("torch", ".pt2", "TorchArtifact"), ("onnx", ".onnx", "OnnxArtifact"),
    ("onnxruntime", ".bin", "OnnxRuntimeArtifact")])
def test_load_recognises_the_file_not_its_name(backend, suffix, kind, tmp_path):
    artifact = registry.lower(program("mlp"), backend)
    path = artifact.save(tmp_path / f"model{suffix}")
    assert registry.backend_for_path(path).name == backend
    loaded = prunec.load(path)
    assert type(loaded).__name__ == kind
    args, kwargs = inputs("mlp", 3)
    assert max_diff(loaded(*args, **kwargs), artifact(*args, **kwargs)) < 1e-5


def test_load_of_something_else_says_what_it_reads(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(PrunecError, match="not a .pt2 archive, an ONNX model"):
        prunec.load(path)
    with pytest.raises(PrunecError, match="no file"):
        prunec.load(tmp_path / "absent.pt2")
