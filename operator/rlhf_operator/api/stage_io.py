"""What crosses the pod boundary back to the operator: a stage's result, its failure, its progress
and its exit code.

Stage programs write these models (the result or failure to the termination message, progress as
log lines) and the operator reads them with the same models. Metrics and artifacts ARE the status
models' fields, so a misspelt metric fails where it is written instead of being pruned by the API
server from `status.metrics`. Everything the operator reads of a pod is defined here, so the
operator never imports the stage programs (`rlhf_operator.workloads`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from rlhf_operator.api.base import ApiModel
from rlhf_operator.api.v1alpha1 import CONDITION_REASON_PATTERN, Artifacts, Metrics

#: Exit codes of the stage programs; the operator maps them onto the Job's podFailurePolicy.
#: The stage finished and its artifacts are complete.
EX_OK: Final = 0
#: Any unexpected error (node loss, OOM, flaky storage): Kubernetes may retry the pod.
EX_RETRYABLE: Final = 1
#: sysexits.h EX_CONFIG: the configuration or the input data is wrong; retrying cannot help,
#: so the operator fails the stage at once (podFailurePolicy action FailJob).
EX_CONFIG: Final = 78

#: Before each progress record on a log line (the policy's stdout, read from the pod log tail).
PROGRESS_PREFIX: Final = "RLHF_PROGRESS "
#: Before the result echoed to stdout (the termination message holds the same text).
RESULT_PREFIX: Final = "RLHF_RESULT "


class StageResult(ApiModel):
    """A stage's success: written by the program, merged into `status.metrics` and `status.artifacts`."""

    metrics: Metrics = Field(default_factory=Metrics, description="Metrics the stage measured.")
    artifacts: Artifacts = Field(default_factory=Artifacts, description="Where the stage wrote its output.")
    message: str | None = Field(None, max_length=2048, description="One-line summary for the stage's status.")


class StageFailure(ApiModel):
    """A stage's failure, shown in the stage's status and the RLHFJob's Failed condition."""

    error: str = Field(min_length=1, max_length=3500, description="What went wrong and how to fix it.")
    reason: str | None = Field(
        None, max_length=128, pattern=CONDITION_REASON_PATTERN, description="CamelCase reason."
    )
    artifacts: Artifacts | None = Field(
        None, description="What the failed stage leaves usable (a guardrail's pre-trip checkpoint)."
    )


class ProgressRecord(ApiModel):
    """One logged step of a running policy, printed after `PROGRESS_PREFIX` on one log line."""

    model_config = ConfigDict(frozen=True)

    step: int = Field(ge=0, description="Optimisation steps done.")
    total_steps: int = Field(ge=0, description="Optimisation steps planned.")
    mean_reward: float | None = Field(None, description="Mean reward of the step; null when not finite.")
    kl: float | None = Field(None, description="KL divergence from the reference policy.")
    kl_coef: float | None = Field(None, description="Adaptive KL coefficient (PPO).")
    seconds: float | None = Field(None, ge=0, description="Wall time of the step.")
    response_length: float | None = Field(None, ge=0, description="Mean response length in tokens.")
    loss: float | None = Field(None, description="Training loss of the step; null when not finite.")
    # PPO's diagnostics (issue 20): what an RLHF user reads to tell a learning run from a stuck one.
    approx_kl: float | None = Field(None, description="0.5 x mean squared log-ratio of the update (PPO).")
    entropy: float | None = Field(
        None, description="Mean per-token entropy of the sampling distribution, nats."
    )
    explained_variance: float | None = Field(
        None, description="1 - Var(returns - values) / Var(returns) of the critic (veRL's formula)."
    )
    policy_grad_norm: float | None = Field(None, description="The policy's gradient norm before clipping.")
    critic_grad_norm: float | None = Field(None, description="The critic's gradient norm before clipping.")
    clip_fraction: float | None = Field(
        None, ge=0, le=1, description="Share of tokens whose ratio was clipped."
    )
    value_clip_fraction: float | None = Field(
        None, ge=0, le=1, description="Share of tokens whose value update was clipped."
    )
    truncation_rate: float | None = Field(
        None, ge=0, le=1, description="Share of responses that reached maxNewTokens without EOS."
    )
    shaped_reward: float | None = Field(
        None, description="Mean score after the truncation penalty, normalisation and clipping."
    )
    non_finite: list[str] | None = Field(
        None, description="The fields of the step that were NaN or infinite (written as null)."
    )

    @model_validator(mode="before")
    @classmethod
    def _note_non_finite(cls, data: Any) -> Any:
        # JSON has no NaN: a diverged value is written as null and named here, so the reader tells
        # "not finite" (a guardrail trips) from "not reported".
        if not isinstance(data, dict):
            return data
        bad = [k for k, v in data.items() if isinstance(v, float) and not math.isfinite(v)]
        if not bad:
            return data
        named = sorted({*(data.get("nonFinite") or data.get("non_finite") or []), *map(_camel, bad)})
        return {**data, "nonFinite": named}

    @field_validator(
        "mean_reward", "kl", "kl_coef", "seconds", "response_length", "loss", "approx_kl", "entropy",
        "explained_variance", "policy_grad_norm", "critic_grad_norm", "clip_fraction",
        "value_clip_fraction", "truncation_rate", "shaped_reward", mode="before",
    )  # fmt: skip
    @classmethod
    def _finite_or_null(cls, value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    def metrics(self) -> Metrics:
        """The status metrics this record updates."""
        return Metrics(
            policy_step=self.step,
            policy_total_steps=self.total_steps,
            mean_reward=self.mean_reward,
            kl=self.kl,
            entropy=self.entropy,
            approx_kl=self.approx_kl,
            clip_fraction=self.clip_fraction,
            explained_variance=self.explained_variance,
            response_length=self.response_length,
            truncation_rate=self.truncation_rate,
        )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def dump(model: StageResult | StageFailure | ProgressRecord) -> str:
    """Compact camelCase JSON without unset fields."""
    return model.model_dump_json(by_alias=True, exclude_none=True)


def parse_json(text: str) -> dict[str, Any] | None:
    """The JSON object in a termination message, or None when it is plain text (e.g. a log tail)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def merge_results(results: list[StageResult]) -> StageResult:
    """Later results win field by field (the shards of one stage, the stages of one job)."""
    metrics: dict[str, Any] = {}
    artifacts: dict[str, Any] = {}
    message = None
    for result in results:
        metrics.update(result.metrics.model_dump(exclude_none=True))
        artifacts.update(result.artifacts.model_dump(exclude_none=True))
        message = result.message or message
    return StageResult(metrics=Metrics(**metrics), artifacts=Artifacts(**artifacts), message=message)


def format_progress(step: int, total_steps: int, mean_reward: float, kl: float, **extra: float) -> str:
    """One progress line (without newline); `extra` are more ProgressRecord fields (camelCase)."""
    record = ProgressRecord.model_validate(
        {"step": step, "totalSteps": total_steps, "meanReward": mean_reward, "kl": kl, **extra}
    )
    return PROGRESS_PREFIX + dump(record)


def parse_progress(line: str) -> ProgressRecord | None:
    """The progress record in a log line, or None when the line is not a (valid) progress line.

    Tolerates a timestamp or other text before the prefix (kubectl logs --timestamps).
    """
    index = line.find(PROGRESS_PREFIX)
    if index < 0:
        return None
    try:
        return ProgressRecord.model_validate_json(line[index + len(PROGRESS_PREFIX) :].strip())
    except ValidationError:
        return None


def progress_records(log_tail: str) -> tuple[ProgressRecord, ...]:
    """Every progress record in a chunk of log text, oldest first."""
    return tuple(r for r in map(parse_progress, log_tail.splitlines()) if r is not None)


def last_progress(log_tail: str) -> ProgressRecord | None:
    """The newest progress record in a chunk of log text."""
    for line in reversed(log_tail.splitlines()):
        record = parse_progress(line)
        if record is not None:
            return record
    return None
