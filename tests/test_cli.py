"""The `prunec` command: help, errors before work, inputs and data, saving, the main job."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from prunec import cli
from prunec.cli import build_parser, main
from prunec.cli_specs import InputSpec, parse_input


# ---------------------------------------------------------------------------- factories
def tiny_factory():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    return model, (torch.randn(2, 8),)


def tiny_module_only():
    return tiny_factory()[0]


def tiny_data():
    """(inputs, target) batches for calibration and fine-tuning."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g))
            for _ in range(4)]


def raising_factory():
    raise ValueError("weights file missing")


class TokenModel(torch.nn.Module):
    """Takes integer token ids and a keyword attention mask."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.fc1, self.fc2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return h * attention_mask.unsqueeze(-1)


def token_model():
    torch.manual_seed(0)
    return TokenModel().eval()


def _fail_if_called(*_a, **_k):
    raise AssertionError("work started before the options were checked")


@pytest.fixture
def no_builtin_training(monkeypatch):
    """Any attempt to build the built-in model fails the test."""
    import prunec.zoo

    monkeypatch.setattr(prunec.zoo, "default_model", _fail_if_called)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[0].startswith("prunec: error: ")
    assert "Traceback" not in "\n".join(err)
    return err[0]


# ---------------------------------------------------------------------------- help
def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("prune", "analyze", "bench"):
        assert f"    {command} " in out
    assert "prunec bench prunec-out" in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("prunec 0.")


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_shown_default():
    for name, sub in _subparsers(build_parser()).items():
        text = sub.format_help()
        for action in sub._actions:
            assert action.help, f"prunec {name} {action.option_strings} has no help"
        assert "(default: 0.5)" in text  # --ratio
        assert "{inductor,module,onnx,onnxruntime,tensorrt,torch}" in text  # choices listed


def test_python_dash_m_prunec():
    done = subprocess.run([sys.executable, "-m", "prunec", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("prunec ")


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("argv, words", [
    (["--ratio", "2"], "--ratio"),
    (["prune", "--backend", "nosuch"], "--backend"),
    (["prune", "--pass", "nosuch"], "--pass"),
    (["prune", "--model", "nosuch_module_xyz:thing"], "no module named 'nosuch_module_xyz'"),
    (["analyze", "--model", "os:nosuchfactory"], "has no 'nosuchfactory'"),
    (["prune", "--model", "tests.test_cli"], "module:function"),
    (["prune", "--model", "tests.test_cli:tiny_module_only"], "--input"),
    (["prune", "--model", "tests.test_cli:raising_factory"], "weights file missing"),
    (["prune", "--model", "tests.test_cli:tiny_factory", "--finetune-epochs", "2"], "--data"),
    (["prune", "--input", "1x8"], "--input"),
    (["prune", "--model", "tests.test_cli:tiny_factory", "--input", "x:int99:1x8"], "dtype"),
])
def test_expected_failures_are_one_line_and_exit_2(argv, words, capsys, no_builtin_training):
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert words in line


def test_debug_shows_the_traceback(no_builtin_training):
    with pytest.raises(cli.CliError):
        main(["prune", "--model", "nosuch_module_xyz:thing", "--debug"])


def test_prunec_error_inside_work_is_one_line(capsys):
    # an example input of the wrong shape: torch.export fails inside prunec.compile, which
    # raises a CaptureError; the command prints its message as one line, torch's log hidden
    assert main(["analyze", "--model", "tests.test_cli:tiny_factory", "--after",
                 "--input", "2x8x3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("prunec: error: ") and "could not capture" in err[0]
    assert err[1:] == ["prunec: run again with --debug for the traceback"]


# ---------------------------------------------------------------------------- inputs
def test_parse_input_forms():
    assert parse_input("1x3x8x8") == InputSpec(None, torch.float32, (1, 3, 8, 8))
    assert parse_input("float16:2,4") == InputSpec(None, torch.float16, (2, 4))
    assert parse_input("input_ids:int64:1x128") == InputSpec("input_ids", torch.int64, (1, 128))
    assert parse_input("mask:1x4").name == "mask"
    for bad in ("", "1x", "a:b:c:1x2", "1-2", "9in:int64:1x2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_input(bad)


class MixedInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)

    def forward(self, x, scale=None):
        return self.fc2(torch.relu(self.fc1(x))) * scale


def mixed_inputs():
    return MixedInputs().eval()


def test_variance_without_data_on_mixed_inputs_asks_for_data(capsys):
    assert main(["prune", "--model", "tests.test_cli:mixed_inputs", "--input", "2x8",
                 "--input", "scale:float32:2x8", "--no-save"]) == 2
    assert "needs --data" in _one_error_line(capsys)
    # positional inputs only: VBP calibrates on the example and says so
    assert main(["prune", "--model", "tests.test_cli:tiny_factory", "--no-save"]) == 0
    assert "note: variance statistics come from the example inputs only" in capsys.readouterr().out


def test_integer_keyword_inputs(capsys):
    assert main(["analyze", "--model", "tests.test_cli:token_model", "--input",
                 "input_ids:int64:2x6", "--input", "attention_mask:int64:2x6"]) == 0
    assert "fc1.weight[0]" in capsys.readouterr().out


def test_module_in_the_current_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models_w11.py").write_text(textwrap.dedent("""
        import torch
        def make():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 2)).eval()
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_models_w11", raising=False)
    assert main(["analyze", "--model", "my_models_w11:make", "--input", "3x4"]) == 0
    assert "0.weight[0]" in capsys.readouterr().out


# ---------------------------------------------------------------------------- commands
def test_analyze_prints_groups_and_after_widths(capsys):
    assert main(["analyze", "--model", "tests.test_cli:tiny_factory"]) == 0
    assert "0.weight[0]" in capsys.readouterr().out
    assert main(["analyze", "--model", "tests.test_cli:tiny_factory", "--after",
                 "--pass", "magnitude", "--targets", "mlp", "--static"]) == 0
    out = capsys.readouterr().out
    assert "| 0 | linear | 8 -> 32 | 8 -> 16 |" in out and "| 2 | linear | 32 -> 4 | 16 -> 4 |" in out


def test_prune_factory_with_data_saves_everything(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["prune", "--model", "tests.test_cli:tiny_factory", "--data",
                 "tests.test_cli:tiny_data", "--finetune-epochs", "1", "--output",
                 str(out_dir), "--round-to", "4"]) == 0
    text = capsys.readouterr().out
    assert f"Saved to {out_dir}/" in text and f"prunec bench {out_dir}" in text
    assert "VarianceBasedPruning: removed 16 of 32 MLP neurons in 1 of 1 groups" in text
    results = json.loads((out_dir / "report.json").read_text())
    assert results["run"]["model"] == "tests.test_cli:tiny_factory"
    assert results["report"]["macs_after"] < results["report"]["macs_before"]
    assert results["finetune_epochs"] == 1
    plans = json.loads((out_dir / "plan.json").read_text())["plans"]
    assert len(plans[0]["keep"]["0.weight:0"]) == 16
    assert (out_dir / "report.md").read_text().startswith("# prunec: Sequential")
    assert (out_dir / "layers.png").read_bytes()[:4] == b"\x89PNG"
    import prunec

    loaded = prunec.load(out_dir / "model.pt2")  # the pruned model, without its code
    x = torch.randn(5, 8)
    assert loaded(x).shape == (5, 4)

    assert main(["bench", str(out_dir), "--iters", "3", "--batch-sizes", "1,2", "--json",
                 str(tmp_path / "bench.json"), "--trust-code"]) == 0
    bench_out = capsys.readouterr().out
    assert "| pruned/torch | 2 |" in bench_out
    rows = json.loads((tmp_path / "bench.json").read_text())["bench"]["rows"]
    assert [r["batch_size"] for r in rows] == [1, 1, 2, 2]


def test_quiet_and_non_terminal_write_no_progress(capsys):
    assert main(["prune", "--model", "tests.test_cli:tiny_factory", "--pass", "random",
                 "--no-save", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "RandomPruning: removed" in captured.out


def test_main_job(tmp_path, capsys, monkeypatch):
    """The README's main job: built-in model, VBP, distillation, saved, next command."""
    monkeypatch.chdir(tmp_path)
    from prunec import progress

    progress.set_enabled(True)  # as on a terminal: progress and status on stderr
    try:
        assert main(["--finetune-epochs", "1", "--threads", "1"]) == 0
    finally:
        progress.set_enabled(None)
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert out.startswith("prunec: pruning the built-in digits classifier") and "about" in out
    assert "calibration" in err and "fine-tuning" in err and "saving to prunec-out/" in err
    assert "model           digits ResNet-14 (built-in)" in out
    assert "MACs per sample    1.65M ->    786K" in out
    assert "after 1 epoch of distillation" in out
    assert "Saved to prunec-out/" in out and "prunec bench prunec-out" in out
    results = json.loads((tmp_path / "prunec-out" / "report.json").read_text())
    assert results["accuracy_before"] > 0.95
    assert results["accuracy_finetuned"] > results["accuracy_pruned"]
