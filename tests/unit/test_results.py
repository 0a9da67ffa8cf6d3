"""Reading the stage pods' termination messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from rlhf_operator.api.v1alpha1 import Artifacts, StageName
from rlhf_operator.config import OperatorConfig
from rlhf_operator.results import failure_message, stage_result
from tests.support.builders import pod

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def test_results_merge_shards_and_failures_prefer_counted_ones() -> None:
    a = pod(StageName.PRECOMPUTE, "Succeeded", json.dumps({"artifacts": {"responses": "s3://b/m.json"}}))
    assert stage_result([a]).artifacts == Artifacts(responses="s3://b/m.json")
    drained = pod(StageName.POLICY, "Failed", "node drained", exit_code=137, at="2026-11-24T11:00:02Z",
                  conditions=[{"type": "DisruptionTarget", "status": "True"}])  # fmt: skip
    crash = pod(StageName.POLICY, "Failed", "Traceback: boom", exit_code=1, at="2026-11-24T11:00:01Z")
    assert failure_message([drained, crash]) == "Completed (exit code 1): Traceback: boom"


def test_shards_get_one_message_but_a_torchrun_run_keeps_rank_zeros() -> None:
    """Precompute shards each report; the pods of one multi-node training run have one result
    (global rank 0 writes it, node 1's termination message is empty)."""
    shards = [
        pod(StageName.PRECOMPUTE, "Succeeded", {"message": f"Generated shard {i}."}, name=f"s{i}", index=i)
        for i in range(2)
    ]
    assert stage_result(shards).message == "All 2 shards succeeded."
    trained = {"metrics": {"policyStep": 30}, "message": "Trained the policy for 30 steps."}
    nodes = [
        pod(StageName.POLICY, "Succeeded", trained, name="n0"),
        pod(StageName.POLICY, "Succeeded", name="n1", index=1),
    ]
    result = stage_result(nodes)
    assert result.message == "Trained the policy for 30 steps." and result.metrics.policy_step == 30
