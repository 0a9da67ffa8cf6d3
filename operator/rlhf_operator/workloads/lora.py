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


def add_adapter_on_meta(
    model: nn.Module, settings: LoraSettings, task_type: str = "CAUSAL_LM"
) -> tuple[nn.Module, dict[str, Any]]:
    """PEFT's adapter on a model still on the meta device, and the adapter's initial values: PEFT's
    own initialisation run on the CPU (every process draws the same, from the same seed), to set
    once the model is sharded and allocated."""
    from peft.tuners.lora.layer import LoraLayer

    peft_model = add_adapter(model, settings, task_type)
    config: Any = peft_model.peft_config
    init = config["default"].init_lora_weights
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        for adapter in layer.lora_A:
            layer.lora_A[adapter].to_empty(device="cpu")
            layer.lora_B[adapter].to_empty(device="cpu")
            layer.reset_lora_parameters(adapter, init)  # type: ignore[no-untyped-call]
    initial = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    for layer in layers:  # back to meta: the whole model is sharded and allocated together
        layer.lora_A.to("meta")
        layer.lora_B.to("meta")
    return peft_model, initial


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; DTensors count their global size."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
