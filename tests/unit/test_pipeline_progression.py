"""Stage progression: dependencies first, one stage after the other, results into status."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline import reconcile
from rlhf_operator.plan import Observed
from tests.support.builders import TOKEN, finished_job, pod, rlhfjob

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def test_first_reconcile_asks_for_a_dependency_check_then_creates_precompute() -> None:
    job = rlhfjob()
    plan = reconcile(job, {}, Observed(), CONFIG, NOW, new_token=TOKEN)
    assert plan.check_dependencies and plan.create == []
    plan = reconcile(job, {}, Observed(missing=()), CONFIG, NOW, new_token=TOKEN)
    kinds = [(m["kind"], m["metadata"]["name"]) for m in plan.create]
    assert kinds == [
        ("NetworkPolicy", "tiny-network"),  # before the first pod
        ("ConfigMap", "tiny-precompute-config"),
        ("Job", "tiny-precompute"),
    ]
    assert plan.status["phase"] == "Running" and plan.status["currentStage"] == "precompute"
    assert [e.reason for e in plan.events] == ["StageStarted"]


def test_missing_dependency_waits_with_a_condition_naming_it() -> None:
    plan = reconcile(
        rlhfjob(),
        {},
        Observed(missing=("PersistentVolumeClaim rlhf-data does not exist",)),
        CONFIG,
        NOW,
        new_token=TOKEN,
    )
    assert plan.create == []
    waiting = next(c for c in plan.status["conditions"] if c["type"] == "Waiting")
    assert waiting["status"] == "True" and "rlhf-data" in waiting["message"]
    assert plan.status["phase"] == "Pending"
    stage = next(s for s in plan.status["stages"] if s["name"] == "precompute")
    assert stage["message"] == "Waiting: PersistentVolumeClaim rlhf-data does not exist.", stage


def test_finished_stage_feeds_metrics_and_starts_the_next() -> None:
    job = rlhfjob()
    status = reconcile(job, {}, Observed(missing=()), CONFIG, NOW, new_token=TOKEN).status
    result = json.dumps({"metrics": {"rewardModelAccuracy": 0.9}, "message": "Trained."})
    observed = Observed(
        jobs={
            "tiny-precompute": finished_job(),
            "tiny-ranking": finished_job(),
            "tiny-reward-model": finished_job(),
        },
        pods=(pod(StageName.REWARD_MODEL, "Succeeded", result),),
        network_policies=frozenset({"tiny-network"}),
        missing=(),
    )
    plan = reconcile(job, status, observed, CONFIG, NOW, new_token=TOKEN)
    assert plan.status["metrics"] == {"rewardModelAccuracy": 0.9}
    assert [m["metadata"]["name"] for m in plan.create] == ["tiny-policy-config", "tiny-policy"]
    assert plan.status["currentStage"] == "policy"
    assert [e.reason for e in plan.events].count("StageSucceeded") == 3


def test_failed_stage_fails_the_job_with_the_pod_message() -> None:
    error = json.dumps({"error": "the model path /data/m does not exist", "reason": "BadModel"})
    observed = Observed(
        jobs={"tiny-precompute": finished_job("Failed", failed=1)},
        pods=(pod(StageName.PRECOMPUTE, "Failed", error, exit_code=78),),
        missing=(),
    )
    plan = reconcile(rlhfjob(), {}, observed, CONFIG, NOW, new_token=TOKEN)
    assert plan.status["phase"] == "Failed"
    assert "the model path /data/m does not exist" in plan.status["message"]
    assert "BadModel (exit code 78)" in plan.status["message"]
    assert plan.create == []


def test_terminal_stage_states_are_kept_when_children_disappear() -> None:
    job = rlhfjob()
    done = {"stages": [{"name": "precompute", "state": "Succeeded", "children": []}]}
    plan = reconcile(job, done, Observed(missing=()), CONFIG, NOW, new_token=TOKEN)
    # Every child is gone, the NetworkPolicy too: it comes back before the next stage's pods.
    assert [m["metadata"]["name"] for m in plan.create] == [
        "tiny-network",
        "tiny-ranking-config",
        "tiny-ranking",
    ]


def test_suspend_patches_the_running_job_and_resume_respects_kueue() -> None:
    running = {"tiny-precompute": {"spec": {"suspend": False}, "status": {"active": 2}}}
    plan = reconcile(
        rlhfjob(suspend=True), {}, Observed(jobs=running, missing=()), CONFIG, NOW, new_token=TOKEN
    )
    assert plan.patch == [("Job", "tiny-precompute", {"spec": {"suspend": True}})]
    assert plan.status["phase"] == "Suspended"
    suspended = {"tiny-precompute": {"spec": {"suspend": True}, "status": {}}}
    assert reconcile(
        rlhfjob(), {}, Observed(jobs=suspended, missing=()), CONFIG, NOW, new_token=TOKEN
    ).patch == [("Job", "tiny-precompute", {"spec": {"suspend": False}})]
    assert (
        reconcile(
            rlhfjob(queueName="q"), {}, Observed(jobs=suspended, missing=()), CONFIG, NOW, new_token=TOKEN
        ).patch
        == []
    )


def _ranking_done(
    pods: tuple[dict[str, Any], ...], now: datetime, kind: str = "Complete", **job_status: Any
) -> dict[str, Any]:
    stored = {"stages": [{"name": "precompute", "state": "Succeeded"},
                         {"name": "ranking", "state": "Running", "startTime": "2026-11-24T11:59:59Z"}]}  # fmt: skip
    jobs = {"tiny-ranking": finished_job(kind, startTime="2026-11-24T10:59:00Z", completionTime="2026-11-24T11:00:00Z",
                                         **job_status)}  # fmt: skip
    plan = reconcile(
        rlhfjob(), stored, Observed(jobs=jobs, pods=pods, missing=()), CONFIG, now, new_token=TOKEN
    )
    return next(s for s in plan.status["stages"] if s["name"] == "ranking")


def test_a_finished_stage_waits_for_its_pods_result_instead_of_losing_it() -> None:
    result = {"artifacts": {"rankings": "/data/r.jsonl"}, "message": "Ranking produced 40 pairs."}
    done = pod("ranking", "Succeeded", result)
    soon = datetime(2026, 11, 24, 11, 0, 30, tzinfo=UTC)
    # After an operator restart the Complete Job can be seen before its pod: the result is not lost.
    waiting = _ranking_done((), soon, succeeded=1)
    assert (waiting["state"], waiting["message"]) == ("Running", "Finished; reading its result.")
    read = _ranking_done((done,), soon, succeeded=1)
    assert (read["state"], read["message"]) == ("Succeeded", "Ranking produced 40 pairs.")
    # The times are the Job's: the record's later start (the operator's clock) is replaced.
    assert (read["startTime"], read["completionTime"]) == ("2026-11-24T10:59:00Z", "2026-11-24T11:00:00Z")
    # Pods deleted for good: after the wait the stage is recorded without them.
    gone = _ranking_done((), datetime(2026, 11, 24, 11, 5, tzinfo=UTC), succeeded=1)
    assert gone["state"] == "Succeeded"


def test_a_failed_stage_waits_for_its_failed_pod_to_say_why() -> None:
    failed = pod("ranking", "Failed", {"error": "row 4 is a tie", "reason": "TiedRanking"}, exit_code=78)
    soon = datetime(2026, 11, 24, 11, 0, 30, tzinfo=UTC)
    assert _ranking_done((), soon, "Failed", failed=1)["state"] == "Running"
    record = _ranking_done((failed,), soon, "Failed", failed=1)
    assert record["state"] == "Failed" and "TiedRanking (exit code 78): row 4 is a tie" in record["message"]
