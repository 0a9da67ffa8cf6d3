"""`make demo-processes`: one RLHF job from `kubectl apply` to an evaluated policy, on the local cluster.

Brings up the local cluster in executed mode (kwok nodes whose pods the local pod executor runs as
real processes), runs the operator with the Helm chart's configuration, writes the tiny model and
the synthetic prompts onto the shared volume, applies `examples/tiny-rlhfjob.yaml` and follows the
job until it ends, printing each stage as it advances and the final evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import config as kube_config

from localcluster import LocalCluster, tools_dir, wait_established
from podexecutor import PodExecutor
from rlhf_operator.local_runner import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny-rlhfjob.yaml"
CHART = ROOT / "charts" / "rlhf-operator"
NAMESPACE = "rlhf-demo"
CLAIM = "rlhf-data"


def chart_operator_env(namespace: str) -> dict[str, str]:
    """The RLHF_OPERATOR_* settings the Helm chart gives the operator, for a local operator process.

    The tiny policy trains in about five seconds, as long as the chart's default progress interval,
    so the demo reads progress every second to show it while it trains.
    """
    helm = tools_dir() / "bin" / "helm"
    rendered = subprocess.run(
        [str(helm), "template", "rlhf-operator", str(CHART), "--set", f"watchNamespaces={{{namespace}}}",
         "--set", "rbac.scope=namespaced", "--set", "stages.progressIntervalSeconds=1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if rendered.returncode != 0:
        raise RuntimeError(f"helm template failed: {rendered.stderr.strip()}")
    for document in yaml.safe_load_all(rendered.stdout):
        if document and document.get("kind") == "Deployment":
            container = document["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
            return {k: v for k, v in env.items() if k.startswith("RLHF_OPERATOR_")}
    raise RuntimeError("the chart renders no operator Deployment")


def prepare_storage(cluster: LocalCluster, namespace: str, data_dir: Path) -> None:
    """The shared volume: a hostPath PersistentVolume pre-bound to the claim the example names."""
    data_dir.mkdir(parents=True, exist_ok=True)
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-{CLAIM}"},
         "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                  "hostPath": {"path": str(data_dir)}, "claimRef": {"namespace": namespace, "name": CLAIM},
                  "persistentVolumeReclaimPolicy": "Retain"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}},
                  "storageClassName": "", "volumeName": f"{namespace}-{CLAIM}"}},
    ]  # fmt: skip
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )


def make_tiny_assets(data_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "rlhf_operator.workloads", "make-tiny-assets", "--out", str(data_dir)],
        check=True, capture_output=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip


@contextmanager
def running_pipeline(
    cluster: LocalCluster, namespace: str, workdir: Path, metrics_port: int = 0
) -> Iterator[None]:
    """The local pod executor and the operator (watching `namespace`, comma-separated for several;
    its Prometheus metrics on 127.0.0.1:`metrics_port` unless 0), for as long as the block runs."""
    api = kube_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    executor = PodExecutor(api, workdir / "executor", Path(sys.executable))
    thread = threading.Thread(target=executor.run, name="executor", daemon=True)
    thread.start()
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), **chart_operator_env(namespace))
    env["RLHF_OPERATOR_METRICS_PORT"] = str(metrics_port)
    log = (workdir / "operator.log").open("ab")
    # A free port: Kopf reads port 0 as 80, which another service may hold (or a non-root user may
    # not bind), and the operator stops when its health endpoint cannot listen.
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    operator = subprocess.Popen(
        [sys.executable, "-m", "rlhf_operator", "operator", f"--liveness={liveness}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_until_live(operator, liveness, workdir / "operator.log")
        yield
    finally:
        operator.terminate()
        try:
            operator.wait(15)
        except subprocess.TimeoutExpired:
            operator.kill()
        executor.stop()
        thread.join(10)


def _wait_until_live(
    operator: subprocess.Popen[bytes], liveness: str, log: Path, timeout_s: float = 120
) -> None:
    """Fails at once, with the operator's log, when it exits instead of coming up."""
    deadline = time.monotonic() + timeout_s
    while operator.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(liveness, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise RuntimeError(f"the operator did not come up (exit code {operator.poll()}):\n{tail}")


def follow(
    cluster: LocalCluster, namespace: str, name: str, timeout_s: float, show: Callable[[str], None] = print
) -> dict[str, Any]:
    """Prints the job's stages as they advance; returns its final status."""
    seen: dict[str, str] = {}
    last_step = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = cluster.kubectl("get", "rlhfjob", name, "-n", namespace, "-o", "json", check=False)
        status = json.loads(result.stdout).get("status", {}) if result.returncode == 0 else {}
        for stage in status.get("stages", []):
            if seen.get(stage["name"]) != stage.get("state"):
                seen[stage["name"]] = stage.get("state", "")
                show(f"  {stage['name']:<12} {stage.get('state', ''):<10} {stage.get('message', '')}")
        metrics = status.get("metrics", {})
        if metrics.get("policyStep") not in (None, last_step) and status.get("currentStage") == "policy":
            last_step = metrics["policyStep"]
            show(f"  policy step {last_step}/{metrics.get('policyTotalSteps')}: "
                 f"reward {metrics.get('meanReward', float('nan')):.3f}, KL {metrics.get('kl', float('nan')):.3f}")  # fmt: skip
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        time.sleep(1)
    raise TimeoutError(f"{name} did not finish within {timeout_s:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", default="demo", help="name of the local cluster")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    started = time.monotonic()
    cluster = LocalCluster(args.name, executed=True)
    print(f"starting the local cluster {args.name} ...")
    cluster.up()
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    wait_established(cluster.kubectl, "crd/rlhfjobs.rlhf-operator.dev")
    workdir = cluster.home / "demo"
    data_dir = workdir / "data"
    prepare_storage(cluster, NAMESPACE, data_dir)
    print("writing the tiny model and the synthetic prompts onto the shared volume ...")
    make_tiny_assets(data_dir)
    job = yaml.safe_load(EXAMPLE.read_text())
    name = job["metadata"]["name"]
    cluster.kubectl("delete", "rlhfjob", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
    with running_pipeline(cluster, NAMESPACE, workdir):
        print(f"kubectl apply -f {EXAMPLE.relative_to(ROOT)} -n {NAMESPACE}")
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
        status = follow(cluster, NAMESPACE, name, args.timeout)
    print()
    print(cluster.kubectl("get", "rlhfjobs", "-n", NAMESPACE, "-o", "wide").stdout)
    metrics, artifacts = status.get("metrics", {}), status.get("artifacts", {})
    if status["phase"] == "Succeeded":
        print(
            f"win rate over the base model: {metrics.get('winRate')}, reward gain: {metrics.get('rewardGain')}"
        )
        plot = artifacts.get("evaluationPlot", "")
        print(f"reward distributions plot: {plot.replace('/data', str(data_dir), 1)}")
    else:
        print(f"the job failed: {status.get('message')}")
    print(f"pod logs: kubectl logs -n {NAMESPACE} <pod> (also in {workdir / 'executor' / 'logs'})")
    print(f"export KUBECONFIG={cluster.kubeconfig}   # the cluster stays up; `make demo-down` removes it")
    print(f"demo finished in {time.monotonic() - started:.0f}s")
    return 0 if status["phase"] == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
