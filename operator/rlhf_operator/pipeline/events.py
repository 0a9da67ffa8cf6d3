"""Kubernetes Events for what changed in one pass: stage transitions, a wait someone must end, and
the job's outcome."""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import (
    ConditionStatus,
    ConditionType,
    Phase,
    RLHFJobStatus,
    StageState,
    StageStatus,
)
from rlhf_operator.plan import Event


def stage_events(previous: dict[str, StageStatus], records: list[StageStatus]) -> list[Event]:
    events = []
    for record in records:
        before = previous.get(record.name.value)
        if before is not None and before.state is record.state:
            continue
        name = record.name.value
        if record.state is StageState.RUNNING and record.start_time:
            events.append(Event("Normal", "StageStarted", f"Stage {name} started."))
        elif record.state is StageState.SUCCEEDED:
            events.append(Event("Normal", "StageSucceeded", f"Stage {name} succeeded."))
        elif record.state is StageState.FAILED:
            events.append(Event("Warning", "StageFailed", f"Stage {name} failed: {record.message or ''}"))
    return events


#: Waiting reasons that need someone to act (not just time): one Warning event when they start.
ACTION_NEEDED = frozenset({"SecretNotAllowed"})


def waiting_events(old: RLHFJobStatus, new: RLHFJobStatus) -> list[Event]:
    """One Warning event when the job starts waiting for a reason a person must fix."""
    before = next((c for c in old.conditions if c.type == ConditionType.WAITING.value), None)
    after = next((c for c in new.conditions if c.type == ConditionType.WAITING.value), None)
    if after is None or after.status is not ConditionStatus.TRUE or after.reason not in ACTION_NEEDED:
        return []
    if before is not None and before.status is ConditionStatus.TRUE and before.reason == after.reason:
        return []
    return [Event("Warning", after.reason, after.message)]


def phase_events(old: RLHFJobStatus, new: RLHFJobStatus) -> list[Event]:
    before, after = old.phase, new.phase
    if before is after or after is None:
        return []
    message = new.message or ""
    events = []
    if after in (Phase.SUCCEEDED, Phase.FAILED):
        events.append(
            Event("Normal" if after is Phase.SUCCEEDED else "Warning", f"Job{after.value}", message)
        )
    if Phase.SUSPENDED in (before, after):
        events.append(Event("Normal", "Suspended" if after is Phase.SUSPENDED else "Resumed", message))
    return events


def memory_fit_events(old: RLHFJobStatus, new: RLHFJobStatus) -> list[Event]:
    """A Warning when the memory estimate becomes Unknown (the model's shape could not be read)."""
    kind = ConditionType.MEMORY_FIT.value
    before = next((c for c in old.conditions if c.type == kind), None)
    after = next((c for c in new.conditions if c.type == kind), None)
    if after is None or after.status is not ConditionStatus.UNKNOWN:
        return []
    if before is not None and before.status is after.status and before.reason == after.reason:
        return []
    return [Event("Warning", after.reason, after.message)]
