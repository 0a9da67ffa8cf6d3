"""`make demo`: the tiny RLHF job on the real node, everything in its image, installed by Helm.

The local cluster starts with its real node (hack/realnode.py: kubelet + containerd in the cluster's
network namespace) and the three images loaded into the node's containerd. `helm install` puts the
operator in its image on the node, in namespaces that enforce the restricted Pod Security Standard;
`helm test` checks it; the tiny job's stage pods then run in the worker and trainer images on the
node with the chart's securityContext, and `kubectl logs` shows each stage's output.

The one real node is every node group at once (label `local`, tainted and advertising GPUs like a
GPU group), so the demo adds a toleration of the GPU taint to the CPU stages of the example job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from demo import CHART, EXAMPLE, NAMESPACE, ROOT, follow, make_tiny_assets, prepare_storage
from localcluster import LocalCluster, image_archive, tools_dir

__all__ = ["NAMESPACE", "OPERATOR_NAMESPACE", "demo_job", "images", "prepare", "run_job"]
OPERATOR_NAMESPACE = "rlhf-system"
RELEASE = "rlhf"
CPU_STAGES = ("precompute", "ranking", "evaluation")
UID = 65532


def images(tag: str) -> dict[str, str]:
    return {role: f"localhost/rlhf-operator/{role}:{tag}" for role in ("operator", "worker", "trainer")}


def chart_values(tag: str, group: str) -> dict[str, Any]:
    gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    return {
        "images": {
            **{role: {"repository": ref.rsplit(":", 1)[0], "tag": tag} for role, ref in images(tag).items()},
            "pullPolicy": "IfNotPresent",  # loaded into the node's containerd; nothing to pull
        },
        "watchNamespaces": [NAMESPACE],
        "rbac": {"scope": "namespaced"},
        "nodeGroups": {"cpu": group, "reward": group, "policy": group},
        # The tiny job's /tmp holds caches only; 2Gi keeps the request well inside the real node's disk.
        "stages": {"progressIntervalSeconds": 1, "ephemeralStorage": "2Gi"},
        "nodeSelector": {"eks.amazonaws.com/nodegroup": group},
        "tolerations": [gpu_toleration],
    }


def demo_job(remote_reward: bool = False) -> dict[str, Any]:
    """The example job, its CPU stages tolerating the GPU taint of the one real node. `remote_reward`:
    the variant whose policy scores through the reward server's Service (`rewardPlacement: remote`)."""
    job: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    if remote_reward:
        job["metadata"]["name"] = "tiny-remote"
        job["spec"]["stages"]["policy"]["rewardPlacement"] = "remote"
    for stage in CPU_STAGES:
        pod = job["spec"]["stages"].setdefault(stage, {}).setdefault("pod", {})
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return job


def helm(cluster: LocalCluster, *args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(tools_dir() / "bin" / "helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed: {result.stderr.strip()}\n{result.stdout[-2000:]}")
    return result.stdout


def restricted_namespace(cluster: LocalCluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name, check=False)
    cluster.kubectl(
        "label", "--overwrite", "namespace", name, "pod-security.kubernetes.io/enforce=restricted"
    )


def install_operator(cluster: LocalCluster, tag: str, workdir: Path) -> None:
    restricted_namespace(cluster, OPERATOR_NAMESPACE)
    values = workdir / "values.yaml"
    values.write_text(yaml.safe_dump(chart_values(tag, cluster.node.labels["eks.amazonaws.com/nodegroup"])))
    print(f"helm install {RELEASE} {CHART.relative_to(ROOT)} -n {OPERATOR_NAMESPACE} -f {values}")
    helm(cluster, "upgrade", "--install", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "-f", str(values),
         "--wait", "--timeout", "5m")  # fmt: skip
    print(helm(cluster, "test", RELEASE, "-n", OPERATOR_NAMESPACE, "--timeout", "3m").strip())


def stage_pods(cluster: LocalCluster) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout
    )["items"]
    return pods


def prepare(cluster: LocalCluster, tag: str) -> None:
    """The shared volume with the tiny model and prompts, and the operator installed by Helm."""
    workdir = cluster.home / "demo"
    data_dir = workdir / "data"
    prepare_storage(cluster, NAMESPACE, data_dir)
    restricted_namespace(cluster, NAMESPACE)
    print("writing the tiny model and the synthetic prompts onto the shared volume ...")
    make_tiny_assets(data_dir)
    # A hostPath volume gets no fsGroup: the stages (UID 65532) own the data they write.
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(data_dir)], check=True)
    install_operator(cluster, tag, workdir)


def run_job(
    cluster: LocalCluster, job: dict[str, Any], timeout_s: float, show: Callable[[str], None] = print
) -> dict[str, Any]:
    """Applies the job and follows it to its end (`show` gets each stage change); returns its final status."""
    cluster.kubectl("delete", "rlhfjob", job["metadata"]["name"], "-n", NAMESPACE, "--ignore-not-found")
    print(f"kubectl apply -f {EXAMPLE.relative_to(ROOT)} -n {NAMESPACE}  (CPU stages tolerate the GPU taint)")
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(job))
    return follow(cluster, NAMESPACE, job["metadata"]["name"], timeout_s, show)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", default="demo-real", help="name of the local cluster")
    parser.add_argument("--tag", default=os.environ.get("TAG", "dev"), help="tag of the local images")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--remote-reward", action="store_true", help="the reward server variant of the job")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo runs a real kubelet and containerd, which need root: run `sudo make demo`, or "
              "`make demo-processes` for the same job on simulated nodes without root", file=sys.stderr)  # fmt: skip
        return 2
    started = time.monotonic()
    archives = [image_archive(*images(args.tag).values())]
    print(f"starting the local cluster {args.name} with its real node (images loaded into containerd) ...")
    cluster = LocalCluster(args.name, real_node=True, real_node_images=archives)
    cluster.up()
    print(f"cluster up after {time.monotonic() - started:.0f}s")
    prepare(cluster, args.tag)
    status = run_job(cluster, demo_job(args.remote_reward), args.timeout)
    print(cluster.kubectl("get", "pods", "-A", "-o", "wide", "--field-selector",
                          f"spec.nodeName={cluster.node.name}").stdout)  # fmt: skip
    for pod in stage_pods(cluster):
        name = pod["metadata"]["name"]
        tail = cluster.kubectl("logs", "-n", NAMESPACE, name, "--tail=3", check=False).stdout.strip()
        print(f"--- kubectl logs -n {NAMESPACE} {name} --tail=3\n{tail}")
    print(cluster.kubectl("get", "rlhfjobs", "-n", NAMESPACE, "-o", "wide").stdout)
    metrics = status.get("metrics", {})
    print(
        f"phase {status.get('phase')}; win rate {metrics.get('winRate')}, reward gain {metrics.get('rewardGain')}"
    )
    print(f"export KUBECONFIG={cluster.kubeconfig}   # the cluster stays up; `make demo-down` removes it")
    print(f"demo finished in {time.monotonic() - started:.0f}s")
    return 0 if status.get("phase") == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
