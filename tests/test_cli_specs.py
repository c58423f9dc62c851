"""prunec.cli_specs: the command line's value parsers, example inputs and user callables.
The parse_input forms and the whole commands are in tests/test_cli.py."""
from __future__ import annotations

import argparse
import sys

import pytest
import torch

from prunec.cli_specs import (
    CliError, InputSpec, batch_sizes, calibration_items, call_user, latency_fraction,
    load_factory_model, make_inputs, nonnegative_int, positive_float, positive_int, ratio,
    resolve_callable, version_text,
)


@pytest.mark.parametrize("parse, good, bad", [
    (ratio, [("0", 0.0), ("0.5", 0.5)], ["1", "-0.1", "half", "nan"]),
    (latency_fraction, [("1", 1.0), ("0.25", 0.25)], ["0", "1.5", "x"]),
    (positive_int, [("1", 1), ("12", 12)], ["0", "-3", "1.5"]),
    (nonnegative_int, [("0", 0)], ["-1", "two"]),
    (positive_float, [("0.1", 0.1)], ["0", "-1", "fast"]),
    (batch_sizes, [("1,8", [1, 8]), ("4,", [4])], ["", "0,8", "1;8", "a"]),
])
def test_value_parsers_accept_and_refuse_as_argparse_types(parse, good, bad):
    for text, value in good:
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            parse(text)


def test_make_inputs_are_seeded_positional_then_keyword():
    specs = [InputSpec(None, torch.float32, (2, 3)), InputSpec("ids", torch.int64, (1, 4)),
             InputSpec("keep", torch.bool, (4,))]
    args, kwargs = make_inputs(specs, seed=1)
    again, _ = make_inputs(specs, seed=1)
    assert torch.equal(args[0], again[0]) and args[0].shape == (2, 3)
    assert kwargs["ids"].tolist() == [[1, 1, 1, 1]] and kwargs["keep"].all()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mirror_user_mod.py").write_text(
        "import torch\n"
        "class Nets:\n    @staticmethod\n    def small():\n        return torch.nn.Linear(2, 2)\n"
        "def pair():\n    return torch.nn.Linear(2, 2), torch.zeros(1, 2)\n"
        "def bare():\n    return torch.nn.Linear(2, 2)\n"
        "def broken():\n    raise KeyError('no weights')\n"
        "VALUE = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mirror_user_mod"
    sys.modules.pop("mirror_user_mod", None)


def test_resolve_callable_finds_nested_attributes(user_module):
    assert isinstance(resolve_callable(f"{user_module}:Nets.small", "--model")(), torch.nn.Linear)


@pytest.mark.parametrize("spec, says", [
    ("nocolon", r"--model must be module:function"),
    ("mirror_no_such_module:f", r"no module named 'mirror_no_such_module' in the current directory"),
    ("mirror_user_mod:missing", r"module 'mirror_user_mod' has no 'missing'"),
    ("mirror_user_mod:VALUE", r"'VALUE' is a int, not a function"),
])
def test_resolve_callable_refuses_naming_the_option(user_module, spec, says):
    with pytest.raises(CliError, match=says):
        resolve_callable(spec, "--model")


def test_factory_results_and_their_errors(user_module):
    model, args, kwargs = load_factory_model(resolve_callable(f"{user_module}:pair", "--model"),
                                             "m:pair", [])
    assert not model.training and args[0].shape == (1, 2) and kwargs == {}
    bare = resolve_callable(f"{user_module}:bare", "--model")
    with pytest.raises(CliError, match="returned only a module: give its example inputs with --input"):
        load_factory_model(bare, "m:bare", [])
    _, args, _ = load_factory_model(bare, "m:bare", [InputSpec(None, torch.float32, (3, 2))])
    assert args[0].shape == (3, 2)
    with pytest.raises(CliError, match=r"--model m:broken: calling it raised KeyError: 'no weights'"):
        call_user(resolve_callable(f"{user_module}:broken", "--model"), "m:broken", "--model")
    with pytest.raises(CliError, match="a tuple of 4"):
        load_factory_model(lambda: (torch.nn.Linear(1, 1), 1, 2, 3), "m:f", [])
    with pytest.raises(CliError, match="returned a str, not a torch.nn.Module"):
        load_factory_model(lambda: "model", "m:f", [])


def test_calibration_items_drop_targets_and_labels():
    x = torch.zeros(1)
    assert calibration_items([(x, 1), {"ids": x, "labels": 2}]) == [x, {"ids": x}]
    with pytest.raises(CliError, match="--data must return \\(inputs, target\\) pairs"):
        calibration_items([x])
    with pytest.raises(CliError, match="--data returned no batches"):
        calibration_items([])


def test_version_text_names_prunec_and_torch():
    assert version_text().startswith("prunec ") and f"(torch {torch.__version__})" in version_text()
