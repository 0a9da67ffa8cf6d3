"""Tenants on one cluster: the review's attack replayed on the real API server, Secrets that must opt
in, and bounded log reads.

The operator watches two namespaces. In team-b, a Job whose pod carries team-a's RLHFJob uid label
(and, for a second Job, a forged ownerReference to it) succeeds with a termination message naming
a poisoned artifact. The operator must ignore both (and count them), leave the victim's running
stage alone, and finish the victim with its own result.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.config.kubeconfig import KubeConfig

from rlhf_operator.kube import LOG_LIMIT_BYTES
from rlhf_operator.kube import Kube as OperatorKube
from tests.conftest import Kube
from tests.integration import operator_harness as harness
from tests.support.launchers import OperatorLauncher
from tests.support.ports import free_port

POISON = {"artifacts": {"responses": "s3://attacker-bucket/poisoned"}, "message": "Generated."}


@pytest.fixture
def two_tenants(crd_installed: Kube, tmp_path: Path) -> Iterator[tuple[str, str, OperatorLauncher, int]]:
    suffix = uuid.uuid4().hex[:8]
    team_a, team_b = f"t-iso-a-{suffix}", f"t-iso-b-{suffix}"
    for namespace in (team_a, team_b):
        crd_installed.kubectl("create", "namespace", namespace)
    port = free_port()
    process = harness.operator_process(
        crd_installed.kubeconfig, f"{team_a},{team_b}", tmp_path / "operator.log", metrics_port=str(port)
    )
    process.start()
    try:
        process.wait_ready()
        yield team_a, team_b, process, port
    finally:
        process.stop()
        for namespace in (team_a, team_b):
            crd_installed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _attacker_job(name: str, namespace: str, victim_uid: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/managed-by": "rlhf-operator",
        "app.kubernetes.io/component": "precompute",
        "rlhf-operator.dev/job-uid": victim_uid,
        "rlhf-operator.dev/stage": "precompute",
    }
    annotations = {f"{harness.SIM}/message": json.dumps(POISON), f"{harness.SIM}/run-duration": "200ms"}
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"eks.amazonaws.com/nodegroup": "cpu"},
                    "containers": [{"name": "stage", "image": "attacker/poison"}],
                },
            },
        },
    }


def _ignored_pods(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(
        r'rlhf_operator_ignored_children_total\{kind="Pod",reason="OtherNamespace"\} (\S+)', text
    )
    return float(found.group(1)) if found else 0.0


def _attack_pod_succeeded(cluster: Kube, namespace: str) -> bool:
    """The label-only attacker's pod succeeded. (The garbage collector may delete the Job with the
    forged ownerReference first: an owner cannot be in another namespace.)"""
    pods = cluster.get_json("pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=victim-precompute")
    return any(p["status"].get("phase") == "Succeeded" for p in pods["items"])


def test_a_job_in_another_namespace_cannot_complete_a_victims_stage(
    cluster: Kube, two_tenants: tuple[str, str, OperatorLauncher, int]
) -> None:
    team_a, team_b, operator, port = two_tenants
    harness.create_pvc(cluster, team_a)
    victim = harness.rlhfjob("victim", team_a)
    harness.hold(victim, "precompute")
    harness.apply(cluster, victim)
    cluster.wait_for(
        lambda: harness.children(cluster, team_a, "jobs"), timeout=60, what="the victim's precompute Job"
    )
    uid = cluster.get_json("rlhfjob", "victim", "-n", team_a)["metadata"]["uid"]
    forged_owner = {"apiVersion": "rlhf-operator.dev/v1alpha1", "kind": "RLHFJob", "name": "victim",
                    "uid": uid, "controller": True}  # fmt: skip
    for name, owner in (("victim-precompute", None), ("victim-precompute-owned", forged_owner)):
        harness.apply(cluster, _attacker_job(name, team_b, uid, owner))
    cluster.wait_for(lambda: _attack_pod_succeeded(cluster, team_b), timeout=90, what="the attack pod")
    # The operator saw the attack pods and ignored them: an explicit outcome instead of a sleep.
    cluster.wait_for(lambda: _ignored_pods(port) >= 1, timeout=30, what="the ignored-children metric")

    held = harness.stage_record(harness.status(cluster, team_a, "victim"), "precompute")
    assert held["state"] == "Running", held
    assert "attacker" not in json.dumps(harness.status(cluster, team_a, "victim"))
    assert all(s["state"] == "Pending" for s in harness.status(cluster, team_a, "victim")["stages"][1:])

    harness.release(cluster, team_a, "precompute", pods=2)
    final = harness.wait_phase(cluster, team_a, "victim", "Succeeded", timeout=120)
    assert final["artifacts"]["responses"] == harness.STAGE_RESULTS["precompute"]["artifacts"]["responses"]
    assert "attacker" not in json.dumps(final)
    assert operator.alive()


def _waiting(cluster: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    conditions = harness.status(cluster, namespace, name).get("conditions") or []
    waiting = next((c for c in conditions if c["type"] == "Waiting" and c["status"] == "True"), None)
    return waiting if waiting and waiting["reason"] == "SecretNotAllowed" else None


def test_a_secret_without_the_opt_in_label_never_reaches_a_pod_until_it_is_labelled(
    cluster: Kube, op_namespace: str
) -> None:
    harness.create_pvc(cluster, op_namespace)
    cluster.kubectl(
        "create", "secret", "generic", "db-password", "-n", op_namespace, "--from-literal=PASSWORD=x"
    )
    job = harness.rlhfjob(
        "borrower", op_namespace, spec={"storage": {"credentials": {"secretRef": {"name": "db-password"}}}}
    )
    harness.apply(cluster, job)
    waiting = cluster.wait_for(
        lambda: _waiting(cluster, op_namespace, "borrower"), timeout=60, what="SecretNotAllowed"
    )
    assert (
        "Secret db-password (spec.storage.credentials.secretRef.name) is not opted in" in waiting["message"]
    )
    assert harness.children(cluster, op_namespace, "jobs") == []
    events = cluster.get_json("events.events.k8s.io", "-n", op_namespace)["items"]
    assert [e["note"] for e in events if e["reason"] == "SecretNotAllowed"] == [waiting["message"]]

    cluster.kubectl(
        "label", "secret", "db-password", "-n", op_namespace, "rlhf-operator.dev/usable-by-rlhfjobs=true"
    )
    harness.wait_phase(cluster, op_namespace, "borrower", "Succeeded", timeout=120)
    [precompute] = [
        j
        for j in harness.children(cluster, op_namespace, "jobs")
        if j["metadata"]["name"] == "borrower-precompute"
    ]
    [container] = precompute["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "db-password"}}]


def test_a_pods_log_is_read_at_most_64kib_at_a_time(cluster: Kube, namespace: str, tmp_path: Path) -> None:
    """The operator reads the policy's progress from the log tail; a pod printing huge lines cannot
    make it read more than LOG_LIMIT_BYTES (the API server's limitBytes, served here by kwok)."""
    log_file = tmp_path / "stage.log"
    log_file.write_text(
        "".join(f"2026-01-01T00:00:00.000000000Z stdout F line {i} {'x' * 4000}\n" for i in range(200))
    )
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chatty", "namespace": namespace},
           "spec": {"nodeSelector": {"eks.amazonaws.com/nodegroup": "cpu"}, "containers": [{"name": "stage", "image": "x"}]}}  # fmt: skip
    logs = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs", "metadata": {"name": "chatty", "namespace": namespace},
            "spec": {"logs": [{"containers": ["stage"], "logsFile": str(log_file), "follow": False}]}}  # fmt: skip
    for body in (pod, logs):
        harness.apply(cluster, body)
    kube = OperatorKube(Client(KubeConfig.from_file(cluster.kubeconfig)))
    tail = cluster.wait_for(lambda: kube.log_tail(namespace, "chatty"), timeout=60, what="the pod's log")
    assert len(tail.encode()) == LOG_LIMIT_BYTES
    assert tail.startswith("line 150 "), "the 50 lines' tail, cut at the limit"


def _deployment_ready(cluster: Kube, namespace: str) -> dict[str, Any] | None:
    deployments = harness.children(cluster, namespace, "deployments")
    return deployments[0] if deployments and deployments[0]["status"].get("readyReplicas") == 1 else None


def test_a_jobs_pods_are_fenced_bounded_and_its_reward_server_cannot_be_evicted(
    cluster: Kube, op_namespace: str
) -> None:
    """The NetworkPolicy, the PodDisruptionBudget and the pods' disk bounds as the API server stores them.
    No policy engine runs here (kwok plays the pods), so the NetworkPolicy is validated and stored by
    the API server, not enforced; the PodDisruptionBudget is enforced (the eviction API refuses)."""
    harness.create_pvc(cluster, op_namespace)
    job = harness.rlhfjob("fenced", op_namespace, spec={"stages": {"policy": {"rewardPlacement": "remote"}}})
    harness.hold(job, "policy")
    harness.apply(cluster, job)
    cluster.wait_for(lambda: _deployment_ready(cluster, op_namespace), timeout=90, what="the reward server")
    uid = cluster.get_json("rlhfjob", "fenced", "-n", op_namespace)["metadata"]["uid"]

    policy = cluster.get_json("networkpolicy", "fenced-network", "-n", op_namespace)
    own = {"podSelector": {"matchLabels": {"rlhf-operator.dev/job-uid": uid}}}
    assert policy["spec"]["podSelector"] == own["podSelector"]
    assert policy["spec"]["ingress"] == [{"from": [own]}]
    assert policy["spec"]["egress"][0] == {"to": [own]}
    assert policy["metadata"]["ownerReferences"][0]["uid"] == uid
    pods = harness.children(cluster, op_namespace, "pods")
    assert pods and all(p["metadata"]["labels"]["rlhf-operator.dev/job-uid"] == uid for p in pods)
    for pod in pods:  # every pod the policy selects asks for its disk and cannot use more
        [container] = pod["spec"]["containers"]
        assert container["resources"]["requests"]["ephemeral-storage"] == "20Gi"
        tmp = next(v for v in pod["spec"]["volumes"] if v["name"] == "tmp")
        assert tmp["emptyDir"]["sizeLimit"] == "20Gi"

    budget = cluster.wait_for(
        lambda: (b := cluster.get_json("pdb", "fenced-reward-server", "-n", op_namespace)).get("status", {}).get("currentHealthy") == 1 and b,
        timeout=30, what="the disruption budget to count the reward server",
    )  # fmt: skip
    assert budget["spec"]["minAvailable"] == 1 and budget["status"]["expectedPods"] == 1
    [server] = [p for p in pods if p["metadata"]["labels"]["app.kubernetes.io/component"] == "reward-server"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": server["metadata"]["name"], "namespace": op_namespace}}  # fmt: skip
    refused = cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{op_namespace}/pods/{server['metadata']['name']}/eviction",
        "-f", "-", input=json.dumps(eviction), check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "disruption budget" in refused.stderr, refused.stderr

    harness.release(cluster, op_namespace, "policy")
    harness.wait_phase(cluster, op_namespace, "fenced", "Succeeded")
    cluster.wait_for(
        lambda: cluster.kubectl("get", "pdb", "fenced-reward-server", "-n", op_namespace, check=False).returncode != 0,
        timeout=30, what="the disruption budget removed with the reward server",
    )  # fmt: skip
