"""Stage progression: dependencies first, one stage after the other, results into status."""

from __future__ import annotations

import json
from datetime import UTC, datetime

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
    assert kinds == [("ConfigMap", "tiny-precompute-config"), ("Job", "tiny-precompute")]
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
    assert [m["metadata"]["name"] for m in plan.create] == ["tiny-ranking-config", "tiny-ranking"]


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
