"""Runs the real operator process against the test cluster and builds RLHFJobs whose stage pods
kwok plays (succeed with a given termination message, fail, hang)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT, Kube
from tests.support.launchers import OperatorLauncher
from tests.support.merge import example_merged

SIM = "sim.rlhf-operator.dev"
STAGE_RESULTS: dict[str, dict[str, Any]] = {
    "precompute": {"artifacts": {"responses": "/data/x/precompute/manifest.json"}, "message": "Generated."},
    "ranking": {"artifacts": {"rankings": "/data/x/ranking/pairs.jsonl"}, "message": "Ranked."},
    "rewardModel": {"metrics": {"rewardModelAccuracy": 0.95}, "message": "Trained."},
    "policy": {"metrics": {"meanReward": 7.5, "kl": 3.25, "policyStep": 30, "policyTotalSteps": 30}},
    "evaluation": {"metrics": {"winRate": 0.875, "rewardGain": 2.5}, "message": "Evaluated."},
}


def operator_process(kubeconfig: str, namespaces: str, log_path: Path, **settings: str) -> OperatorLauncher:
    """The operator for the integration tests: fast progress reads and resyncs, no metrics port."""
    env = {
        "RLHF_OPERATOR_NAMESPACES": namespaces,
        "RLHF_OPERATOR_METRICS_PORT": "0",
        "RLHF_OPERATOR_PROGRESS_INTERVAL_SECONDS": "1",
        "RLHF_OPERATOR_RESYNC_INTERVAL_SECONDS": "1",
        **{f"RLHF_OPERATOR_{k.upper()}": v for k, v in settings.items()},
    }
    return OperatorLauncher(kubeconfig, log_path, env)


@contextmanager
def operator_of_its_own(
    kube: Kube, prefix: str, log_path: Path, **settings: str
) -> Iterator[tuple[str, OperatorLauncher]]:
    """An operator of a test's own on a fresh namespace `<prefix>-...` the session operator does not
    watch; both go when the test ends."""
    namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", namespace)
    process = operator_process(kube.kubeconfig, namespace, log_path, **settings)
    process.start()
    try:
        process.wait_ready()
        yield namespace, process
    finally:
        process.stop()
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def rlhfjob(name: str, namespace: str, **overrides: Any) -> dict[str, Any]:
    """The tiny example with each stage's pod told to succeed at once with its result."""
    job = yaml.safe_load((ROOT / "examples" / "tiny-rlhfjob.yaml").read_text())
    job["metadata"] = {"name": name, "namespace": namespace}
    for stage, result in STAGE_RESULTS.items():
        set_stage_annotations(
            job, stage, {f"{SIM}/message": json.dumps(result), f"{SIM}/run-duration": "300ms"}
        )
    return example_merged(job, overrides)


def set_stage_annotations(job: dict[str, Any], stage: str, annotations: dict[str, str]) -> None:
    pod = job["spec"].setdefault("stages", {}).setdefault(stage, {}).setdefault("pod", {})
    pod.setdefault("annotations", {}).update(annotations)


def apply(cluster: Kube, job: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job))


def create_pvc(cluster: Kube, namespace: str, name: str = "rlhf-data") -> None:
    """A claim pre-bound to a volume of its own: the scheduler holds pods with unbound claims."""
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{name}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "hostPath": {"path": f"/tmp/rlhf-volumes/{namespace}-{name}"},
            "claimRef": {"namespace": namespace, "name": name},
            "persistentVolumeReclaimPolicy": "Delete",
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(volume))
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "",
            "volumeName": f"{namespace}-{name}",
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pvc))


def status(cluster: Kube, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get_json("rlhfjob", name, "-n", namespace).get("status") or {}


def wait_phase(cluster: Kube, namespace: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        current = status(cluster, namespace, name)
        if current.get("phase") == phase:
            return current
        if phase != "Failed" and current.get("phase") == "Failed":
            raise AssertionError(f"job failed: {current.get('message')}")
        return None

    return cluster.wait_for(reached, timeout=timeout, what=f"{name} to reach {phase}")


def wait_stage_pod_running(
    cluster: Kube, namespace: str, name: str, component: str, *, stall_timeout: float = 60
) -> list[dict[str, Any]]:
    """Waits until RLHFJob `name` runs a Running pod of `component` (a stage's component label),
    following the pipeline as it gets there.

    The deadline counts from the last sign of progress (a stage changing state, the pod appearing),
    not from the start, so a loaded machine that keeps advancing is waited for, and a pipeline that
    stops advancing fails at once with the stage it is stuck at and its message.
    """
    deadline = time.monotonic() + stall_timeout
    last: tuple[Any, ...] = ()
    while True:
        current = status(cluster, namespace, name)
        if current.get("phase") == "Failed":
            raise AssertionError(f"{name} failed before a {component} pod ran: {current.get('message')}")
        pods = [
            p for p in children(cluster, namespace, "pods")
            if p["metadata"]["labels"].get("app.kubernetes.io/component") == component
            and not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        if running:
            return running
        seen = (
            tuple((s["name"], s.get("state")) for s in current.get("stages", [])),
            tuple((p["metadata"]["name"], p["status"].get("phase")) for p in pods),
        )
        if seen != last:
            last, deadline = seen, time.monotonic() + stall_timeout
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{name} made no progress towards a running {component} pod for {stall_timeout:.0f}s: "
                f"stage states {seen[0]}, {component} pods {seen[1]}, message {current.get('message')!r}"
            )
        time.sleep(0.25)


def stage_record(current: dict[str, Any], stage: str) -> dict[str, Any]:
    return next(s for s in current.get("stages", []) if s["name"] == stage)


def children(cluster: Kube, namespace: str, kind: str) -> list[dict[str, Any]]:
    listing = cluster.get_json(kind, "-n", namespace, "-l", "app.kubernetes.io/managed-by=rlhf-operator")
    return listing["items"]  # type: ignore[no-any-return]


def hold(job: dict[str, Any], stage: str) -> None:
    """The stage's pods run until `release` lets them succeed (kwok's `hang` outcome), so a test acts
    while the stage runs without racing a simulated run time."""
    set_stage_annotations(job, stage, {f"{SIM}/outcome": "hang"})


def release(cluster: Kube, namespace: str, component: str, pods: int = 1) -> list[str]:
    """Waits for `pods` running pods of a held stage (by component label) and lets them succeed."""

    def running() -> list[str] | None:
        names = [
            p["metadata"]["name"] for p in children(cluster, namespace, "pods")
            if p["metadata"]["labels"].get("app.kubernetes.io/component") == component
            and p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        return names if len(names) >= pods else None

    names = cluster.wait_for(running, timeout=60, what=f"{pods} running {component} pod(s)")
    for name in names:
        cluster.kubectl("annotate", "pod", name, "-n", namespace, f"{SIM}/outcome=succeed", "--overwrite")
    return names
