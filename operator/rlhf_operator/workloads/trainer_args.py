"""Hugging Face Trainer arguments (TRL's RewardTrainer, GRPO, RLOO) from a training stage's spec.

Full fine-tuning loads fp32 master weights and computes in the model's dtype (the Trainer's
autocast), so optimizer states are fp32 and small learning rates still move the weights; LoRA loads
the frozen base in its dtype (PEFT keeps the adapter in fp32). fsdp is torch FSDP2 through the
Trainer's accelerate integration, one unit per transformer block; the model is read on (local)
rank 0 only and broadcast (accelerate's `cpu_ram_efficient_loading`: the other processes build it on
the meta device), and checkpoints are sharded (`SHARDED_STATE_DICT`: each process writes its part
with torch.distributed.checkpoint) instead of gathered on rank 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rlhf_operator.workloads.errors import StageConfigError


def trainer_arguments(
    training: Any, dtype: str, *, per_process: int, cuda: bool, lora: bool, transformer_layers: list[str]
) -> dict[str, Any]:
    from rlhf_operator.api.training import micro_batch

    micro = micro_batch(per_process, training.micro_batch_size, training.gradient_accumulation_steps)
    out: dict[str, Any] = {
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": max(1, per_process // micro),
        "model_init_kwargs": {"dtype": dtype if lora and dtype != "auto" else "float32"},
        "bf16": cuda and dtype == "bfloat16",
        "fp16": cuda and dtype == "float16",  # CPU runs (the tests) compute in fp32
        "activation_checkpointing": bool(training.activation_checkpointing),
        "ddp_timeout": int(training.distributed.timeout_seconds),
    }
    if str(training.distributed.strategy) == "fsdp":
        out.update(
            fsdp=True,
            fsdp_config={
                "version": 2,
                "cpu_offload": bool(training.distributed.cpu_offload),
                "transformer_layer_cls_to_wrap": transformer_layers,
                "reshard_after_forward": True,
                "activation_checkpointing": bool(training.activation_checkpointing),
                "cpu_ram_efficient_loading": True,
                "state_dict_type": "SHARDED_STATE_DICT",
            },
        )
        # FSDP2 checkpoints the blocks itself; the Trainer's own would checkpoint them twice.
        out["activation_checkpointing"] = False
    return out


def layer_classes(model_path: str) -> list[str]:
    """The model's transformer block classes (`_no_split_modules`), for FSDP auto-wrapping."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    cls = AutoModelForCausalLM._model_mapping.get(type(config), None)
    return list(getattr(cls, "_no_split_modules", None) or [])


#: TrainingArguments fields transformers renamed (new name: old name). The trainer-vllm image runs
#: the transformers vLLM supports (5.17), which knows only the old names.
RENAMED_FIELDS = {"activation_checkpointing": "gradient_checkpointing"}


def known_names(config_class: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` under the names this transformers' `config_class` has."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {
        RENAMED_FIELDS[key] if key not in names and RENAMED_FIELDS.get(key) in names else key: value
        for key, value in arguments.items()
    }


def trl_config(config_class: Any, arguments: dict[str, Any], trainer_args: dict[str, Any], where: str) -> Any:
    """`config_class(**arguments, **trainer_args)`: the spec's own settings and its `trainerArgs`.

    The API refused unknown and reserved keys already; a key the stage sets that the API's reserved
    list misses, or a value TRL refuses, is still a configuration error that names `where`."""
    overlap = sorted(set(arguments) & set(trainer_args))
    if overlap:
        raise StageConfigError(
            f"{where}.trainerArgs sets {', '.join(overlap)}, which the stage sets from the spec; remove them.",
            "InvalidTrainerArgs",
        )
    if trainer_args:
        print(f"{where}.trainerArgs passed to {config_class.__name__}: {trainer_args}", flush=True)
    arguments = known_names(config_class, arguments)
    try:
        return config_class(**arguments, **trainer_args)
    except (TypeError, ValueError) as exc:
        if not trainer_args:
            raise
        raise StageConfigError(
            f"{config_class.__name__} refused {where}.trainerArgs {trainer_args}: {exc}", "InvalidTrainerArgs"
        ) from exc
