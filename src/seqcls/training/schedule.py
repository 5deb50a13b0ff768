"""The schedule: how long a run is in optimizer steps, and the learning rate along it (transformers' schedules)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import get_scheduler

from ..settings import Settings


@dataclass(frozen=True)
class Plan:
    """How long the run is, in optimizer steps: the schedule, the progress bar and max_steps follow it."""

    steps_per_epoch: int
    epochs: int  # with max_steps: as many as it takes, the last maybe cut short
    total_steps: int
    warmup_steps: int

    @classmethod
    def of(cls, rows: int, settings: Settings) -> "Plan":
        per_epoch = -(-rows // (settings.batch_size * settings.gradient_accumulation_steps))
        if settings.max_steps:
            epochs, total = -(-settings.max_steps // per_epoch), settings.max_steps
        else:
            epochs, total = settings.epochs, per_epoch * settings.epochs
        # warmup_steps wins over warmup_ratio, as in transformers' TrainingArguments; the ratio rounds down, as before.
        return cls(per_epoch, epochs, total, settings.warmup_steps or int(settings.warmup_ratio * total))


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, plan: Plan):
    """transformers' get_scheduler of `kind` (lr_scheduler_type), stepped once per optimizer step (constant takes no
    warm-up: settings refuse one)."""
    return get_scheduler(kind, optimizer, num_warmup_steps=plan.warmup_steps,
                         num_training_steps=plan.total_steps)
