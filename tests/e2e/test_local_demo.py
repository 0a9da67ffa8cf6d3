"""End to end: `kubectl apply` of the tiny RLHFJob on the local cluster, every stage a real process.

The cluster runs in executed mode: Kubernetes' own scheduler and Job controller place and track the
pods, the local pod executor runs each pod's real stage program (in place of kubelet and a container
runtime) and the operator runs with the Helm chart's configuration. Both tests share one cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="module")
def executed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The local cluster in executed mode with the CRD installed."""
    cluster = LocalCluster("e2e", home=tmp_path_factory.mktemp("clusters"), executed=True)
    cluster.up()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/rlhfjobs.rlhf-operator.dev", "--timeout=60s"
        )
        yield cluster
    finally:
        cluster.down()


def run_tiny_job(
    cluster: LocalCluster,
    namespace: str,
    job: dict[str, Any],
    workdir: Path,
    show: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Applies `job` with the operator and the pod executor running; its final status and the
    policy progress the status showed while the policy trained."""
    name = job["metadata"]["name"]
    prepare_storage(cluster, namespace, workdir / "data")
    make_tiny_assets(workdir / "data")
    progress: list[dict[str, Any]] = []

    def record(line: str) -> None:
        status = json.loads(cluster.kubectl("get", "rlhfjob", name, "-n", namespace, "-o", "json").stdout)
        metrics = status.get("status", {}).get("metrics", {})
        if status["status"].get("currentStage") == "policy" and "policyStep" in metrics:
            progress.append(metrics)
        (show or print)(line)

    with running_pipeline(cluster, namespace, workdir):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
        final = follow(cluster, namespace, name, timeout_s=1200, show=record)
    return final, progress


def stage_pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
    )["items"]
    for pod in pods:
        node = json.loads(cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        assert node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] == NODE_GROUP_OF_STAGE[component]
    return pods


@pytest.mark.timeout(1500)
def test_tiny_job_runs_for_real_and_the_policy_beats_the_base_model(
    executed_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster, namespace = executed_cluster, "rlhf-e2e"
    final, progress = run_tiny_job(cluster, namespace, yaml.safe_load(EXAMPLE.read_text()), tmp_path)

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
    plot = tmp_path / "data" / final["artifacts"]["evaluationPlot"].removeprefix("/data/")
    assert plot.stat().st_size > 1000

    pods = stage_pods(cluster, namespace)
    assert sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods) == sorted(
        ["precompute", "precompute", "ranking", "reward-model", "policy", "evaluation"]
    )
    policy_pod = next(p for p in pods if p["metadata"]["labels"]["app.kubernetes.io/component"] == "policy")
    assert "RLHF_PROGRESS" in pod_log(cluster, namespace, policy_pod["metadata"]["name"])
    row = cluster.kubectl("get", "rlhfjobs", "-n", namespace, "--no-headers").stdout.split()
    assert row[:3] == ["tiny", "evaluation", "Succeeded"]
    # The example's gate (minWinRate 0.8) is met: Promoted, and the policy copied under promoted/.
    cluster.kubectl("wait", "--for=condition=Promoted", "rlhfjob/tiny", "-n", namespace, "--timeout=60s")
    promoted = tmp_path / "data" / final["artifacts"]["promotedPolicy"].removeprefix("/data/")
    assert (promoted / "model.safetensors").exists()


@pytest.mark.timeout(1800)
def test_policy_on_two_nodes_restarts_as_a_group_and_its_fsdp_policy_wins(
    executed_cluster: LocalCluster, tmp_path: Path
) -> None:
    """`nodes: 2`, strategy fsdp: two policy pods of one Indexed Job, each a torchrun agent, meet
    at node 0's rendezvous (the headless Service's name and port, on 127.0.0.1) and train one
    sharded policy. Once a checkpoint is committed, pod 1's processes are killed (SIGKILL, as a lost
    node): the operator replaces both pods (one group restart, on the RLHFJob), the new pods resume
    from the checkpoint, the step counter continues from it, and the pipeline still wins >= 0.9."""
    cluster, namespace = executed_cluster, "rlhf-e2e-2n"
    job = yaml.safe_load(EXAMPLE.read_text())
    job["spec"]["stages"]["policy"].update(nodes=2, distributed={"strategy": "fsdp"}, checkpointInterval=5)
    steps = job["spec"]["stages"]["policy"]["steps"]
    killed: dict[str, Any] = {}

    def kill_pod_1_after_a_checkpoint(line: str) -> None:
        print(time.strftime("%H:%M:%S"), line)  # the restart's cost shows in the log
        committed = list(
            (tmp_path / "data" / "rlhf-jobs" / namespace).glob("tiny/*/policy/checkpoints/step-*/_SUCCESS")
        )
        if killed or not committed:
            return
        pods = {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
            for p in policy_pods(cluster, namespace)
        }
        if sorted(pods) != ["0", "1"] or any(p["status"].get("phase") != "Running" for p in pods.values()):
            return
        target = pods["1"]["metadata"]
        killed.update(pids=kill_pod_processes(tmp_path, namespace, target["name"], target["uid"]),
                      uids={p["metadata"]["uid"] for p in pods.values()}, after=sorted(map(str, committed)))  # fmt: skip
        print(
            time.strftime("%H:%M:%S"),
            f"killed pod {target['name']} (processes {killed['pids']}) after {killed['after'][-1]}",
        )

    final, _ = run_tiny_job(cluster, namespace, job, tmp_path, show=kill_pod_1_after_a_checkpoint)

    assert killed.get("pids"), "no checkpoint was committed while both pods ran"
    assert final["phase"] == "Succeeded", final.get("message")
    assert final["metrics"]["winRate"] >= 0.9, final["metrics"]
    assert final["metrics"]["policyStep"] == steps
    record = next(s for s in final["stages"] if s["name"] == "policy")
    assert record["restarts"] == 1 and record["restartedJobUid"], record
    events = json.loads(
        cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector", "reason=GroupRestart", "-o", "json"
        ).stdout
    )["items"]
    assert [e["type"] for e in events] == ["Warning"] and "pod 1 failed" in events[0]["message"], events
    # Both pods were replaced: the two that finished are new ones.
    policy = policy_pods(cluster, namespace)
    by_index = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in policy}
    assert sorted(by_index) == ["0", "1"] and all(p["status"]["phase"] == "Succeeded" for p in policy)
    assert not {p["metadata"]["uid"] for p in policy} & killed["uids"]
    logs = {index: pod_log(cluster, namespace, pod["metadata"]["name"]) for index, pod in by_index.items()}
    # One training run of world size 2: global rank 0 (node 0) reports progress, rank 1 does not;
    # it resumed from the checkpoint and its steps continue from there.
    assert "RLHF_PROGRESS" in logs["0"] and "RLHF_PROGRESS" not in logs["1"], logs["1"][-2000:]
    resumed = re.search(r"resumed from checkpoint step (\d+)", logs["0"])
    assert resumed is not None, logs["0"][-3000:]
    first = json.loads(
        next(ln for ln in logs["0"].splitlines() if "RLHF_PROGRESS " in ln).split("RLHF_PROGRESS ", 1)[1]
    )
    assert first["step"] == int(resumed.group(1)) + 1 and int(resumed.group(1)) >= 5, (
        resumed.group(0),
        first,
    )
    service = json.loads(
        cluster.kubectl(
            "get", "service", "-n", namespace, policy[0]["spec"]["subdomain"], "-o", "json"
        ).stdout
    )
    assert service["spec"]["clusterIP"] == "None"


def policy_pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    return [
        p
        for p in stage_pods(cluster, namespace)
        if p["metadata"]["labels"]["app.kubernetes.io/component"] == "policy"
    ]


def kill_pod_processes(workdir: Path, namespace: str, name: str, uid: str) -> list[int]:
    """SIGKILLs the process group the local pod executor started for the pod (its container's
    processes: the torchrun agent and its worker), found by their working directory, the pod's."""
    pod_dir = (workdir / "executor" / "pods" / f"{namespace}_{name}_{uid[:8]}").resolve()
    leaders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")).resolve() == pod_dir and os.getpgid(int(proc.name)) == int(
                proc.name
            ):
                leaders.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    for pid in leaders:
        os.killpg(pid, signal.SIGKILL)
    return leaders


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
