"""PPO's own settings (`stages.policy.ppo`): the critic, GAE and the reward shaping.

Defaults follow OpenRLHF and veRL (docs/ppo.md has the table): a separate critic started from the
reward model with its own learning rate, gamma 1 and lambda 1, value clipping at 0.5, running
reward normalisation and clipping at 10.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from rlhf_operator.api.base import ApiModel


class CriticInit(StrEnum):
    REWARD_MODEL = "rewardModel"
    BASE = "base"


class CriticSpec(ApiModel):
    init: CriticInit = Field(
        CriticInit.REWARD_MODEL,
        description="What the critic starts from: rewardModel (the trained or pretrained reward model, "
        "head included, when it has the policy's tokenizer; else the base model) or base (the base "
        "model's trunk with a zero value head).",
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="The critic's learning rate; unset: 9e-6 for a full fine-tune (OpenRLHF's "
        "critic_learning_rate), 1e-4 with LoRA.",
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        le=100_000,
        description="First steps in which only the critic trains, so the policy's first updates use "
        "values that are not noise (OpenRLHF's freezing_actor_steps).",
    )


class RewardShapingSpec(ApiModel):
    normalize: bool = Field(
        True,
        description="Divide the scores by the running standard deviation of every score so far (after "
        "subtracting the running mean), over every process (OpenRLHF normalize_reward, TRL "
        "use_score_scaling).",
    )
    clip: float | None = Field(
        10.0,
        gt=0,
        le=1e6,
        description="Clip the (normalised) scores to +-clip (OpenRLHF's reward_clip_range 10); null: no clipping.",
    )
    truncation_penalty: float = Field(
        0.0,
        ge=0,
        le=1e6,
        description="Subtracted from the score of a response that reached maxNewTokens without EOS, "
        "before normalisation (TRL's missing_eos_penalty); 0: none.",
    )


class PPOSpec(ApiModel):
    critic: CriticSpec = Field(
        default_factory=CriticSpec, description="The value model PPO trains beside the policy."
    )
    gamma: float = Field(1.0, gt=0, le=1, description="Discount of GAE (1: none, as OpenRLHF and veRL).")
    lam: float = Field(
        1.0,
        ge=0,
        le=1,
        description="GAE's lambda (1, as veRL and OpenRLHF: the score reaches every token of a long "
        "response; below 1 trades variance for the critic's bias).",
    )
    value_clip: float = Field(
        0.5,
        gt=0,
        le=1e6,
        description="How far a value may move from its rollout value per update (OpenRLHF 0.5).",
    )
    reward_shaping: RewardShapingSpec = Field(
        default_factory=RewardShapingSpec, description="What is done to the scores before PPO optimises them."
    )
