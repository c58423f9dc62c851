"""VBP ablation on a small ViT trained on sklearn's 8x8 digits, then distillation fine-tuning.

1. Train a ViT (``transformers.ViTForImageClassification``: 8x8 one-channel images, 2x2
   patches -> 16 tokens + CLS, hidden 64, 4 layers of 4 heads, MLP 256, dropout 0.1) on a
   fixed stratified 75/25 split of ``sklearn.datasets.load_digits`` (seeded).
2. Prune MLP neurons at ratios 0.5, 0.75 and 0.9 (``targets="mlp"``, global,
   ``round_to=8``) with the four criteria of the paper's ablation that apply here: VBP,
   variance without mean shift, weight magnitude, random. Calibration: 512 training images.
3. Accuracy right after pruning, then after a short distillation fine-tune of every pruned
   model with :func:`prunec.finetune` (teacher = the unpruned model, train mode: dropout on).

Run: ``python benchmarks/vbp_digits_vit.py`` (about 2-3 minutes on 2 CPU cores; one thread). Writes
``benchmarks/results/vbp_digits_vit.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import prunec
from prunec.passes import MagnitudePruning, RandomPruning, VarianceBasedPruning

__all__ = ["digits", "build_vit", "train", "accuracy", "main"]

RESULTS = Path(__file__).resolve().parent / "results"


def digits(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Standardised ``[N, 1, 8, 8]`` images and labels, stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = xtr.mean(), xtr.std()

    def pack(a, b):
        return TensorDataset(torch.tensor((a - mean) / std, dtype=torch.float32).view(-1, 1, 8, 8),
                             torch.tensor(b, dtype=torch.long))

    return pack(xtr, ytr), pack(xte, yte)


def build_vit(seed: int = 0) -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=64,
                       num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                       hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0,
                       num_labels=10, attn_implementation="sdpa")
    return ViTForImageClassification(config)


def train(model: torch.nn.Module, data: TensorDataset, epochs: int, seed: int = 0) -> None:
    """AdamW (peak lr 3e-3, wd 0.05), 10% linear warm-up then cosine to 0, batch 64,
    gradient norm clipped at 1, cross-entropy."""
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, generator=gen,
                                         drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    total = epochs * len(loader)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x).logits, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    model.eval()


def accuracy(module, data: TensorDataset) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return float((module(x).logits.argmax(-1) == y).float().mean())


def fidelity(module, reference: torch.Tensor, data: TensorDataset) -> dict:
    """KL(unpruned || pruned) of the predicted class distributions (mean over test images)
    and agreement of the top-1 predictions with the unpruned model's."""
    with torch.no_grad():
        logits = module(data.tensors[0]).logits
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(reference, -1), log_target=True,
                  reduction="batchmean")
    return {"kl": float(kl), "agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean())}


def criteria(ratio: float, calibration: list) -> dict:
    common = dict(targets="mlp", round_to=8)
    return {
        "vbp": VarianceBasedPruning(ratio, calibration, **common),
        "variance_no_shift": VarianceBasedPruning(ratio, calibration, compensate=False, **common),
        "magnitude": MagnitudePruning(ratio, scope="global", **common),
        "random": RandomPruning(ratio, scope="global", **common),
    }


def run_criterion(name: str, pass_, model, train_set, test_set, base: float, args) -> dict:
    """Prune a copy with ``pass_``, measure, fine-tune by distillation, measure again."""
    x = train_set.tensors[0]
    compiled = prunec.compile(model, x[:2], [pass_])
    pruned = accuracy(compiled, test_set)
    with torch.no_grad():
        reference = model(test_set.tensors[0]).logits
    right_after = fidelity(compiled, reference, test_set)
    _, history = prunec.finetune(compiled, train_set, epochs=args.ft_epochs, teacher=model,
                                 lr=args.ft_lr, batch_size=64, alpha=0.5, temperature=2.0)
    tuned = accuracy(compiled, test_set)
    after_ft = fidelity(compiled, reference, test_set)
    rep = compiled.report
    return {"criterion": name, "accuracy_pruned": pruned, "accuracy_finetuned": tuned,
            "retention_pruned": pruned / base, "retention_finetuned": tuned / base,
            "kl_pruned": right_after["kl"], "agreement_pruned": right_after["agreement"],
            "kl_finetuned": after_ft["kl"], "agreement_finetuned": after_ft["agreement"],
            "neurons_removed": rep.passes[0].get("units_removed", 0),
            "macs_before": rep.macs_before, "macs_after": rep.macs_after,
            "params_before": rep.params_before, "params_after": rep.params_after,
            "final_loss": history[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--train-epochs", type=int, default=40)
    parser.add_argument("--ft-epochs", type=int, default=5)
    parser.add_argument("--ft-lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "vbp_digits_vit")
    args = parser.parse_args()
    # One thread: on a shared 2-core machine two threads of tiny matmuls oversubscribe
    # (measured 10x slower per step under load).
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train_set, test_set = digits()
    model = build_vit()
    train(model, train_set, args.train_epochs)
    base = accuracy(model, test_set)
    print(f"unpruned test accuracy {base:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    x = train_set.tensors[0]
    calibration = [x[i:i + 128] for i in range(0, 512, 128)]
    rows = []
    for ratio in args.ratios:
        for name, pass_ in criteria(ratio, calibration).items():
            rows.append({"ratio": ratio, **run_criterion(name, pass_, model, train_set, test_set,
                                                          base, args)})
            print(f"ratio {ratio:.2f} {name:18s} pruned {rows[-1]['accuracy_pruned']:.4f} "
                  f"KL {rows[-1]['kl_pruned']:.4f}  "
                  f"fine-tuned {rows[-1]['accuracy_finetuned']:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    info = {"unpruned_accuracy": base, "ratios": args.ratios, "train_epochs": args.train_epochs,
            "ft_epochs": args.ft_epochs, "ft_lr": args.ft_lr, "ft_alpha": 0.5,
            "ft_temperature": 2.0, "test_images": len(test_set), "train_images": len(train_set),
            "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
    write(args.out, info, rows)


def write(out: Path, info: dict, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    lines = ["# VBP ablation: ViT on sklearn digits, MLP neurons pruned (global, round_to=8)", "",
             f"Unpruned test accuracy {100 * info['unpruned_accuracy']:.2f}% "
             f"({info['test_images']} test images). Fine-tune: {info['ft_epochs']} epochs of "
             f"distillation (alpha {info['ft_alpha']}, T {info['ft_temperature']}, AdamW lr "
             f"{info['ft_lr']}, cosine) with prunec.finetune in train mode.", "",
             "KL = KL(unpruned || pruned) of the class distributions, agree = top-1 agreement "
             "with the unpruned model, both on the test images.", "",
             "| ratio | criterion | neurons removed (of 1024) | MACs after / before | "
             "acc. after pruning | KL / agree after pruning | acc. after fine-tune | "
             "retention after fine-tune | KL / agree after fine-tune |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ratio']} | {r['criterion']} | {r['neurons_removed']} | "
                     f"{r['macs_after'] / r['macs_before']:.3f} | "
                     f"{100 * r['accuracy_pruned']:.2f}% | "
                     f"{r['kl_pruned']:.4f} / {100 * r['agreement_pruned']:.1f}% | "
                     f"{100 * r['accuracy_finetuned']:.2f}% | "
                     f"{100 * r['retention_finetuned']:.2f}% | "
                     f"{r['kl_finetuned']:.4f} / {100 * r['agreement_finetuned']:.1f}% |")
    lines += ["", f"Total run time {info['seconds']} s, torch {info['torch']}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
