"""What the in-project PPO trainer (`ppo.py`) works with: its settings, the policy module (with the
shared value head of the pre-issue-20 variant, kept for the side-by-side bench), one rollout, and
the reward shaping and critic diagnostic computed over a rollout with global statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from rlhf_operator.workloads import ppo_core, rollout_engine
from rlhf_operator.workloads.logprobs import position_ids

#: Sums a tensor over every process (all_reduce_sum on the trainer's device).
GlobalSum = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PPOSettings:
    steps: int
    batch_size: int  # completions per step, all processes together
    mini_batch_size: int
    ppo_epochs: int
    num_generations: int
    response_length: int
    temperature: float
    learning_rate: float
    kl_coef: float
    kl_target: float | None
    seed: int
    clip_range: float = 0.2
    clip_range_value: float = 0.5  # OpenRLHF's value_clip
    vf_coef: float = 0.1  # the shared head's weight in the joint loss; a separate critic has its own
    gamma: float = 1.0
    lam: float = 1.0  # veRL's and OpenRLHF's default: the score reaches every token undiminished
    critic_learning_rate: float = 9e-6  # OpenRLHF's critic_learning_rate (actor 5e-7..1e-6)
    critic_warmup_steps: int = 0  # OpenRLHF's freezing_actor_steps: only the critic trains
    reward_normalize: bool = True  # running mean/std over every step and process
    reward_clip: float | None = 10.0  # after normalisation; OpenRLHF's reward_clip_range (-10, 10)
    truncation_penalty: float = 0.0  # subtracted from responses without EOS (TRL's missing_eos_penalty)
    max_grad_norm: float = 1.0
    micro_batch_size: int | None = None  # completions per forward/backward on one process
    rollout_token_budget: int = rollout_engine.DEFAULT_TOKEN_BUDGET  # tokens per rollout forward
    # The optimizer's schedule and decay (workloads/optimizers.py); the defaults keep a constant rate.
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_schedule: str = "constant"


class PolicyWithValueHead(nn.Module):
    """The causal LM, and with `value_head` a scalar value head on its last hidden state (the shared
    trunk variant; a separate critic is `critic.ValueModel`).

    Only the last `keep` positions' logits are computed, and the value head reads the lm_head's own
    input (captured by a hook), so no other layer's hidden states are kept.
    """

    def __init__(self, lm: PreTrainedModel, value_head: bool = False) -> None:
        super().__init__()
        self.lm = lm
        hidden = int(lm.config.get_text_config().hidden_size)
        self.value_head = nn.Linear(hidden, 1) if value_head else None
        if self.value_head is not None:
            # Zero init: the value starts at 0 everywhere instead of adding noise to the first advantages.
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        self._hidden: list[torch.Tensor] = []
        lm.get_output_embeddings().register_forward_pre_hook(self._capture)  # type: ignore[no-untyped-call]

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._hidden.append(args[0])

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._hidden.clear()
        logits = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            logits_to_keep=keep,
        ).logits
        hidden = self._hidden.pop()
        self._hidden.clear()
        values = None if self.value_head is None else self.value_head(hidden.float()).squeeze(-1)
        return logits, values


@dataclass
class Rollout:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    completions: list[str]
    entropy: torch.Tensor  # per token, of the sampling distribution


def shaped_scores(
    ro: Rollout,
    settings: PPOSettings,
    stop_ids: list[int],
    moments: ppo_core.RunningMoments | None,
    global_sum: GlobalSum,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The scores PPO optimises: minus `truncation_penalty` where a response hit the length limit
    without a stop id (TRL's missing_eos_penalty), normalised with running moments over every step
    and process, and clipped; and the shaping's figures."""
    truncated = ppo_core.truncated_rows(ro.input_ids[:, ro.prompt_len :], stop_ids).float()
    raw = ro.scores - settings.truncation_penalty * truncated
    if moments is not None:
        count = torch.tensor(float(raw.numel()), device=raw.device)
        sums = global_sum(torch.stack([raw.sum(), (raw * raw).sum(), count]))
        moments.update(float(sums[0]), float(sums[1]), float(sums[2]))
    shaped, clipped = ppo_core.normalise_and_clip(raw, moments, settings.reward_clip)
    rows = settings.batch_size
    figures = {
        "truncationRate": float(global_sum(truncated.sum())) / rows,
        "shapedReward": float(global_sum(shaped.sum())) / rows,
        "rewardClipFraction": float(global_sum(clipped.float().sum())) / rows,
        "rewardRunningMean": moments.mean if moments else 0.0,
        "rewardRunningStd": moments.std if moments else 1.0,
    }
    return shaped, figures


def explained_variance(ro: Rollout, returns: torch.Tensor, global_sum: GlobalSum) -> float:
    """veRL's explained variance of the critic's values over every process's response tokens."""
    err, ret = (returns - ro.values) * ro.mask, returns * ro.mask
    sums = global_sum(
        torch.stack([ret.sum(), (ret * ret).sum(), err.sum(), (err * err).sum(), ro.mask.sum()])
    )
    return ppo_core.explained_variance_from_sums(*(float(x) for x in sums))
