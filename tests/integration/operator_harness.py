"""Runs the real operator process against the test cluster and builds RLHFJobs whose stage pods
kwok plays (succeed with a given termination message, fail, hang)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT, Kube
from tests.support.merge import merged
from tests.support.ports import free_port

SIM = "sim.rlhf-operator.dev"
STAGE_RESULTS: dict[str, dict[str, Any]] = {
    "precompute": {"artifacts": {"responses": "/data/x/precompute/manifest.json"}, "message": "Generated."},
    "ranking": {"artifacts": {"rankings": "/data/x/ranking/pairs.jsonl"}, "message": "Ranked."},
    "rewardModel": {"metrics": {"rewardModelAccuracy": 0.95}, "message": "Trained."},
    "policy": {"metrics": {"meanReward": 7.5, "kl": 3.25, "policyStep": 30, "policyTotalSteps": 30}},
    "evaluation": {"metrics": {"winRate": 0.875, "rewardGain": 2.5}, "message": "Evaluated."},
}


class OperatorProcess:
    """`python -m rlhf_operator operator` as a child process, watching the given namespaces."""

    def __init__(self, kubeconfig: str, namespaces: str, log_path: Path, **settings: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.log_path = log_path
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(
            os.environ,
            KUBECONFIG=self.kubeconfig,
            RLHF_OPERATOR_NAMESPACES=self.namespaces,
            RLHF_OPERATOR_METRICS_PORT=str(self.settings.pop("metrics_port", "0")),
            RLHF_OPERATOR_PROGRESS_INTERVAL_SECONDS="1",
            RLHF_OPERATOR_RESYNC_INTERVAL_SECONDS="1",
            **{f"RLHF_OPERATOR_{k.upper()}": v for k, v in self.settings.items()},
        )
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rlhf_operator", "operator", f"--liveness=http://127.0.0.1:{free_port()}/healthz"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def rlhfjob(name: str, namespace: str, **overrides: Any) -> dict[str, Any]:
    """The tiny example with each stage's pod told to succeed at once with its result."""
    job = yaml.safe_load((ROOT / "examples" / "tiny-rlhfjob.yaml").read_text())
    job["metadata"] = {"name": name, "namespace": namespace}
    for stage, result in STAGE_RESULTS.items():
        set_stage_annotations(
            job, stage, {f"{SIM}/message": json.dumps(result), f"{SIM}/run-duration": "300ms"}
        )
    return merged(job, overrides)


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


def stage_record(current: dict[str, Any], stage: str) -> dict[str, Any]:
    return next(s for s in current.get("stages", []) if s["name"] == stage)


def children(cluster: Kube, namespace: str, kind: str) -> list[dict[str, Any]]:
    listing = cluster.get_json(kind, "-n", namespace, "-l", "app.kubernetes.io/managed-by=rlhf-operator")
    return listing["items"]  # type: ignore[no-any-return]
