"""In-project PPO for RLHF (TRL >= 1.13 has no PPOTrainer; see docs/ppo.md for the decision).

The policy, a critic of its own (`critic.py`: a value model with its own optimizer and learning
rate, trained alone for the first `critic_warmup_steps`), the reference (a frozen copy of the base,
or the policy with its LoRA adapter switched off), the reward model (local or remote) scoring whole
completions, reward shaping (missing-EOS penalty, running normalisation, clipping), a per-token k1
KL penalty, GAE, a clipped surrogate and a clipped value loss, optional adaptive KL (Ziegler et
al.), advantage whitening. The pre-issue-20 variant, a value head on the policy's trunk
(`shared_value_head`), is kept for the side-by-side benchmark only (bench/bench_long_ppo.py). Data parallel on torch's DDP or sharded on FSDP2
(`sharding.py`); losses are normalised by the global token count and advantages whitened with
global statistics, so N processes take the same step as one process with the whole batch.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlhf_operator.workloads import chat_format, optimizers, ppo_core, rollout_engine, sharding
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.checkpoint import TrainState
from rlhf_operator.workloads.distributed import DistInfo, all_reduce_max, all_reduce_sum
from rlhf_operator.workloads.judges import Scorer
from rlhf_operator.workloads.logprobs import position_ids, token_entropy, token_logprobs
from rlhf_operator.workloads.modeling import stop_token_ids
from rlhf_operator.workloads.ppo_parts import (
    PolicyWithValueHead,
    PPOSettings,
    Rollout,
    explained_variance,
    shaped_scores,
)
from rlhf_operator.workloads.reward_client import reward_runs_elsewhere
from rlhf_operator.workloads.sampling import GumbelSampler

__all__ = ["PPOSettings", "PPOTrainerLite", "PolicyWithValueHead", "position_ids", "token_logprobs"]


class PPOTrainerLite:
    """`ref=None` means the policy's LM is a PEFT model: the reference is its adapter switched off.
    `critic=None` means the policy carries a shared value head (the old variant)."""

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
        critic: nn.Module | None = None,
    ) -> None:
        if critic is None and policy.value_head is None:
            raise ValueError("PPO needs a critic: pass one, or build the policy with a shared value head")
        self.policy = policy
        self.critic = critic
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
            policy, self._optimizer_settings(settings.learning_rate)
        )
        self.train_critic: nn.Module | None = None
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.critic_schedule: Any = None
        if critic is not None:
            self.train_critic = (
                sharding.wrap_ddp(critic, dist_info) if self.plan.strategy == "ddp" else critic
            )
            # The policy's optimizer recipe (decay groups, warm-up, schedule) at the critic's rate.
            self.critic_optimizer, self.critic_schedule = optimizers.build_optimizer_and_schedule(
                critic, self._optimizer_settings(settings.critic_learning_rate)
            )
        self.reward_moments = ppo_core.RunningMoments() if settings.reward_normalize else None
        self.kl_ctl = ppo_core.AdaptiveKLController(settings.kl_coef, settings.kl_target)
        # Every id that ends a response (the generation config's list): generation stops at them
        # and the response mask ends at the first of them.
        self.stop_ids = stop_token_ids(tokenizer, policy.lm)
        self.generation_seconds = 0.0
        # How the hf engine generates (rollout_engine.decide), decided at the first rollout.
        self.generation_mode: rollout_engine.Decision | None = None
        self.vllm: Any = None  # vllm_rollout.VllmRollout under generation.engine: vllm

    def _optimizer_settings(self, learning_rate: float) -> optimizers.OptimizerSettings:
        """The schedule runs over every optimizer step: ppoEpochs x mini-batches per PPO step."""
        rows = max(1, self.s.batch_size // self.dist.world_size)
        mini = max(1, min(rows, self.s.mini_batch_size // self.dist.world_size))
        self.updates_per_step = self.s.ppo_epochs * -(-rows // mini)
        return optimizers.OptimizerSettings(
            learning_rate=learning_rate,
            total_steps=self.s.steps * self.updates_per_step,
            weight_decay=self.s.weight_decay,
            warmup_ratio=self.s.warmup_ratio,
            schedule=self.s.lr_schedule,
            eps=1e-5,
        )

    def resume_schedule(self, step: int) -> None:
        """The learning rate where it stood after PPO step `step` (a resumed run)."""
        optimizers.resume_schedule(self.schedule, step * self.updates_per_step)
        if self.critic_schedule is not None:
            optimizers.resume_schedule(self.critic_schedule, step * self.updates_per_step)

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

        def forward(sel: slice) -> tuple[torch.Tensor, ...]:
            logits, values = self.policy(generated[sel], attention[sel], keep)
            logprobs = token_logprobs(logits[:, :-1], response[sel], self.s.temperature)
            entropy = token_entropy(logits[:, :-1], self.s.temperature)
            del logits
            if self.critic is not None:
                values = self.critic(generated[sel], attention[sel], keep)
            ref_logits = self.reference_logits(generated[sel], attention[sel], keep)
            ref_logprobs = token_logprobs(ref_logits[:, :-1], response[sel], self.s.temperature)
            return logprobs, ref_logprobs, values, entropy

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
        if self.critic is not None:
            self.critic.eval()
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
            logprobs, ref_logprobs, values, entropy = self._forwards(generated, attention, response, keep)
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
            entropy * mask,
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
        self,
        ro: Rollout,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        idx: torch.Tensor,
        train_policy: bool,
    ) -> dict[str, float]:
        """One optimizer step (of the policy unless `train_policy` is off, and of the critic) over the
        rows `idx`, in micro-batches (gradient accumulation)."""
        # Every process divides by the same global token count, and the gradient is averaged over
        # processes: scaling by world_size makes that the mean over every token of the mini-batch.
        tokens = float(self._global(ro.mask[idx].sum())) / self.dist.world_size
        micro = self.s.micro_batch_size or len(idx)
        chunks = [idx[i : i + micro] for i in range(0, len(idx), micro)]
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        stats: list[dict[str, float]] = []
        for i, rows in enumerate(chunks):
            last = i == len(chunks) - 1
            with sharding.compute(self.plan, self.dist.device):
                stats.append(self._micro_step(ro, advantages, returns, rows, tokens, last, train_policy))
        out = {k: sum(st[k] for st in stats) for k in stats[0]}
        if train_policy or self.critic is None:
            out["policy_grad_norm"] = _clip(self.policy, self.s.max_grad_norm)
            self.optimizer.step()
        # The policy's schedule advances during the critic's warm-up too: the warm-up steps count
        # toward the run, as OpenRLHF's freezing_actor_steps do.
        self.schedule.step()
        if self.critic is not None and self.critic_optimizer is not None:
            out["critic_grad_norm"] = _clip(self.critic, self.s.max_grad_norm)
            self.critic_optimizer.step()
            self.critic_schedule.step()
        return out

    def _micro_step(  # noqa: PLR0917 - one micro-batch of the update above
        self,
        ro: Rollout,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        rows: torch.Tensor,
        tokens: float,
        last: bool,
        train_policy: bool,
    ) -> dict[str, float]:
        """Forward and backward of the policy (and critic) on `rows`; gradients sync on the `last`."""
        keep = ro.input_ids.shape[1] - ro.prompt_len + 1
        ids, attention, mask = ro.input_ids[rows], ro.attention_mask[rows], ro.mask[rows]
        stats: dict[str, float] = {}
        if train_policy or self.critic is None:
            with _sync(self.train_model, last):
                logits, values = self.train_model(ids, attention, keep)
                new_logprobs = token_logprobs(logits[:, :-1], ids[:, ro.prompt_len :], self.s.temperature)
                loss, pg = ppo_core.policy_loss(
                    new_logprobs, ro.logprobs[rows], advantages[rows], mask, self.s.clip_range, tokens
                )
                stats |= pg
                if self.critic is None and values is not None:  # the shared head: one joint loss
                    vf, vf_stats = ppo_core.value_loss(
                        values[:, :-1].float(),
                        ro.values[rows],
                        returns[rows],
                        mask,
                        self.s.clip_range_value,
                        tokens,
                    )
                    loss = loss + self.s.vf_coef * vf
                    stats |= vf_stats
                loss.backward()  # type: ignore[no-untyped-call]
        if self.train_critic is not None:
            with _sync(self.train_critic, last):
                values = self.train_critic(ids, attention, keep)
                vf, vf_stats = ppo_core.value_loss(
                    values[:, :-1], ro.values[rows], returns[rows], mask, self.s.clip_range_value, tokens
                )
                vf.backward()  # type: ignore[no-untyped-call]
                stats |= vf_stats
        return stats

    def _shape(self, ro: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
        return shaped_scores(ro, self.s, self.stop_ids, self.reward_moments, self._global)

    def _explained_variance(self, ro: Rollout, returns: torch.Tensor) -> float:
        return explained_variance(ro, returns, self._global)

    def step(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        ro = self.rollout(step)
        generated_tokens = float(self._global(ro.mask.sum()))
        rollout_seconds = time.perf_counter() - started
        shaped, shaping = self._shape(ro)
        rewards, kl = ppo_core.token_rewards(shaped, ro.logprobs, ro.ref_logprobs, ro.mask, self.kl_ctl.value)
        advantages, returns = ppo_core.gae(rewards, ro.values, ro.mask, self.s.gamma, self.s.lam)
        advantages = self._whiten(advantages, ro.mask)
        self.policy.train()
        if self.critic is not None:
            self.critic.train()
        if self.vllm is not None:
            self.vllm.after_rollout()
        train_policy = step > self.s.critic_warmup_steps
        stats = [
            self._update(ro, advantages, returns, idx, train_policy)
            for _ in range(self.s.ppo_epochs)
            for idx in self._minibatches(ro.input_ids.shape[0])
        ]
        if self.vllm is not None and train_policy:  # the next rollout samples from the weights just trained
            self.vllm.sync(self.policy.lm, self.plan.compute_dtype)
        rows = self.s.batch_size
        seq_kl = float(self._global(kl.sum())) / rows
        mean_score = float(self._global(ro.scores.sum())) / rows
        self.kl_ctl.update(seq_kl, self.s.batch_size)
        mean = {k: sum(s.get(k, 0.0) for s in stats) / len(stats) for k in stats[0]}
        policy_loss = mean.get("policy_loss", 0.0)
        # The guardrails stop every process at once on the same, global, numbers.
        loss = float(self._global(torch.tensor(policy_loss, device=self.dist.device))) / self.dist.world_size
        tokens = max(generated_tokens, 1.0)
        return {
            "meanReward": mean_score,
            "kl": seq_kl,
            "klCoef": self.kl_ctl.value,
            "policyLoss": policy_loss,
            "loss": loss,
            "valueLoss": mean.get("value_loss", 0.0),
            "clipFraction": mean.get("clip_fraction", 0.0),
            "valueClipFraction": mean.get("value_clip_fraction", 0.0),
            "approxKl": mean.get("approx_kl", 0.0),
            "entropy": float(self._global(ro.entropy.sum())) / tokens,
            "explainedVariance": self._explained_variance(ro, returns),
            "policyGradNorm": mean.get("policy_grad_norm", 0.0),
            "criticGradNorm": mean.get("critic_grad_norm", 0.0),
            "criticWarmup": float(not train_policy),
            **shaping,
            "responseLength": generated_tokens / rows,
            "rolloutSeconds": rollout_seconds,
            "generationSeconds": self.generation_seconds,
            "generatedTokens": generated_tokens,
            "seconds": time.perf_counter() - started,
        }

    def train_state(self) -> TrainState:
        """What a checkpoint holds: the trained modules (what of them requires grad), the optimizers,
        the adaptive KL coefficient and the reward's running moments. `checkpoint.Checkpointer` saves
        it, `checkpoint.load` fills it."""
        modules: dict[str, nn.Module] = {"policy": self.policy.lm}
        optimizers: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {
            "policy": (self.policy, self.optimizer)
        }
        if self.policy.value_head is not None:
            modules["value_head"] = self.policy.value_head
        if self.critic is not None and self.critic_optimizer is not None:
            modules["critic"] = self.critic
            optimizers["critic"] = (self.critic, self.critic_optimizer)
        moments = self.reward_moments
        scalars: dict[str, Any] = {"kl_coef": self.kl_ctl.value}
        if moments is not None:
            scalars["reward_moments"] = [moments.mean, moments.var, moments.count]
        return TrainState(modules=modules, optimizers=optimizers, scalars=scalars)

    def restore_scalars(self, scalars: dict[str, Any]) -> None:
        self.kl_ctl.value = float(scalars["kl_coef"])
        if self.reward_moments is not None and "reward_moments" in scalars:
            mean, var, count = scalars["reward_moments"]
            self.reward_moments = ppo_core.RunningMoments(float(mean), float(var), float(count))


def _sync(model: nn.Module, last: bool) -> Any:
    """DDP's no_sync on every micro-batch but the last (the gradient all-reduce runs once)."""
    no_sync: Any = getattr(model, "no_sync", None)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def _clip(module: nn.Module, max_norm: float) -> float:
    """Clips the gradients of `module`'s trained parameters; their total norm before clipping (a
    DTensor under fsdp: its full value). NaN or inf are returned as they are, for the report."""
    norm: Any = torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
