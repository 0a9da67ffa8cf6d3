"""End to end on the real path: `helm install` of the chart, the operator in its image on the real
node, and every stage pod of the tiny job in the worker or trainer image on that node with the
chart's securityContext, in namespaces that enforce the restricted Pod Security Standard.

The same steps as `make demo` (hack/demo_real.py), on a private cluster. Needs root and the
three images (`make images`); `make test-node-demo` runs it, in CI too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from demo_real import NAMESPACE, OPERATOR_NAMESPACE, demo_job, images, prepare, run_job
from localcluster import LocalCluster, image_archive

TAG = "dev"
IMAGE_OF_STAGE = {
    "precompute": "worker", "ranking": "worker", "evaluation": "worker",
    "rewardModel": "trainer", "rewardServer": "trainer", "policy": "trainer",
}  # fmt: skip


@pytest.fixture(scope="module")
def demo_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if os.geteuid() != 0:
        pytest.fail("the real node needs root: run `make test-node` as root (or with sudo)")
    archives = [image_archive(*images(TAG).values())]
    cluster = LocalCluster(
        "e2e-real", home=tmp_path_factory.mktemp("clusters"), real_node=True, real_node_images=archives
    )
    try:
        cluster.up()
        prepare(cluster, TAG)
        yield cluster
    finally:
        cluster.down()


def pods(cluster: LocalCluster, namespace: str, *selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "pods", "-n", namespace, *selector, "-o", "json").stdout
    )["items"]
    return items


# Mount points the runtime itself adds to every container's root filesystem.
RUNTIME_MOUNTS = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/termination-log", "/proc", "/dev",
                  "/sys", "/run/secrets/kubernetes.io/serviceaccount")  # fmt: skip


def assert_runs_restricted_on_the_node(cluster: LocalCluster, pod: dict[str, Any], image: str) -> None:
    name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] == cluster.node.name, name
    container = pod["spec"]["containers"][0]
    assert container["image"] == images(TAG)[image], name
    assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
    assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532, name


def writes_outside_mounts(cluster: LocalCluster, pod: dict[str, Any]) -> list[str]:
    """What the pod's container wrote to its root filesystem other than its mount points."""
    mounts = [m["mountPath"] for m in pod["spec"]["containers"][0].get("volumeMounts", [])]
    # /var/run is a link to /run in the images: runc makes a mount point there under its target.
    mounts += [m.replace("/var/run/", "/run/", 1) for m in mounts if m.startswith("/var/run/")]
    mounts += RUNTIME_MOUNTS
    written = cluster.node.container_writes(pod["status"]["containerStatuses"][0]["containerID"])
    return [p for p in written if not any(m == p or m.startswith(p.rstrip("/") + "/") for m in mounts)]


def test_operator_runs_in_its_image_on_the_real_node(demo_cluster: LocalCluster) -> None:
    operators = [p for p in pods(demo_cluster, OPERATOR_NAMESPACE) if "test" not in p["metadata"]["name"]]
    # The chart's two replicas (one leads through its Lease, the other waits to take over).
    assert len(operators) == 2, [p["metadata"]["name"] for p in operators]
    for operator in operators:
        assert_runs_restricted_on_the_node(demo_cluster, operator, "operator")
        assert operator["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    labels = json.loads(demo_cluster.kubectl("get", "namespace", NAMESPACE, "-o", "json").stdout)["metadata"]
    assert labels["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("remote_reward", [False, True], ids=["in-process-reward", "remote-reward"])
def test_tiny_job_runs_for_real_on_the_node(demo_cluster: LocalCluster, remote_reward: bool) -> None:
    job = demo_job(remote_reward)
    name = job["metadata"]["name"]
    seen: dict[str, dict[str, Any]] = {}

    def record(line: str) -> None:  # at each stage change: the job's pods as they are now
        print(line)
        for pod in pods(demo_cluster, NAMESPACE, "-l", f"rlhf-operator.dev/job-name={name}"):
            seen[pod["metadata"]["name"]] = pod

    final = run_job(demo_cluster, job, timeout_s=1500, show=record)
    assert final["phase"] == "Succeeded", final.get("message")
    metrics = final["metrics"]
    assert metrics["winRate"] >= 0.9, metrics
    assert metrics["policyReward"] > metrics["baseReward"], metrics
    record("done")
    stages = set()
    for pod_name, pod in seen.items():
        stage = pod["metadata"]["labels"]["rlhf-operator.dev/stage"]
        stages.add(stage)
        if pod["spec"].get("nodeName"):
            assert_runs_restricted_on_the_node(demo_cluster, pod, IMAGE_OF_STAGE[stage])
        if stage != "rewardServer":
            # Stage containers have a read-only root; their overlay upper dirs show it held: nothing
            # but the mount points runc adds.
            assert writes_outside_mounts(demo_cluster, pod) == [], pod_name
        if stage != "rewardServer":  # the server's Deployment is removed once the policy is done
            logs = demo_cluster.kubectl("logs", "-n", NAMESPACE, pod_name).stdout
            assert logs.strip(), f"kubectl logs {pod_name} is empty"
    assert {"precompute", "ranking", "rewardModel", "policy", "evaluation"} <= stages, stages
    # The remote variant's policy scored through the reward server's Service, by name, in the cluster.
    assert ("rewardServer" in stages) == remote_reward, stages
