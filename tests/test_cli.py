"""The `prunec` command: the README's main job and a user factory."""
from __future__ import annotations

import json

import torch

from prunec.cli import main


def tiny_factory():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    return model, (torch.randn(2, 8),)


def test_builtin_main_job_prints_report(capsys, tmp_path):
    out = tmp_path / "report.json"
    assert main(["--ratio", "0.25", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MACs" in text and "digits test accuracy" in text
    data = json.loads(out.read_text())
    assert data["report"]["macs_after"] < data["report"]["macs_before"]
    assert data["accuracy_before"] > 0.95


def test_factory_model_with_random_pass(capsys):
    assert main(["prune", "--model", "tests.test_cli:tiny_factory", "--pass", "random",
                 "--ratio", "0.5", "--targets", "mlp"]) == 0
    assert "RandomPruning" in capsys.readouterr().out


def test_analyze_prints_table(capsys):
    assert main(["analyze", "--model", "tests.test_cli:tiny_factory"]) == 0
    assert "0.weight[0]" in capsys.readouterr().out
