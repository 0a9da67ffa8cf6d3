"""The RLHFJob's status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from rlhf_operator.api.base import ApiModel
from rlhf_operator.api.v1alpha1.common import CONDITION_REASON_PATTERN, CONDITION_TYPE_PATTERN, Location
from rlhf_operator.api.v1alpha1.enums import ConditionStatus, Phase, StageName, StageState
from rlhf_operator.api.v1alpha1.usage import GpuUsage


class Condition(ApiModel):
    """The Kubernetes metav1.Condition."""

    type: str = Field(
        max_length=316, pattern=CONDITION_TYPE_PATTERN, description="Condition type, e.g. Succeeded."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(None, ge=0, description="Generation the condition was set for.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="CamelCase reason of the status.",
    )
    message: str = Field(max_length=32_768, description="Human-readable details.")


class StageStatus(ApiModel):
    name: StageName = Field(description="Stage name.")
    state: StageState | None = Field(None, description="Pending, Running, Succeeded, Failed or Skipped.")
    start_time: datetime | None = Field(None, description="When the stage started.")
    completion_time: datetime | None = Field(None, description="When the stage finished.")
    attempts: int | None = Field(None, ge=0, description="Pods started for the stage, retries included.")
    restarts: int | None = Field(
        None,
        ge=0,
        description="Times the pods of a multi-node stage were restarted together after one failed "
        "(counted against its pod.backoffLimit; disruptions are not counted).",
    )
    restarted_job_uid: str | None = Field(
        None, max_length=64, description="UID of the Job the latest group restart replaced."
    )
    children: list[Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=list, max_length=16, description="Kubernetes objects created for the stage."
    )
    message: str | None = Field(None, max_length=32_768, description="Human-readable details.")
    usage: GpuUsage | None = Field(None, description="GPU time of the stage's pods, running ones included.")


class Metrics(ApiModel):
    reward_model_accuracy: float | None = Field(None, description="Reward-model accuracy on held-out pairs.")
    reward_model_truncated_pairs: int | None = Field(
        None,
        ge=0,
        description="Preference pairs whose prompt lost tokens from the left to fit rewardModel.maxLength.",
    )
    reward_model_dropped_pairs: int | None = Field(
        None,
        ge=0,
        description="Preference pairs left out of reward-model training: a response alone is longer than rewardModel.maxLength.",
    )
    dpo_truncated_pairs: int | None = Field(
        None,
        ge=0,
        description="Preference pairs whose prompt lost tokens from the left to fit policy.maxLength (dpo).",
    )
    dpo_dropped_pairs: int | None = Field(
        None,
        ge=0,
        description="Preference pairs left out of dpo training: a response alone is longer than policy.maxLength.",
    )
    policy_step: int | None = Field(None, ge=0, description="Policy optimisation steps done.")
    policy_total_steps: int | None = Field(None, ge=0, description="Policy optimisation steps planned.")
    mean_reward: float | None = Field(None, description="Mean reward of the latest policy step.")
    kl: float | None = Field(
        None,
        description="KL divergence of the policy from the base model at the latest policy step, in nats "
        "per response (summed over its tokens).",
    )
    # PPO's diagnostics of the latest step (issue 20; the progress line's, docs/ppo.md).
    entropy: float | None = Field(None, description="Mean per-token entropy of the policy's samples, nats.")
    approx_kl: float | None = Field(None, description="0.5 x mean squared log-ratio of the latest update.")
    clip_fraction: float | None = Field(
        None, ge=0, le=1, description="Share of tokens whose ratio was clipped."
    )
    explained_variance: float | None = Field(
        None, description="How much of the returns' variance the critic's values explain (1 is all)."
    )
    response_length: float | None = Field(None, ge=0, description="Mean response length in tokens.")
    truncation_rate: float | None = Field(
        None, ge=0, le=1, description="Share of responses that reached maxNewTokens without EOS."
    )
    evaluation_kl: float | None = Field(
        None,
        alias="evaluationKL",
        description="KL divergence of the policy from the base model on the evaluation prompts, in nats "
        "per response.",
    )
    win_rate: float | None = Field(
        None, description="Share of evaluation prompts where the policy beats the base model."
    )
    reward_gain: float | None = Field(
        None,
        description="Mean evaluation reward of the policy minus that of the base model (reward-model units; a ratio is meaningless for scores that can be negative).",
    )
    base_reward: float | None = Field(None, description="Mean evaluation reward of the base model.")
    policy_reward: float | None = Field(None, description="Mean evaluation reward of the policy.")


class Artifacts(ApiModel):
    responses: Location | None = Field(None, description="Generated responses (precompute).")
    rankings: Location | None = Field(None, description="Preference pairs (ranking).")
    reward_model: Location | None = Field(None, description="Trained reward model directory.")
    policy: Location | None = Field(None, description="Trained policy model directory.")
    evaluation_report: Location | None = Field(None, description="Evaluation report (JSON).")
    evaluation_plot: Location | None = Field(None, description="Reward distribution plot (PNG).")
    promoted_policy: Location | None = Field(
        None, description="Copy of the policy that met the evaluation gate (under promoted/)."
    )
    promoted_policy_digest: str | None = Field(
        None,
        max_length=71,
        pattern="^sha256:[a-f0-9]{64}$",
        description="Content digest of the promoted policy: SHA-256 over each file's path and SHA-256 "
        "(workloads/lineage.py tree_digest); deploy only a copy that hashes the same.",
    )


class RLHFJobStatus(ApiModel):
    observed_generation: int | None = Field(None, ge=0, description="Generation of the spec last acted upon.")
    phase: Phase | None = Field(None, description="Pending, Running, Suspended, Succeeded or Failed.")
    current_stage: StageName | None = Field(None, description="Stage running now, or the last one run.")
    message: str | None = Field(None, max_length=32_768, description="Human-readable summary.")
    start_time: datetime | None = Field(None, description="When the first stage started.")
    completion_time: datetime | None = Field(None, description="When the job succeeded or failed.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Running, Suspended, Succeeded, Failed, Waiting and (with an evaluation gate) Promoted conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    stages: list[StageStatus] = Field(
        default_factory=list,
        max_length=len(StageName),
        description="One record per stage.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    metrics: Metrics | None = Field(None, description="Training and evaluation metrics.")
    artifacts: Artifacts | None = Field(None, description="Where the artifacts were written.")
    usage: GpuUsage | None = Field(None, description="GPU time of every stage together.")
