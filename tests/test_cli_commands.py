"""prunec.cli_commands: the pieces the commands are built from (the pass the options
describe, capture's dynamic flag, output checks made before any work, file names). The
commands end to end are in tests/test_cli.py, test_cli_errors.py and test_cli_onnx.py."""
from __future__ import annotations

import argparse
import os

import pytest
import torch

from prunec.cli_commands import (
    Setup, capture_dynamic, check_output_dir, check_output_file, make_pass, model_file,
    _input_text,
)
from prunec.cli_specs import CliError, parse_input
from prunec.passes import MagnitudePruning, RandomPruning, VarianceBasedPruning


def _args(**overrides) -> argparse.Namespace:
    values = dict(pass_name="magnitude", ratio=0.5, targets=None, round_to=8, scope="global",
                  latency=None, no_compensate=False, static=False, batch_only=False)
    values.update(overrides)
    return argparse.Namespace(**values)


def _setup(args=(torch.zeros(1, 4),), kwargs=None, calibration=None) -> Setup:
    return Setup("m:f", torch.nn.Linear(4, 4), args, kwargs or {}, "m", calibration=calibration)


def test_make_pass_builds_the_named_pass_with_the_options():
    magnitude = make_pass(_args(scope="local", round_to=4), _setup())
    assert isinstance(magnitude, MagnitudePruning)
    assert (magnitude.ratio, magnitude.scope, magnitude.round_to, magnitude.targets) == \
        (0.5, "local", 4, "all")
    assert isinstance(make_pass(_args(pass_name="random"), _setup()), RandomPruning)


def test_variance_defaults_to_mlp_targets_and_the_example_as_calibration():
    setup = _setup()
    variance = make_pass(_args(pass_name="variance", no_compensate=True), setup)
    assert isinstance(variance, VarianceBasedPruning)
    assert variance.targets == "mlp" and variance.fold_means is False
    assert any("--data" in note for note in setup.notes)  # the user is told why it is weak
    with pytest.raises(CliError, match="positional and keyword inputs needs --data"):
        make_pass(_args(pass_name="variance"), _setup(kwargs={"mask": torch.ones(1)}))


def test_latency_replaces_the_ratio():
    made = make_pass(_args(latency=0.5), _setup())  # --latency 0.5 (cli_specs.latency_fraction)
    assert made.latency_target is not None and made.latency == 0.5 and made.ratio == 0.0


@pytest.mark.parametrize("static, batch_only, dynamic", [(True, False, False), (False, True, "batch"),
                                                         (False, False, True)])
def test_capture_dynamic(static, batch_only, dynamic):
    assert capture_dynamic(_args(static=static, batch_only=batch_only)) == dynamic


def test_output_checks_refuse_before_any_work(tmp_path):
    check_output_dir(str(tmp_path / "new" / "deeper"), "--output")  # can be made
    (tmp_path / "file").write_text("x")
    with pytest.raises(CliError, match="--output .*: exists and is not a directory"):
        check_output_dir(str(tmp_path / "file"), "--output")
    with pytest.raises(CliError, match="is a file, so no directory can be made under it"):
        check_output_dir(str(tmp_path / "file" / "out"), "--output")
    check_output_file(str(tmp_path / "report.json"), "--json")
    with pytest.raises(CliError, match="--json .*: is a directory; give a file name"):
        check_output_file(str(tmp_path), "--json")
    with pytest.raises(CliError, match="the directory .*missing does not exist"):
        check_output_file(str(tmp_path / "missing" / "r.json"), "--json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_output_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(CliError, match="not writable"):
        check_output_dir(str(locked / "out"), "--output")


@pytest.mark.parametrize("backend, name", [("torch", "model.pt2"), ("inductor", "model.pt2"),
                                           ("onnx", "model.onnx"), ("onnxruntime", "model.onnx"),
                                           ("tensorrt", "model.plan")])
def test_model_file(backend, name):
    assert model_file(backend) == name


@pytest.mark.parametrize("text", ["input_ids:int64:1x128", "float16:2x4", "float32:1x3x8x8"])
def test_input_text_is_parsed_back_to_the_same_spec(text):
    spec = parse_input(text)
    assert _input_text(spec) == text and parse_input(_input_text(spec)) == spec
