"""Training around pruning: recovery fine-tuning by distillation (single process or DDP)."""
from __future__ import annotations

from prunec.train.finetune import distillation_loss, finetune, logits_of, train_program

__all__ = ["finetune", "train_program", "distillation_loss", "logits_of"]
