"""Training around pruning: recovery fine-tuning by distillation (single process or DDP), and
optimizer state that follows a rewrite."""
from __future__ import annotations

from prunec.train.finetune import (
    assign_state, distillation_loss, finetune, logits_of, train_program,
)
from prunec.train.optim import slice_optimizer_state

__all__ = ["finetune", "train_program", "assign_state", "distillation_loss", "logits_of",
           "slice_optimizer_state"]
