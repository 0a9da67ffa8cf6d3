"""The PPO maths, as pure tensor functions (unit-tested on their own).

Conventions: tensors are [batch, response_len]; `mask` is 1 on response tokens up to and
including the first stop token (EOS, or any other id of the model's generation config) and 0 after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, count: float | None = None) -> torch.Tensor:
    """Mean over the masked entries; `count` overrides the denominator (a global token count)."""
    return (x * mask).sum() / (mask.sum().clamp(min=1) if count is None else max(count, 1e-8))


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    # Bessel's correction as in the reference implementations; guards a single-token batch.
    count = mask.sum()
    if count > 1:
        var = var * count / (count - 1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask(response_ids: torch.Tensor, stop_ids: int | list[int] | torch.Tensor) -> torch.Tensor:
    """1 up to and including the first stop token (any of `stop_ids`, `modeling.stop_token_ids`),
    0 after it. Generation pads a row only after it stopped, so padding is masked whether or not
    pad is one of the stop ids; a row that never stops (truncated) is 1 throughout."""
    stops = torch.as_tensor(stop_ids, device=response_ids.device).reshape(-1)
    is_stop = torch.isin(response_ids, stops).long()
    # Number of stops seen strictly before each position: 0 means the token is still part of the reply.
    before = torch.cumsum(is_stop, dim=1) - is_stop
    return (before == 0).to(torch.float32)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    return (mask.sum(dim=1).long() - 1).clamp(min=0)


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward: -kl_coef * k1 KL at every token, plus the sequence score at the last token.

    k1 = log pi(a|s) - log ref(a|s) is the unbiased per-sample KL estimate used by Ziegler et al.
    Returns (rewards, per_token_kl).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns (advantages, returns)."""
    values = values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass(frozen=True)
class LossStats:
    policy_loss: float
    value_loss: float
    clip_fraction: float
    approx_kl: float
    value_clip_fraction: float = 0.0


def policy_loss(  # noqa: PLR0917 - the paper's symbols, all tensors
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    token_count: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate (PPO, Schulman et al. 2017) and its clip fraction and approx KL."""
    ratio = torch.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(pg1, pg2), mask, token_count)
    with torch.no_grad():
        stats = {
            "policy_loss": float(loss),
            "clip_fraction": float(masked_mean((pg2 > pg1).float(), mask, token_count)),
            "approx_kl": float(0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask, token_count)),
        }
    return loss, stats


def value_loss(  # noqa: PLR0917 - the paper's symbols, all tensors
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float = 0.2,
    token_count: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 x the clipped squared error (values may move at most `clip_range_value` from the rollout's),
    and the fraction of tokens where the clipped term was the larger (the value clip fraction)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_sq = (values - returns) ** 2
    clipped_sq = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_sq, clipped_sq), mask, token_count)
    with torch.no_grad():
        stats = {
            "value_loss": float(loss),
            "value_clip_fraction": float(masked_mean((clipped_sq > unclipped_sq).float(), mask, token_count)),
        }
    return loss, stats


def ppo_loss(  # noqa: PLR0917 - mirrors the paper's symbols, all tensors
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    clip_range_value: float = 0.2,
    vf_coef: float = 0.1,
    token_count: float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Clipped surrogate policy loss + vf_coef x clipped value loss (the shared-trunk variant).

    `token_count` is the denominator of the token means (default: the tokens of `mask`); data
    parallel training passes the global count so every process weighs each token alike.
    """
    pg, pg_stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip_range, token_count)
    vf, vf_stats = value_loss(values, old_values, returns, mask, clip_range_value, token_count)
    return pg + vf_coef * vf, LossStats(**pg_stats, **vf_stats)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked tokens (veRL's `vf_explained_var`):
    1 is a perfect critic, 0 one no better than the mean, negative worse."""
    ret, err = returns * mask, (returns - values) * mask
    sums = [ret.sum(), (ret * ret).sum(), err.sum(), (err * err).sum(), mask.sum()]
    return explained_variance_from_sums(*(float(x) for x in sums))


def explained_variance_from_sums(
    ret_sum: float, ret_squares: float, err_sum: float, err_squares: float, count: float
) -> float:
    """The same from sums (summed over processes first); NaN when the returns do not vary."""
    n = max(count, 1.0)
    ret_var = ret_squares / n - (ret_sum / n) ** 2
    err_var = err_squares / n - (err_sum / n) ** 2
    return 1.0 - err_var / ret_var if ret_var > 1e-12 else float("nan")


@dataclass
class RunningMoments:
    """Mean and variance of every score seen so far (Chan et al.'s parallel update of a batch's
    sum, sum of squares and count): the running reward normalisation of TRL's `use_score_scaling`
    and OpenRLHF's `normalize_reward`. The batch statistics are global (summed over processes)."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 0.0

    def update(self, total: float, squares: float, count: float) -> None:
        if count <= 0:
            return
        batch_mean = total / count
        batch_var = max(squares / count - batch_mean * batch_mean, 0.0)
        new_count = self.count + count
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * count + delta * delta * self.count * count / new_count
        self.mean += delta * count / new_count
        self.var = m2 / new_count
        self.count = new_count

    @property
    def std(self) -> float:
        return float(max(self.var, 0.0) ** 0.5)


def normalise_and_clip(
    scores: torch.Tensor, moments: RunningMoments | None, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores PPO optimises: normalised by the running moments (already updated with this
    batch, as TRL's `use_score_scaling`), then clipped to +-clip. Returns (shaped, was clipped)."""
    shaped = scores if moments is None else (scores - moments.mean) / max(moments.std, 1e-8)
    if clip is None:
        return shaped, torch.zeros_like(shaped, dtype=torch.bool)
    clipped = shaped.clamp(-clip, clip)
    return clipped, clipped != shaped


def truncated_rows(response_ids: torch.Tensor, stop_ids: int | list[int] | torch.Tensor) -> torch.Tensor:
    """True for the responses without any stop id: they hit the length limit."""
    stops = torch.as_tensor(stop_ids, device=response_ids.device).reshape(-1)
    return ~torch.isin(response_ids, stops).any(dim=1)


class AdaptiveKLController:
    """Ziegler et al. (2019): scale the KL weight so the observed KL tracks a target.

    beta <- beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n_steps / horizon)
    """

    def __init__(self, init_coef: float, target: float | None, horizon: int = 10_000) -> None:
        self.value = init_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
