"""PPO's new defaults learn on the long-response tiny task (48-token responses, the reward earned in
the first 8 words): a separate critic, lam 1, value clip 0.5, running reward normalisation.
The side-by-side figures with the old settings are bench/bench_long_ppo.py's (docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlhf_operator.tiny.long_task import RESPONSE_TOKENS, early_positive, long_prompts
from rlhf_operator.workloads import ppo_models
from rlhf_operator.workloads.distributed import DistInfo
from rlhf_operator.workloads.modeling import load_tokenizer
from rlhf_operator.workloads.ppo import PPOSettings, PPOTrainerLite
from rlhf_operator.workloads.sharding import TrainPlan

pytestmark = pytest.mark.train

STEPS = 14


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on 2 shared cores more threads oversubscribe them (75 s instead of 15 min
    under a load average of 14)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_new_defaults_learn_the_long_task(tiny_assets: Path) -> None:
    torch.manual_seed(0)
    model_dir = str(tiny_assets / "models" / "tiny-gpt2")
    tokenizer = load_tokenizer(model_dir)
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    models = ppo_models.build(model_dir, model_dir, tokenizer, "float32", plan=TrainPlan(), info=info)
    assert models.critic is not None and models.policy.value_head is None
    defaults = PPOSettings(
        steps=STEPS, batch_size=32, mini_batch_size=32, ppo_epochs=1, num_generations=4,
        response_length=RESPONSE_TOKENS, temperature=1.0, learning_rate=1e-4, kl_coef=0.05,
        kl_target=None, seed=0,
    )  # fmt: skip
    assert (defaults.lam, defaults.gamma, defaults.clip_range_value, defaults.reward_normalize) == (
        1,
        1,
        0.5,
        True,
    )
    # The tiny model's learning rates, as the bench: the 9e-6 default is sized for 7B critics.
    settings = dataclasses.replace(defaults, critic_learning_rate=1e-4, critic_warmup_steps=2)
    trainer = PPOTrainerLite(
        models.policy, models.ref, tokenizer, early_positive, long_prompts(96), settings=settings,
        dist_info=info, plan=models.plan, critic=models.critic,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in models.policy.lm.named_parameters()}
    first = trainer.step(1)
    # Warm-up: only the critic trained.
    assert first["criticWarmup"] == 1.0 and first["policyGradNorm"] == 0.0 and first["criticGradNorm"] > 0
    assert all(torch.equal(p, before[n]) for n, p in models.policy.lm.named_parameters())
    steps = [first] + [trainer.step(step) for step in range(2, STEPS + 1)]
    start = sum(s["meanReward"] for s in steps[:3]) / 3
    end = sum(s["meanReward"] for s in steps[-3:]) / 3
    # Long to begin with: the random-init model samples EOS once in 66 tokens (mean ~34 of 48).
    assert steps[0]["responseLength"] >= 30 and steps[0]["truncationRate"] > 0.3, steps[0]
    assert end >= max(1.5, 2.5 * start), [round(s["meanReward"], 2) for s in steps]
    last = steps[-1]
    for key in (
        "approxKl",
        "entropy",
        "policyGradNorm",
        "criticGradNorm",
        "truncationRate",
        "valueClipFraction",
    ):
        assert math.isfinite(last[key]), (key, last)
    assert 0 <= last["truncationRate"] <= 1 and last["entropy"] > 0
    assert abs(last["rewardRunningMean"] - sum(s["meanReward"] for s in steps) / STEPS) < 1e-3
