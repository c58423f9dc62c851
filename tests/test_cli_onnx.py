"""The `prunec` command on an .onnx file: calibration data (--data) and `prunec bench DIR`."""
from __future__ import annotations

import json
import sys
import textwrap

import onnx
import pytest

from prunec.cli import main
from tests.frontends import graphs

DATA = textwrap.dedent("""
    import numpy as np
    import torch

    def batches():  # (inputs, target) pairs; the inputs a dict by graph-input name
        rng = np.random.default_rng(1)
        return [({"x": torch.from_numpy(rng.standard_normal((4, 8)).astype(np.float32))},
                 torch.zeros(4)) for _ in range(3)]

    def tuples():  # (inputs, target) pairs; the inputs a tuple in graph-input order
        g = torch.Generator().manual_seed(2)
        return [((torch.randn(4, 8, generator=g),), torch.zeros(4)) for _ in range(3)]

    def wrong_name():
        return [({"y": torch.randn(4, 8)}, torch.zeros(4))]
""")


def _hidden(model: onnx.ModelProto) -> int:
    return {i.name: list(i.dims) for i in model.graph.initializer}["w1"][1]


@pytest.fixture
def onnx_file(tmp_path, monkeypatch):
    (tmp_path / "onnx_cli_data_w1.py").write_text(DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "onnx_cli_data_w1", raising=False)
    path = tmp_path / "mlp.onnx"
    onnx.save(graphs.mlp(hidden=16), str(path))
    return path


@pytest.mark.parametrize("function", ["batches", "tuples"])
def test_variance_pruning_with_data(onnx_file, tmp_path, capsys, function):
    out = tmp_path / "out"
    code = main(["prune", "--model", str(onnx_file), "--input", "x:float32:4x8",
                 "--pass", "variance", "--ratio", "0.5", "--targets", "all",
                 "--data", f"onnx_cli_data_w1:{function}", "--output", str(out), "--quiet"])
    assert code == 0
    pruned = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    assert _hidden(pruned) < 16 == _hidden(onnx.load(str(onnx_file)))
    assert "example inputs only" not in capsys.readouterr().out  # the batches were used


def test_data_not_matching_the_graph_inputs(onnx_file, tmp_path, capsys):
    code = main(["prune", "--model", str(onnx_file), "--input", "x:float32:4x8",
                 "--pass", "variance", "--data", "onnx_cli_data_w1:wrong_name",
                 "--no-save", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--data batch 0" in err and "['x']" in err


def test_no_finetuning_of_an_onnx_graph(onnx_file, capsys):
    code = main(["prune", "--model", str(onnx_file), "--input", "x:float32:4x8",
                 "--data", "onnx_cli_data_w1:batches", "--finetune-epochs", "1", "--no-save"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--finetune-epochs" in err


def test_bench_times_the_pruned_file_against_the_original(onnx_file, tmp_path, capsys,
                                                          monkeypatch):
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # a relative --model: bench must still find it from elsewhere
    assert main(["prune", "--model", onnx_file.name, "--input", "x:float32:4x8", "--pass",
                 "magnitude", "--ratio", "0.5", "--targets", "all", "--output", "out"]) == 0
    assert "time it against mlp.onnx with\n  prunec bench out\n" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path.parent)
    code = main(["bench", str(out), "--batch-sizes", "1,4", "--iters", "3", "--json",
                 str(tmp_path / "bench.json"), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "unpruned/mlp.onnx" in text and "pruned/model.onnx" in text
    rows = json.loads((tmp_path / "bench.json").read_text())["bench"]
    assert rows  # timings were written
    onnx_file.unlink()
    code = main(["bench", str(out), "--iters", "3", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(onnx_file) in err
    code = main(["bench", str(out), "--backend", "inductor", "--iters", "3", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ONNX Runtime" in err


def test_depth_pruning_with_data_on_an_exported_graph(tmp_path, monkeypatch, capsys):
    """Two residual blocks exported by torch.onnx; --data batches (tuples in input order)
    pick the block DepthPruning removes."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)

        def forward(self, x):
            return x + self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = torch.nn.Sequential(Block(), Block(), torch.nn.Linear(8, 3)).eval()
    path = tmp_path / "two_blocks.onnx"
    torch.onnx.export(model, (torch.randn(2, 8),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                      dynamo=False)
    (tmp_path / "onnx_cli_data_w2.py").write_text(textwrap.dedent("""
        import torch
        def batches():
            g = torch.Generator().manual_seed(3)
            return [((torch.randn(2, 8, generator=g),), torch.zeros(2)) for _ in range(2)]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "onnx_cli_data_w2", raising=False)
    code = main(["prune", "--model", str(path), "--input", "x:float32:2x8", "--pass", "depth",
                 "--ratio", "0.5", "--data", "onnx_cli_data_w2:batches", "--output",
                 str(tmp_path / "out"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "dropped 1 of 2 residual blocks" in capsys.readouterr().out
    pruned = onnx.load(str(tmp_path / "out" / "model.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    assert len(pruned.graph.initializer) < len(onnx.load(str(path)).graph.initializer)


def test_threads_reach_onnx_runtime(onnx_file, tmp_path, monkeypatch):
    """--threads sets ONNX Runtime's intra-op threads when pruning and timing an .onnx file
    (not only torch's): every session made for it runs with that many."""
    from prunec.backends.onnx_original import OriginalOnnxArtifact

    threads, init = [], OriginalOnnxArtifact.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        threads.append(self.session.get_session_options().intra_op_num_threads)

    monkeypatch.setattr(OriginalOnnxArtifact, "__init__", spy)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(onnx_file), "--input", "x:float32:4x8", "--pass",
                 "magnitude", "--targets", "all", "--threads", "1", "--output", str(out),
                 "--quiet"]) == 0
    assert main(["bench", str(out), "--batch-sizes", "4", "--iters", "2", "--threads", "1",
                 "--quiet"]) == 0
    assert len(threads) >= 3 and set(threads) == {1}  # the pruned file, then both timed


@pytest.mark.parametrize("argv, words", [
    (["--static"], "--static applies to PyTorch models"),
    (["--batch-only"], "--batch-only applies to PyTorch models"),
    (["--backend", "inductor"], "--backend inductor: an .onnx model comes back as its own"),
    (["--output", "{file}/out"], "is a file"),
    (["--json", "{missing}/r.json"], "--json"),
])
def test_onnx_options_checked_before_work(onnx_file, tmp_path, capsys, monkeypatch, argv,
                                          words):
    """Options that cannot apply to an .onnx model, or outputs that cannot be written, are one
    line and exit 2 before the graph is even read."""
    import prunec.frontends.onnx as frontend

    def no_work(*_a, **_k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(frontend, "load_model", no_work)
    argv = [a.format(file=onnx_file, missing=tmp_path / "no" / "such") for a in argv]
    code = main(["prune", "--model", str(onnx_file), "--input", "x:float32:4x8", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
