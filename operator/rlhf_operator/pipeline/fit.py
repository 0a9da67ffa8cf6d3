"""Refuse what cannot fit, before it wastes a GPU-hour: the training stages' memory estimate
against the GPU memory of their node groups.

Pure: (RLHFJobSpec, OperatorConfig) -> a refusal or None. Progression fails the stage that does not
fit (reason DoesNotFit, a Warning event of that reason) before it creates any Job. The model's size comes from
`baseModel.sizeBillions` or, unset, from its name ("Llama-3.1-8B" -> 8); the GPU memory of a node
group from the chart's `nodeGroups.gpuMemoryGiB`. When either is unknown, nothing is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlhf_operator.api.training import micro_batch
from rlhf_operator.api.v1alpha1 import Algorithm, RLHFJobSpec, StageName
from rlhf_operator.config import OperatorConfig, Role
from rlhf_operator.memory_estimate import GIB, SHAPES, ModelShape, Setup, estimate
from rlhf_operator.stages import skipped

#: The reason in the failed stage's message, the Failed condition's message and the event.
DOES_NOT_FIT = "DoesNotFit"

_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")


def model_billions(spec: RLHFJobSpec) -> float | None:
    if spec.base_model.size_billions is not None:
        return spec.base_model.size_billions
    found = _SIZE_IN_NAME.findall(spec.base_model.source.rsplit("/", 1)[-1])
    return float(found[-1]) if found else None


def shape_for(billions: float) -> ModelShape:
    """The published shape nearest in size, with the given parameter count."""
    params = int(billions * 1e9)
    nearest = min(SHAPES.values(), key=lambda s: abs(s.params - params))
    return ModelShape(
        params, nearest.hidden, nearest.layers, nearest.vocab, nearest.kv_dim, nearest.intermediate
    )


def stage_setup(spec: RLHFJobSpec, stage: StageName) -> Setup:
    """A training stage's memory-estimate inputs, as its stage program will run it."""
    training = spec.stages.policy if stage is StageName.POLICY else spec.stages.reward_model
    pod = training.pod
    nodes = training.nodes
    compute = 4 if str(spec.base_model.dtype) == "float32" else 2
    if stage is StageName.POLICY:
        policy = spec.stages.policy
        per_gpu = max(1, policy.batch_size // max(1, nodes * pod.resources.gpus))
        # What one forward/backward holds, as the stage program splits it: PPO a mini-batch's share
        # (workloads/policy.py), TRL the whole per-process batch (trainer_args.py), each by
        # microBatchSize or gradientAccumulationSteps. TRL forwards that many completions at once.
        per_update = per_gpu
        if policy.algorithm == Algorithm.PPO:
            per_update = max(
                1, (policy.mini_batch_size or policy.batch_size) // max(1, nodes * pod.resources.gpus)
            )
        return Setup(
            algorithm=str(policy.algorithm),
            strategy=str(policy.distributed.strategy),
            gpus=nodes * max(1, pod.resources.gpus),
            compute_bytes=compute,
            lora_rank=policy.lora.rank if policy.lora else None,
            cpu_offload=policy.distributed.cpu_offload,
            activation_checkpointing=policy.activation_checkpointing,
            # dpo: a chosen and a rejected sequence per pair.
            micro_batch=(2 if policy.algorithm == Algorithm.DPO else 1)
            * micro_batch(per_update, policy.micro_batch_size, policy.gradient_accumulation_steps),
            prompt_length=policy.max_new_tokens,  # prompts are unknown here: assume as long as replies
            response_length=policy.max_new_tokens,
            generation_batch=per_gpu,
            kl=policy.algorithm == Algorithm.PPO or policy.kl_weight() > 0,
        )
    rm = spec.stages.reward_model
    per_gpu = max(1, rm.batch_size // max(1, nodes * pod.resources.gpus))
    return Setup(
        algorithm="reward",
        strategy=str(rm.distributed.strategy),
        gpus=nodes * max(1, pod.resources.gpus),
        compute_bytes=compute,
        lora_rank=rm.lora.rank if rm.lora else None,
        cpu_offload=rm.distributed.cpu_offload,
        activation_checkpointing=rm.activation_checkpointing,
        # Two sequences (chosen and rejected) per pair.
        micro_batch=2 * micro_batch(per_gpu, rm.micro_batch_size, rm.gradient_accumulation_steps),
        prompt_length=rm.max_length // 2,
        response_length=rm.max_length - rm.max_length // 2,
    )


@dataclass(frozen=True)
class Refusal:
    stage: StageName
    message: str


def fit_problem(spec: RLHFJobSpec, config: OperatorConfig) -> str | None:
    """Why a training stage cannot fit its GPUs (stage, estimate, fix), or None."""
    refusal = fit_refusal(spec, config)
    return refusal.message if refusal else None


def fit_refusal(spec: RLHFJobSpec, config: OperatorConfig) -> Refusal | None:
    """The first training stage that cannot fit its GPUs, with the estimate and the fix, or None."""
    billions = model_billions(spec)
    if billions is None or not config.gpu_memory_gib:
        return None
    shape = shape_for(billions)
    for stage, role, field in (
        (StageName.REWARD_MODEL, Role.REWARD, "rewardModel"),
        (StageName.POLICY, Role.POLICY, "policy"),
    ):
        if skipped(spec, stage):  # e.g. a pretrained reward model: nothing trains on these GPUs
            continue
        pod = spec.stages.policy.pod if stage is StageName.POLICY else spec.stages.reward_model.pod
        group = pod.node_group or config.node_group(role)
        gpu_gib = config.gpu_memory_gib.get(group)
        if gpu_gib is None:
            continue
        setup = stage_setup(spec, stage)
        need = estimate(shape, setup)
        if need.total > 0.9 * gpu_gib * GIB:
            return Refusal(
                stage,
                f"the {stage.value} stage does not fit: a {billions:g}B model needs about {need.gib:.0f} GiB "
                f"per GPU ({need.describe()}) with {setup.strategy} over {setup.gpus} GPU(s), but node group "
                f"{group} has {gpu_gib:g} GiB GPUs. Set stages.{field}.distributed.strategy: fsdp with more "
                f"GPUs or nodes, stages.{field}.lora, activationCheckpointing or a smaller microBatchSize "
                "(docs/scaling.md).",
            )
    return None
