"""One real node in the local cluster: kubelet + containerd + runc + CNI bridge, kube-proxy, CoreDNS.

Every non-loopback address lives in a network namespace made for the cluster (`ip netns add`):
the node's address, the pod bridge and range, the Service range and the DNS server. The control
plane stays on the host's 127.0.0.1; `hack/nsforward.py` joins the two without an interface on the
host: it listens inside the namespace and forwards to the API server on the host's loopback, and
gives the API server an HTTP CONNECT proxy into the namespace (for logs, exec, port-forward).

The node's processes run in a private mount namespace (`unshare -m`), so every mount containerd and
the kubelet make dies with it, and the sysctls the kubelet would set on the host are bind-mounted
files. Every process (node daemons, shims, containers, the forwarder) is in one cgroup tree per
hierarchy, `/sys/fs/cgroup/<controller>/rlhf-<cluster>/`; `down` kills what is in it, removes it,
and deletes the namespace (its interfaces and iptables rules go with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
NODE_IP = "10.201.0.1"
POD_CIDR = "10.202.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CGROUP_ROOT = Path("/sys/fs/cgroup")
GIB = 1 << 30
PAUSE_IMAGE = "localhost/rlhf-operator/pause:catatonit"
# What the kubelet sets on its host (pkg/kubelet/cm setupKernelTunables): read from these files instead.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10", "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000", "kernel/keys/root_maxbytes": "25000000",
}  # fmt: skip
# Host paths the node's daemons write to whatever their configuration says; a private tmpfs in the
# node's mount namespace hides each one.
PRIVATE_DIRS = ("/run/netns", "/run/containerd", "/var/lib/cni", "/var/log/containers")
PACKAGES = {"containerd": "containerd", "runc": "runc", "/usr/lib/cni/bridge": "containernetworking-plugins",
            "iptables": "iptables", "catatonit": "catatonit", "buildah": "buildah"}  # fmt: skip


def images_cache() -> Path:
    """Where hack/build-images.sh keeps image archives (the same place containers-env.sh names)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlhf-operator" / "images"


class NodeError(RuntimeError):
    """The real node could not be brought up; the message says why and what to do."""


def egress_selector(socket_path: Path) -> dict[str, Any]:
    """The API server's egress to the cluster (kubelets, pods, Services) through nsforward's proxy."""
    return {
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [
            {"name": "cluster", "connection": {"proxyProtocol": "HTTPConnect",
                                               "transport": {"uds": {"udsName": str(socket_path)}}}},
        ],
    }  # fmt: skip


class RealNode:
    def __init__(
        self, cluster_name: str, home: Path, bin_dir: Path, *, labels: dict[str, str], gpus: int
    ) -> None:
        self.cluster_name = cluster_name
        self.name = f"{cluster_name}-node"
        self.netns = f"rlhf-{cluster_name}"
        self.cgroup = f"rlhf-{cluster_name}"
        self.home = home / "node"
        self.bin = bin_dir
        self.labels = labels
        self.gpus = gpus
        self.proxy_socket = home / "egress.sock"

    # ----- up ---------------------------------------------------------------------------------
    def check_host(self) -> None:
        if os.geteuid() != 0:
            raise NodeError("the real node needs root (network namespace, mounts, cgroups)")
        missing = sorted(
            {pkg for tool, pkg in PACKAGES.items() if not shutil.which(tool) and not Path(tool).exists()}
        )
        if missing:
            raise NodeError(f"missing packages for the real node: apt-get install {' '.join(missing)}")
        for tool in ("kubelet", "kube-proxy", "coredns"):
            if not (self.bin / tool).exists():
                raise NodeError(f"{self.bin / tool} is missing: run `make node-tools`")

    def up(self, kubeconfig: Path, api_port: int, images: list[Path]) -> None:
        self.check_host()
        check_disk(self.home.parent, images)
        self.home.mkdir(parents=True, exist_ok=True)
        # Mount points of the private tmpfs's (and `ip netns`'s own /run/netns) made on the host's
        # filesystem: recorded so `down` removes those that were not there before.
        created = [d for d in (*PRIVATE_DIRS, "/run/netns") if not Path(d).exists()]
        for directory in PRIVATE_DIRS:
            Path(directory).mkdir(parents=True, exist_ok=True)
        (self.home / "created-dirs").write_text("\n".join(created))
        self._make_netns()
        self._make_cgroups()
        self._write_configs(kubeconfig, api_port)
        self._start_forwarder(api_port)
        self._start_node()
        self._wait_for_socket(self.home / "containerd" / "containerd.sock", 30)
        for archive in [self._pause_image(), *images]:
            self._ctr("images", "import", str(archive))

    def _make_netns(self) -> None:
        if not Path(f"/run/netns/{self.netns}").exists():
            _run("ip", "netns", "add", self.netns)
        ns = ("ip", "-n", self.netns)
        _run(*ns, "link", "set", "lo", "up")
        if _run(*ns, "link", "show", "rlhf-node", check=False).returncode != 0:
            # A bridge without ports holds the node's address (this kernel may have no dummy driver).
            _run(*ns, "link", "add", "rlhf-node", "type", "bridge")
            _run(*ns, "addr", "add", f"{NODE_IP}/32", "dev", "rlhf-node")
            _run(*ns, "link", "set", "rlhf-node", "up")
            # Anything not in the cluster goes nowhere: the namespace has no way out.
            _run(*ns, "route", "add", "default", "dev", "rlhf-node")

    def _make_cgroups(self) -> None:
        for hierarchy in self._hierarchies():
            (hierarchy / self.cgroup / "node").mkdir(parents=True, exist_ok=True)
            if hierarchy.name == "cpuset":  # a new cpuset cgroup starts empty; inherit the parent's
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    for path in (hierarchy / self.cgroup, hierarchy / self.cgroup / "node"):
                        (path / knob).write_text((path.parent / knob).read_text())

    def _write_configs(self, kubeconfig: Path, api_port: int) -> None:
        h = self.home
        for sub in ("containerd", "cni/net.d", "cni/ipam", "kubelet/root", "kubelet/logs", "sysctl"):
            (h / sub).mkdir(parents=True, exist_ok=True)
        flat = yaml.safe_load(kubeconfig.read_text())
        for cluster in flat["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{api_port}"
        (h / "kubeconfig").write_text(yaml.safe_dump(flat))
        (h / "containerd" / "config.toml").write_text(CONTAINERD_CONFIG.format(home=h, pause=PAUSE_IMAGE))
        (h / "cni/net.d/10-rlhf.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        (h / "kubelet" / "config.yaml").write_text(yaml.safe_dump(self._kubelet_config()))
        (h / "kube-proxy.yaml").write_text(yaml.safe_dump(self._kube_proxy_config()))
        (h / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")
        (h / "Corefile").write_text(COREFILE.format(ip=NODE_IP, kubeconfig=h / "kubeconfig"))
        for key, value in KUBELET_SYSCTLS.items():
            (h / "sysctl" / key.replace("/", ".")).write_text(value + "\n")
        (h / "node.sh").write_text(self._node_script())

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "rlhf-pods",
            "plugins": [
                {"type": "bridge", "bridge": "rlhf-pods", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.home / "cni" / "ipam"),
                          "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }  # fmt: skip

    def _kubelet_config(self) -> dict[str, Any]:
        h = self.home
        socket = f"unix://{h / 'containerd' / 'containerd.sock'}"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": 10250, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{self.cgroup}",
            "containerRuntimeEndpoint": socket, "imageServiceEndpoint": socket, "podLogsDir": str(h / "kubelet/logs"),
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "failSwapOn": False, "clusterDomain": "cluster.local", "clusterDNS": [NODE_IP],
            "resolvConf": str(h / "resolv.conf"), "rotateCertificates": False, "serializeImagePulls": False,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
            "imageGCHighThresholdPercent": 99, "imageGCLowThresholdPercent": 98, "maxPods": 30,
            "registerWithTaints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
            if self.gpus else [],
        }  # fmt: skip

    def _kube_proxy_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.home / "kubeconfig")},
            "hostnameOverride": self.name, "bindAddress": NODE_IP, "clusterCIDR": POD_CIDR, "mode": "iptables",
            "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            # Leave the host-wide conntrack settings alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }  # fmt: skip

    def _node_script(self) -> str:
        h, b = self.home, self.bin
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        mounts = "\n".join(f"mount -t tmpfs -o mode=0755 rlhf-private {d}" for d in PRIVATE_DIRS)
        sysctls = "\n".join(
            f"mount --bind {h / 'sysctl' / k.replace('/', '.')} /proc/sys/{k}" for k in KUBELET_SYSCTLS
        )
        return NODE_SCRIPT.format(
            home=h, bin=b, mounts=mounts, sysctls=sysctls, name=self.name, ip=NODE_IP, labels=labels
        )

    def _start_forwarder(self, api_port: int) -> None:
        log = (self.home / "nsforward.log").open("ab")
        cmd = [sys.executable, str(HERE / "nsforward.py"), "--netns", f"/run/netns/{self.netns}",
               "--listen", str(api_port), "--to", str(api_port), "--connect-proxy", str(self.proxy_socket)]  # fmt: skip
        process = self._spawn(cmd, log)
        (self.home / "nsforward.pid").write_text(str(process.pid))
        self._wait_for_socket(self.proxy_socket, 15)

    def _start_node(self) -> None:
        log = (self.home / "node.log").open("ab")
        cmd = ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--propagation", "private",
               "bash", str(self.home / "node.sh")]  # fmt: skip
        process = self._spawn(cmd, log)
        (self.home / "node.pid").write_text(str(process.pid))

    def _spawn(self, cmd: list[str], log: Any) -> subprocess.Popen[bytes]:
        """Starts cmd inside the node's cgroups (it joins them before exec), in its own session."""
        procs = " ".join(str(h / self.cgroup / "node" / "cgroup.procs") for h in self._hierarchies())
        join = 'for f in $RLHF_CGROUP_PROCS; do echo $$ >"$f"; done; exec "$@"'
        return subprocess.Popen(
            ["sh", "-c", join, "sh", *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, RLHF_CGROUP_PROCS=procs),
        )

    def _pause_image(self) -> Path:
        """The sandbox image: Debian's static catatonit as /pause, built once into the images cache."""
        archive = images_cache() / "pause-catatonit.tar"
        if not archive.exists():
            _run("bash", str(HERE / "build-pause-image.sh"), PAUSE_IMAGE, str(archive))
        return archive

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(
            "ctr", "--address", str(self.home / "containerd" / "containerd.sock"), "-n", "k8s.io", *args
        )

    def wait_ready(self, kubectl: Any, timeout_s: float = 120) -> None:
        kubectl("wait", "--for=condition=Ready", f"node/{self.name}", f"--timeout={int(timeout_s)}s",
                timeout=timeout_s + 30)  # fmt: skip
        if self.gpus:
            # Extended resources are advertised in node status, as a device plugin would.
            patch = {"status": {"capacity": {"nvidia.com/gpu": str(self.gpus)}}}
            kubectl(
                "patch", "node", self.name, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
            )

    def container_writes(self, container_id: str) -> list[str]:
        """Paths a container created or changed in its own root filesystem: its overlay upper dir.

        runc adds the mount points of the container's volumes there; anything else is a write
        outside the container's mounts (which a read-only root filesystem would have refused)."""
        key = json.loads(self._ctr("containers", "info", container_id.removeprefix("containerd://")).stdout)[
            "SnapshotKey"
        ]
        mount = self._ctr("snapshots", "mounts", "/mnt", key).stdout
        upper = Path(next(o.split("=", 1)[1] for o in mount.split(",") if o.startswith("upperdir=")))
        return sorted("/" + str(p.relative_to(upper)) for p in upper.rglob("*"))

    @staticmethod
    def _wait_for_socket(path: Path, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise NodeError(f"{path} did not appear within {timeout_s:.0f}s; see the logs next to it")
            time.sleep(0.2)

    # ----- down -------------------------------------------------------------------------------
    def down(self) -> None:
        """Kills every process in the node's cgroups, removes them and the network namespace."""
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM if _ == 0 else signal.SIGKILL)
            _wait_gone(pids, 10)
        for hierarchy in self._hierarchies():
            top = hierarchy / self.cgroup
            if top.exists():
                for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    _rmdir(path)
                _rmdir(top)
        if Path(f"/run/netns/{self.netns}").exists():
            _run("ip", "netns", "delete", self.netns)
        self.proxy_socket.unlink(missing_ok=True)
        created = self.home / "created-dirs"
        for directory in created.read_text().split() if created.exists() else []:
            _remove_empty_dir(Path(directory))
        shutil.rmtree(self.home, ignore_errors=True)

    def pids(self) -> list[int]:
        """Every process in the node's cgroup tree: the daemons, shims, containers and the forwarder."""
        found: set[int] = set()
        for hierarchy in self._hierarchies():
            top = hierarchy / self.cgroup
            if top.exists():
                for procs in top.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        found.update(int(p) for p in procs.read_text().split())
        return sorted(found)

    def leftovers(self) -> list[str]:
        """What `down` should have removed and is still there (empty after a clean `down`)."""
        left = [f"process {pid}" for pid in self.pids()]
        left += [f"cgroup {h / self.cgroup}" for h in self._hierarchies() if (h / self.cgroup).exists()]
        if Path(f"/run/netns/{self.netns}").exists():
            left.append(f"network namespace {self.netns}")
        with open("/proc/self/mountinfo") as mountinfo:
            left += [f"mount {line.split()[4]}" for line in mountinfo if str(self.home) in line]
        return left

    @staticmethod
    def _hierarchies() -> list[Path]:
        """Every mounted cgroup hierarchy (v1 controllers, name=systemd, the v2 unified mount)."""
        return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and (p / "cgroup.procs").exists())


def disk_needed(archive_bytes: int, disk_bytes: int) -> int:
    """Free bytes the node needs to import image archives of `archive_bytes` on a `disk_bytes` disk.

    containerd keeps each layer twice (the archive's blob in its content store, the unpacked
    snapshot), and the kubelet must stay above its 2% eviction threshold with room for the pods'
    logs and emptyDirs, or it reports DiskPressure, taints the node and nothing schedules.
    """
    return 2 * archive_bytes + disk_bytes // 50 + 2 * GIB


def check_disk(where: Path, images: list[Path]) -> None:
    where.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(where)
    needed = disk_needed(sum(p.stat().st_size for p in images), usage.total)
    if usage.free < needed:
        raise NodeError(
            f"the real node needs {needed / GIB:.1f} GiB free on the disk of {where} to import its images "
            f"(each layer is stored twice by containerd, and the kubelet evicts below 2% free); "
            f"{usage.free / GIB:.1f} GiB is free: free some space or pass fewer images"
        )


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    if check and result.returncode != 0:
        raise NodeError(f"`{' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _remove_empty_dir(path: Path) -> None:
    """Removes a directory this node made on the host, if nothing else has put anything in it."""
    if not path.is_dir() or any(path.iterdir()):
        return
    if path == Path("/run/netns"):  # `ip netns add` bind-mounts it onto itself
        _run("umount", str(path), check=False)
    with contextlib.suppress(OSError):
        path.rmdir()


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _rmdir(path: Path) -> None:
    for _ in range(50):  # a cgroup is busy for a moment after its last process exits
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    raise NodeError(f"cannot remove cgroup {path}: processes still in it")


CONTAINERD_CONFIG = """\
version = 2
root = "{home}/containerd/root"
state = "{home}/containerd/state"
[grpc]
  address = "{home}/containerd/containerd.sock"
[ttrpc]
  address = "{home}/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  # No CAP_SYS_RESOURCE in some VMs: do not lower a container's OOM score below containerd's.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{home}/cni/net.d"
"""

COREFILE = """\
cluster.local:53 in-addr.arpa:53 {{
    bind {ip}
    errors
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
    cache 5
}}
.:53 {{
    bind {ip}
    # No upstream: names outside the cluster do not resolve (traffic stays in the namespace).
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""

NODE_SCRIPT = """\
#!/usr/bin/env bash
# The real node, inside its network namespace and a private mount namespace (made by realnode.py).
set -euo pipefail
{mounts}
{sysctls}
containerd --config {home}/containerd/config.toml >{home}/containerd.log 2>&1 &
for _ in $(seq 100); do [ -S {home}/containerd/containerd.sock ] && break; sleep 0.1; done
{bin}/kubelet --config={home}/kubelet/config.yaml --kubeconfig={home}/kubeconfig \\
  --root-dir={home}/kubelet/root --cert-dir={home}/kubelet/root/pki --hostname-override={name} \\
  --node-ip={ip} --node-labels={labels} --v=1 >{home}/kubelet.log 2>&1 &
{bin}/kube-proxy --config={home}/kube-proxy.yaml >{home}/kube-proxy.log 2>&1 &
{bin}/coredns -conf {home}/Corefile >{home}/coredns.log 2>&1 &
wait
"""
