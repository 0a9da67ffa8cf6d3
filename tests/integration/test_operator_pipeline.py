"""The operator takes RLHFJobs through their stages on the real local cluster (kwok plays the pods)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from tests.conftest import Kube
from tests.integration.operator_harness import (
    SIM,
    apply,
    children,
    create_pvc,
    rlhfjob,
    set_stage_annotations,
    stage_record,
    status,
    wait_phase,
)

NODE_GROUP_OF_STAGE = {
    "precompute": "cpu",
    "ranking": "cpu",
    "reward-model": "reward-gpu",
    "policy": "policy-gpu",
    "evaluation": "cpu",
}


def test_job_runs_every_stage_on_its_node_group_and_reports_metrics(cluster: Kube, op_namespace: str) -> None:
    create_pvc(cluster, op_namespace)
    apply(cluster, rlhfjob("full", op_namespace))
    final = wait_phase(cluster, op_namespace, "full", "Succeeded")

    assert [s["state"] for s in final["stages"]] == ["Succeeded"] * 5
    assert final["metrics"] == {
        "rewardModelAccuracy": 0.95, "meanReward": 7.5, "kl": 3.25, "policyStep": 30, "policyTotalSteps": 30,
        "winRate": 0.875, "rewardGain": 2.5,
    }  # fmt: skip
    assert final["artifacts"]["rankings"] == "/data/x/ranking/pairs.jsonl"
    conditions = {c["type"]: c["status"] for c in final["conditions"]}
    # The example's gate (minWinRate 0.8) is met by the simulated 0.875.
    assert conditions == {"Running": "False", "Suspended": "False", "Succeeded": "True", "Failed": "False",
                          "Waiting": "False", "Promoted": "True"}  # fmt: skip
    assert final["observedGeneration"] == 1

    pods = children(cluster, op_namespace, "pods")
    assert len(pods) == 6  # two precompute shards and one pod per other stage
    for pod in pods:
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        node = cluster.get_json("node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] == NODE_GROUP_OF_STAGE[component]

    row = cluster.kubectl("get", "rlhfjobs", "-n", op_namespace, "--no-headers").stdout.split()
    assert row[:6] == ["full", "evaluation", "Succeeded", "7.5", "3.25", "0.875"]
    events = cluster.kubectl(
        "get", "events", "-n", op_namespace, "--field-selector", "reason=StageSucceeded"
    ).stdout
    assert events.count("StageSucceeded") == 5


def test_configuration_error_fails_the_job_at_once_with_the_pod_message(
    cluster: Kube, op_namespace: str
) -> None:
    create_pvc(cluster, op_namespace)
    job = rlhfjob("badrows", op_namespace)
    error = {"error": "row 3 of rankings.jsonl has a tie; rank the responses strictly", "reason": "BadInput"}
    set_stage_annotations(
        job,
        "ranking",
        {f"{SIM}/outcome": "fail", f"{SIM}/exit-code": "78", f"{SIM}/message": json.dumps(error)},
    )
    apply(cluster, job)
    final = wait_phase(cluster, op_namespace, "badrows", "Failed")

    assert "row 3 of rankings.jsonl has a tie" in final["message"]
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "PodFailurePolicy" in failed["message"]
    assert stage_record(final, "ranking")["attempts"] == 1
    assert [s["state"] for s in final["stages"]] == ["Succeeded", "Failed", "Pending", "Pending", "Pending"]


def test_ordinary_failure_is_retried_up_to_the_backoff_limit(cluster: Kube, op_namespace: str) -> None:
    create_pvc(cluster, op_namespace)
    job = rlhfjob("flaky", op_namespace)
    set_stage_annotations(job, "precompute", {f"{SIM}/outcome": "fail", f"{SIM}/exit-code": "1"})
    job["spec"]["stages"]["precompute"]["shards"] = 1
    job["spec"]["stages"]["precompute"]["pod"]["backoffLimit"] = 1
    apply(cluster, job)
    final = wait_phase(cluster, op_namespace, "flaky", "Failed", timeout=120)

    record = stage_record(final, "precompute")
    assert record["attempts"] == 2
    assert "BackoffLimitExceeded" in record["message"]


def test_disruptions_do_not_count_against_the_backoff_limit(cluster: Kube, op_namespace: str) -> None:
    create_pvc(cluster, op_namespace)
    job = rlhfjob("spot", op_namespace)
    set_stage_annotations(job, "precompute", {f"{SIM}/outcome": "fail", f"{SIM}/disruption": "true"})
    job["spec"]["stages"]["precompute"]["shards"] = 1
    job["spec"]["stages"]["precompute"]["pod"]["backoffLimit"] = 0
    apply(cluster, job)

    cluster.wait_for(
        lambda: len(children(cluster, op_namespace, "pods")) >= 2, timeout=60, what="a replacement pod"
    )
    current = status(cluster, op_namespace, "spot")
    assert current["phase"] == "Running"
    assert stage_record(current, "precompute")["state"] == "Running"
    [precompute] = children(cluster, op_namespace, "jobs")
    assert precompute["status"].get("failed", 0) == 0


def test_missing_volume_claim_leaves_the_job_waiting_until_it_exists(
    cluster: Kube, op_namespace: str
) -> None:
    apply(cluster, rlhfjob("early", op_namespace))
    waiting = wait_phase(cluster, op_namespace, "early", "Pending", timeout=30)
    condition = next(c for c in waiting["conditions"] if c["type"] == "Waiting")
    assert condition["status"] == "True"
    assert "PersistentVolumeClaim rlhf-data does not exist" in condition["message"]
    assert children(cluster, op_namespace, "jobs") == []

    create_pvc(cluster, op_namespace)
    wait_phase(cluster, op_namespace, "early", "Succeeded")


def test_a_child_the_api_server_refuses_fails_the_job_once_with_its_reason(
    cluster: Kube, op_namespace: str
) -> None:
    create_pvc(cluster, op_namespace)
    job = rlhfjob("refused", op_namespace)
    set_stage_annotations(job, "precompute", {"not a valid key!": "x"})
    apply(cluster, job)
    failed = wait_phase(cluster, op_namespace, "refused", "Failed", timeout=10)
    condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "RequestRefused"
    assert "refused to create Job refused-precompute (422)" in condition["message"]
    assert "not a valid key!" in condition["message"]
    warnings = cluster.get_json("events", "-n", op_namespace, "--field-selector", "reason=RequestRefused")
    assert len(warnings["items"]) == 1 and warnings["items"][0]["type"] == "Warning"
    assert children(cluster, op_namespace, "jobs") == []


def test_a_stage_no_node_can_take_waits_with_the_schedulers_reason_until_one_joins(
    cluster: Kube, op_namespace: str
) -> None:
    from localcluster import NodeGroup, load_shape, node_manifests

    group = f"xl-{op_namespace[-6:]}"  # a node group no node has yet
    create_pvc(cluster, op_namespace)
    apply(cluster, rlhfjob("xl", op_namespace, spec={"stages": {"policy": {"pod": {"nodeGroup": group}}}}))

    def unschedulable() -> dict[str, Any] | None:
        current = status(cluster, op_namespace, "xl")
        waiting: dict[str, Any] = next(
            (c for c in current.get("conditions", []) if c["type"] == "Waiting"), {}
        )
        return current if waiting.get("reason") == "Unschedulable" else None

    waiting = cluster.wait_for(unschedulable, timeout=30, what="Waiting/Unschedulable")
    assert waiting["phase"] == "Pending" and waiting["currentStage"] == "policy"
    assert "didn't match Pod's node affinity/selector" in waiting["message"], waiting["message"]

    shape = load_shape()
    node = node_manifests(
        replace(shape, node_groups=[NodeGroup(group, 1, "p4d.24xlarge", "96", "1152Gi", 8, "A100")])
    )[0]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
    try:
        final = wait_phase(cluster, op_namespace, "xl", "Succeeded")
        waiting_now = next(c for c in final["conditions"] if c["type"] == "Waiting")
        assert waiting_now["status"] == "False"
    finally:
        cluster.kubectl("delete", "node", node["metadata"]["name"], "--wait=false", check=False)


def test_concurrent_jobs_do_not_interfere_and_deleting_one_keeps_the_other(
    cluster: Kube, op_namespace: str
) -> None:
    create_pvc(cluster, op_namespace)
    slow = {f"{SIM}/run-duration": "30s"}
    for name in ("alpha", "beta", "gamma"):
        job = rlhfjob(name, op_namespace)
        if name == "gamma":
            set_stage_annotations(job, "precompute", slow)
        apply(cluster, job)
    for name in ("alpha", "beta"):
        wait_phase(cluster, op_namespace, name, "Succeeded")
    owners = {
        j["metadata"]["labels"]["rlhf-operator.dev/job-name"] for j in children(cluster, op_namespace, "jobs")
    }
    assert owners == {"alpha", "beta", "gamma"}

    cluster.kubectl("delete", "rlhfjob", "alpha", "-n", op_namespace)

    def alpha_gone() -> bool:
        names = [j["metadata"]["name"] for j in children(cluster, op_namespace, "jobs")]
        return not any(n.startswith("alpha-") for n in names)

    cluster.wait_for(alpha_gone, timeout=60, what="garbage collection of alpha's children")
    remaining = {
        j["metadata"]["labels"]["rlhf-operator.dev/job-name"] for j in children(cluster, op_namespace, "jobs")
    }
    assert remaining == {"beta", "gamma"}
    assert (
        len([j for j in children(cluster, op_namespace, "jobs") if j["metadata"]["name"].startswith("beta-")])
        == 5
    )


def test_artifact_retention_delete_cleans_up_before_the_job_goes(cluster: Kube, op_namespace: str) -> None:
    create_pvc(cluster, op_namespace)
    job = rlhfjob("ephemeral", op_namespace, spec={"artifactRetention": "Delete"})
    set_stage_annotations(job, "evaluation", {f"{SIM}/run-duration": "3s"})
    apply(cluster, job)
    wait_phase(cluster, op_namespace, "ephemeral", "Succeeded")
    stored = cluster.get_json("rlhfjob", "ephemeral", "-n", op_namespace)
    assert "rlhf-operator.dev/artifact-cleanup" in stored["metadata"]["finalizers"]

    cluster.kubectl("delete", "rlhfjob", "ephemeral", "-n", op_namespace, "--wait=false")
    cleanup = cluster.wait_for(
        lambda: next((j for j in children(cluster, op_namespace, "jobs") if j["metadata"]["name"] == "ephemeral-cleanup"),
                     None),
        what="the cleanup Job",
    )  # fmt: skip
    command = cleanup["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == [
        "cleanup-artifacts",
        f"/data/rlhf-jobs/{op_namespace}/ephemeral/{stored['metadata']['uid']}",
    ]
    gone = cluster.kubectl(
        "wait", "--for=delete", "rlhfjob/ephemeral", "-n", op_namespace, "--timeout=60s", check=False
    )
    assert gone.returncode == 0, gone.stderr
    reasons = cluster.kubectl(
        "get", "events", "-n", op_namespace, "-o", "jsonpath={.items[*].reason}"
    ).stdout.split()
    assert "ArtifactsDeleted" in reasons


def test_retained_artifacts_need_no_finalizer(cluster: Kube, op_namespace: str) -> None:
    create_pvc(cluster, op_namespace)
    apply(cluster, rlhfjob("kept", op_namespace))
    wait_phase(cluster, op_namespace, "kept", "Succeeded")
    assert not cluster.get_json("rlhfjob", "kept", "-n", op_namespace)["metadata"].get("finalizers")
    cluster.kubectl("delete", "rlhfjob", "kept", "-n", op_namespace, "--timeout=30s")
