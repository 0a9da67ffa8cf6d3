"""The real node (hack/realnode.py): a kubelet and containerd in the cluster's network namespace.

A pod in the operator image runs on it with the chart's securityContext, reaches the API server
through the `kubernetes` Service (kube-proxy) by its DNS name (CoreDNS), and `kubectl logs` and
`exec` reach it. Meanwhile the host's own namespace gains no address; after `down` the host has the
same processes, mounts, network namespaces, interfaces, iptables rules and cgroups as before.

Needs root and the node's packages (`make node-packages`), tools (`make node-tools`) and the
operator image (`make images`); `make test-node` does all of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import LocalCluster, image_archive
from realnode import CGROUP_ROOT, NODE_IP

OPERATOR_IMAGE = "localhost/rlhf-operator/operator:dev"
PROBE = """
import getpass, os, socket, ssl, urllib.request
print("user", getpass.getuser(), os.getuid())
print("dns", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
request = urllib.request.Request(
    "https://kubernetes.default.svc/version", headers={"Authorization": "Bearer " + open(f"{sa}/token").read()}
)
print("api", urllib.request.urlopen(request, context=context, timeout=10).status)
try:
    open("/outside", "w")
except OSError as err:
    print("root", err.errno)
import time; time.sleep(3600)
"""


def host_state() -> dict[str, Any]:
    """What a node could leave behind on the host, as seen from the host's namespaces."""

    def run(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    cgroups = sorted(str(p) for h in CGROUP_ROOT.iterdir() if h.is_dir() for p in h.iterdir() if p.is_dir())
    return {
        "addresses": run("ip", "-o", "addr", "show"),
        "links": sorted(line.split(":")[1].strip() for line in run("ip", "-o", "link", "show").splitlines()),
        "netns": run("ip", "netns", "list"),
        "iptables": [run(tool, "-t", table, "-S") for tool in ("iptables", "ip6tables")
                     for table in ("filter", "nat", "mangle")],
        "mounts": sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()),
        "cgroups": cgroups,
        "dirs": [d for d in ("/run/netns", "/run/containerd", "/var/lib/cni", "/var/log/containers")
                 if Path(d).exists()],
        "processes": sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()),
    }  # fmt: skip


@pytest.fixture(scope="module")
def before() -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.fail("the real node needs root: run `make test-node` as root (or with sudo)")
    return host_state()


@pytest.fixture(scope="module")
def real_cluster(before: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        "realnode", home=tmp_path_factory.mktemp("clusters"), real_node=True,
        real_node_images=[image_archive(OPERATOR_IMAGE)],
    )  # fmt: skip
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def kubectl_json(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl(*args, "-o", "json").stdout)
    return result


def test_node_joins_with_its_group_taint_and_gpus(real_cluster: LocalCluster) -> None:
    node = kubectl_json(real_cluster, "get", "node", real_cluster.node.name)
    assert node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] == "local"
    assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert {"type": "InternalIP", "address": NODE_IP} in node["status"]["addresses"]
    # The kwok nodes stay kwok's: the simulated groups are still there beside the real node.
    kwok = [
        n
        for n in kubectl_json(real_cluster, "get", "nodes")["items"]
        if n["metadata"]["name"].startswith("cpu-")
    ]
    assert kwok and all(n["status"]["nodeInfo"]["kubeletVersion"].startswith("kwok") for n in kwok)


def test_pod_runs_restricted_and_reaches_the_api_through_service_and_dns(
    real_cluster: LocalCluster, before: dict[str, Any]
) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"eks.amazonaws.com/nodegroup": "local"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main", "image": OPERATOR_IMAGE, "imagePullPolicy": "Never",
                "command": ["python", "-c", PROBE],
                "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "256Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }  # fmt: skip
    real_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    real_cluster.kubectl("wait", "--for=condition=Ready", "pod/probe", "--timeout=120s", timeout=150)
    placed = kubectl_json(real_cluster, "get", "pod", "probe")
    assert placed["spec"]["nodeName"] == real_cluster.node.name

    logs = ""
    deadline = time.monotonic() + 60
    while "root " not in logs and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = real_cluster.kubectl("logs", "probe").stdout
    assert "user nonroot 65532" in logs
    assert "dns 10.96.0.1" in logs  # kubernetes.default resolves to the Service's cluster IP
    assert "api 200" in logs  # through kube-proxy to the API server on the host's loopback
    assert "root 30" in logs  # EROFS: the root filesystem is read-only
    assert real_cluster.kubectl("exec", "probe", "--", "id", "-u").stdout.strip() == "65532"
    # While the cluster runs, the host's own namespace has no new address, link or iptables rule.
    now = host_state()
    for key in ("addresses", "links", "iptables"):
        assert now[key] == before[key], key


def test_down_leaves_nothing_behind(real_cluster: LocalCluster, before: dict[str, Any]) -> None:
    assert real_cluster.node.pids(), "the node should be running before down"
    real_cluster.down()
    assert real_cluster.node.leftovers() == []
    after = host_state()
    # Other sessions on the machine may mount or make cgroups meanwhile: compare what the node touches.
    home = str(real_cluster.home)
    for key, ours in (
        (
            "mounts",
            lambda m: m.startswith(home) or m.startswith(("/run/netns", "/run/containerd", "/var/lib/cni")),
        ),
        ("cgroups", lambda c: Path(c).name.startswith("rlhf-")),
    ):
        assert [x for x in after[key] if ours(x)] == [x for x in before[key] if ours(x)], key
    for key in ("addresses", "links", "netns", "iptables", "dirs"):
        assert after[key] == before[key], key
    started = set(after["processes"]) - set(before["processes"])
    assert [pid for pid in started if home in _cmdline(pid)] == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
