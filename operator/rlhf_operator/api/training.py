"""How a training stage uses its GPUs: sharding, LoRA, activation checkpointing, micro-batching.

Shared by `stages.policy` and `stages.rewardModel`. The defaults train the way the tiny demo always
has (every process holds the whole model, no adapter, one forward pass per update).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.optimizer_defaults import DEFAULT_WARMUP_RATIO, DEFAULT_WEIGHT_DECAY


class Strategy(StrEnum):
    DDP = "ddp"
    FSDP = "fsdp"


class LrSchedule(StrEnum):
    """How the learning rate moves after the warm-up (transformers' schedulers of the same names)."""

    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


class GenerationEngine(StrEnum):
    HF = "hf"
    VLLM = "vllm"


class DistributedSpec(ApiModel):
    cel_rules = (
        CelRule(
            "!self.cpuOffload || self.strategy == 'fsdp'",
            "`cpuOffload` must be used with `strategy: fsdp` (ddp keeps the whole model on every GPU)",
            lambda d: not d.cpu_offload or d.strategy == Strategy.FSDP,
        ),
        CelRule(
            "!self.hybridShard || self.strategy == 'fsdp'",
            "`hybridShard` must be used with `strategy: fsdp` (it shards within a node, replicates across)",
            lambda d: not d.hybrid_shard or d.strategy == Strategy.FSDP,
        ),
    )

    strategy: Strategy = Field(
        Strategy.DDP,
        description="ddp: every GPU holds the whole model (torch DDP); fsdp: parameters, gradients and "
        "optimizer states sharded over the GPUs (torch FSDP2), the reference too.",
    )
    cpu_offload: bool = Field(
        False, description="Keep the sharded parameters and optimizer states in CPU memory (fsdp)."
    )
    hybrid_shard: bool = Field(
        False,
        description="With several nodes, shard within each node and replicate across nodes (HSDP; fsdp, "
        "ppo), so the per-layer all-gathers stay inside a node.",
    )
    timeout_seconds: int = Field(
        1800,
        ge=60,
        le=86_400,
        description="How long a collective (NCCL/gloo) may wait for the other processes before it fails.",
    )


class LoraSpec(ApiModel):
    rank: int = Field(16, ge=1, le=1024, description="Rank of the LoRA matrices.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / rank).")
    dropout: float = Field(0.0, ge=0, le=0.9, description="Dropout on the LoRA path.")
    target_modules: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] | None = Field(
        None,
        max_length=64,
        description="Module names that get adapters (e.g. q_proj, v_proj); empty: PEFT's default for the architecture.",
    )


class GenerationSpec(ApiModel):
    cel_rules = (
        CelRule(
            "self.tensorParallelSize == 1 || self.engine == 'vllm'",
            "`tensorParallelSize` must be 1 unless `engine` is vllm (the hf engine generates on the "
            "trained policy as it is sharded)",
            lambda g: g.tensor_parallel_size == 1 or g.engine == GenerationEngine.VLLM,
        ),
    )

    engine: GenerationEngine = Field(
        GenerationEngine.HF,
        description="hf (transformers generate, the policy gathered once per rollout) or vllm (vLLM "
        "colocated with the trainer; needs the trainer-vllm image).",
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        le=8,
        description="vllm: GPUs one vLLM engine spans, inside a pod (a policy too large for one GPU's "
        "share); each group of that many training processes generates their prompts together. Must "
        "divide `pod.resources.gpus`.",
    )


def _any_json_map(schema: dict[str, Any]) -> None:
    """A map of any JSON values, kept by the API server as given (checked by the models only)."""
    schema["additionalProperties"] = {"x-kubernetes-preserve-unknown-fields": True}
    schema["maxProperties"] = 64


class TrainingFields(ApiModel):
    """The fields both training stages share (mixed into their models)."""

    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec, description="Data parallel (ddp) or sharded (fsdp) training."
    )
    lora: LoraSpec | None = Field(
        None, description="Train LoRA adapters instead of every weight; the published model is merged."
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute activations in backward instead of keeping them (less memory, ~30% slower).",
    )
    micro_batch_size: int | None = Field(
        None, ge=1, le=65_536, description="Examples per forward/backward on one process; unset: all at once."
    )
    gradient_accumulation_steps: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Forward/backward passes per optimizer step (instead of microBatchSize).",
    )
    warmup_ratio: float = Field(
        DEFAULT_WARMUP_RATIO,
        ge=0,
        le=0.5,
        description="Fraction of the optimizer steps over which the learning rate rises linearly from 0 "
        "(OpenRLHF's lr_warmup_ratio 0.03).",
    )
    lr_schedule: LrSchedule = Field(
        LrSchedule.COSINE,
        description="After the warm-up: cosine (to 0 at the last step, OpenRLHF's choice), linear (to 0) "
        "or constant.",
    )
    weight_decay: float = Field(
        DEFAULT_WEIGHT_DECAY,
        ge=0,
        le=1,
        description="AdamW weight decay of the weight matrices; biases and norm weights are not decayed "
        "(veRL's 0.01).",
    )
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further fields of the stage's TRL config (GRPOConfig, RLOOConfig, DPOConfig, "
        "RewardConfig), passed through as given, e.g. {adam_beta2: 0.95, max_grad_norm: 0.5}; unknown "
        "fields and those set from the spec are refused by name when the operator reads the job. Not for ppo.",
        json_schema_extra=_any_json_map,
    )


ACCUMULATION_RULE = CelRule(
    "!has(self.microBatchSize) || !has(self.gradientAccumulationSteps)",
    "`microBatchSize` and `gradientAccumulationSteps` must not both be set: one decides the other",
    lambda s: s.micro_batch_size is None or s.gradient_accumulation_steps is None,
)


def micro_batch(per_process: int, micro_batch_size: int | None, accumulation: int | None) -> int:
    """Examples per forward/backward for `per_process` examples per optimizer step."""
    if micro_batch_size:
        return max(1, min(per_process, micro_batch_size))
    if accumulation:
        return max(1, -(-per_process // accumulation))
    return max(1, per_process)
