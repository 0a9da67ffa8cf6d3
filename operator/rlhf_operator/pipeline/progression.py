"""Stage progression: each stage waits for the ones before it, starts its Job, and takes its result.

A stage's terminal state (Succeeded, Failed, Skipped) is kept in status once reached: a finished
child that is later deleted does not run again, while a running stage whose child disappears gets
it recreated.
"""

from __future__ import annotations

from rlhf_operator.api import artifacts
from rlhf_operator.api.v1alpha1 import PIPELINE_STAGES, StageName, StageState, StageStatus
from rlhf_operator.children import Manifest, headless_service, stage_job
from rlhf_operator.guardrails import GUARDRAIL_TRIPPED, Trip, check_progress
from rlhf_operator.naming import child_name
from rlhf_operator.pipeline.context import PlanningPass, parse_time, updated
from rlhf_operator.pipeline.ensure import ensure_config, ensure_service
from rlhf_operator.pipeline.fit import Refusal
from rlhf_operator.pipeline.group_restart import group_restart, restarting
from rlhf_operator.pipeline.labels import awaited_labels
from rlhf_operator.pipeline.reward_server import reward_server_endpoint_if_ready
from rlhf_operator.pipeline.status import queued_message
from rlhf_operator.plan import Event
from rlhf_operator.results import failure_message, outcomes_readable, stage_failure, stage_result
from rlhf_operator.stages import STAGES, pod_settings, skip_reason
from rlhf_operator.usage import stage_usage

DONE = {StageState.SUCCEEDED, StageState.SKIPPED}
FINISHED = {StageState.SUCCEEDED, StageState.FAILED}
#: How long a finished stage waits for its pods' results to be in view before it is recorded
#: without them (pods deleted by hand or by a TTL are gone for good).
RESULT_WAIT_SECONDS = 120.0


def job_finished(child: Manifest) -> tuple[str, Manifest] | None:
    """("Complete" | "Failed", the condition) of a finished batch/v1 Job, else None."""
    for condition in (child.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], condition
    return None


def _attempts(child: Manifest) -> int:
    status = child.get("status") or {}
    return int(status.get("failed") or 0) + int(status.get("succeeded") or 0) + int(status.get("active") or 0)


def stage_records(ctx: PlanningPass) -> list[StageStatus]:
    """One record per pipeline stage, in order, advancing the first stage that is not done."""
    records = []
    blocked = False  # an earlier stage is not done
    refusal = _refusal(ctx)
    for stage in PIPELINE_STAGES:
        previous = ctx.previous.get(stage.value)
        record = previous.model_copy(deep=True) if previous else StageStatus(name=stage)
        reason = skip_reason(ctx.spec, stage)
        if reason is not None:
            record.state, record.message = StageState.SKIPPED, reason
        elif record.state in FINISHED:
            pass
        elif refusal is not None:
            _refuse(ctx, stage, record, refusal)
        elif blocked:
            record.state = StageState.PENDING
        else:
            _advance(ctx, stage, record)
        if record.state not in DONE:
            blocked = True
        records.append(record)
    return records


def _refusal(ctx: PlanningPass) -> Refusal | None:
    """A training stage that cannot fit its GPUs, found before any Job of the pipeline runs:
    nothing starts that a later stage cannot finish, and once refused the earlier stages stay
    unstarted."""
    refusal = ctx.fit.refusal()
    if refusal is None:
        return None
    before = ctx.previous.get(refusal.stage.value)
    refused = before is not None and before.state is StageState.FAILED
    if (before is not None and before.state is StageState.SUCCEEDED) or (ctx.observed.jobs and not refused):
        return None
    return refusal


def _refuse(ctx: PlanningPass, stage: StageName, record: StageStatus, refusal: Refusal) -> None:
    if stage is refusal.stage:
        record.state, record.message = StageState.FAILED, f"{refusal.reason}: {refusal.message}"
        ctx.plan.events.append(Event("Warning", refusal.reason, refusal.message))
    else:
        record.state = StageState.PENDING
        record.message = f"Not started: stage {refusal.stage.value} was refused ({refusal.reason})."


def _advance(ctx: PlanningPass, stage: StageName, record: StageStatus) -> None:
    name = child_name(ctx.identity.name, stage)
    child = ctx.observed.jobs.get(name)
    record.children = _children_of(ctx, stage)
    if child is None:
        _start(ctx, stage, record)
        return
    status = child.get("status") or {}
    if status.get("startTime"):
        # The Job's clock, not the operator's: after a restart the record may hold the time the
        # operator first planned the stage, which can be later than the Job's own completion.
        record.start_time = parse_time(status["startTime"])
    elif record.start_time is None:
        record.start_time = ctx.now
    record.attempts = max(_attempts(child), record.attempts or 0)
    record.usage = stage_usage(
        ctx.observed.pods_of(stage),
        pod_settings(ctx.spec, stage).resources.gpus,
        ctx.config.gpu_hour_price(STAGES[stage].role),
        record.usage,
        ctx.now,
    )
    if restarting(ctx, stage, record, child):
        return
    finished = job_finished(child)
    if finished is None:
        _keep_suspension(ctx, child, name)
        suspended = bool((child.get("spec") or {}).get("suspend"))
        record.state, record.message = StageState.RUNNING, "Suspended." if suspended else "Running."
        if suspended and ctx.spec.queue_name and not ctx.spec.suspend:
            record.message = queued_message(ctx.spec.queue_name)
        if stage is StageName.RANKING and not suspended:
            record.message = awaited_labels(ctx.spec, record) or record.message
        if stage is StageName.POLICY and ctx.observed.progress:
            ctx.metrics = updated(ctx.metrics, ctx.observed.progress.metrics())
            trip = check_progress(ctx.spec.stages.policy.guardrails, ctx.observed.progress_history)
            if trip is not None:
                _stop_tripped(ctx, name, record, trip)
        return
    kind, condition = finished
    end = status.get("completionTime") or condition.get("lastTransitionTime")
    completed = parse_time(end) if end else ctx.now
    pods = ctx.observed.pods_of(stage)
    if (
        not outcomes_readable(kind, status, pods)
        and (ctx.now - completed).total_seconds() < RESULT_WAIT_SECONDS
    ):
        # The Job finished but its pods are not in view yet (e.g. the operator just restarted and
        # its pod watch is still listing): a finished stage is never read again, so wait for them.
        record.state, record.message = StageState.RUNNING, "Finished; reading its result."
        return
    record.completion_time = completed
    if kind == "Complete":
        _succeeded(ctx, stage, record, pods)
    elif (failure := stage_failure(pods)) is not None and failure.reason == GUARDRAIL_TRIPPED:
        # The trainer stopped itself: its sentence is the message, its checkpoint the artifact.
        record.state, record.message = StageState.FAILED, f"{GUARDRAIL_TRIPPED}: {failure.error}"
        if failure.artifacts is not None:
            ctx.artifacts = updated(ctx.artifacts, failure.artifacts)
    elif group_restart(ctx, stage, record, child, pods):
        record.completion_time = None
    else:
        detail = failure_message(pods)
        reason = condition.get("reason") or "Failed"
        text = condition.get("message") or "the stage's Job failed"
        record.state = StageState.FAILED
        record.message = f"{reason}: {text.rstrip('.')}." + (f" Last pod: {detail}" if detail else "")
        if record.restarts:
            record.message += (
                f" The group was restarted {record.restarts} time(s) before, its pod.backoffLimit."
            )


def _stop_tripped(ctx: PlanningPass, name: str, record: StageStatus, trip: Trip) -> None:
    """A guardrail tripped in the progress the operator read before the trainer stopped: the Job
    goes (its pods with it) and the stage fails; the trainer's checkpoints stay where they are."""
    checkpoints = artifacts.policy_checkpoints_dir(ctx.root)
    record.state, record.completion_time = StageState.FAILED, ctx.now
    record.message = (
        f"{trip.status_message()} (seen by the operator; the stage was stopped). Its checkpoints are "
        f"under {checkpoints}; those of steps before {trip.step} predate the trip."
    )
    ctx.plan.delete.append(("Job", name))
    ctx.plan.events.append(Event("Warning", GUARDRAIL_TRIPPED, trip.message))


def _succeeded(ctx: PlanningPass, stage: StageName, record: StageStatus, pods: list[Manifest]) -> None:
    result = stage_result(pods)
    ctx.metrics = updated(ctx.metrics, result.metrics)
    ctx.artifacts = updated(ctx.artifacts, result.artifacts)
    definition = STAGES[stage]
    # Where the output is when the pod reported none, so an older value is not kept by mistake.
    field = definition.artifact_field
    if field and definition.default_artifact and getattr(ctx.artifacts, field) is None:
        setattr(ctx.artifacts, field, definition.default_artifact(ctx.root))
    record.state, record.message = StageState.SUCCEEDED, result.message or "Succeeded."


def _start(ctx: PlanningPass, stage: StageName, record: StageStatus) -> None:
    record.state = StageState.RUNNING
    if ctx.spec.suspend:
        record.message = "Suspended before it started."
        return
    if ctx.observed.missing is None:
        ctx.plan.check_dependencies = True
        record.message = "Starting."
        return
    if ctx.observed.blockers:
        record.state, record.message = (
            StageState.PENDING,
            "Waiting: " + "; ".join(ctx.observed.blockers) + ".",
        )
        return
    endpoint = None
    if stage is StageName.POLICY and ctx.spec.stages.policy.reward_placement == "remote":
        endpoint = reward_server_endpoint_if_ready(ctx)
        if endpoint is None:
            record.message = "Waiting for the reward server to be ready."
            return
    ensure_config(ctx, stage, endpoint)
    name = child_name(ctx.identity.name, stage)
    if STAGES[stage].job_shape(name, ctx.identity.namespace, ctx.spec).headless_service:
        ensure_service(ctx, headless_service(ctx.identity, stage))
    ctx.plan.create.append(
        stage_job(ctx.identity, ctx.spec, stage, ctx.config, suspend=bool(ctx.spec.queue_name))
    )
    if record.start_time is None:
        record.start_time = ctx.now
    record.children = _children_of(ctx, stage)
    # What the record will say once the new Job is seen, so seeing it costs no status write.
    record.message, record.attempts = "Running.", record.attempts or 0


def _children_of(ctx: PlanningPass, stage: StageName) -> list[str]:
    names = [child_name(ctx.identity.name, stage)]
    if stage is StageName.POLICY and ctx.spec.stages.policy.reward_placement == "remote":
        names.append(child_name(ctx.identity.name, StageName.REWARD_SERVER))
    return names


def _keep_suspension(ctx: PlanningPass, child: Manifest, name: str) -> None:
    current = bool((child.get("spec") or {}).get("suspend"))
    if ctx.spec.suspend and not current:
        ctx.plan.patch.append(("Job", name, {"spec": {"suspend": True}}))
    elif not ctx.spec.suspend and current and not ctx.spec.queue_name:
        # With a queue, Kueue decides when a suspended Job runs.
        ctx.plan.patch.append(("Job", name, {"spec": {"suspend": False}}))
