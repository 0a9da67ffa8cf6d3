"""A multi-node stage restarts as a group: one pod's failure replaces the whole Job, counted against
the stage's pod.backoffLimit, with the reason on the RLHFJob."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.children import JobIdentity, stage_job
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline import reconcile
from rlhf_operator.plan import Observed
from tests.support.builders import TOKEN, finished_job, pod, rlhfjob

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()
DONE = {name: finished_job() for name in ("tiny-precompute", "tiny-ranking", "tiny-reward-model")}


def two_nodes(**pod_settings: Any) -> Any:
    return rlhfjob(stages={"policy": {"nodes": 2, "distributed": {"strategy": "fsdp"}, "pod": pod_settings}})


def test_the_group_job_never_retries_one_pod() -> None:
    identity = JobIdentity("ml", "tiny", "u-1")
    group = stage_job(identity, two_nodes().spec, StageName.POLICY, CONFIG)["spec"]
    assert group["backoffLimit"] == 0 and group["completionMode"] == "Indexed"
    rules = group["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["FailJob", "FailJob"]  # exit 78, and a disruption
    single = stage_job(identity, rlhfjob().spec, StageName.POLICY, CONFIG)["spec"]
    assert single["backoffLimit"] == 3 and [r["action"] for r in single["podFailurePolicy"]["rules"]] == [
        "FailJob",
        "Ignore",
    ]


def failed_group(uid: str, exit_code: int = 1, disrupted: bool = False) -> Observed:
    conditions = [{"type": "DisruptionTarget", "status": "True"}] if disrupted else []
    error = json.dumps({"error": "NCCL watchdog: a peer is gone", "reason": "RuntimeError"})
    job = finished_job("Failed", failed=1)
    job["metadata"] = {"uid": uid}
    return Observed(
        jobs={**DONE, "tiny-policy": job},
        pods=(
            pod(StageName.POLICY, "Failed", error, exit_code, name="p-1", index=1, conditions=conditions),
            pod(StageName.POLICY, "Failed", "", 143, name="p-0", index=0),
        ),
        missing=(),
    )


def policy(plan: Any) -> dict[str, Any]:
    record: dict[str, Any] = next(s for s in plan.status["stages"] if s["name"] == "policy")
    return record


def test_a_failed_pod_restarts_the_whole_group_from_the_checkpoint() -> None:
    job = two_nodes()
    plan = reconcile(job, {}, failed_group("job-a"), CONFIG, NOW, new_token=TOKEN)
    record = policy(plan)
    assert record["state"] == "Running" and record["restarts"] == 1 and record["restartedJobUid"] == "job-a"
    assert record["message"].startswith(
        "Restarting all 2 pods from the newest checkpoint (restart 1 of 3): pod 1"
    )
    assert "NCCL watchdog: a peer is gone" in record["message"]
    assert plan.delete == [("Job", "tiny-policy")] and plan.create == []
    assert [(e.type, e.reason) for e in plan.events if e.reason == "GroupRestart"] == [
        ("Warning", "GroupRestart")
    ]
    assert plan.status["phase"] == "Running"

    # The same failed Job seen again before its deletion shows: deleted again, not counted again.
    again = reconcile(job, plan.status, failed_group("job-a"), CONFIG, NOW, new_token=TOKEN)
    assert policy(again)["restarts"] == 1 and again.delete == [("Job", "tiny-policy")]
    assert not [e for e in again.events if e.reason == "GroupRestart"]

    # While it goes (foreground deletion: its pods first), nothing is created.
    going = failed_group("job-a")
    going.jobs["tiny-policy"]["metadata"]["deletionTimestamp"] = "2026-11-24T12:00:01Z"
    waiting = reconcile(job, again.status, going, CONFIG, NOW, new_token=TOKEN)
    assert waiting.create == [] and policy(waiting)["message"].startswith("Restarting all 2 pods")

    # Gone: the same Job is created anew; its pods resume from the newest checkpoint by themselves.
    gone = Observed(jobs=dict(DONE), missing=(), config_maps=frozenset({"tiny-policy-config"}))
    recreated = reconcile(job, waiting.status, gone, CONFIG, NOW, new_token=TOKEN)
    assert [m["metadata"]["name"] for m in recreated.create if m["kind"] == "Job"] == ["tiny-policy"]
    assert policy(recreated)["restarts"] == 1 and policy(recreated)["state"] == "Running"


def test_the_stage_fails_once_its_backoff_limit_of_restarts_is_spent() -> None:
    job = two_nodes(backoffLimit=1)
    first = reconcile(job, {}, failed_group("job-a"), CONFIG, NOW, new_token=TOKEN)
    assert policy(first)["restarts"] == 1
    second = reconcile(job, first.status, failed_group("job-b"), CONFIG, NOW, new_token=TOKEN)
    record = policy(second)
    assert record["state"] == "Failed" and second.status["phase"] == "Failed"
    assert "restarted 1 time(s) before, its pod.backoffLimit" in record["message"], record
    assert "NCCL watchdog" in record["message"] and second.delete == []


def test_bad_configuration_fails_at_once_and_a_disruption_is_not_counted() -> None:
    job = two_nodes()
    config_error = reconcile(job, {}, failed_group("job-a", exit_code=78), CONFIG, NOW, new_token=TOKEN)
    assert policy(config_error)["state"] == "Failed" and "restarts" not in policy(config_error)
    drained = reconcile(
        job, {}, failed_group("job-a", exit_code=143, disrupted=True), CONFIG, NOW, new_token=TOKEN
    )
    record = policy(drained)
    assert (
        record["state"] == "Running"
        and record["restarts"] == 0
        and "a disruption, not counted" in record["message"]
    )


def test_a_single_pod_stage_is_left_to_its_job() -> None:
    observed = failed_group("job-a")
    plan = reconcile(rlhfjob(), {}, observed, CONFIG, NOW, new_token=TOKEN)
    assert policy(plan)["state"] == "Failed" and plan.delete == []
