"""Events: one per stage transition and per change of the job's outcome."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rlhf_operator.api.v1alpha1 import Phase, RLHFJobStatus, StageName, StageState, StageStatus
from rlhf_operator.pipeline.events import phase_events, stage_events

WHEN = datetime(2026, 11, 24, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("before", "after", "started", "reasons"),
    [
        (None, StageState.RUNNING, True, ["StageStarted"]),
        (None, StageState.RUNNING, False, []),  # not started yet (e.g. dependency check pending)
        (StageState.RUNNING, StageState.RUNNING, True, []),
        (StageState.RUNNING, StageState.SUCCEEDED, True, ["StageSucceeded"]),
        (StageState.RUNNING, StageState.FAILED, True, ["StageFailed"]),
        (None, StageState.SKIPPED, False, []),
    ],
)
def test_stage_events(
    before: StageState | None, after: StageState, started: bool, reasons: list[str]
) -> None:
    previous = {} if before is None else {"policy": StageStatus(name=StageName.POLICY, state=before)}
    record = StageStatus(
        name=StageName.POLICY, state=after, start_time=WHEN if started else None, message="m"
    )
    assert [e.reason for e in stage_events(previous, [record])] == reasons


@pytest.mark.parametrize(
    ("before", "after", "reasons"),
    [
        (Phase.RUNNING, Phase.SUCCEEDED, [("Normal", "JobSucceeded")]),
        (Phase.RUNNING, Phase.FAILED, [("Warning", "JobFailed")]),
        (Phase.RUNNING, Phase.SUSPENDED, [("Normal", "Suspended")]),
        (Phase.SUSPENDED, Phase.RUNNING, [("Normal", "Resumed")]),
        (Phase.SUSPENDED, Phase.FAILED, [("Warning", "JobFailed"), ("Normal", "Resumed")]),
        (Phase.RUNNING, Phase.RUNNING, []),
        (None, Phase.RUNNING, []),
    ],
)
def test_phase_events(before: Phase | None, after: Phase, reasons: list[tuple[str, str]]) -> None:
    events = phase_events(RLHFJobStatus(phase=before), RLHFJobStatus(phase=after, message="m"))
    assert [(e.type, e.reason) for e in events] == reasons
