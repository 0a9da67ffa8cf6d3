"""In-project PPO for RLHF (TRL >= 1.13 has no PPOTrainer; see docs/ppo.md for the decision).

Policy + value head on the policy's last hidden state, a frozen reference copy of the base model,
the reward model (local or remote) scoring whole completions, a per-token k1 KL penalty, GAE, a
clipped surrogate and a clipped value loss, optional adaptive KL (Ziegler et al.), advantage
whitening. Data parallel over torch.distributed processes.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_operator.workloads import ppo_core
from rlhf_operator.workloads.distributed import DistInfo, all_reduce_mean, average_gradients
from rlhf_operator.workloads.judges import Scorer


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
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    max_grad_norm: float = 1.0


class PolicyWithValueHead(nn.Module):
    """The causal LM plus a scalar value head on its last hidden state (shared trunk)."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        hidden = int(lm.config.get_text_config().hidden_size)
        self.value_head = nn.Linear(hidden, 1)
        # Zero init: the value starts at 0 everywhere instead of adding noise to the first advantages.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            output_hidden_states=True,
        )
        values = self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1)
        return out.logits, values


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding: positions must start at 0 on the first real token, as in generate().
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token) under the *sampling* distribution (logits / temperature)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


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


class PPOTrainerLite:
    def __init__(
        self,
        policy: PolicyWithValueHead,
        ref: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        reward: Scorer,
        prompts: list[str],
        *,
        settings: PPOSettings,
        dist_info: DistInfo,
    ) -> None:
        self.policy = policy
        self.ref = ref.eval().requires_grad_(False)  # type: ignore[no-untyped-call]
        self.tokenizer = tokenizer
        self.reward = reward
        self.prompts = prompts
        self.s = settings
        self.dist = dist_info
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=settings.learning_rate, eps=1e-5)
        self.kl_ctl = ppo_core.AdaptiveKLController(settings.kl_coef, settings.kl_target)
        self.eos = int(tokenizer.eos_token_id)

    def prompts_for_step(self, step: int) -> list[str]:
        """This process's prompts at `step`: a pure function of (seed, step), so a resumed run
        sees exactly the prompts the interrupted one would have seen."""
        total_prompts = max(1, self.s.batch_size // self.s.num_generations)
        rng = random.Random(self.s.seed * 100_003 + step)
        chosen = (
            rng.sample(self.prompts, total_prompts)
            if total_prompts <= len(self.prompts)
            else [rng.choice(self.prompts) for _ in range(total_prompts)]
        )
        return chosen[self.dist.rank :: self.dist.world_size]

    @torch.no_grad()
    def rollout(self, step: int) -> Rollout:
        prompts = self.prompts_for_step(step)
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.dist.device) for k, v in enc.items()}
        torch.manual_seed(self.s.seed * 1_000_003 + step * 1009 + self.dist.rank)
        self.policy.eval()
        generated = self.policy.lm.generate(  # type: ignore[operator]
            **enc,
            do_sample=True,
            max_new_tokens=self.s.response_length,
            temperature=self.s.temperature,
            top_k=0,
            top_p=1.0,
            num_return_sequences=self.s.num_generations,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos,
        )
        prompt_len = enc["input_ids"].shape[1]
        response = generated[:, prompt_len:]
        if response.shape[1] < self.s.response_length:  # every row stopped early: pad to a fixed width
            pad = torch.full(
                (response.shape[0], self.s.response_length - response.shape[1]),
                self.eos,
                dtype=response.dtype,
                device=response.device,
            )
            response = torch.cat([response, pad], dim=1)
            generated = torch.cat([generated[:, :prompt_len], response], dim=1)
        mask = ppo_core.response_mask(response, self.eos).to(self.dist.device)
        prompt_mask = enc["attention_mask"].repeat_interleave(self.s.num_generations, dim=0)
        attention = torch.cat([prompt_mask, mask.long()], dim=1)
        logits, values = self.policy(generated, attention)
        logprobs = token_logprobs(logits[:, prompt_len - 1 : -1], response, self.s.temperature)
        ref_logits = self.ref(
            input_ids=generated, attention_mask=attention, position_ids=position_ids(attention)
        ).logits
        ref_logprobs = token_logprobs(ref_logits[:, prompt_len - 1 : -1], response, self.s.temperature)
        completions = self.tokenizer.batch_decode(response, skip_special_tokens=True)
        full_prompts = [p for p in prompts for _ in range(self.s.num_generations)]
        scores = torch.tensor(
            self.reward(full_prompts, completions), dtype=torch.float32, device=self.dist.device
        )
        return Rollout(
            generated,
            attention,
            prompt_len,
            mask,
            logprobs * mask,
            ref_logprobs * mask,
            values[:, prompt_len - 1 : -1].float() * mask,
            scores,
            completions,
        )

    def step(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        ro = self.rollout(step)
        rewards, kl = ppo_core.token_rewards(
            ro.scores, ro.logprobs, ro.ref_logprobs, ro.mask, self.kl_ctl.value
        )
        advantages, returns = ppo_core.gae(rewards, ro.values, ro.mask, self.s.gamma, self.s.lam)
        advantages = ppo_core.masked_whiten(advantages, ro.mask)
        self.policy.train()
        n = ro.input_ids.shape[0]
        mini = max(1, min(n, self.s.mini_batch_size // self.dist.world_size))
        stats: list[ppo_core.LossStats] = []
        for _ in range(self.s.ppo_epochs):
            order = torch.randperm(n)
            for start in range(0, n, mini):
                idx = order[start : start + mini]
                logits, values = self.policy(ro.input_ids[idx], ro.attention_mask[idx])
                new_logprobs = token_logprobs(
                    logits[:, ro.prompt_len - 1 : -1], ro.input_ids[idx, ro.prompt_len :], self.s.temperature
                )
                loss, st = ppo_core.ppo_loss(
                    new_logprobs,
                    ro.logprobs[idx],
                    advantages[idx],
                    values[:, ro.prompt_len - 1 : -1].float(),
                    ro.values[idx],
                    returns[idx],
                    ro.mask[idx],
                    self.s.clip_range,
                    self.s.clip_range_value,
                    self.s.vf_coef,
                )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                average_gradients(list(self.policy.parameters()), self.dist)
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.s.max_grad_norm)
                self.optimizer.step()
                stats.append(st)
        seq_kl = all_reduce_mean(kl.sum(dim=1).mean().detach().clone(), self.dist)
        mean_score = all_reduce_mean(ro.scores.mean().detach().clone(), self.dist)
        self.kl_ctl.update(float(seq_kl), self.s.batch_size)
        return {
            "meanReward": float(mean_score),
            "kl": float(seq_kl),
            "klCoef": self.kl_ctl.value,
            "policyLoss": sum(s.policy_loss for s in stats) / len(stats),
            "valueLoss": sum(s.value_loss for s in stats) / len(stats),
            "clipFraction": sum(s.clip_fraction for s in stats) / len(stats),
            "responseLength": float(ro.mask.sum(dim=1).mean()),
            "seconds": time.perf_counter() - started,
        }

    def state(self) -> dict[str, Any]:
        return {
            "value_head": self.policy.value_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "kl_coef": self.kl_ctl.value,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.policy.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = float(state["kl_coef"])
