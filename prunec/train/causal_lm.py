"""The causal-LM loss of ``prunec.finetune(..., loss="causal_lm")``.

Items are token batches: a tensor of ids ``[B, N]``, a dict with ``input_ids`` (and an
``attention_mask``, and ``labels`` when some positions must not be learned: ``-100``
there), or ``(inputs, labels)`` pairs. Labels default to the ids, with ``-100`` wherever
the attention mask is 0 (padding).

With student logits ``s``, teacher logits ``t`` (both ``[B, N, V]``), labels ``y`` and the
set ``M`` of positions with a label (``y != -100``):

    task = mean over (b, i) with i + 1 in M of  -log softmax(s[b, i])[y[b, i + 1]]
    kl   = T^2 * mean over (b, i) in M of  KL(softmax(t[b, i] / T) || softmax(s[b, i] / T))
    L    = alpha * kl + (1 - alpha) * task

the shifted next-token cross-entropy (the logits at position ``i`` predict token ``i + 1``)
and distillation from the teacher's logits, both over real tokens only.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from prunec.errors import PrunecError

__all__ = ["IGNORE", "causal_lm_batch", "next_token_loss", "masked_distillation"]

IGNORE = -100
"""Label of a position that is not learned (padding, a prompt)."""


def causal_lm_batch(batch: Any, label_key: str = "labels") -> tuple[Any, torch.Tensor]:
    """``(inputs, labels)`` of one item (see the module docstring).

    Raises:
        PrunecError: an item that is not ids, a dict with ``input_ids``, or a pair.
    """
    if isinstance(batch, torch.Tensor):
        return batch, batch
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise PrunecError(f"loss='causal_lm': dict items need 'input_ids' (got keys "
                              f"{sorted(batch)}).")
        inputs = {k: v for k, v in batch.items() if k != label_key}
        labels = batch.get(label_key)
        if labels is None:
            labels = batch["input_ids"]
            mask = batch.get("attention_mask")
            if mask is not None:
                labels = labels.masked_fill(mask == 0, IGNORE)
        return inputs, labels
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        return batch[0], batch[1]
    raise PrunecError("loss='causal_lm': items must be token ids [B, N], dicts with "
                      "'input_ids' (and 'attention_mask', 'labels'), or (inputs, labels) pairs.")


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Shifted cross-entropy: ``logits[:, i]`` predicts ``labels[:, i + 1]``; ``-100`` is
    ignored. Zero (with a gradient) when no position has a label."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise PrunecError(f"loss='causal_lm' needs token logits [B, N, V] and labels [B, N]; "
                          f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}.")
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    target = labels[:, 1:].reshape(-1).to(pred.device)
    if not bool((target != IGNORE).any()):
        return pred.sum() * 0.0
    return F.cross_entropy(pred, target, ignore_index=IGNORE)


def masked_distillation(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over positions with a label."""
    keep = (labels != IGNORE).reshape(-1).to(student.device)
    s = student.reshape(-1, student.shape[-1])[keep].float() / temperature
    t = teacher.reshape(-1, teacher.shape[-1])[keep].float() / temperature
    if s.shape[0] == 0:
        return student.sum() * 0.0
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True,
                    reduction="batchmean") * temperature ** 2
