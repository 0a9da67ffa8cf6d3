"""The PPO models on their devices: policy (+ value head), reference, precision and sharding.

One place for the choices that decide memory: the LM is loaded in `baseModel.dtype`; full
fine-tuning keeps fp32 master weights; LoRA keeps the base in its dtype and loads no reference (the
adapter switched off is the reference); fsdp shards the LM, the value head and the reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_operator.workloads import lora, sharding
from rlhf_operator.workloads.distributed import DistInfo
from rlhf_operator.workloads.modeling import load_causal_lm
from rlhf_operator.workloads.ppo import PolicyWithValueHead


@dataclass
class PPOModels:
    policy: PolicyWithValueHead
    ref: nn.Module | None  # None under LoRA
    plan: sharding.TrainPlan  # with the compute dtype of the loaded weights


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
) -> PPOModels:
    lm = load_causal_lm(policy_source, revision, dtype, tokenizer, "the policy")
    disable_dropout(lm)
    plan = dataclasses.replace(plan, compute_dtype=next(lm.parameters()).dtype)
    ref: nn.Module | None = None
    if adapter is not None:
        lm = lora.add_adapter(lm, adapter)  # type: ignore[assignment]
        trainable, total = lora.trainable_fraction(lm)
        if info.is_main:
            print(f"lora: {trainable} of {total} parameters trainable ({trainable / total:.4%})", flush=True)
    else:
        ref = sharding.prepare_reference(
            load_causal_lm(ref_source, revision, dtype, tokenizer, "the base model"), plan, info
        )
    policy = PolicyWithValueHead(lm)
    sharding.prepare_trainable_lm(policy.lm, plan, info, lora=adapter is not None)
    sharding.prepare_value_head(policy.value_head, plan, info)
    return PPOModels(policy, ref, plan)


def disable_dropout(model: nn.Module) -> None:
    """No dropout in RL fine-tuning (as TRL's disable_dropout): the old and new log-probs of the
    PPO ratio must come from the same function, and every process must compute the same one."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def plain_model(policy: PolicyWithValueHead, dtype: torch.dtype) -> PreTrainedModel | None:
    """The trained LM as a plain transformers model in `dtype` on rank 0 (None elsewhere): merged when
    LoRA, gathered when sharded. A collective: every process calls it."""
    state = sharding.full_state_dict(policy.lm)
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if not rank0:
        return None
    if lora.is_peft(policy.lm):
        return lora.merged_from_state(policy.lm, state)  # type: ignore[return-value]
    from transformers import AutoModelForCausalLM

    config = policy.lm.config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return model  # type: ignore[no-any-return]


def save_plain(
    policy: PolicyWithValueHead, dtype: torch.dtype, tokenizer: PreTrainedTokenizerBase, out: str
) -> bool:
    """save_pretrained of the plain model into `out` on rank 0; True where written."""
    model = plain_model(policy, dtype)
    if model is None:
        return False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return True
