"""LoRA adapters with PEFT: the policy's (all algorithms) and the reward model's (score head in full).

With LoRA the reference is the base model itself, i.e. the policy with its adapter switched off, so
no second copy of the base is loaded. The published policy is merged into a plain transformers
directory that AutoModelForCausalLM (and vLLM) load without peft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: PEFT's default for the architecture


def lora_settings(training: Any) -> LoraSettings | None:
    """The LoraSettings of a training stage's `lora` section (None: full fine-tuning)."""
    spec = training.lora
    if spec is None:
        return None
    modules = tuple(spec.target_modules) if spec.target_modules else None
    return LoraSettings(spec.rank, spec.alpha, spec.dropout, modules)


def peft_config(settings: LoraSettings, task_type: str, modules_to_save: list[str] | None = None) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules) if settings.target_modules else None,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )


def add_adapter(model: nn.Module, settings: LoraSettings, task_type: str = "CAUSAL_LM") -> nn.Module:
    from peft import get_peft_model

    peft_model: nn.Module = get_peft_model(model, peft_config(settings, task_type))
    return peft_model


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; DTensors count their global size."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def merged_from_state(peft_model: nn.Module, state: dict[str, Any]) -> nn.Module:
    """A merged plain model from a full (gathered) PEFT state dict: call on one rank, CPU only.

    The adapter weights of `state` are loaded into an unsharded copy of `peft_model`'s structure,
    built from its base config, then merged.
    """
    import copy

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base_config = copy.deepcopy(peft_model.get_base_model().config)  # type: ignore[operator]
    dtype = base_config.dtype
    fresh = AutoModelForCausalLM.from_config(base_config, dtype=dtype)  # type: ignore[no-untyped-call]
    config: Any = peft_model.peft_config["default"]  # type: ignore[index]
    clone = get_peft_model(fresh, copy.deepcopy(config))
    clone.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    merged: nn.Module = clone.merge_and_unload()
    return merged
