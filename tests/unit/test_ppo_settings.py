"""stages.policy.ppo (the critic, GAE, reward shaping) and the pure maths behind it (issue 20)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rlhf_operator.api.v1alpha1 import CriticInit, PPOSpec, RLHFJobSpec
from rlhf_operator.workloads import ppo_core

BASE: dict[str, Any] = {
    "baseModel": {"source": "/m"},
    "dataset": {"prompts": {"source": "/p.jsonl"}},
    "storage": {"volume": {"claimName": "c"}},
    "stages": {"ranking": {"rule": {"name": "keywords", "keywords": ["good"]}}},
}


def _spec(policy: dict[str, Any]) -> RLHFJobSpec:
    return RLHFJobSpec.model_validate({**BASE, "stages": {**BASE["stages"], "policy": policy}})


def test_defaults_are_openrlhf_and_verl() -> None:
    ppo = _spec({}).stages.policy.ppo_settings()
    assert ppo == PPOSpec()
    assert (ppo.gamma, ppo.lam, ppo.value_clip) == (1.0, 1.0, 0.5)
    assert ppo.critic.init is CriticInit.REWARD_MODEL and ppo.critic.learning_rate is None
    assert _spec({}).stages.policy.critic_learning_rate_or_default() == 9e-6
    lora = _spec({"lora": {"rank": 8}}).stages.policy
    assert lora.critic_learning_rate_or_default() == 1e-4
    set_here = _spec({"ppo": {"critic": {"learningRate": 3e-5}}, "lora": {"rank": 8}}).stages.policy
    assert set_here.critic_learning_rate_or_default() == 3e-5
    assert ppo.reward_shaping.normalize and ppo.reward_shaping.clip == 10.0
    given = _spec({"ppo": {"critic": {"init": "base", "warmupSteps": 3}, "lam": 0.95}}).stages.policy
    assert given.ppo_settings().critic.warmup_steps == 3 and given.ppo_settings().lam == 0.95


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "dpo"])
def test_ppo_settings_only_with_ppo(algorithm: str) -> None:
    with pytest.raises(ValueError, match=r"`ppo` must be set only with algorithm ppo"):
        _spec({"algorithm": algorithm, "ppo": {"lam": 0.9}})


def test_bad_values_are_refused() -> None:
    for bad in (
        {"lam": 1.5},
        {"valueClip": 0},
        {"critic": {"init": "policy"}},
        {"rewardShaping": {"clip": -1}},
    ):
        with pytest.raises(ValueError):
            _spec({"ppo": bad})


def test_running_moments_equal_the_statistics_of_everything_seen() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(16) * 3 + 2, torch.randn(8) - 1, torch.randn(32) * 0.5]
    moments = ppo_core.RunningMoments()
    for b in batches:
        moments.update(float(b.sum()), float((b * b).sum()), b.numel())
    every = torch.cat(batches)
    assert moments.count == every.numel()
    assert math.isclose(moments.mean, float(every.mean()), rel_tol=1e-5)
    assert math.isclose(moments.var, float(every.var(unbiased=False)), rel_tol=1e-4)


def test_normalise_and_clip() -> None:
    moments = ppo_core.RunningMoments(mean=1.0, var=4.0, count=10)
    shaped, clipped = ppo_core.normalise_and_clip(torch.tensor([1.0, 3.0, 101.0]), moments, clip=10.0)
    assert shaped.tolist() == [0.0, 1.0, 10.0] and clipped.tolist() == [False, False, True]
    raw, none = ppo_core.normalise_and_clip(torch.tensor([50.0]), None, None)
    assert raw.tolist() == [50.0] and not none.any()


def test_truncated_rows() -> None:
    eos = 1
    response = torch.tensor([[5, 6, 1, 1], [5, 6, 7, 8], [1, 1, 1, 1]])
    assert ppo_core.truncated_rows(response, eos).tolist() == [False, True, False]


def test_explained_variance() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    assert ppo_core.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert ppo_core.explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    assert math.isnan(ppo_core.explained_variance(returns, torch.ones_like(returns), mask))


def test_value_clip_fraction_counts_the_clipped_tokens() -> None:
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    returns = torch.tensor([[2.0, 0.1]])
    values = torch.tensor([[1.0, 0.1]])  # the first moved 1.0 > 0.5 from its rollout value
    _, stats = ppo_core.value_loss(values, old, returns, mask, clip_range_value=0.5)
    assert stats["value_clip_fraction"] == pytest.approx(0.5)


def test_lam_one_carries_the_score_to_the_first_token() -> None:
    rewards = torch.zeros(1, 48)
    rewards[0, -1] = 1.0
    mask = torch.ones(1, 48)
    adv_one, _ = ppo_core.gae(rewards, torch.zeros(1, 48), mask, gamma=1.0, lam=1.0)
    adv_old, _ = ppo_core.gae(rewards, torch.zeros(1, 48), mask, gamma=1.0, lam=0.95)
    assert float(adv_one[0, 0]) == pytest.approx(1.0)
    assert float(adv_old[0, 0]) == pytest.approx(0.95**47)


def test_diagnostics_in_the_progress_line_name_what_is_not_finite() -> None:
    from rlhf_operator.api.stage_io import format_progress, parse_progress

    line = format_progress(
        3, 10, 0.5, 0.1, approxKl=0.01, entropy=float("nan"), explainedVariance=0.4, truncationRate=0.25
    )
    record = parse_progress(line)
    assert record is not None and record.approx_kl == 0.01 and record.truncation_rate == 0.25
    assert record.entropy is None and record.non_finite == ["entropy"]
