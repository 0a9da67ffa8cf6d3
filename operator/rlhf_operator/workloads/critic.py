"""PPO's critic: a value model of its own (OpenRLHF's and veRL's design), not a head on the policy.

The critic is a sequence-classification model with one label (a transformer trunk and a linear
`score` head), read per token: a forward hook captures the head's output at every position, which
the model computes anyway before it pools the last token. By default it starts from the trained
reward model when that has the policy's tokenizer (the reward model's head already scores the
response, so the first values are not noise; OpenRLHF initialises its critic the same way), else
from the base model with a zero head. It is built on the meta device, sharded like the policy
(`sharding.prepare_trainable_lm`), then allocated and filled (`loading.py`); under LoRA it gets an
adapter of its own and a fully trained head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_operator.workloads import loading, lora, sharding
from rlhf_operator.workloads.distributed import DistInfo
from rlhf_operator.workloads.logprobs import position_ids
from rlhf_operator.workloads.modeling import check_compatible

HEAD = "score"  # transformers' seq-cls head for decoder models (GPT-2, Llama, Qwen, Mistral, ...)


class ValueModel(nn.Module):
    """Per-token values of a sequence-classification model: V(s_t) for the last `keep` positions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._values: list[torch.Tensor] = []
        head_module(model).register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self._values.append(output)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int) -> torch.Tensor:
        self._values.clear()
        self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
        )
        values = self._values.pop()
        self._values.clear()
        return values[:, -keep:, 0].float()


def head_module(model: nn.Module) -> nn.Module:
    """The `score` head (under PEFT its trained copy's wrapper), for the hook."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == HEAD and "original_module" not in name and "modules_to_save" not in name:
            found: nn.Module = module
            return found
    raise ValueError(
        f"the critic's model has no `{HEAD}` head; its architecture is not a decoder seq-cls model"
    )


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return bool(a.get_vocab() == b.get_vocab())


def initial_source(
    init: str, base_path: str, reward_path: str | None, tokenizer: PreTrainedTokenizerBase
) -> tuple[str, str]:
    """(the directory the critic starts from, why): the reward model under `init: rewardModel` when
    there is one in reach with the policy's vocabulary, else the base model."""
    if init != "rewardModel":
        return base_path, "critic.init is base"
    if reward_path is None:
        return base_path, "no reward model to start from (a rule or an endpoint scores): the base model"
    from rlhf_operator.workloads.modeling import load_tokenizer

    if not same_vocabulary(load_tokenizer(reward_path), tokenizer):
        return base_path, "the reward model's tokenizer differs from the policy's: the base model"
    return reward_path, "the reward model"


def build(
    path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    plan: sharding.TrainPlan,
    info: DistInfo,
    adapter: lora.LoraSettings | None = None,
    trained_weights_follow: bool = False,
) -> ValueModel:
    """The critic from the model directory `path` (a reward model: its head too; a causal LM: its
    trunk, with a zero head), on this process's device, sharded under fsdp. A collective."""
    from transformers import AutoModelForSequenceClassification

    config = loading.model_config(path, "the critic")
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    weights = torch.float32 if adapter is None else plan.compute_dtype
    model: Any = loading.empty_model(
        lambda: AutoModelForSequenceClassification.from_config(config, dtype=weights)  # type: ignore[no-untyped-call]
    )
    check_compatible(model, tokenizer, "the critic")
    for module in model.modules():  # as the policy's (ppo_models.disable_dropout)
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    initial: dict[str, torch.Tensor] = {}
    if adapter is not None:
        model, initial = lora.add_adapter_on_meta(model, adapter, task_type="SEQ_CLS")
    critic = ValueModel(model)
    sharding.prepare_trainable_lm(model, plan, lora=adapter is not None)
    loading.materialize(model, plan.parameter_device(info.device))
    if not (trained_weights_follow and adapter is None):
        _fill(model, path, config, info)
    head = {n: torch.zeros(p.shape) for n, p in model.named_parameters() if _is_head(n)}
    if not _stores_head(path):  # a causal LM has no score: start at V = 0 (no noise in the advantages)
        initial |= head
    if initial:
        sharding.set_full_state_dict(model, initial, strict=False)
    return critic


def _is_head(name: str) -> bool:
    return f".{HEAD}." in f".{name}" and "original_module" not in name


def _stores_head(path: str) -> bool:
    names = loading.stored_names(path)
    return names is not None and any(n.split(".")[0] == HEAD for n in names)


def _fill(model: nn.Module, path: str, config: Any, info: DistInfo) -> None:
    from transformers import AutoModelForSequenceClassification

    stored = _stores_head(path)

    def skip(name: str) -> bool:  # a causal LM's files have no head: it starts at zero (below)
        return "lora_" in name or (not stored and f".{HEAD}." in f".{name}")

    def pretrained() -> PreTrainedModel:
        return AutoModelForSequenceClassification.from_pretrained(path, config=config)  # type: ignore[no-any-return]

    how = loading.load_weights(model, path, pretrained, info, skip=skip)
    if info.is_main:
        print(f"critic loaded from {path}: {how}", flush=True)
