"""The local cluster behaves as EKS node groups under Kubernetes' own scheduler and controllers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localcluster import LocalCluster
from tests.conftest import Kube

SIM = "sim.rlhf-operator.dev"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def job_manifest(
    name: str,
    namespace: str,
    *,
    node_group: str = "policy-gpu",
    gpus: int = 0,
    tolerate_gpu: bool = True,
    annotations: dict[str, str] | None = None,
    **job_spec: Any,
) -> str:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": {"eks.amazonaws.com/nodegroup": node_group},
        "containers": [{"name": "main", "image": "registry.invalid/trainer:test"}],
    }
    if tolerate_gpu:
        pod_spec["tolerations"] = [GPU_TOLERATION]
    if gpus:
        pod_spec["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            **job_spec,
            "template": {"metadata": {"annotations": annotations or {}}, "spec": pod_spec},
        },
    }
    return json.dumps(job)


def job_condition(cluster: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    job = cluster.get_json("job", name, "-n", namespace)
    for condition in job.get("status", {}).get("conditions", []):
        if condition["type"] in {"Complete", "Failed"} and condition["status"] == "True":
            return condition  # type: ignore[no-any-return]
    return None


def pods_of(cluster: Kube, namespace: str, job: str) -> list[dict[str, Any]]:
    return cluster.get_json("pods", "-n", namespace, "-l", f"job-name={job}")["items"]  # type: ignore[no-any-return]


def test_gpu_job_runs_on_policy_node_group_and_completes(cluster: Kube, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=job_manifest("train", namespace, gpus=8))
    condition = cluster.wait_for(lambda: job_condition(cluster, namespace, "train"), what="job to finish")
    assert condition["type"] == "Complete"
    [pod] = pods_of(cluster, namespace, "train")
    node = cluster.get_json("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] == "policy-gpu"


def pending_reason(cluster: Kube, namespace: str, job: str) -> str | None:
    events = cluster.get_json("events", "-n", namespace, "--field-selector", "reason=FailedScheduling")
    messages = [e["message"] for e in events["items"] if e["involvedObject"]["name"].startswith(job)]
    return messages[0] if messages else None


def test_gpu_pod_without_toleration_stays_pending_naming_the_taint(cluster: Kube, namespace: str) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=job_manifest("untolerated", namespace, gpus=1, tolerate_gpu=False)
    )
    message = cluster.wait_for(
        lambda: pending_reason(cluster, namespace, "untolerated"), what="FailedScheduling"
    )
    # Kubernetes 1.36 counts the tainted nodes rather than printing the taint: the four GPU nodes.
    assert "4 node(s) had untolerated taint(s)" in message
    [pod] = pods_of(cluster, namespace, "untolerated")
    assert pod["status"]["phase"] == "Pending"


def test_pod_asking_for_more_gpus_than_a_node_has_stays_pending(cluster: Kube, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=job_manifest("too-big", namespace, gpus=9))
    message = cluster.wait_for(lambda: pending_reason(cluster, namespace, "too-big"), what="FailedScheduling")
    assert "Insufficient nvidia.com/gpu" in message
    [pod] = pods_of(cluster, namespace, "too-big")
    assert pod["status"]["phase"] == "Pending"


def test_annotated_failure_sets_exit_code_reason_and_message(cluster: Kube, namespace: str) -> None:
    annotations = {
        f"{SIM}/outcome": "fail",
        f"{SIM}/exit-code": "137",
        f"{SIM}/reason": "OOMKilled",
        f"{SIM}/message": '{"error": "out of memory"}',
    }
    cluster.kubectl("apply", "-f", "-", input=job_manifest("oom", namespace, annotations=annotations))
    condition = cluster.wait_for(lambda: job_condition(cluster, namespace, "oom"), what="job to fail")
    assert (condition["type"], condition["reason"]) == ("Failed", "BackoffLimitExceeded")
    [pod] = pods_of(cluster, namespace, "oom")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")
    assert json.loads(terminated["message"]) == {"error": "out of memory"}


def test_backoff_limit_retries_then_fails(cluster: Kube, namespace: str) -> None:
    annotations = {f"{SIM}/outcome": "fail", f"{SIM}/run-duration": "200ms"}
    cluster.kubectl(
        "apply", "-f", "-", input=job_manifest("retry", namespace, annotations=annotations, backoffLimit=2)
    )
    condition = cluster.wait_for(
        lambda: job_condition(cluster, namespace, "retry"), timeout=120, what="job to fail"
    )
    assert condition["reason"] == "BackoffLimitExceeded"
    assert len(pods_of(cluster, namespace, "retry")) == 3  # the first try and two retries
    assert cluster.get_json("job", "retry", "-n", namespace)["status"]["failed"] == 3


def test_pod_failure_policy_fails_at_once_on_a_chosen_exit_code(cluster: Kube, namespace: str) -> None:
    annotations = {f"{SIM}/outcome": "fail", f"{SIM}/exit-code": "78"}
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [78]}}]}
    manifest = job_manifest(
        "config-error", namespace, annotations=annotations, backoffLimit=5, podFailurePolicy=policy
    )
    cluster.kubectl("apply", "-f", "-", input=manifest)
    condition = cluster.wait_for(
        lambda: job_condition(cluster, namespace, "config-error"), what="job to fail"
    )
    assert condition["reason"] == "PodFailurePolicy"
    assert len(pods_of(cluster, namespace, "config-error")) == 1


def test_pod_failure_policy_ignores_disruptions(cluster: Kube, namespace: str) -> None:
    annotations = {f"{SIM}/outcome": "fail", f"{SIM}/disruption": "true", f"{SIM}/run-duration": "200ms"}
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    manifest = job_manifest(
        "drained", namespace, annotations=annotations, backoffLimit=0, podFailurePolicy=policy
    )
    cluster.kubectl("apply", "-f", "-", input=manifest)
    # With backoffLimit 0 any counted failure would end the Job; ignored ones make it try again.
    cluster.wait_for(lambda: len(pods_of(cluster, namespace, "drained")) >= 2, what="a replacement pod")
    job = cluster.get_json("job", "drained", "-n", namespace)
    assert job_condition(cluster, namespace, "drained") is None
    assert job["status"].get("failed", 0) == 0


def test_deleting_a_job_in_background_deletes_its_pods(cluster: Kube, namespace: str) -> None:
    annotations = {f"{SIM}/outcome": "hang"}
    cluster.kubectl("apply", "-f", "-", input=job_manifest("hanging", namespace, annotations=annotations))
    cluster.wait_for(
        lambda: [p for p in pods_of(cluster, namespace, "hanging") if p["status"].get("phase") == "Running"],
        what="running pod",
    )
    cluster.kubectl("delete", "job", "hanging", "-n", namespace, "--cascade=background")
    cluster.wait_for(
        lambda: not pods_of(cluster, namespace, "hanging"), what="garbage collection of the pods"
    )


def test_nodes_show_the_three_node_groups_with_their_sizes(cluster: Kube) -> None:
    output = cluster.kubectl("get", "nodes", "-L", "eks.amazonaws.com/nodegroup", "--no-headers").stdout
    groups = [line.split()[-1] for line in output.splitlines()]
    assert {g: groups.count(g) for g in set(groups)} == {"cpu": 4, "reward-gpu": 2, "policy-gpu": 2}


@pytest.mark.timeout(300)
def test_launcher_is_idempotent_and_down_leaves_nothing(tmp_path: Any) -> None:
    local = LocalCluster("idempotence", home=tmp_path)
    try:
        local.up()
        first = sorted(local.pids())
        local.up()
        assert sorted(local.pids()) == first, "a second up must keep the running cluster"
        assert len(first) == 5  # etcd, apiserver, controller-manager, scheduler, kwok
        assert local.status()["nodeGroups"] == {"cpu": 4, "reward-gpu": 2, "policy-gpu": 2}
    finally:
        local.down()
    assert local.pids() == []
    assert not local.home.exists()
