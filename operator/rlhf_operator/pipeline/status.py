"""The RLHFJob's status: phase, message and conditions, built as the `RLHFJobStatus` model."""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import (
    Artifacts,
    Condition,
    ConditionStatus,
    ConditionType,
    Metrics,
    Phase,
    RLHFJobStatus,
    StageName,
    StageState,
    StageStatus,
)
from rlhf_operator.gate import Verdict, verdict
from rlhf_operator.guardrails import GUARDRAIL_TRIPPED
from rlhf_operator.memory_estimate import GIB
from rlhf_operator.pipeline.context import PlanningPass
from rlhf_operator.pipeline.fit import FitReport
from rlhf_operator.pipeline.scheduling import unschedulable
from rlhf_operator.usage import total_usage

DONE = {StageState.SUCCEEDED, StageState.SKIPPED}
#: Conditions whose message stays when they are False (it says why).
_ALWAYS_SAID = (ConditionType.PROMOTED, ConditionType.MEMORY_FIT)
AWAITING_LABELS = "Stage ranking waits for human labels"
SECRET_NOT_ALLOWED = "SecretNotAllowed"
#: A stage's message while its Job waits, suspended, for Kueue to admit it (spec.queueName).
QUEUED = "Queued in Kueue"


def queued_message(queue: str) -> str:
    return (
        f"{QUEUED}: its Job waits for LocalQueue {queue} to admit it (its ClusterQueue's quota is in "
        "use or too small; `kubectl get workloads` says why)."
    )


def phase_and_message(ctx: PlanningPass, records: list[StageStatus]) -> tuple[Phase, str]:
    failed = next((r for r in records if r.state is StageState.FAILED), None)
    current = current_stage(records)
    if failed is not None:
        return Phase.FAILED, f"Stage {failed.name.value} failed: {failed.message or ''}"
    if all(r.state in DONE for r in records):
        promotion = promotion_verdict(ctx)
        return Phase.SUCCEEDED, _success_message(ctx.metrics) + (f" {promotion.message}" if promotion else "")
    if ctx.spec.suspend:
        return (
            Phase.SUSPENDED,
            f"Suspended during stage {current.value}; set spec.suspend to false to resume.",
        )
    if ctx.observed.blockers:
        return Phase.PENDING, f"Waiting before stage {current.value}: {'; '.join(ctx.observed.blockers)}."
    blocked = unschedulable(ctx.observed, current)
    if blocked is not None:
        return Phase.PENDING, f"Stage {current.value} waits for a node: {blocked.rstrip('.')}."
    started = any(r.start_time for r in records)
    record = next(r for r in records if r.name is current)
    if record.message and record.message.startswith(QUEUED):
        return Phase.PENDING, f"Stage {current.value} is queued: {record.message.removeprefix(QUEUED + ': ')}"
    if record.message and record.message.startswith("Waits until"):
        return Phase.RUNNING, f"{AWAITING_LABELS}: {record.message}"
    return Phase.RUNNING, f"Stage {current.value} is running." if started else "Starting."


def current_stage(records: list[StageStatus]) -> StageName:
    return next((r.name for r in records if r.state not in DONE), records[-1].name)


def _success_message(metrics: Metrics) -> str:
    if metrics.win_rate is not None:
        return f"Every stage succeeded; the policy wins {metrics.win_rate:.0%} of evaluation prompts over the base model."
    return "Every stage succeeded."


def promotion_verdict(ctx: PlanningPass) -> Verdict | None:
    """The evaluation gate's verdict on the metrics, when the spec sets a gate."""
    gate = ctx.spec.stages.evaluation.gate
    return verdict(gate, ctx.metrics) if gate is not None else None


def _failed_reason(records: list[StageStatus]) -> str:
    failed = next((r for r in records if r.state is StageState.FAILED), None)
    if failed is not None and (failed.message or "").startswith(f"{GUARDRAIL_TRIPPED}:"):
        return GUARDRAIL_TRIPPED
    return "StageFailed"


def build_status(ctx: PlanningPass, records: list[StageStatus]) -> RLHFJobStatus:
    phase, message = phase_and_message(ctx, records)
    starts = [r.start_time for r in records if r.start_time]
    finished = phase in (Phase.SUCCEEDED, Phase.FAILED)
    return RLHFJobStatus(
        observed_generation=ctx.generation,
        phase=phase,
        current_stage=current_stage(records),
        message=message,
        start_time=(ctx.old.start_time or min(starts)) if starts else None,
        completion_time=(ctx.old.completion_time or ctx.now) if finished else None,
        stages=records,
        metrics=ctx.metrics if ctx.metrics != Metrics() else None,
        artifacts=ctx.artifacts if ctx.artifacts != Artifacts() else None,
        conditions=conditions(ctx, phase, message, records),
        usage=total_usage(records),
    )


def _waiting_reason(ctx: PlanningPass, phase: Phase, message: str, current: StageName) -> str | None:
    if ctx.observed.refused:
        return SECRET_NOT_ALLOWED
    if ctx.observed.missing:
        return "DependencyMissing"
    if phase is Phase.PENDING and unschedulable(ctx.observed, current) is not None:
        return "Unschedulable"
    if phase is Phase.PENDING and message.startswith(f"Stage {current.value} is queued"):
        return "QueuedByKueue"
    if phase is Phase.RUNNING and message.startswith(AWAITING_LABELS):
        return "AwaitingHumanRankings"
    return None


def conditions(ctx: PlanningPass, phase: Phase, message: str, records: list[StageStatus]) -> list[Condition]:
    reason = _waiting_reason(ctx, phase, message, current_stage(records))
    waiting = reason is not None
    wanted: list[tuple[ConditionType, bool | None, str, str]] = [
        (ConditionType.RUNNING, phase is Phase.RUNNING, "StageRunning" if phase is Phase.RUNNING else phase.value,
         message),
        (ConditionType.SUSPENDED, phase is Phase.SUSPENDED,
         "SuspendedBySpec" if phase is Phase.SUSPENDED else "NotSuspended", message),
        (ConditionType.SUCCEEDED, phase is Phase.SUCCEEDED,
         "AllStagesSucceeded" if phase is Phase.SUCCEEDED else "NotFinished", message),
        (ConditionType.FAILED, phase is Phase.FAILED,
         _failed_reason(records) if phase is Phase.FAILED else "NoStageFailed", message),
        (ConditionType.WAITING, waiting, reason or "DependenciesPresent", message),
    ]  # fmt: skip
    promotion = promotion_verdict(ctx) if phase is Phase.SUCCEEDED else None
    if promotion is not None:
        # Only once the job succeeded: `kubectl wait --for=condition=Promoted` then returns at the end.
        wanted.append((ConditionType.PROMOTED, promotion.promoted, promotion.reason, promotion.message))
    fit = memory_fit(ctx)
    if fit is not None:
        wanted.append(fit)
    old = {c.type: c for c in ctx.old.conditions}
    out = []
    for kind, true, reason, text in wanted:
        status = (
            ConditionStatus.UNKNOWN
            if true is None
            else ConditionStatus.TRUE
            if true
            else ConditionStatus.FALSE
        )
        previous = old.get(kind.value)
        changed = previous is None or previous.status is not status
        out.append(
            Condition(
                type=kind.value,
                status=status,
                observed_generation=ctx.generation,
                last_transition_time=ctx.now
                if changed or previous is None
                else previous.last_transition_time,
                reason=reason,
                message=text if true is not False or kind in _ALWAYS_SAID else "",
            )
        )
    return out


def memory_fit(ctx: PlanningPass) -> tuple[ConditionType, bool | None, str, str] | None:
    """MemoryFit: True with the estimates, False when a stage was refused, Unknown when the model's
    shape could not be read; absent when nothing was checked (no GPU table, no memory limits)."""
    report = ctx.fit
    if report.problem is not None:
        refused = report.refusal() is not None
        return (
            ConditionType.MEMORY_FIT,
            False if refused else None,
            report.problem.reason,
            report.problem.message,
        )
    if not report.checked:
        return None
    refusal = report.refusal()
    if refusal is not None:
        return ConditionType.MEMORY_FIT, False, refusal.reason, refusal.message
    return ConditionType.MEMORY_FIT, True, "Fits", fit_summary(report)


def fit_summary(report: FitReport) -> str:
    def cap(value: float | None, unit: float = 1.0) -> str:
        return f" of {value / unit:.0f}" if value is not None else ""

    parts = [
        f"{s.section} {s.estimate.gib:.1f}{cap(s.gpu_gib)} GiB per GPU, "
        f"{s.estimate.host_per_node / GIB:.0f}{cap(s.host_bytes, GIB)} GiB host per pod"
        for s in report.stages
    ]
    origin = report.shape.origin if report.shape is not None else ""
    return f"Estimated {'; '.join(parts)} (model shape: {origin})."
