"""The trainers' side of the guardrails: check each step, and stop with the pre-trip checkpoint.

A trip exits like a configuration error (EX_CONFIG, no retry: the same run would diverge again)
with reason GuardrailTripped; the newest complete checkpoint saved before the tripping step is
reported as the policy artifact.
"""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import Artifacts
from rlhf_operator.guardrails import GUARDRAIL_TRIPPED, Trip
from rlhf_operator.workloads.errors import StageConfigError

FIXES = {
    "maxKL": "Lower the learning rate or raise klCoef.",
    "stopOnNonFinite": "Check that the reward model (or server) gives finite scores, and lower the learning rate.",
    "rewardPatienceSteps": "The reward is no better than at the start: check the reward (or its "
    "model's accuracy) and the learning rate.",
}


class GuardrailTrippedError(StageConfigError):
    def __init__(self, trip: Trip, checkpoint: tuple[int, str] | None) -> None:
        if checkpoint is None:
            kept = "No checkpoint was saved before it (set stages.policy.checkpointInterval)."
        else:
            kept = f"The checkpoint of step {checkpoint[0]} ({checkpoint[1]}) is kept as the policy artifact."
        fix = FIXES.get(trip.guardrail, "") + " Or loosen stages.policy.guardrails."
        super().__init__(
            f"{trip.message}. {kept} {fix}",
            GUARDRAIL_TRIPPED,
            Artifacts(policy=checkpoint[1]) if checkpoint else None,
        )
        self.trip = trip


def newest_before(steps: list[int], step: int) -> int | None:
    """The newest checkpoint step strictly before `step` (the tripping step's weights are not kept)."""
    earlier = [s for s in steps if s < step]
    return max(earlier) if earlier else None
