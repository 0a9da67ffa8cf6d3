"""End to end: `kubectl apply` of the tiny RLHFJob on the local cluster, every stage a real process.

The cluster runs in executed mode: Kubernetes' own scheduler and Job controller place and track the
pods, the local pod executor runs each pod's real stage program (in place of kubelet and a container
runtime) and the operator runs with the Helm chart's configuration.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo import EXAMPLE, follow, make_tiny_assets, prepare_storage, running_pipeline
from localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
NODE_GROUP_OF_STAGE = {
    "precompute": "cpu", "ranking": "cpu", "reward-model": "reward-gpu", "policy": "policy-gpu", "evaluation": "cpu",
}  # fmt: skip


@pytest.mark.timeout(1500)
def test_tiny_job_runs_for_real_and_the_policy_beats_the_base_model(tmp_path: Path) -> None:
    cluster = LocalCluster("e2e", home=tmp_path / "clusters", executed=True)
    cluster.up()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/rlhfjobs.rlhf-operator.dev", "--timeout=60s"
        )
        namespace, data = "rlhf-e2e", tmp_path / "data"
        prepare_storage(cluster, namespace, data)
        make_tiny_assets(data)
        progress: list[dict[str, Any]] = []

        def record(line: str) -> None:
            status = json.loads(
                cluster.kubectl("get", "rlhfjob", "tiny", "-n", namespace, "-o", "json").stdout
            )
            metrics = status.get("status", {}).get("metrics", {})
            if status["status"].get("currentStage") == "policy" and "policyStep" in metrics:
                progress.append(metrics)
            print(line)

        with running_pipeline(cluster, namespace, tmp_path):
            cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
            final = follow(cluster, namespace, "tiny", timeout_s=1200, show=record)

        assert final["phase"] == "Succeeded", final.get("message")
        metrics = final["metrics"]
        assert metrics["rewardModelAccuracy"] >= 0.8
        assert metrics["winRate"] >= 0.7
        assert metrics["policyReward"] > metrics["baseReward"]
        assert {"meanReward", "kl", "policyStep"} <= set(metrics)
        total = yaml.safe_load(EXAMPLE.read_text())["spec"]["stages"]["policy"]["steps"]
        # Progress reached the status while the policy trained, not only from its final result.
        assert any(p["policyStep"] < total for p in progress), progress
        assert final["artifacts"]["evaluationPlot"].startswith("/data/rlhf-jobs/rlhf-e2e/tiny/")
        assert (data / final["artifacts"]["evaluationPlot"].removeprefix("/data/")).stat().st_size > 1000

        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        assert sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods) == sorted(
            ["precompute", "precompute", "ranking", "reward-model", "policy", "evaluation"]
        )
        for pod in pods:
            node = json.loads(cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
            component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            assert node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] == NODE_GROUP_OF_STAGE[component]
        policy_pod = next(
            p for p in pods if p["metadata"]["labels"]["app.kubernetes.io/component"] == "policy"
        )
        assert "RLHF_PROGRESS" in pod_log(cluster, namespace, policy_pod["metadata"]["name"])
        row = cluster.kubectl("get", "rlhfjobs", "-n", namespace, "--no-headers").stdout.split()
        assert row[:3] == ["tiny", "evaluation", "Succeeded"]
    finally:
        cluster.down()


def pod_log(cluster: LocalCluster, namespace: str, pod: str) -> str:
    """`kubectl logs`, retried: kwok serves logs from a cache of its Logs objects keyed by the last
    resource version its informer saw, and a snapshot taken while that informer's store lags stays
    until the next Logs event. Touching the pod's Logs object makes such an event; a lasting
    failure shows which Logs objects exist."""
    for attempt in range(10):
        result = cluster.kubectl("logs", "-n", namespace, pod, check=False)
        if result.returncode == 0:
            return result.stdout
        cluster.kubectl(
            "annotate", "--overwrite", "-n", namespace, f"logs.kwok.x-k8s.io/{pod}",
            f"test.rlhf-operator.dev/refresh={attempt}", check=False,
        )  # fmt: skip
        time.sleep(2)
    objects = cluster.kubectl("get", "logs.kwok.x-k8s.io", "-n", namespace, "-o", "name", check=False)
    raise AssertionError(
        f"kubectl logs {pod}: {result.stderr.strip()}; kwok Logs objects: {objects.stdout.split()}"
    )
