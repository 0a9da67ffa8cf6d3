"""`stages.evaluation.gate`: the bar a trained policy must meet to be promoted."""

from __future__ import annotations

from pydantic import Field

from rlhf_operator.api.base import ApiModel, CelRule


class EvaluationGate(ApiModel):
    """Every bar that is set must be met; the job then has the condition Promoted=True and the policy
    is copied under `promoted/` in the artifacts. A policy that misses one is not promoted
    (Promoted=False); the job still succeeds."""

    cel_rules = (
        CelRule(
            "has(self.minWinRate) || has(self.minRewardGain) || has(self.maxKL)",
            "a gate must set at least one of `minWinRate`, `minRewardGain` or `maxKL`",
            lambda g: g.min_win_rate is not None or g.min_reward_gain is not None or g.max_kl is not None,
        ),
    )

    min_win_rate: float | None = Field(
        None, ge=0, le=1, description="Lowest evaluation win rate of the policy over the base model."
    )
    min_reward_gain: float | None = Field(
        None,
        ge=-1_000_000,
        le=1_000_000,
        description="Lowest mean evaluation reward of the policy minus the base model's (reward-model units).",
    )
    max_kl: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        alias="maxKL",
        description="Highest KL of the policy from the base model on the evaluation prompts (nats per "
        "response, as `metrics.evaluationKL`).",
    )
