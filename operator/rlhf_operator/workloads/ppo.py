"""In-project PPO for RLHF (TRL >= 1.13 has no PPOTrainer; see docs/ppo.md for the decision).

Policy + value head on the policy's last hidden state, the reference (a frozen copy of the base, or
the policy with its LoRA adapter switched off), the reward model (local or remote) scoring whole
completions, a per-token k1 KL penalty, GAE, a clipped surrogate and a clipped value loss, optional
adaptive KL (Ziegler et al.), advantage whitening. Data parallel on torch's DDP or sharded on FSDP2
(`sharding.py`); losses are normalised by the global token count and advantages whitened with
global statistics, so N processes take the same step as one process with the whole batch.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_operator.workloads import chat_format, optimizers, ppo_core, rollout_engine, sharding
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.checkpoint import TrainState
from rlhf_operator.workloads.distributed import DistInfo, all_reduce_max, all_reduce_sum
from rlhf_operator.workloads.judges import Scorer
from rlhf_operator.workloads.logprobs import position_ids, token_logprobs
from rlhf_operator.workloads.modeling import stop_token_ids
from rlhf_operator.workloads.reward_client import reward_runs_elsewhere
from rlhf_operator.workloads.sampling import GumbelSampler

__all__ = ["PPOSettings", "PPOTrainerLite", "PolicyWithValueHead", "position_ids", "token_logprobs"]


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
    micro_batch_size: int | None = None  # completions per forward/backward on one process
    rollout_token_budget: int = rollout_engine.DEFAULT_TOKEN_BUDGET  # tokens per rollout forward
    # The optimizer's schedule and decay (workloads/optimizers.py); the defaults keep a constant rate.
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_schedule: str = "constant"


class PolicyWithValueHead(nn.Module):
    """The causal LM plus a scalar value head on its last hidden state (shared trunk).

    Only the last `keep` positions' logits are computed, and the value head reads the lm_head's own
    input (captured by a hook), so no other layer's hidden states are kept.
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        hidden = int(lm.config.get_text_config().hidden_size)
        self.value_head = nn.Linear(hidden, 1)
        # Zero init: the value starts at 0 everywhere instead of adding noise to the first advantages.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self._hidden: list[torch.Tensor] = []
        lm.get_output_embeddings().register_forward_pre_hook(self._capture)  # type: ignore[no-untyped-call]

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._hidden.append(args[0])

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._hidden.clear()
        logits = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            logits_to_keep=keep,
        ).logits
        hidden = self._hidden.pop()
        self._hidden.clear()
        values = self.value_head(hidden.float()).squeeze(-1)
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


class PPOTrainerLite:
    """`ref=None` means the policy's LM is a PEFT model: the reference is its adapter switched off."""

    def __init__(
        self,
        policy: PolicyWithValueHead,
        ref: nn.Module | None,
        tokenizer: PreTrainedTokenizerBase,
        reward: Scorer,
        prompts: Sequence[Prompt],
        *,
        settings: PPOSettings,
        dist_info: DistInfo,
        plan: sharding.TrainPlan | None = None,
    ) -> None:
        self.policy = policy
        self.ref = ref
        self.tokenizer = tokenizer
        self.reward = reward
        self.prompts = prompts
        self.s = settings
        self.dist = dist_info
        self.plan = plan or sharding.TrainPlan()
        # Under ddp the training forward goes through DDP (gradient all-reduce); fsdp syncs by itself.
        self.train_model = sharding.wrap_ddp(policy, dist_info) if self.plan.strategy == "ddp" else policy
        self.optimizer, self.schedule = optimizers.build_optimizer_and_schedule(
            policy, self._optimizer_settings()
        )
        self.kl_ctl = ppo_core.AdaptiveKLController(settings.kl_coef, settings.kl_target)
        # Every id that ends a response (the generation config's list): generation stops at them
        # and the response mask ends at the first of them.
        self.stop_ids = stop_token_ids(tokenizer, policy.lm)
        self.generation_seconds = 0.0
        # How the hf engine generates (rollout_engine.decide), decided at the first rollout.
        self.generation_mode: rollout_engine.Decision | None = None
        self.vllm: Any = None  # vllm_rollout.VllmRollout under generation.engine: vllm

    def _optimizer_settings(self) -> optimizers.OptimizerSettings:
        """The schedule runs over every optimizer step: ppoEpochs x mini-batches per PPO step."""
        rows = max(1, self.s.batch_size // self.dist.world_size)
        mini = max(1, min(rows, self.s.mini_batch_size // self.dist.world_size))
        self.updates_per_step = self.s.ppo_epochs * -(-rows // mini)
        return optimizers.OptimizerSettings(
            learning_rate=self.s.learning_rate,
            total_steps=self.s.steps * self.updates_per_step,
            weight_decay=self.s.weight_decay,
            warmup_ratio=self.s.warmup_ratio,
            schedule=self.s.lr_schedule,
            eps=1e-5,
        )

    def resume_schedule(self, step: int) -> None:
        """The learning rate where it stood after PPO step `step` (a resumed run)."""
        optimizers.resume_schedule(self.schedule, step * self.updates_per_step)

    def prompts_for_step(self, step: int) -> list[tuple[int, Prompt]]:
        """This process's (global index, prompt) pairs at `step`: a pure function of (seed, step), so
        a resumed run sees exactly the prompts the interrupted one would have seen."""
        total_prompts = max(1, self.s.batch_size // self.s.num_generations)
        rng = random.Random(self.s.seed * 100_003 + step)
        chosen = (
            rng.sample(self.prompts, total_prompts)
            if total_prompts <= len(self.prompts)
            else [rng.choice(self.prompts) for _ in range(total_prompts)]
        )
        return list(enumerate(chosen))[self.dist.rank :: self.dist.world_size]

    def _generate(
        self, step: int, indexed: list[tuple[int, Prompt]]
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.vllm is not None:
            started = time.perf_counter()
            out: tuple[torch.Tensor, torch.Tensor, int] = self.vllm.generate(
                step, indexed, self.s, self.dist.device
            )
            self.generation_seconds = time.perf_counter() - started
            return out
        self.tokenizer.padding_side = "left"
        prompts = [p for _, p in indexed]
        enc = chat_format.encode(
            self.tokenizer,
            chat_format.prompt_texts(self.tokenizer, prompts),
            return_tensors="pt",
            padding=True,
        )
        g = self.s.num_generations
        # Each prompt repeated g times (greedy decoding over Gumbel-perturbed logits samples).
        enc = {k: v.repeat_interleave(g, dim=0).to(self.dist.device) for k, v in enc.items()}
        rows = torch.tensor([i * g + k for i, _ in indexed for k in range(g)])
        prompt_len = enc["input_ids"].shape[1]
        sampler = GumbelSampler(self.s.seed, step, rows, prompt_len, self.s.temperature)
        started = time.perf_counter()
        decision = self._generation_mode(enc["input_ids"].shape[0], prompt_len)
        with sharding.compute(self.plan, self.dist.device):
            generated = rollout_engine.generate(
                self.policy.lm,
                enc,
                decision=decision,
                world_size=self.dist.world_size,
                do_sample=False,
                logits_processor=[sampler],
                max_new_tokens=self.s.response_length,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stop_ids,
            )
        self.generation_seconds = time.perf_counter() - started
        response = generated[:, prompt_len:]
        if response.shape[1] < self.s.response_length:  # every row stopped early: pad to a fixed width
            pad = torch.full(
                (response.shape[0], self.s.response_length - response.shape[1]),
                self.stop_ids[0],
                dtype=response.dtype,
                device=response.device,
            )
            generated = torch.cat([generated, pad], dim=1)
        return generated, enc["attention_mask"], prompt_len

    def _generation_mode(self, rows: int, prompt_len: int) -> rollout_engine.Decision:
        """Gathered once per rollout when the whole LM fits beside the training state."""
        if self.generation_mode is None:
            lm = self.policy.lm
            sequence = prompt_len + self.s.response_length
            budget = rollout_engine.measured_budget(
                lm, self.plan.compute_dtype, rows, sequence, self.dist.device
            )
            decision = rollout_engine.decide(rollout_engine.is_sharded(lm), budget)
            # Every rank must take the same path: per-block generation is collective.
            gathered = torch.tensor(float(decision.mode != "per-block"), device=self.dist.device)
            if float(self._global(gathered)) < self.dist.world_size and decision.mode == "gathered":
                decision = rollout_engine.Decision("per-block", "another process cannot gather the policy")
            self.generation_mode = decision
            if self.dist.is_main:
                print(f"rollout engine hf: {decision.reason}", flush=True)
        return self.generation_mode

    def _forwards(
        self, generated: torch.Tensor, attention: torch.Tensor, response: torch.Tensor, keep: int
    ) -> list[torch.Tensor]:
        """(log-probs, reference log-probs, values) in token-budget chunks: no full-batch logits.

        Under fsdp every chunk's forward is collective, so all ranks run the same number of chunks
        (the most any rank needs; prompt widths differ between ranks)."""
        rows, width = generated.shape
        count = torch.tensor(float(rollout_engine.chunk_count(rows, width, self.s.rollout_token_budget)))
        count = all_reduce_max(count, self.dist)

        def forward(sel: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, values = self.policy(generated[sel], attention[sel], keep)
            logprobs = token_logprobs(logits[:, :-1], response[sel], self.s.temperature)
            del logits
            ref_logits = self.reference_logits(generated[sel], attention[sel], keep)
            ref_logprobs = token_logprobs(ref_logits[:, :-1], response[sel], self.s.temperature)
            return logprobs, ref_logprobs, values

        with sharding.compute(self.plan, self.dist.device):
            return rollout_engine.chunked(forward, rollout_engine.row_slices(rows, int(count)))

    def reference_logits(self, input_ids: torch.Tensor, attention: torch.Tensor, keep: int) -> torch.Tensor:
        kw = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": position_ids(attention),
            "logits_to_keep": keep,
        }
        if self.ref is not None:
            return self.ref(**kw).logits  # type: ignore[no-any-return]
        with self.policy.lm.disable_adapter():  # type: ignore[operator]
            return self.policy.lm(**kw).logits  # type: ignore[no-any-return]

    @torch.no_grad()
    def rollout(self, step: int) -> Rollout:
        indexed = self.prompts_for_step(step)
        self.policy.eval()
        generated, prompt_mask, prompt_len = self._generate(step, indexed)
        response = generated[:, prompt_len:]
        keep = response.shape[1] + 1
        mask = ppo_core.response_mask(response, self.stop_ids).to(self.dist.device)
        attention = torch.cat([prompt_mask, mask.long()], dim=1)
        completions = self.tokenizer.batch_decode(response, skip_special_tokens=True)
        full_prompts = [p for _, p in indexed for _ in range(self.s.num_generations)]
        # A reward scored elsewhere (the reward server) is computed while the forwards run here.
        elsewhere = reward_runs_elsewhere(self.reward)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.reward, full_prompts, completions) if elsewhere else None
            logprobs, ref_logprobs, values = self._forwards(generated, attention, response, keep)
            rewards = pending.result() if pending else self.reward(full_prompts, completions)
        scores = torch.tensor(rewards, dtype=torch.float32, device=self.dist.device)
        return Rollout(
            generated,
            attention,
            prompt_len,
            mask,
            logprobs * mask,
            ref_logprobs * mask,
            values[:, :-1].float() * mask,
            scores,
            completions,
        )

    def _global(self, value: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(value.detach().clone().float(), self.dist)

    def _whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """masked_whiten with the statistics of the whole batch, over every process."""
        stats = self._global(torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]))
        total, squares, count = stats[0], stats[1], stats[2].clamp(min=1)
        mean = total / count
        var = (squares / count - mean * mean).clamp(min=0)
        if count > 1:  # Bessel's correction, as ppo_core.masked_whiten
            var = var * count / (count - 1)
        return (x - mean) * torch.rsqrt(var + 1e-8) * mask

    def _minibatches(self, n: int) -> list[torch.Tensor]:
        mini = max(1, min(n, self.s.mini_batch_size // self.dist.world_size))
        order = torch.randperm(n)
        return [order[start : start + mini] for start in range(0, n, mini)]

    def _update(
        self, ro: Rollout, advantages: torch.Tensor, returns: torch.Tensor, idx: torch.Tensor
    ) -> ppo_core.LossStats:
        """One optimizer step over the rows `idx`, in micro-batches (gradient accumulation)."""
        # Every process divides by the same global token count, and the gradient is averaged over
        # processes: scaling by world_size makes that the mean over every token of the mini-batch.
        tokens = float(self._global(ro.mask[idx].sum())) / self.dist.world_size
        micro = self.s.micro_batch_size or len(idx)
        chunks = [idx[i : i + micro] for i in range(0, len(idx), micro)]
        self.optimizer.zero_grad(set_to_none=True)
        stats = []
        for i, rows in enumerate(chunks):
            last = i == len(chunks) - 1
            no_sync: Any = getattr(self.train_model, "no_sync", None)
            sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
            with sync, sharding.compute(self.plan, self.dist.device):
                keep = ro.input_ids.shape[1] - ro.prompt_len + 1
                logits, values = self.train_model(ro.input_ids[rows], ro.attention_mask[rows], keep)
                new_logprobs = token_logprobs(
                    logits[:, :-1], ro.input_ids[rows, ro.prompt_len :], self.s.temperature
                )
                loss, st = ppo_core.ppo_loss(
                    new_logprobs,
                    ro.logprobs[rows],
                    advantages[rows],
                    values[:, :-1].float(),
                    ro.values[rows],
                    returns[rows],
                    ro.mask[rows],
                    self.s.clip_range,
                    self.s.clip_range_value,
                    self.s.vf_coef,
                    token_count=tokens,
                )
                loss.backward()  # type: ignore[no-untyped-call]
            stats.append(st)
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.policy.parameters() if p.requires_grad], self.s.max_grad_norm
        )
        self.optimizer.step()
        self.schedule.step()
        return ppo_core.LossStats(
            policy_loss=sum(s.policy_loss for s in stats),
            value_loss=sum(s.value_loss for s in stats),
            clip_fraction=sum(s.clip_fraction for s in stats),
            approx_kl=sum(s.approx_kl for s in stats),
        )

    def step(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        ro = self.rollout(step)
        generated_tokens = float(self._global(ro.mask.sum()))
        rollout_seconds = time.perf_counter() - started
        rewards, kl = ppo_core.token_rewards(
            ro.scores, ro.logprobs, ro.ref_logprobs, ro.mask, self.kl_ctl.value
        )
        advantages, returns = ppo_core.gae(rewards, ro.values, ro.mask, self.s.gamma, self.s.lam)
        advantages = self._whiten(advantages, ro.mask)
        self.policy.train()
        if self.vllm is not None:
            self.vllm.after_rollout()
        stats = [
            self._update(ro, advantages, returns, idx)
            for _ in range(self.s.ppo_epochs)
            for idx in self._minibatches(ro.input_ids.shape[0])
        ]
        if self.vllm is not None:  # the next rollout samples from the weights just trained
            self.vllm.sync(self.policy.lm, self.plan.compute_dtype)
        rows = self.s.batch_size
        seq_kl = float(self._global(kl.sum())) / rows
        mean_score = float(self._global(ro.scores.sum())) / rows
        self.kl_ctl.update(seq_kl, self.s.batch_size)
        policy_loss = sum(s.policy_loss for s in stats) / len(stats)
        # The guardrails stop every process at once on the same, global, numbers.
        loss = float(self._global(torch.tensor(policy_loss, device=self.dist.device))) / self.dist.world_size
        return {
            "meanReward": mean_score,
            "kl": seq_kl,
            "klCoef": self.kl_ctl.value,
            "policyLoss": policy_loss,
            "loss": loss,
            "valueLoss": sum(s.value_loss for s in stats) / len(stats),
            "clipFraction": sum(s.clip_fraction for s in stats) / len(stats),
            "responseLength": generated_tokens / rows,
            "rolloutSeconds": rollout_seconds,
            "generationSeconds": self.generation_seconds,
            "generatedTokens": generated_tokens,
            "seconds": time.perf_counter() - started,
        }

    def train_state(self) -> TrainState:
        """What a checkpoint holds: the trained modules (what of them requires grad), the optimizer,
        the adaptive KL coefficient. `checkpoint.Checkpointer` saves it, `checkpoint.load` fills it."""
        return TrainState(
            modules={"policy": self.policy.lm, "value_head": self.policy.value_head},
            optimizers={"policy": (self.policy, self.optimizer)},
            scalars={"kl_coef": self.kl_ctl.value},
        )

    def restore_scalars(self, scalars: dict[str, Any]) -> None:
        self.kl_ctl.value = float(scalars["kl_coef"])
