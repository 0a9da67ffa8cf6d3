"""A real local Kubernetes control plane with simulated EKS node groups, for tests and demos.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as local processes (started
by kwokctl's binary runtime, bound to 127.0.0.1); kwok simulates the nodes of the node groups in
`cluster/nodegroups.yaml` and plays pod lifecycles by the Stages in `cluster/pod-stages.yaml`.
Scheduling, the Job controller, garbage collection, RBAC and admission are Kubernetes' own.

    python hack/localcluster.py up [--name NAME]       # idempotent
    python hack/localcluster.py status [--name NAME]
    python hack/localcluster.py down [--name NAME]     # stops every process, removes its files
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from realnode import KUBERNETES_SERVICE_IP, NODE_IP, SERVICE_CIDR, RealNode, egress_selector

HERE = Path(__file__).resolve().parent
NODEGROUPS_FILE = HERE / "cluster" / "nodegroups.yaml"
POD_STAGES_FILE = HERE / "cluster" / "pod-stages.yaml"
DEFAULT_NAME = "rlhf"
NODEGROUP_LABEL = "eks.amazonaws.com/nodegroup"
GPU_RESOURCE = "nvidia.com/gpu"
# kwok's own node lifecycle and the pod stages we keep from it; pod completion is ours.
NODE_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
)
POD_READY_STAGE = "pod/fast/pod-ready.yaml"
POD_DELETE_STAGE = "pod/fast/pod-delete.yaml"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
# Admission beyond the defaults, as strict clusters (OpenShift, hardened EKS) run it: setting
# `blockOwnerDeletion` on a child needs `update` on the owner's finalizers (the chart's RBAC grants
# the operator rlhfjobs/finalizers; the tests would see a missing grant as refused creates).
APISERVER_ARGS = {"enable-admission-plugins": "OwnerReferencesPermissionEnforcement"}


class ClusterError(RuntimeError):
    """The local cluster could not be brought to the asked state; the message says why."""


def wait_established(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], *crds: str, timeout_s: float = 60
) -> None:
    """`kubectl wait --for=condition=Established` on CRDs just applied. kubectl errs at once instead of
    waiting while a new CRD has no status yet (".status.conditions accessor error"): ask again until
    `timeout_s`. `kubectl` is a cluster handle's `kubectl(*args, check=...)`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = kubectl("wait", "--for=condition=Established", *crds, "--timeout=10s", check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{' '.join(crds)} not Established after {timeout_s:.0f}s: {result.stderr.strip()}"
            )
        time.sleep(1)


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlhf-operator"


def tools_dir() -> Path:
    return Path(os.environ.get("RLHF_TOOLS_DIR", cache_root() / "tools"))


def clusters_home() -> Path:
    return Path(os.environ.get("RLHF_CLUSTER_HOME", cache_root() / "clusters"))


@dataclass(frozen=True)
class NodeGroup:
    name: str
    count: int
    instance_type: str
    cpu: str
    memory: str
    gpus: int = 0
    gpu_product: str = ""


@dataclass(frozen=True)
class ClusterShape:
    region: str
    zones: list[str]
    node_groups: list[NodeGroup] = field(default_factory=list)
    real_node_group: str = "local"
    real_node_gpus: int = 0


def load_shape(path: Path = NODEGROUPS_FILE) -> ClusterShape:
    data = yaml.safe_load(path.read_text())
    groups = [
        NodeGroup(
            name=g["name"],
            count=int(g["count"]),
            instance_type=g["instanceType"],
            cpu=str(g["cpu"]),
            memory=str(g["memory"]),
            gpus=int(g.get("gpus", 0)),
            gpu_product=g.get("gpuProduct", ""),
        )
        for g in data["nodeGroups"]
    ]
    real = data.get("realNode", {})
    return ClusterShape(
        region=data["region"],
        zones=list(data["zones"]),
        node_groups=groups,
        real_node_group=real.get("nodeGroup", "local"),
        real_node_gpus=int(real.get("gpus", 0)),
    )


def node_manifests(shape: ClusterShape) -> list[dict[str, Any]]:
    """Nodes labelled and tainted as EKS managed node groups label and taint them."""
    nodes = []
    for group in shape.node_groups:
        for i in range(group.count):
            name = f"{group.name}-{i}"
            zone = shape.zones[i % len(shape.zones)]
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                NODEGROUP_LABEL: group.name,
                "eks.amazonaws.com/capacityType": "ON_DEMAND",
                "node.kubernetes.io/instance-type": group.instance_type,
                "topology.kubernetes.io/region": shape.region,
                "topology.kubernetes.io/zone": zone,
            }
            capacity = {"cpu": group.cpu, "memory": group.memory, "pods": "110", "ephemeral-storage": "500Gi"}
            taints = []
            if group.gpus:
                labels |= {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": group.gpu_product}
                capacity[GPU_RESOURCE] = str(group.gpus)
                taints.append({"key": GPU_RESOURCE, "value": "true", "effect": "NoSchedule"})
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                    },
                    "spec": {
                        "providerID": f"aws:///{zone}/i-{zlib.crc32(name.encode()):017x}",
                        "taints": taints,
                    },
                    "status": {"capacity": capacity, "allocatable": capacity},
                }
            )
    return nodes


def read_versions(tools: Path) -> dict[str, str]:
    versions_file = tools / "versions"
    if not versions_file.exists():
        raise ClusterError(f"no tools in {tools}: run `make tools` (hack/install-tools.sh) first")
    pairs = (line.split("=", 1) for line in versions_file.read_text().split())
    return dict(pairs)


class LocalCluster:
    def __init__(
        self,
        name: str = DEFAULT_NAME,
        home: Path | None = None,
        tools: Path | None = None,
        *,
        executed: bool = False,
        real_node: bool = False,
        real_node_images: list[Path] | None = None,
    ) -> None:
        """`executed`: kwok leaves pods alone once scheduled, for the local pod executor to run them.
        `real_node`: one real node (hack/realnode.py) joins beside the kwok nodes, with the image
        archives in `real_node_images` loaded into its containerd."""
        self.name = name
        self.executed = executed
        self.real_node = real_node
        self.real_node_images = real_node_images or []
        self.home = (home or clusters_home()) / name
        self.tools = tools or tools_dir()
        self.bin = self.tools / "bin"
        self.kubeconfig = self.home / "kubeconfig"
        self.workdir = self.home / "kwok"
        shape = load_shape()
        self.node = RealNode(
            name,
            self.home,
            self.bin,
            labels={NODEGROUP_LABEL: shape.real_node_group},
            gpus=shape.real_node_gpus,
        )

    # ----- commands ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return dict(
            os.environ, PATH=f"{self.bin}:{os.environ.get('PATH', '')}", KWOK_WORKDIR=str(self.workdir)
        )

    def _run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args, input=input, capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ClusterError(f"`{' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def kwokctl(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self._run(str(self.bin / "kwokctl"), "--name", self.name, *args, check=check, timeout=timeout)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._run(
            str(self.bin / "kubectl"),
            "--kubeconfig",
            str(self.kubeconfig),
            *args,
            input=input,
            check=check,
            timeout=timeout,
        )

    # ----- lifecycle --------------------------------------------------------------------------
    def exists(self) -> bool:
        if not self.workdir.exists():
            return False
        result = self._run(str(self.bin / "kwokctl"), "get", "clusters", check=False)
        return self.name in result.stdout.split()

    def healthy(self) -> bool:
        return (
            self.kubeconfig.exists() and self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0
        )

    def up(self, wait_s: float = 180) -> None:
        """Starts the cluster, or keeps the one already running: calling it twice gives one cluster."""
        if self.exists():
            if self.healthy():
                self._ensure_nodes(wait_s)
                return
            # Left over from a reboot or a killed session: its processes are gone, start afresh.
            self.down()
        versions = read_versions(self.tools)
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "kwokctl.yaml"
        config.write_text(self._kwokctl_config(versions))
        self.kwokctl(
            "create", "cluster", "--config", str(config), "--wait", f"{int(wait_s)}s", timeout=wait_s + 60
        )
        kubeconfig = self.kwokctl("get", "kubeconfig").stdout
        self.kubeconfig.write_text(kubeconfig)
        self.kubeconfig.chmod(0o600)
        self._ensure_nodes(wait_s)
        if self.real_node:
            flat = self.kubectl("config", "view", "--raw", "--minify", "--flatten").stdout
            (self.home / "kubeconfig.flat").write_text(flat)
            self.node.up(self.home / "kubeconfig.flat", self.api_port(), self.real_node_images)
            self.node.wait_ready(self.kubectl)

    def api_port(self) -> int:
        server = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        return int(server.rsplit(":", 1)[1])

    def down(self) -> None:
        """Stops every process this cluster started and removes its files."""
        self.node.down()
        if self.workdir.exists():
            self.kwokctl("delete", "cluster", check=False, timeout=120)
        for pid in self.pids():
            _terminate(pid)
        shutil.rmtree(self.home, ignore_errors=True)

    def pids(self) -> list[int]:
        """Processes whose command line names this cluster's directory: everything it started."""
        marker = str(self.home)
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(proc.name))
        return found

    def status(self) -> dict[str, Any]:
        if not self.exists():
            return {"name": self.name, "running": False}
        nodes = (
            json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"] if self.healthy() else []
        )
        groups = Counter(n["metadata"]["labels"].get(NODEGROUP_LABEL, "") for n in nodes)
        version = json.loads(self.kubectl("version", "-o", "json", check=False).stdout or "{}")
        return {
            "name": self.name,
            "running": self.healthy(),
            "kubeconfig": str(self.kubeconfig),
            "server": version.get("serverVersion", {}).get("gitVersion"),
            "nodeGroups": dict(groups),
            "processes": len(self.pids()),
        }

    # ----- internals --------------------------------------------------------------------------
    def _kwokctl_config(self, versions: dict[str, str]) -> str:
        options: dict[str, Any] = {
            "kind": "KwokctlConfiguration",
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "options": {
                "runtime": "binary",
                "bindAddress": "127.0.0.1",
                "kubeApiserverBinary": str(self.bin / "kube-apiserver"),
                "kubeControllerManagerBinary": str(self.bin / "kube-controller-manager"),
                "kubeSchedulerBinary": str(self.bin / "kube-scheduler"),
                "kubectlBinary": str(self.bin / "kubectl"),
                "etcdBinary": str(self.bin / "etcd"),
                "etcdctlBinary": str(self.bin / "etcdctl"),
                "kwokControllerBinary": str(self.bin / "kwok"),
                "kubeVersion": f"v{versions['k8s']}",
                "etcdVersion": versions["etcd"],
                "components": list(COMPONENTS),
                # Per-pod Logs and Exec objects let `kubectl logs` read the files the local pod
                # executor writes and `kubectl exec` run commands in a pod's mounted directories.
                "enableCRDs": ["Logs", "Exec"],
            },
        }
        if self.real_node:
            sans, patches = self._real_node_options()
            options["options"]["kubeApiserverCertSANs"] = sans
            options["componentsPatches"] = patches
        else:
            extra = [{"key": k, "value": v} for k, v in APISERVER_ARGS.items()]
            options["componentsPatches"] = [{"name": "kube-apiserver", "extraArgs": extra}]
        stages_dir = self.tools / "kwok-stages"
        documents = [yaml.safe_dump(options, sort_keys=False)]
        stages = (
            [*NODE_STAGES, POD_DELETE_STAGE]
            if self.executed
            else [*NODE_STAGES, POD_READY_STAGE, POD_DELETE_STAGE]
        )
        for stage in stages:
            path = stages_dir / stage
            if not path.exists():
                raise ClusterError(f"kwok stage {path} is missing: run `make tools` to reinstall kwok")
            documents.append(path.read_text())
        if not self.executed:
            documents.append(POD_STAGES_FILE.read_text())
        return "\n---\n".join(documents)

    def _real_node_options(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The API server as a real node needs it; kwok keeps to its own (annotated) nodes."""
        selector = self.home / "egress-selector.yaml"
        selector.write_text(yaml.safe_dump(egress_selector(self.node.proxy_socket)))
        apiserver = {
            **APISERVER_ARGS,
            # The `kubernetes` Service's endpoint: nsforward listens there, inside the namespace.
            "advertise-address": NODE_IP,
            "service-cluster-ip-range": SERVICE_CIDR,
            "egress-selector-config-file": str(selector),
            "kubelet-preferred-address-types": "InternalIP",
        }
        kwok = {
            "manage-all-nodes": "false",
            "manage-nodes-with-annotation-selector": "kwok.x-k8s.io/node=fake",
        }
        patches = [
            {
                "name": component,
                # `override` replaces an argument kwokctl passes; the others are added.
                "extraArgs": [
                    {"key": k, "value": v, "override": k == "manage-all-nodes"} for k, v in args.items()
                ],
            }
            for component, args in (("kube-apiserver", apiserver), ("kwok-controller", kwok))
        ]
        return [KUBERNETES_SERVICE_IP, NODE_IP], patches

    def _ensure_nodes(self, wait_s: float) -> None:
        nodes = node_manifests(load_shape())
        existing = set(self.kubectl("get", "nodes", "-o", "name").stdout.split())
        missing = [n for n in nodes if f"node/{n['metadata']['name']}" not in existing]
        if missing:
            # Client-side create: Node status (capacity, GPUs) may be set on create only.
            body = json.dumps({"apiVersion": "v1", "kind": "List", "items": missing})
            self.kubectl("create", "-f", "-", input=body)
        self.kubectl(
            "wait",
            "--for=condition=Ready",
            "nodes",
            "--all",
            f"--timeout={int(wait_s)}s",
            timeout=wait_s + 30,
        )


def image_archive(*images: str) -> Path:
    """One docker-archive of locally built images (hack/image-archive.sh), for the real node."""
    result = subprocess.run(
        ["bash", str(HERE / "image-archive.sh"), *images], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ClusterError(result.stderr.strip())
    return Path(result.stdout.strip())


def _terminate(pid: int, grace_s: float = 5) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "kubeconfig"])
    parser.add_argument("--name", default=os.environ.get("RLHF_CLUSTER_NAME", DEFAULT_NAME))
    parser.add_argument(
        "--executed",
        action="store_true",
        help="leave pods to the local pod executor instead of simulating them",
    )
    parser.add_argument(
        "--real-node", action="store_true", help="add a real node (kubelet + containerd; needs root)"
    )
    parser.add_argument(
        "--image", action="append", default=[], help="local image to load into the real node (repeatable)"
    )
    args = parser.parse_args(argv)
    archives = [image_archive(*args.image)] if args.image else []
    cluster = LocalCluster(
        args.name, executed=args.executed, real_node=args.real_node, real_node_images=archives
    )
    try:
        if args.command == "up":
            started = time.monotonic()
            cluster.up()
            print(f"cluster {args.name} up in {time.monotonic() - started:.1f}s")
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        elif args.command == "down":
            cluster.down()
            print(f"cluster {args.name} removed")
        elif args.command == "kubeconfig":
            print(cluster.kubeconfig)
        else:
            print(json.dumps(cluster.status(), indent=2))
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
