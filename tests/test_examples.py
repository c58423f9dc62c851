"""Every script in examples/ runs, in its tiny mode, and does what it says."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> dict:
    spec = importlib.util.spec_from_file_location(f"prunec_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(tiny=True)


def test_every_example_is_tested_and_linked_from_the_readme():
    names = {p.stem for p in EXAMPLES.glob("*.py")}
    tested = {n.removeprefix("test_") for n in globals() if n.startswith("test_")}
    assert names <= tested, f"examples without a test: {names - tested}"
    readme = (EXAMPLES.parent / "README.md").read_text()
    for name in names:
        assert f"examples/{name}.py" in readme


@pytest.mark.slow
def test_hf_sentence_encoder():
    out = run_example("hf_sentence_encoder")
    assert out["macs_ratio"] > 1.2  # 40% of the FFN neurons are a large share of MiniLM's MACs
    assert out["cosine"] > 0.8      # embeddings stay close (VBP with mean folding)


def test_cnn_prune_and_bench():
    out = run_example("cnn_prune_and_bench")
    assert out["ideal"] > 3.5  # half the channels of every conv: about a quarter of the MACs
    assert out["speedup"] > 0 and isinstance(out["warnings"], list)


def test_llama_decoder():
    out = run_example("llama_decoder")
    assert out["heads_after"] == [4, 4]  # 8 query heads -> 4 in each of the 2 layers
    assert out["macs_ratio"] > 1.5


@pytest.mark.slow
def test_prune_hf_causal_lm():
    out = run_example("prune_hf_causal_lm")
    assert out["same_class"] and out["round_trip_equal"]
    assert out["layers"] == 3 and out["generated"] == 40
    assert out["params"][1] < out["params"][0] * 0.6


def test_finetune_distillation():
    out = run_example("finetune_distillation")
    assert out["before"] > 0.95 and out["tuned"] > out["pruned"] + 0.2


def test_replay_plan():
    out = run_example("replay_plan")
    assert out["macs"][0] == out["macs"][1]
    assert out["difference"] < 1e-4  # the same pruned model, fp32 on another backend


def test_onnx_in_onnx_out():
    out = run_example("onnx_in_onnx_out")
    assert out["same_names"] and out["shape"] == (3, 40, 32)  # other batch and length
    assert out["macs_ratio"] > 1.3
    assert out["cosine"] > 0.9
