"""Status: the phase, message and conditions of an RLHFJob for each combination of stage states."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline import reconcile
from rlhf_operator.plan import Observed
from tests.support.builders import TOKEN, rlhfjob

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
STAGES = ("precompute", "ranking", "rewardModel", "policy", "evaluation")


def stored(*states: str, **extra: Any) -> dict[str, Any]:
    records = [
        {"name": n, "state": s, "startTime": "2026-11-24T11:00:00Z"}
        for n, s in zip(STAGES, states, strict=False)
    ]
    return {"stages": records, **extra}


SUCCEEDED = ("Succeeded",) * 5
CASES = [
    # (case, spec, stored status, missing, phase, current stage, message contains, true conditions)
    ("all done", {}, stored(*SUCCEEDED, metrics={"winRate": 0.75}), (), "Succeeded", "evaluation", "wins 75%", {"Succeeded"}),
    ("one failed", {}, stored("Succeeded", "Failed"), (), "Failed", "ranking", "Stage ranking failed", {"Failed"}),
    ("suspended", {"suspend": True}, stored("Succeeded", "Running"), (), "Suspended", "ranking", "spec.suspend", {"Suspended"}),
    ("waiting", {}, {}, ("Secret s3 does not exist",), "Pending", "precompute", "Secret s3", {"Waiting"}),
    ("running", {}, stored("Succeeded", "Running"), (), "Running", "ranking", "Stage ranking is running", {"Running"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "status", "missing", "phase", "current", "text", "true"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_phase_message_and_conditions(  # noqa: PLR0917 - pytest parameters
    spec: dict[str, Any],
    status: dict[str, Any],
    missing: tuple[str, ...],
    phase: str,
    current: str,
    text: str,
    true: set[str],
) -> None:
    jobs = {"tiny-ranking": {"spec": {"suspend": bool(spec.get("suspend"))}, "status": {"active": 1}}}
    new = reconcile(
        rlhfjob(**spec), status, Observed(jobs=jobs, missing=missing), OperatorConfig(), NOW, new_token=TOKEN
    ).status
    assert (new["phase"], new["currentStage"]) == (phase, current)
    assert text in new["message"]
    assert {c["type"] for c in new["conditions"] if c["status"] == "True"} == true
    assert all(c["observedGeneration"] == 1 for c in new["conditions"])


def test_condition_transition_time_moves_only_when_its_status_changes() -> None:
    job = rlhfjob()
    jobs: dict[str, dict[str, Any]] = {"tiny-ranking": {"spec": {}, "status": {"active": 1}}}
    first = reconcile(
        job,
        stored("Succeeded", "Running"),
        Observed(jobs=jobs, missing=()),
        OperatorConfig(),
        NOW,
        new_token=TOKEN,
    )
    later = datetime(2026, 11, 24, 13, tzinfo=UTC)
    again = reconcile(
        job, first.status, Observed(jobs=jobs, missing=()), OperatorConfig(), later, new_token=TOKEN
    )
    assert again.status == first.status and not again.status_changed
    jobs["tiny-ranking"]["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    }
    failed = reconcile(
        job, first.status, Observed(jobs=jobs, missing=()), OperatorConfig(), later, new_token=TOKEN
    )
    times = {c["type"]: c["lastTransitionTime"] for c in failed.status["conditions"]}
    assert times["Failed"] == times["Running"] == "2026-11-24T13:00:00Z"
    assert times["Suspended"] == "2026-11-24T12:00:00Z"


def test_status_is_built_as_the_model_and_dumped_by_alias() -> None:
    from rlhf_operator.api.v1alpha1 import RLHFJobStatus

    new = reconcile(rlhfjob(), {}, Observed(missing=()), OperatorConfig(), NOW, new_token=TOKEN).status
    assert RLHFJobStatus.model_validate(new).model_dump(mode="json", by_alias=True, exclude_none=True) == new
    assert new["startTime"] == "2026-11-24T12:00:00Z" and "observedGeneration" in new


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
}


@pytest.mark.parametrize(
    ("pod_conditions", "phase", "waiting_reason"),
    [
        ([UNSCHEDULABLE], "Pending", "Unschedulable"),
        ([{**UNSCHEDULABLE, "reason": "SchedulingGated"}], "Running", "DependenciesPresent"),
        ([], "Running", "DependenciesPresent"),  # scheduled: the wait clears
    ],
)
def test_a_stage_whose_pod_cannot_be_scheduled_waits_with_the_schedulers_message(
    pod_conditions: list[dict[str, Any]], phase: str, waiting_reason: str
) -> None:
    from tests.support.builders import pod

    jobs = {"tiny-policy": {"spec": {"suspend": False}, "status": {"active": 1}}}
    pending = pod("policy", "Pending", name="tiny-policy-0-x", conditions=pod_conditions)
    status = stored("Succeeded", "Succeeded", "Succeeded", "Running")
    observed = Observed(jobs=jobs, pods=(pending,), missing=())
    new = reconcile(rlhfjob(), status, observed, OperatorConfig(), NOW, new_token=TOKEN).status
    waiting = next(c for c in new["conditions"] if c["type"] == "Waiting")
    assert (new["phase"], waiting["reason"]) == (phase, waiting_reason)
    if phase == "Pending":
        assert new["message"] == (
            "Stage policy waits for a node: pod tiny-policy-0-x cannot be scheduled: "
            "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
        )
        assert waiting["status"] == "True" and "Insufficient nvidia.com/gpu" in waiting["message"]


def test_a_human_ranking_stage_says_what_file_it_waits_for_and_until_when() -> None:
    human = {
        "method": "human",
        "rule": None,
        "human": {"source": "/data/labels/export.json", "waitTimeoutSeconds": 86400},
    }
    jobs = {
        "tiny-ranking": {
            "spec": {"suspend": False},
            "status": {"active": 1, "startTime": "2026-11-24T11:00:00Z"},
        }
    }
    status = stored("Succeeded", "Running")
    job = rlhfjob(stages={"ranking": human})
    new = reconcile(
        job, status, Observed(jobs=jobs, missing=()), OperatorConfig(), NOW, new_token=TOKEN
    ).status
    expected = (
        "Waits until 2026-11-25T11:00:00Z for the human rankings at /data/labels/export.json "
        "(Label Studio's JSON export or JSONL), then reads them."
    )
    assert new["stages"][1]["message"] == expected
    assert new["phase"] == "Running" and new["message"] == f"Stage ranking waits for human labels: {expected}"
    waiting = next(c for c in new["conditions"] if c["type"] == "Waiting")
    assert (waiting["status"], waiting["reason"]) == ("True", "AwaitingHumanRankings")


@pytest.mark.parametrize(
    ("suspend_job", "suspend_spec", "phase", "reason"),
    [
        (True, False, "Pending", "QueuedByKueue"),  # Kueue holds the Job suspended
        (False, False, "Running", "DependenciesPresent"),  # admitted: the wait clears
        (True, True, "Suspended", "DependenciesPresent"),  # the user suspended it, not Kueue
    ],
)
def test_a_stage_queued_in_kueue_says_which_queue_it_waits_for(
    suspend_job: bool, suspend_spec: bool, phase: str, reason: str
) -> None:
    from tests.support.builders import running_job

    jobs = {"tiny-reward-model": running_job(suspend=suspend_job, active=0)}
    status = stored("Succeeded", "Succeeded", "Running")
    job = rlhfjob(queueName="team-gpus", suspend=suspend_spec)
    new = reconcile(
        job, status, Observed(jobs=jobs, missing=()), OperatorConfig(), NOW, new_token=TOKEN
    ).status
    waiting = next(c for c in new["conditions"] if c["type"] == "Waiting")
    assert (new["phase"], waiting["reason"]) == (phase, reason)
    if reason == "QueuedByKueue":
        assert new["message"].startswith(
            "Stage rewardModel is queued: its Job waits for LocalQueue team-gpus"
        )
        assert waiting["status"] == "True" and "LocalQueue team-gpus" in waiting["message"]
        assert new["stages"][2]["message"].startswith(
            "Queued in Kueue: its Job waits for LocalQueue team-gpus"
        )
