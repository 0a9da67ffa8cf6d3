"""Refuse what cannot fit, before it wastes a GPU-hour: the training stages' memory estimate against
their node groups' GPU memory and their pods' host memory.

Pure: (RLHFJobSpec, OperatorConfig, what was found at the model sources) -> a `FitReport`. The
model's shape comes, in this order, from its config.json when whoever estimates can read it (the
operator reads local directories it can see; `rlhf-operator estimate` also reads s3://), from
`baseModel.shape`, or from its size (`baseModel.sizeBillions`, or the size in its name, "8B") laid
out as the nearest published Llama; the report says which. The GPU memory of a node group is the
chart's `nodeGroups.gpuMemoryGiB`; a pod's host memory its `resources.memory`, else its node's
allocatable memory when the node group's instance type is known. What is unknown is not refused.
Progression fails the first stage that does not fit (reason DoesNotFit, a Warning event) before it
creates any Job; `rlhf-operator estimate` prints the same report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rlhf_operator.api.optimizer_defaults import MAX_DEFAULT_PAIR_LENGTH
from rlhf_operator.api.training import micro_batch
from rlhf_operator.api.v1alpha1 import Algorithm, RLHFJobSpec, StageName
from rlhf_operator.config import OperatorConfig, Role
from rlhf_operator.memory_estimate import (
    GIB,
    HEADROOM,
    INSTANCES,
    Estimate,
    Setup,
    estimate,
    whole_model_fits_beside_training,
)
from rlhf_operator.model_shape import ModelShape, ShapeError, nearest_llama, shape_from_config

#: The reason in the failed stage's message, the Failed condition's message and the event.
DOES_NOT_FIT = "DoesNotFit"
MODEL_CONFIG_NOT_FOUND = "ModelConfigNotFound"

_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {
    None: 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": GIB,
    "Ti": 1024**4,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
}


@dataclass(frozen=True)
class ConfigLookup:
    """What was found at a model source: its config.json, or why a readable directory has none.
    Neither means the source could not be reached (an s3:// URI, a volume the reader cannot see)."""

    source: str
    config: Mapping[str, Any] | None = None
    problem: str | None = None


def model_billions(spec: RLHFJobSpec) -> float | None:
    if spec.base_model.size_billions is not None:
        return spec.base_model.size_billions
    found = _SIZE_IN_NAME.findall(spec.base_model.source.rsplit("/", 1)[-1])
    return float(found[-1]) if found else None


def _from_lookup(lookup: ConfigLookup | None, what: str) -> ModelShape | None:
    if lookup is None:
        return None
    if lookup.problem is not None:
        raise ShapeError(f"{what} {lookup.source}: {lookup.problem}", MODEL_CONFIG_NOT_FOUND)
    if lookup.config is None:
        return None
    return shape_from_config(lookup.config, f"config.json of {lookup.source}")


def base_shape(spec: RLHFJobSpec, lookups: Mapping[str, ConfigLookup]) -> ModelShape | None:
    """The base model's shape (ShapeError when its config.json is missing or not understood)."""
    base = spec.base_model
    shape = _from_lookup(lookups.get(base.source), "baseModel.source")
    if shape is not None:
        return shape
    given = base.shape
    if given is not None:
        return ModelShape.decoder(
            given.hidden_size, given.num_layers, given.vocab_size, given.intermediate_size,
            given.num_key_value_heads or given.num_attention_heads, given.num_attention_heads,
            given.tie_word_embeddings, origin="baseModel.shape",
        )  # fmt: skip
    billions = model_billions(spec)
    if billions is None:
        return None
    where = (
        "baseModel.sizeBillions" if base.size_billions is not None else "the size in baseModel.source's name"
    )
    return nearest_llama(billions, f"{where} ({billions:g}B) laid out as the nearest Llama (approximate)")


def reward_shape(spec: RLHFJobSpec, base: ModelShape, lookups: Mapping[str, ConfigLookup]) -> ModelShape:
    """The reward model's shape: its own source's config.json (a pretrained one, or the one it is
    trained from), else the base model's."""
    reward = spec.stages.reward_model
    source = reward.pretrained or reward.model
    if source is None:
        return base
    field = "stages.rewardModel.pretrained" if reward.pretrained else "stages.rewardModel.model"
    found = _from_lookup(lookups.get(source), field)
    return found or replace(base, origin=f"assumed the base model's ({source} was not read)")


def critic_shape(spec: RLHFJobSpec, base: ModelShape, reward: ModelShape) -> ModelShape:
    """PPO's critic (`stages.policy.ppo.critic.init`, workloads/critic.py): the reward model's shape
    when it starts from the reward model, the base model's when it starts from the base or no reward
    model scores (a rule, an endpoint). A reward model with another tokenizer also falls back to the
    base at run time; not knowable here, so the reward model's shape is assumed."""
    policy = spec.stages.policy
    scored_by_model = policy.reward_rule is None and spec.stages.reward_model.endpoint is None
    if str(policy.ppo_settings().critic.init) == "rewardModel" and scored_by_model:
        return reward
    return base


def stage_setup(spec: RLHFJobSpec, stage: StageName) -> Setup:
    """A training stage's memory-estimate inputs, as its stage program will run it."""
    training = spec.stages.policy if stage is StageName.POLICY else spec.stages.reward_model
    pod = training.pod
    per_node = max(1, pod.resources.gpus)
    gpus = training.nodes * per_node
    common = dict(
        strategy=str(training.distributed.strategy), gpus=gpus, gpus_per_node=per_node,
        hybrid_shard=training.distributed.hybrid_shard, compute_bytes=4 if str(spec.base_model.dtype) == "float32" else 2,
        lora_rank=training.lora.rank if training.lora else None, cpu_offload=training.distributed.cpu_offload,
        activation_checkpointing=training.activation_checkpointing,
    )  # fmt: skip
    if stage is StageName.POLICY:
        policy = spec.stages.policy
        per_gpu = max(1, policy.batch_size // gpus)
        # What one forward/backward holds, as the stage program splits it: PPO a mini-batch's share
        # (workloads/policy.py), TRL the whole per-process batch (trainer_args.py), each by
        # microBatchSize or gradientAccumulationSteps. TRL forwards that many completions at once.
        ppo = policy.algorithm == Algorithm.PPO
        per_update = max(1, (policy.mini_batch_size or policy.batch_size) // gpus) if ppo else per_gpu
        return Setup(
            algorithm=str(policy.algorithm),
            **common,  # type: ignore[arg-type]
            # dpo: a chosen and a rejected sequence per pair.
            micro_batch=(2 if policy.algorithm == Algorithm.DPO else 1)
            * micro_batch(per_update, policy.micro_batch_size, policy.gradient_accumulation_steps),
            prompt_length=policy.max_new_tokens,  # prompts are unknown here: assume as long as replies
            response_length=policy.max_new_tokens,
            generation_batch=per_gpu,
            kl=ppo or policy.kl_weight() > 0,
            reward_colocated=policy.reward_placement == "colocated",
            checkpoints=policy.checkpoint_interval > 0,
            trl=not ppo,
        )
    rm = spec.stages.reward_model
    per_gpu = max(1, rm.batch_size // gpus)
    # Unset: the model's context up to the cap; the cap bounds it without reading config.json here.
    length = rm.max_length or MAX_DEFAULT_PAIR_LENGTH
    return Setup(
        algorithm="reward",
        **common,  # type: ignore[arg-type]
        # Two sequences (chosen and rejected) per pair.
        micro_batch=2 * micro_batch(per_gpu, rm.micro_batch_size, rm.gradient_accumulation_steps),
        prompt_length=length // 2,
        response_length=length - length // 2,
        checkpoints=False,
        trl=True,
    )


def _quantity_bytes(text: str | None) -> float | None:
    match = _QUANTITY.match(text or "")
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


@dataclass(frozen=True)
class StageFit:
    stage: StageName
    section: str  # its name under spec.stages
    group: str  # its node group
    setup: Setup
    estimate: Estimate
    gpu_gib: float | None  # its GPUs' memory, when known
    host_bytes: float | None  # what one of its pods may use, when known
    host_from: str = ""
    models: dict[str, ModelShape] = field(default_factory=dict)

    @property
    def gpu_fits(self) -> bool | None:
        return None if self.gpu_gib is None else self.estimate.total <= HEADROOM * self.gpu_gib * GIB

    @property
    def host_fits(self) -> bool | None:
        return None if self.host_bytes is None else self.estimate.host_per_node <= self.host_bytes

    @property
    def fits(self) -> bool:
        return self.gpu_fits is not False and self.host_fits is not False


@dataclass(frozen=True)
class Refusal:
    stage: StageName
    message: str
    reason: str = DOES_NOT_FIT


@dataclass(frozen=True)
class FitReport:
    shape: ModelShape | None = None
    problem: ShapeError | None = None
    stages: tuple[StageFit, ...] = ()

    @property
    def checked(self) -> bool:
        """Whether a GPU table or host limit made any check possible."""
        return any(s.gpu_gib is not None or s.host_bytes is not None for s in self.stages)

    def refusal(self) -> Refusal | None:
        if self.problem is not None and self.problem.reason == MODEL_CONFIG_NOT_FOUND:
            return Refusal(StageName.POLICY, self.problem.message, MODEL_CONFIG_NOT_FOUND)
        for fit in self.stages:
            if not fit.fits:
                return Refusal(fit.stage, does_not_fit_message(fit))
        return None


def _host_limit(pod: Any, group: str, config: OperatorConfig) -> tuple[float | None, str]:
    limit = _quantity_bytes(pod.resources.memory)
    if limit is not None:
        return limit, f"the pod's resources.memory {pod.resources.memory}"
    instance = INSTANCES.get(config.node_group_instance_types.get(group, ""))
    if instance is not None:
        return (
            instance.allocatable_memory_gib * GIB,
            f"a {config.node_group_instance_types[group]}'s allocatable memory",
        )
    return None, ""


def stage_fit(
    spec: RLHFJobSpec,
    stage: StageName,
    config: OperatorConfig,
    models: dict[str, ModelShape],
    setup: Setup | None = None,
) -> StageFit:
    policy = stage is StageName.POLICY
    pod = spec.stages.policy.pod if policy else spec.stages.reward_model.pod
    group = pod.node_group or config.node_group(Role.POLICY if policy else Role.REWARD)
    setup = setup or stage_setup(spec, stage)
    shape = models["policy"] if policy else models["rewardModel"]
    extra = {"reward": models["rewardModel"], "critic": models["critic"]} if policy else {}
    host, host_from = _host_limit(pod, group, config)
    return StageFit(
        stage, "policy" if policy else "rewardModel", group, setup, estimate(shape, setup, **extra),
        config.gpu_memory_gib.get(group), host, host_from, models,
    )  # fmt: skip


def rollout_gather(fit: StageFit) -> str | None:
    """How PPO's hf engine is expected to generate on this stage's GPUs (None: not a sharded PPO
    policy, or no GPU size known); the run measures free memory and decides the same way."""
    s = fit.setup
    if s.algorithm != "ppo" or s.strategy != "fsdp" or fit.gpu_gib is None:
        return None
    models = fit.models
    whole = whole_model_fits_beside_training(
        models["policy"], s, int(fit.gpu_gib * GIB), reward=models["rewardModel"], critic=models["critic"]
    )
    if whole:
        return "the policy is gathered once per rollout (it fits beside the training state)"
    return "the policy is gathered block by block per decode step (it does not fit whole): consider vLLM"


def fit_report(
    spec: RLHFJobSpec, config: OperatorConfig, lookups: Mapping[str, ConfigLookup] | None = None
) -> FitReport:
    """Each training stage's estimate against its capacity, with the model shape it used."""
    lookups = lookups or {}
    try:
        base = base_shape(spec, lookups)
        if base is None:
            return FitReport()
        reward = reward_shape(spec, base, lookups)
    except ShapeError as problem:
        return FitReport(problem=problem)
    models = {"policy": base, "rewardModel": reward, "critic": critic_shape(spec, base, reward)}
    stages = [
        stage_fit(spec, stage, config, models)
        for stage in (StageName.REWARD_MODEL, StageName.POLICY)
        if not (stage is StageName.REWARD_MODEL and _reward_model_skipped(spec))
    ]
    return FitReport(base, None, tuple(stages))


def _reward_model_skipped(spec: RLHFJobSpec) -> bool:
    from rlhf_operator.stages import skipped

    return skipped(spec, StageName.REWARD_MODEL)


def fit_refusal(
    spec: RLHFJobSpec,
    config: OperatorConfig,
    lookups: Mapping[str, ConfigLookup] | None = None,
) -> Refusal | None:
    """The first training stage that cannot fit, with the estimate and the fix, or None."""
    return fit_report(spec, config, lookups).refusal()


def fit_problem(spec: RLHFJobSpec, config: OperatorConfig) -> str | None:
    """Why a training stage cannot fit its GPUs (stage, estimate, fix), or None."""
    refusal = fit_refusal(spec, config)
    return refusal.message if refusal else None


def does_not_fit_message(fit: StageFit) -> str:
    from rlhf_operator.pipeline.fit_fixes import suggested_fix

    est, setup = fit.estimate, fit.setup
    shape = fit.models.get("policy" if fit.stage is StageName.POLICY else "rewardModel")
    size = f"the {round(shape.params / 1e9, 1):g}B model" if shape is not None else "it"
    parts = [f"the {fit.stage.value} stage does not fit"]
    if fit.gpu_fits is False:
        parts.append(
            f"{size} needs about {est.gib:.0f} GiB per GPU ({est.describe()}) with {setup.strategy} over "
            f"{setup.gpus} GPU(s), but node group {fit.group} has {fit.gpu_gib:g} GiB GPUs (the estimate may "
            f"use {HEADROOM:.0%})"
        )
    if fit.host_fits is False and fit.host_bytes is not None:
        parts.append(
            f"its pods need about {est.host_per_node / GIB:.0f} GiB of host memory each ({setup.gpus_per_node} "
            f"process(es); rank 0: {', '.join(f'{k} {v / GIB:.1f}' for k, v in est.host.items())} GiB), more "
            f"than {fit.host_from} ({fit.host_bytes / GIB:.0f} GiB)"
        )
    origin = f" Model shape: {shape.origin}." if shape is not None and shape.origin else ""
    return parts[0] + ": " + "; ".join(parts[1:]) + f". {suggested_fix(fit)}{origin} (docs/scaling.md)"


def refit(fit: StageFit, setup: Setup) -> StageFit:
    """The same stage and capacity with other settings."""
    models = fit.models
    extra = (
        {"reward": models["rewardModel"], "critic": models["critic"]} if fit.stage is StageName.POLICY else {}
    )
    shape = models["policy" if fit.stage is StageName.POLICY else "rewardModel"]
    return replace(fit, setup=setup, estimate=estimate(shape, setup, **extra))
