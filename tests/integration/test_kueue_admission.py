"""Real Kueue (built from its Go module, hack/kueue.py) admits RLHFJobs' stages on the local cluster.

A ClusterQueue with 2 GPUs. The first RLHFJob serves its reward model remotely: while its policy
runs it holds both GPUs, one for the policy Job and one for the reward server (a Deployment, whose
pods Kueue admits through its pod integration: without them counted, 1 GPU would be free). The
second job's reward-model Job (1 GPU) then waits, suspended by Kueue, and the RLHFJob says so
(Waiting/QueuedByKueue naming the LocalQueue); when the first finishes, the second runs to the end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kueue import MANAGED_LABEL, LocalKueue
from localcluster import tools_dir
from tests.conftest import Kube
from tests.integration import operator_harness as harness

KUEUE = "kueue.x-k8s.io/v1beta2"
QUEUE = "team-gpus"


@pytest.fixture(scope="module")
def kueue(cluster: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKueue]:
    local = LocalKueue(
        cluster.kubeconfig, cluster.kubectl_binary, tools_dir(), tmp_path_factory.mktemp("kueue")
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()


def queues(cluster: Kube, namespace: str, gpus: int) -> str:
    """A ResourceFlavor, a ClusterQueue of `gpus` GPUs (CPU and memory plenty) and its LocalQueue."""
    name = f"gpus-{uuid.uuid4().hex[:6]}"
    # Every resource the pods request must be covered: stage pods request node disk too.
    quota = [{"name": "cpu", "nominalQuota": "1000"}, {"name": "memory", "nominalQuota": "10Ti"},
             {"name": "ephemeral-storage", "nominalQuota": "100Ti"},
             {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)}]  # fmt: skip
    objects = [
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": "default-flavor"}},
        {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": name},
         "spec": {"namespaceSelector": {}, "resourceGroups": [
             {"coveredResources": ["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"],
              "flavors": [{"name": "default-flavor", "resources": quota}]}]}},
        {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": QUEUE, "namespace": namespace},
         "spec": {"clusterQueue": name}},
    ]  # fmt: skip
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    return name


def admitted_gpus(cluster: Kube, namespace: str) -> dict[str, int]:
    """GPUs of each Workload Kueue admitted, by the name of the object it stands for."""
    out = {}
    for workload in cluster.get_json("workloads.kueue.x-k8s.io", "-n", namespace)["items"]:
        status = workload.get("status") or {}
        admitted = any(
            c["type"] == "Admitted" and c["status"] == "True" for c in status.get("conditions", [])
        )
        finished = any(
            c["type"] == "Finished" and c["status"] == "True" for c in status.get("conditions", [])
        )
        if admitted and not finished:
            owner = workload["metadata"]["ownerReferences"][0]["name"]
            assignments = status["admission"]["podSetAssignments"]
            out[owner] = sum(
                int((a.get("resourceUsage") or {}).get("nvidia.com/gpu", 0)) for a in assignments
            )
    return out


def job_spec(name: str, namespace: str, **stages: Any) -> dict[str, Any]:
    job = harness.rlhfjob(name, namespace, spec={"queueName": QUEUE, "stages": stages})
    return job


@pytest.mark.timeout(420)
def test_a_job_over_the_gpu_quota_waits_in_the_queue_and_runs_when_the_first_finishes(
    crd_installed: Kube, kueue: LocalKueue, tmp_path: Path
) -> None:
    cluster = crd_installed
    with harness.operator_of_its_own(cluster, "t-kueue", tmp_path / "operator.log") as (namespace, _):
        cluster.kubectl("label", "namespace", namespace, "=".join(MANAGED_LABEL))
        harness.create_pvc(cluster, namespace)
        cluster_queue = queues(cluster, namespace, gpus=2)
        try:
            first = job_spec("first", namespace, policy={"rewardPlacement": "remote"})
            harness.hold(first, "policy")
            harness.apply(cluster, first)

            def first_holds_both_gpus() -> dict[str, int] | None:
                gpus = admitted_gpus(cluster, namespace)
                return gpus if sum(gpus.values()) == 2 else None

            held = cluster.wait_for(
                first_holds_both_gpus, timeout=120, what="the first job's policy and reward server admitted"
            )
            assert any(owner.startswith("first-reward-server") for owner in held), (
                held
            )  # a pod of the Deployment
            assert "first-policy" in held, held

            harness.apply(cluster, job_spec("second", namespace))

            def queued() -> dict[str, Any] | None:
                current = harness.status(cluster, namespace, "second")
                waiting: dict[str, Any] = next(
                    (c for c in current.get("conditions", []) if c["type"] == "Waiting"), {}
                )
                # Each stage's Job waits for admission (precompute's only for a moment): this one stays.
                queued = (
                    waiting.get("reason") == "QueuedByKueue" and current.get("currentStage") == "rewardModel"
                )
                return current if queued else None

            current = cluster.wait_for(queued, timeout=90, what="the second job to wait in the queue")
            waiting = next(c for c in current["conditions"] if c["type"] == "Waiting")
            assert current["phase"] == "Pending" and current["currentStage"] == "rewardModel"
            assert waiting["status"] == "True" and f"LocalQueue {QUEUE}" in waiting["message"]
            assert f"LocalQueue {QUEUE}" in current["message"]
            second = cluster.get_json("job", "second-reward-model", "-n", namespace)
            assert second["spec"]["suspend"] is True  # Kueue has not admitted it, for want of GPUs:
            [workload] = [
                w for w in cluster.get_json("workloads.kueue.x-k8s.io", "-n", namespace)["items"]
                if w["metadata"]["ownerReferences"][0]["name"] == "second-reward-model"
            ]  # fmt: skip
            reserved = next(c for c in workload["status"]["conditions"] if c["type"] == "QuotaReserved")
            assert reserved["status"] == "False" and "nvidia.com/gpu" in reserved["message"], reserved
            assert harness.status(cluster, namespace, "first")["phase"] == "Running"

            harness.release(cluster, namespace, "policy")
            harness.wait_phase(cluster, namespace, "first", "Succeeded", timeout=120)
            final = harness.wait_phase(cluster, namespace, "second", "Succeeded", timeout=180)
            assert not any(c["type"] == "Waiting" and c["status"] == "True" for c in final["conditions"])
            jobs = harness.children(cluster, namespace, "jobs")
            assert all(j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE for j in jobs)
        finally:
            cluster.kubectl("delete", "clusterqueue", cluster_queue, "--wait=false", check=False)
