"""The optimizer and learning-rate schedule of the project's own trainers (ppo's policy, its critic).

The TRL stages get the same settings through TrainingArguments (`schedule_arguments`), and the same
rule of which parameters decay: the Trainer's own `get_decay_parameter_names` (transformers 5:
not `nn.LayerNorm` modules, not names matching bias / layernorm / rmsnorm / norm), which is used
here too, so a PPO policy and a GRPO policy decay the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class OptimizerSettings:
    learning_rate: float
    #: Optimizer steps over the whole run (the schedule's length).
    total_steps: int
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    schedule: str = "constant"  # cosine, linear or constant (api.training.LrSchedule)
    eps: float = 1e-8


def decayed_names(model: nn.Module) -> set[str]:
    """Names of the parameters weight decay applies to: the HF Trainer's rule (no biases, no norms)."""
    from transformers import Trainer

    # An unbound call: the method reads nothing of the Trainer, only the model.
    return set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in two AdamW groups: decayed and not (biases, norm weights)."""
    decayed = decayed_names(model)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for name, p in trainable if name in decayed], "weight_decay": weight_decay},
        {"params": [p for name, p in trainable if name not in decayed], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def warmup_steps(settings: OptimizerSettings) -> int:
    """Warm-up optimizer steps: the ratio of the run, rounded up as transformers rounds it."""
    return math.ceil(settings.warmup_ratio * settings.total_steps)


def build_optimizer_and_schedule(
    model: nn.Module, settings: OptimizerSettings
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over `model`'s trainable parameters and its schedule: linear warm-up, then cosine,
    linear or constant (transformers' `get_scheduler`); step the schedule after each optimizer step."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings.weight_decay), lr=settings.learning_rate, eps=settings.eps
    )
    name = "constant_with_warmup" if settings.schedule == "constant" else settings.schedule
    scheduler = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps(settings),
        num_training_steps=max(1, settings.total_steps),
    )
    return optimizer, scheduler


def resume_schedule(scheduler: LambdaLR, done: int) -> None:
    """Puts the schedule where it stood after `done` optimizer steps (a run resumed from a checkpoint),
    without stepping it (which torch refuses to do quietly before the optimizer's first step)."""
    scheduler.last_epoch = done
    for group, base, factor in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(done)


def schedule_arguments(training: Any, learning_rate: float) -> dict[str, Any]:
    """The TrainingArguments of a TRL stage's learning rate, warm-up, schedule and weight decay.

    transformers 5 takes the warm-up as `warmup_steps` (a value below 1 is a ratio of the run); its
    Trainer skips biases and norm weights in weight decay itself (`get_decay_parameter_names`)."""
    schedule = str(training.lr_schedule)
    return {
        "learning_rate": learning_rate,
        "lr_scheduler_type": "constant_with_warmup" if schedule == "constant" else schedule,
        "warmup_steps": float(training.warmup_ratio),
        "weight_decay": float(training.weight_decay),
    }
