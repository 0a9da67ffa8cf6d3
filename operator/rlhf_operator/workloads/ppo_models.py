"""The PPO models on their devices: policy, critic (`critic.py`), reference, precision and sharding.

One place for the choices that decide memory: the weights are read in `baseModel.dtype`; full
fine-tuning keeps fp32 master weights; LoRA keeps the base in its dtype and loads no reference (the
adapter switched off is the reference; the critic gets an adapter of its own); fsdp shards the LM,
the critic and the reference. Each
model is built on the meta device, sharded, and only then allocated and filled (`loading.py`), so
no process ever holds a whole fp32 copy of a sharded model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_operator.workloads import critic as critic_model
from rlhf_operator.workloads import loading, lora, publish, sharding
from rlhf_operator.workloads.distributed import DistInfo
from rlhf_operator.workloads.modeling import fit_tokenizer, resolve_model_path
from rlhf_operator.workloads.ppo import PolicyWithValueHead


@dataclass
class PPOModels:
    policy: PolicyWithValueHead
    ref: nn.Module | None  # None under LoRA
    plan: sharding.TrainPlan  # with the compute dtype of the loaded weights
    critic: nn.Module | None = None  # None: the policy's shared value head (the old variant)


def causal_lm(
    source: str,
    *,
    dtype: str | None,
    weights_dtype: torch.dtype | None,
    tokenizer: PreTrainedTokenizerBase,
    what: str,
    revision: str | None = None,
) -> tuple[PreTrainedModel, Any, torch.dtype, str]:
    """(the LM on the meta device in `weights_dtype` (None: the compute dtype), its config, the
    compute dtype, its local directory)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(source, what)
    config = loading.model_config(path, what, revision)
    compute = loading.dtype_of(config, dtype)
    model: Any = loading.empty_model(
        lambda: AutoModelForCausalLM.from_config(config, dtype=weights_dtype or compute)  # type: ignore[no-untyped-call]
    )
    fit_tokenizer(model, tokenizer, what)
    return model, config, compute, path


def fill(
    model: nn.Module,
    path: str,
    *,
    plan: sharding.TrainPlan,
    info: DistInfo,
    dtype: torch.dtype,
    revision: str | None = None,
) -> None:
    """Allocates this process's part of `model` and reads it from `path` (a collective)."""
    from transformers import AutoModelForCausalLM

    loading.materialize(model, plan.parameter_device(info.device))
    how = loading.load_weights(
        model, path, lambda: AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype), info
    )
    if info.is_main:
        print(f"loaded {path}: {how}", flush=True)


def build(
    policy_source: str,
    ref_source: str,
    tokenizer: PreTrainedTokenizerBase,
    dtype: str | None,
    *,
    plan: sharding.TrainPlan,
    info: DistInfo,
    adapter: lora.LoraSettings | None = None,
    revision: str | None = None,
    trained_weights_follow: bool = False,
    critic_source: str | None = None,
    shared_value_head: bool = False,
) -> PPOModels:
    """`trained_weights_follow`: a checkpoint will fill what is trained (resume), so a full
    fine-tune does not read the base model's weights first. `critic_source`: the local model
    directory the critic starts from (default: the policy's); `shared_value_head`: no critic, a
    value head on the policy (the variant before issue 20, kept for the benchmark)."""
    full = adapter is None
    lm, _, compute, path = causal_lm(
        policy_source,
        dtype=dtype,
        weights_dtype=torch.float32 if full else None,
        tokenizer=tokenizer,
        what="the policy",
        revision=revision,
    )
    plan = dataclasses.replace(plan, compute_dtype=compute)
    disable_dropout(lm)
    initial: dict[str, torch.Tensor] = {}
    if adapter is not None:
        lm, initial = lora.add_adapter_on_meta(lm, adapter)  # type: ignore[assignment]
        trainable, total = lora.trainable_fraction(lm)
        if info.is_main:
            print(f"lora: {trainable} of {total} parameters trainable ({trainable / total:.4%})", flush=True)
    policy = PolicyWithValueHead(lm, value_head=shared_value_head)
    sharding.prepare_trainable_lm(policy.lm, plan, lora=not full)
    if full and trained_weights_follow:
        loading.materialize(policy.lm, plan.parameter_device(info.device))
    else:
        fill(policy.lm, path, plan=plan, info=info, dtype=compute, revision=revision)
    if initial:
        sharding.set_full_state_dict(policy.lm, initial, strict=False)
    critic: nn.Module | None = None
    if policy.value_head is not None:
        sharding.prepare_value_head(policy.value_head, plan, info)
    else:
        critic = critic_model.build(
            critic_source or path,
            tokenizer,
            plan=plan,
            info=info,
            adapter=adapter,
            trained_weights_follow=trained_weights_follow,
        )
    ref: nn.Module | None = None
    if full:
        ref, _, _, ref_path = causal_lm(
            ref_source,
            dtype=dtype,
            weights_dtype=compute,
            tokenizer=tokenizer,
            what="the base model",
            revision=revision,
        )
        sharding.prepare_reference(ref, plan)
        fill(ref, ref_path, plan=plan, info=info, dtype=compute, revision=revision)
    return PPOModels(policy, ref, plan, critic)


def disable_dropout(model: nn.Module) -> None:
    """No dropout in RL fine-tuning (as TRL's disable_dropout): the old and new log-probs of the
    PPO ratio must come from the same function, and every process must compute the same one."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def save_plain(
    policy: PolicyWithValueHead,
    dtype: torch.dtype,
    tokenizer: PreTrainedTokenizerBase,
    out: str,
    info: DistInfo,
) -> bool:
    """The trained LM as a plain transformers directory in `dtype` (merged under LoRA), written by
    rank 0 into `out` (True there). A collective: every process calls it."""
    if not publish.publish_model(policy.lm, dtype, out, is_main=info.is_main):
        return False
    tokenizer.save_pretrained(out)
    return True
