"""Two operator replicas with leader election on the real API server: SIGKILL the leader while a
pipeline runs; the standby takes the Lease within 15 s and finishes the pipeline with no child
created twice and nothing lost. A graceful stop (SIGTERM, as a rolling update sends) releases the
Lease at once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kube
from tests.integration import operator_harness as harness
from tests.support.launchers import OperatorLauncher

LEASE = "rlhf-operator-leader"
TAKEOVER_LIMIT_SECONDS = 15


class Replicas:
    def __init__(self, cluster: Kube, namespace: str, tmp_path: Path) -> None:
        self.cluster, self.namespace, self.tmp_path = cluster, namespace, tmp_path
        self.by_name: dict[str, OperatorLauncher] = {}

    def start(self, name: str) -> OperatorLauncher:
        process = harness.operator_process(
            self.cluster.kubeconfig, self.namespace, self.tmp_path / f"{name}.log",
            leader_election_namespace=self.namespace, leader_election_lease=LEASE,
        )  # fmt: skip
        process.env["HOSTNAME"] = name  # the pod name in a cluster: the start of the Lease holder's identity
        process.start()
        process.wait_ready()
        self.by_name[name] = process
        return process

    def holder(self) -> str:
        lease = self.cluster.kubectl("get", "lease", LEASE, "-n", self.namespace, "-o", "json", check=False)
        if lease.returncode != 0:
            return ""
        return str(json.loads(lease.stdout)["spec"].get("holderIdentity") or "")

    def leader(self) -> str | None:
        """The replica name of the Lease's holder, once there is one."""
        holder = self.holder()
        return next((name for name in self.by_name if holder.startswith(f"{name}_")), None)


@pytest.fixture
def replicas(crd_installed: Kube, tmp_path: Path) -> Iterator[Replicas]:
    namespace = f"t-ha-{uuid.uuid4().hex[:8]}"
    crd_installed.kubectl("create", "namespace", namespace)
    handle = Replicas(crd_installed, namespace, tmp_path)
    try:
        yield handle
    finally:
        for process in handle.by_name.values():
            process.stop()
        crd_installed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _jobs(cluster: Kube, namespace: str) -> dict[str, str]:
    return {j["metadata"]["name"]: j["metadata"]["uid"] for j in harness.children(cluster, namespace, "jobs")}


def test_the_standby_takes_over_a_killed_leader_within_15s_and_finishes_the_pipeline(
    cluster: Kube, replicas: Replicas
) -> None:
    ns = replicas.namespace
    for name in ("replica-a", "replica-b"):
        replicas.start(name)
    leader = cluster.wait_for(replicas.leader, timeout=30, what="a leader")
    standby = next(name for name in replicas.by_name if name != leader)

    harness.create_pvc(cluster, ns)
    job = harness.rlhfjob("ha", ns)
    harness.hold(job, "ranking")
    harness.apply(cluster, job)
    cluster.wait_for(
        lambda: harness.stage_record(harness.status(cluster, ns, "ha"), "ranking").get("state") == "Running"
        if harness.status(cluster, ns, "ha").get("stages") else None,
        timeout=90, what="the ranking stage to run",
    )  # fmt: skip
    before = _jobs(cluster, ns)
    assert set(before) == {"ha-precompute", "ha-ranking"}

    replicas.by_name[leader].kill()  # SIGKILL: no release, the Lease must expire
    killed_at = time.monotonic()
    cluster.wait_for(
        lambda: replicas.leader() == standby, timeout=30, interval=0.1, what="the standby to lead"
    )
    takeover = time.monotonic() - killed_at
    assert takeover < TAKEOVER_LIMIT_SECONDS, f"the standby led {takeover:.1f}s after the kill"

    harness.release(cluster, ns, "ranking")
    final = harness.wait_phase(cluster, ns, "ha", "Succeeded", timeout=120)
    after = _jobs(cluster, ns)
    assert {name: after[name] for name in before} == before, "a child that existed was created again"
    assert sorted(after) == sorted(
        f"ha-{s}" for s in ("precompute", "ranking", "reward-model", "policy", "evaluation")
    )
    assert [s["state"] for s in final["stages"]] == ["Succeeded"] * 5
    expected: dict[str, Any] = {}
    for result in harness.STAGE_RESULTS.values():
        expected.update(result.get("metrics", {}))
    assert {k: final["metrics"][k] for k in expected} == expected, "a stage's result was lost"
    assert final["artifacts"]["responses"] == harness.STAGE_RESULTS["precompute"]["artifacts"]["responses"]
    print(f"takeover after SIGKILL: {takeover:.1f}s")

    # A graceful stop (a rolling update's SIGTERM) releases the Lease instead of letting it expire.
    replicas.start(leader)  # back as a standby
    assert replicas.leader() == standby
    replicas.by_name[standby].stop()
    holder = replicas.holder()
    assert holder == "" or holder.startswith(f"{leader}_"), (
        f"the stopped leader still holds the Lease: {holder}"
    )
    cluster.wait_for(
        lambda: replicas.leader() == leader, timeout=10, what="the standby to lead after a release"
    )
