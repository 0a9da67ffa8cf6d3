"""`stages.policy.guardrails`: when a running policy stage is stopped because training went wrong."""

from __future__ import annotations

from pydantic import Field

from rlhf_operator.api.base import ApiModel

#: The defaults, also quoted in docs/api.md: loose enough for a healthy run, tight enough to stop a
#: blow-up before it burns hours.
DEFAULT_MAX_KL = 20.0
DEFAULT_KL_STEPS = 5
DEFAULT_REWARD_PATIENCE_STEPS = 100


class Guardrails(ApiModel):
    """Stops the policy stage when its progress shows a diverging run; on by default.

    Each bound is checked on every logged step by the trainer (it stops within one step) and by the
    operator on the progress it reads (for every algorithm). The stage then fails with reason
    GuardrailTripped, and the newest checkpoint from before the trip is the policy artifact.
    """

    enabled: bool = Field(True, description="Check the guardrails; false turns every one of them off.")
    max_kl: float | None = Field(
        DEFAULT_MAX_KL,
        gt=0,
        le=1_000_000,
        alias="maxKL",
        description="KL from the base model in nats per response (summed over its tokens, for every "
        "algorithm) that must not be exceeded for `klSteps` steps in a row; null turns it off.",
    )
    kl_steps: int = Field(
        DEFAULT_KL_STEPS, ge=1, le=100_000, description="Consecutive steps over `maxKL` that trip it."
    )
    stop_on_non_finite: bool = Field(
        True, description="Trip at the first step whose loss, reward or KL is NaN or infinite."
    )
    reward_patience_steps: int = Field(
        DEFAULT_REWARD_PATIENCE_STEPS,
        ge=0,
        le=1_000_000,
        description="Stall check: after this many steps without a new best mean reward, trip if the "
        "mean reward of the last this-many steps is no higher than that of the run's first this-many "
        "steps (a stall); a run that improved and levelled off (a plateau) goes on. 0 turns it off.",
    )
