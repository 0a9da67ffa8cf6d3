"""The pipeline acts on guardrails, the evaluation gate and GPU time (pure reconciles)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from rlhf_operator.api.stage_io import ProgressRecord
from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline import reconcile
from rlhf_operator.plan import Manifest, Observed
from tests.support.builders import TOKEN, finished_job, pod, rlhfjob, running_job

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
BEFORE_POLICY = ("precompute", "ranking", "rewardModel")
DONE_BEFORE_POLICY = [{"name": n, "state": "Succeeded"} for n in BEFORE_POLICY]


def _policy_running(records: list[ProgressRecord], **spec: Any) -> tuple[Manifest, Any]:
    stored = {"stages": [*DONE_BEFORE_POLICY, {"name": "policy", "state": "Running"}]}
    observed = Observed(
        jobs={"tiny-policy": running_job()}, missing=(), progress=records[-1], progress_history=tuple(records)
    )
    plan = reconcile(rlhfjob(**spec), stored, observed, OperatorConfig(), NOW, new_token=TOKEN)
    return plan.status, plan


def _steps(*kls: float) -> list[ProgressRecord]:
    return [ProgressRecord(step=i, total_steps=30, mean_reward=1.0, kl=kl) for i, kl in enumerate(kls, 1)]


def test_the_operator_stops_a_policy_whose_progress_trips_a_guardrail() -> None:
    guard = {"stages": {"policy": {"guardrails": {"maxKL": 20, "klSteps": 2}}}}
    status, plan = _policy_running(_steps(5, 25, 30), **guard)
    assert status["phase"] == "Failed"
    policy = next(s for s in status["stages"] if s["name"] == "policy")
    assert policy["message"].startswith("GuardrailTripped: KL 30 > maxKL 20 for 2 steps at step 3")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "GuardrailTripped"
    assert ("Job", "tiny-policy") in plan.delete
    assert "GuardrailTripped" in [e.reason for e in plan.events]
    assert [s["state"] for s in status["stages"]][-1] == "Pending"  # evaluation never runs

    status, plan = _policy_running(_steps(5, 25, 3), **guard)
    assert status["phase"] == "Running" and plan.delete == []
    status, plan = _policy_running(_steps(25, 30, 35), stages={"policy": {"guardrails": {"enabled": False}}})
    assert status["phase"] == "Running"


def test_a_trainer_that_tripped_leaves_its_checkpoint_as_the_policy_artifact() -> None:
    stored = {"stages": [*DONE_BEFORE_POLICY, {"name": "policy", "state": "Running"}]}
    failure = {
        "error": "KL 41.2 > maxKL 20 for 5 steps at step 180. The checkpoint of step 160 (...) is kept.",
        "reason": "GuardrailTripped",
        "artifacts": {"policy": "/data/x/policy/checkpoints/step-0000160"},
    }
    observed = Observed(
        jobs={"tiny-policy": finished_job("Failed", failed=1)},
        pods=(pod(StageName.POLICY, "Failed", failure, 78),),
        missing=(),
    )
    status = reconcile(rlhfjob(), stored, observed, OperatorConfig(), NOW, new_token=TOKEN).status
    assert status["phase"] == "Failed"
    assert (
        "Stage policy failed: GuardrailTripped: KL 41.2 > maxKL 20 for 5 steps at step 180"
        in status["message"]
    )
    assert status["artifacts"]["policy"] == "/data/x/policy/checkpoints/step-0000160"
    assert next(c for c in status["conditions"] if c["type"] == "Failed")["reason"] == "GuardrailTripped"


def _evaluated(win_rate: float, **spec: Any) -> Manifest:
    stored = {"stages": [*DONE_BEFORE_POLICY, {"name": "policy", "state": "Succeeded"},
                         {"name": "evaluation", "state": "Running"}]}  # fmt: skip
    result = {
        "metrics": {"winRate": win_rate, "rewardGain": 1.5, "evaluationKL": 4.0},
        "message": "Evaluated.",
    }
    observed = Observed(
        jobs={"tiny-evaluation": finished_job()},
        pods=(pod(StageName.EVALUATION, "Succeeded", json.dumps(result)),),
        missing=(),
    )
    return reconcile(rlhfjob(**spec), stored, observed, OperatorConfig(), NOW, new_token=TOKEN).status


def test_the_gate_sets_promoted_true_or_false_with_the_numbers() -> None:
    gate = {"stages": {"evaluation": {"gate": {"minWinRate": 0.9, "maxKL": 5}}}}
    status = _evaluated(0.95, **gate)
    promoted = next(c for c in status["conditions"] if c["type"] == "Promoted")
    assert status["phase"] == "Succeeded"
    assert (promoted["status"], promoted["reason"]) == ("True", "GateMet")
    assert promoted["message"] == "Promoted: win rate 0.95 meets >= 0.9; KL 4 meets <= 5."
    status = _evaluated(0.85, **gate)
    promoted = next(c for c in status["conditions"] if c["type"] == "Promoted")
    assert status["phase"] == "Succeeded" and (promoted["status"], promoted["reason"]) == (
        "False",
        "GateNotMet",
    )
    assert "win rate 0.85 misses >= 0.9" in promoted["message"] and "Not promoted" in status["message"]
    no_gate = _evaluated(0.95, stages={"evaluation": {"gate": None}})
    assert "Promoted" not in {c["type"] for c in no_gate["conditions"]}


def test_gpu_seconds_per_stage_and_in_total_from_the_pods() -> None:
    def timed(stage: StageName, start: str, end: str, name: str) -> Manifest:
        finished = pod(stage, "Succeeded", "{}", name=name)
        terminated = finished["status"]["containerStatuses"][0]["state"]["terminated"]
        terminated.update(startedAt=start, finishedAt=end)
        return finished

    stored = {"stages": [*DONE_BEFORE_POLICY[:2], {"name": "rewardModel", "state": "Running"}]}
    observed = Observed(
        jobs={"tiny-reward-model": finished_job()},
        pods=(
            timed(StageName.REWARD_MODEL, "2026-11-24T11:00:00Z", "2026-11-24T11:20:00Z", "rm-1"),
            timed(StageName.REWARD_MODEL, "2026-11-24T10:00:00Z", "2026-11-24T10:00:30Z", "rm-0"),
        ),
        missing=(),
    )
    config = OperatorConfig(
        node_group_instance_types={"reward-gpu": "g5.2xlarge"}, gpu_hour_prices={"g5.2xlarge": 1.2}
    )
    job = rlhfjob(stages={"rewardModel": {"pod": {"resources": {"gpus": 2}}}})
    status = reconcile(job, stored, observed, config, NOW, new_token=TOKEN).status
    record = next(s for s in status["stages"] if s["name"] == "rewardModel")
    assert record["state"] == "Succeeded"
    assert record["usage"] == {"gpuSeconds": 2 * 1230, "gpuHours": 0.683, "estimatedCost": 0.82}
    assert status["usage"] == record["usage"]
    assert "usage" not in next(s for s in status["stages"] if s["name"] == "ranking")
