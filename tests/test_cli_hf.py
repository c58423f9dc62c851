"""`prunec prune --model hf:DIR --backend module`: a Hugging Face model directory out."""
from __future__ import annotations

import sys

import pytest
import torch

from prunec.cli import main

transformers = pytest.importorskip("transformers")


def _save_llama(folder) -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {f"t{i}": i for i in range(64)}
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")), unk_token="t0")
    tok.save_pretrained(folder)


def token_batches():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (4, 12), generator=g),
             "attention_mask": torch.ones(4, 12, dtype=torch.long)} for _ in range(3)]


def bad_batches():
    """Token ids outside the vocabulary: fine-tuning fails after pruning."""
    good = token_batches()[0]
    return [good, {"input_ids": torch.full((4, 12), 999), "attention_mask": good["attention_mask"]}]


@pytest.fixture()
def hf_dir(tmp_path, monkeypatch):
    folder = tmp_path / "llama"
    _save_llama(folder)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "hfdata.py").write_text(
        "from tests.test_cli_hf import token_batches, bad_batches\n")
    sys.modules.pop("hfdata", None)
    return folder


def test_prune_hf_dir_to_a_hugging_face_directory(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["prune", "--model", f"hf:{hf_dir}", "--pass", "magnitude", "--targets",
                 "mlp", "--scope", "local", "--backend", "module", "--output", str(out),
                 "--data", "hfdata:token_batches", "--finetune-epochs", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == 24 and model.config.use_cache is True
    assert (out / "tokenizer.json").is_file() and (out / "plan.json").is_file()
    assert (out / "report.md").is_file()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok.convert_tokens_to_ids(["t1", "t2", "t3"])])
    assert model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 6)


def test_whole_layers_from_the_command_line(hf_dir, tmp_path, capsys):
    out = tmp_path / "short"
    code = main(["prune", "--model", f"hf:{hf_dir}", "--pass", "depth", "--unit", "layer",
                 "--num-blocks", "1", "--no-compensate", "--backend", "module", "--output",
                 str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert transformers.AutoConfig.from_pretrained(out).num_hidden_layers == 1


def test_a_failing_fine_tune_keeps_the_pruned_model(hf_dir, tmp_path, capsys):
    out = tmp_path / "kept"
    code = main(["prune", "--model", f"hf:{hf_dir}", "--pass", "magnitude", "--targets",
                 "mlp", "--scope", "local", "--backend", "module", "--output", str(out),
                 "--data", "hfdata:bad_batches", "--finetune-epochs", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "fine-tuning failed" in err[0] and str(out) in err[0]
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == 24


def test_llm_pass_options():
    from prunec.cli import parse_args
    from prunec.cli_hf import make_llm_pass
    from prunec.cli_specs import CliError
    from prunec.passes import DepthPruning, HeadPruning

    heads = make_llm_pass(parse_args(["prune", "--pass", "heads", "--uniform", "--ratio",
                                      "0.25"]), None)
    assert isinstance(heads, HeadPruning) and heads.uniform and heads.ratio == 0.25
    depth = make_llm_pass(parse_args(["prune", "--pass", "depth", "--unit", "layer",
                                      "--num-blocks", "2", "--no-compensate"]), None)
    assert isinstance(depth, DepthPruning) and depth.unit == "layer" and depth.num_blocks == 2
    with pytest.raises(CliError, match="--data"):
        make_llm_pass(parse_args(["prune", "--pass", "depth", "--criterion", "cosine"]), None)
