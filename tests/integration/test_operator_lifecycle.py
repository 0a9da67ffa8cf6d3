"""Suspension, Kueue, the remote reward server and operator restarts, on the real local cluster."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kube
from tests.integration.operator_harness import (
    SIM,
    STAGE_RESULTS,
    apply,
    children,
    create_pvc,
    hold,
    operator_of_its_own,
    release,
    rlhfjob,
    set_stage_annotations,
    stage_record,
    status,
    wait_phase,
    wait_stage_pod_running,
)
from tests.support.launchers import OperatorLauncher


def patch_spec(cluster: Kube, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch", "rlhfjob", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def job_named(cluster: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    return next((j for j in children(cluster, namespace, "jobs") if j["metadata"]["name"] == name), None)


def running_pods(cluster: Kube, namespace: str, component: str) -> list[dict[str, Any]]:
    return [
        p for p in children(cluster, namespace, "pods")
        if p["metadata"]["labels"]["app.kubernetes.io/component"] == component
        and p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]  # fmt: skip


def test_suspend_in_the_middle_of_a_stage_then_resume_and_finish(cluster: Kube, op_namespace: str) -> None:
    create_pvc(cluster, op_namespace)
    job = rlhfjob("pausable", op_namespace)
    hold(job, "policy")
    apply(cluster, job)
    # The three stages before the policy run first; wait on the pipeline's progress, not a clock.
    wait_stage_pod_running(cluster, op_namespace, "pausable", "policy")

    patch_spec(cluster, op_namespace, "pausable", {"suspend": True})
    suspended = wait_phase(cluster, op_namespace, "pausable", "Suspended", timeout=30)
    assert suspended["currentStage"] == "policy"
    assert [s["state"] for s in suspended["stages"][:3]] == ["Succeeded"] * 3
    assert next(c for c in suspended["conditions"] if c["type"] == "Suspended")["status"] == "True"
    cluster.wait_for(
        lambda: (job_named(cluster, op_namespace, "pausable-policy") or {}).get("spec", {}).get("suspend"),
        what="suspend",
    )
    cluster.wait_for(
        lambda: not running_pods(cluster, op_namespace, "policy"), timeout=30, what="policy pods gone"
    )

    patch_spec(cluster, op_namespace, "pausable", {"suspend": False})
    release(cluster, op_namespace, "policy")  # the pod of the resumed Job
    final = wait_phase(cluster, op_namespace, "pausable", "Succeeded")
    assert stage_record(final, "policy")["state"] == "Succeeded"
    reasons = cluster.kubectl("get", "events", "-n", op_namespace, "-o", "jsonpath={.items[*].reason}").stdout
    assert "Suspended" in reasons.split() and "Resumed" in reasons.split()


def admit_like_kueue(cluster: Kube, namespace: str) -> list[str]:
    """Unsuspends the Jobs carrying Kueue's queue label, as Kueue does when it admits them."""
    admitted = []
    for job in children(cluster, namespace, "jobs"):
        if job["spec"].get("suspend") and job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name"):
            cluster.kubectl("patch", "job", job["metadata"]["name"], "-n", namespace, "--type=merge",
                            "-p", '{"spec":{"suspend":false}}')  # fmt: skip
            admitted.append(job["metadata"]["name"])
    return admitted


def test_with_a_queue_children_are_created_suspended_for_kueue(cluster: Kube, op_namespace: str) -> None:
    create_pvc(cluster, op_namespace)
    apply(cluster, rlhfjob("queued", op_namespace, spec={"queueName": "gpu-queue"}))
    first = cluster.wait_for(
        lambda: job_named(cluster, op_namespace, "queued-precompute"), what="precompute Job"
    )
    assert first["spec"]["suspend"] is True
    assert first["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"

    def queued() -> dict[str, Any] | None:
        # Until Kueue (here: the test) admits it, the job says it waits in the queue.
        current = status(cluster, op_namespace, "queued")
        waiting = next((c for c in current.get("conditions", []) if c["type"] == "Waiting"), None)
        return current if waiting and waiting["reason"] == "QueuedByKueue" else None

    waiting = cluster.wait_for(queued, what="the job to say it is queued")
    assert waiting["phase"] == "Pending" and "LocalQueue gpu-queue" in waiting["message"]

    def finished() -> bool:
        admit_like_kueue(cluster, op_namespace)
        return status(cluster, op_namespace, "queued").get("phase") == "Succeeded"

    cluster.wait_for(finished, timeout=90, what="the queued job to finish")
    jobs = children(cluster, op_namespace, "jobs")
    assert len(jobs) == 5
    assert all(j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue" for j in jobs)


def test_remote_reward_server_is_ready_before_the_policy_starts_and_removed_after(
    cluster: Kube, op_namespace: str
) -> None:
    create_pvc(cluster, op_namespace)
    job = rlhfjob("remote", op_namespace, spec={"stages": {"policy": {"rewardPlacement": "remote"},
                                                         "rewardModel": {"serving": {"replicas": 2}}}})  # fmt: skip
    hold(job, "policy")
    apply(cluster, job)
    wait_stage_pod_running(cluster, op_namespace, "remote", "policy")

    def server_and_policy() -> tuple[dict[str, Any], dict[str, Any]] | None:
        # The policy first: a server read afterwards cannot be older than the policy's creation.
        policy = job_named(cluster, op_namespace, "remote-policy")
        deployments = children(cluster, op_namespace, "deployments")
        return (deployments[0], policy) if deployments and policy else None

    deployment, policy = cluster.wait_for(server_and_policy, timeout=60, what="reward server and policy Job")
    assert deployment["status"].get("readyReplicas") == 2
    server_pods = [p for p in children(cluster, op_namespace, "pods")
                   if p["metadata"]["labels"]["app.kubernetes.io/component"] == "reward-server"]  # fmt: skip
    assert len(server_pods) == 2
    for pod in server_pods:
        node = cluster.get_json("node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] == "reward-gpu"
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready["lastTransitionTime"] <= policy["metadata"]["creationTimestamp"]
    env = {e["name"]: e.get("value") for e in policy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RLHF_REWARD_TOKEN_FILE"].endswith("/token")
    config = cluster.get_json("configmap", "remote-policy-config", "-n", op_namespace)
    assert json.loads(config["data"]["stage.json"])["rewardEndpoint"] == (
        f"http://remote-reward-server.{op_namespace}.svc:8080"
    )

    release(cluster, op_namespace, "policy")
    wait_phase(cluster, op_namespace, "remote", "Succeeded")
    cluster.wait_for(
        lambda: not children(cluster, op_namespace, "deployments"), what="the reward server removed"
    )
    assert not [
        s for s in children(cluster, op_namespace, "services") if "reward-server" in s["metadata"]["name"]
    ]


@pytest.fixture
def own_operator(crd_installed: Kube, tmp_path: Path) -> Iterator[tuple[str, OperatorLauncher]]:
    """An operator of this test's own, on a namespace the session operator does not watch."""
    with operator_of_its_own(crd_installed, "t-kill", tmp_path / "operator.log") as namespace_and_process:
        yield namespace_and_process


def test_operator_killed_at_several_points_makes_no_duplicates_and_the_job_finishes(
    cluster: Kube, own_operator: tuple[str, OperatorLauncher]
) -> None:
    namespace, operator = own_operator
    create_pvc(cluster, namespace)
    job = rlhfjob("survivor", namespace)
    for stage in ("precompute", "ranking", "rewardModel", "policy", "evaluation"):
        hold(job, stage)
    apply(cluster, job)

    def stage_is(stage: str, state: str) -> bool:
        records = status(cluster, namespace, "survivor").get("stages", [])
        return any(r["name"] == stage and r["state"] == state for r in records)

    def restart() -> None:
        operator.kill()
        operator.start()
        operator.wait_ready()

    # During a stage: both precompute shards run while the operator restarts.
    cluster.wait_for(lambda: stage_is("precompute", "Running"), timeout=60, what="precompute Running")
    restart()
    release(cluster, namespace, "precompute", pods=2)
    # Right after a stage finished.
    release(cluster, namespace, "ranking")
    cluster.wait_for(lambda: stage_is("ranking", "Succeeded"), timeout=60, what="ranking Succeeded")
    restart()
    release(cluster, namespace, "reward-model")
    # While the operator is away for a whole stage.
    cluster.wait_for(lambda: stage_is("policy", "Running"), timeout=60, what="policy Running")
    operator.kill()
    release(cluster, namespace, "policy")
    cluster.wait_for(
        lambda: (job_named(cluster, namespace, "survivor-policy") or {}).get("status", {}).get("succeeded"),
        what="the policy Job to complete while the operator is away",
    )
    operator.start()
    operator.wait_ready()
    release(cluster, namespace, "evaluation")

    final = wait_phase(cluster, namespace, "survivor", "Succeeded", timeout=120)
    assert [s["state"] for s in final["stages"]] == ["Succeeded"] * 5
    jobs = [j["metadata"]["name"] for j in children(cluster, namespace, "jobs")]
    assert sorted(jobs) == sorted(f"survivor-{s}" for s in ("precompute", "ranking", "reward-model", "policy",
                                                             "evaluation"))  # fmt: skip
    config_maps = [c["metadata"]["name"] for c in children(cluster, namespace, "configmaps")]
    assert len(config_maps) == len(set(config_maps)) == 5
    pods = children(cluster, namespace, "pods")
    assert len(pods) == 6  # no stage ran twice


def test_a_running_stage_job_deleted_by_hand_is_created_again(cluster: Kube, op_namespace: str) -> None:
    create_pvc(cluster, op_namespace)
    job = rlhfjob("stubborn", op_namespace)
    hold(job, "ranking")
    apply(cluster, job)
    first = cluster.wait_for(lambda: job_named(cluster, op_namespace, "stubborn-ranking"), what="ranking Job")
    cluster.kubectl("delete", "job", "stubborn-ranking", "-n", op_namespace, "--cascade=foreground")

    def recreated() -> dict[str, Any] | None:
        again = job_named(cluster, op_namespace, "stubborn-ranking")
        return again if again and again["metadata"]["uid"] != first["metadata"]["uid"] else None

    cluster.wait_for(recreated, timeout=60, what="the ranking Job to be created again")
    release(cluster, op_namespace, "ranking")
    final = wait_phase(cluster, op_namespace, "stubborn", "Succeeded")
    assert [s["state"] for s in final["stages"]] == ["Succeeded"] * 5


CHAOS_KILLS = 15


def test_random_operator_kills_lose_no_result_and_duplicate_no_job(
    cluster: Kube, own_operator: tuple[str, OperatorLauncher]
) -> None:
    """Three jobs, the operator SIGKILLed at random moments while they run: every job still succeeds,
    with every stage's result in its status, no child twice, and times from the Jobs' own clocks."""
    namespace, operator = own_operator
    create_pvc(cluster, namespace)
    rng = random.Random(20261127)
    names = [f"chaos-{i}" for i in range(3)]
    for name in names:
        job = rlhfjob(name, namespace)
        for stage in STAGE_RESULTS:
            set_stage_annotations(job, stage, {f"{SIM}/run-duration": f"{rng.uniform(0.5, 2.5):.1f}s"})
        apply(cluster, job)
    for _ in range(CHAOS_KILLS):
        time.sleep(rng.uniform(0.3, 2.0))
        operator.kill()  # SIGKILL: no cleanup, whatever the operator was doing
        operator.start()
    operator.wait_ready()

    expected_metrics = {k: v for r in STAGE_RESULTS.values() for k, v in r.get("metrics", {}).items()}
    expected_artifacts = {k: v for r in STAGE_RESULTS.values() for k, v in r.get("artifacts", {}).items()}
    for name in names:
        final = wait_phase(cluster, namespace, name, "Succeeded", timeout=180)
        assert final["metrics"] == expected_metrics, name
        assert {k: v for k, v in final["artifacts"].items() if k in expected_artifacts} == expected_artifacts
        messages = [r["message"] for r in final["stages"]]
        assert messages == ["All 2 shards succeeded.", "Ranked.", "Trained.", "Succeeded.", "Evaluated."], (
            name
        )
        for record in final["stages"]:
            assert record["startTime"] <= record["completionTime"], (name, record)
        assert final["message"].startswith("Every stage succeeded; the policy wins 88%"), final["message"]
    jobs = [j["metadata"]["name"] for j in children(cluster, namespace, "jobs")]
    assert len(jobs) == len(set(jobs)) == 5 * len(names)
    assert len(children(cluster, namespace, "pods")) == 6 * len(names)  # no stage ran twice
