"""The simulated pods' network: every pod the local pod executor runs shares the host's loopback.

On a real node each pod has an address of its own, and `<pod>.<subdomain>.<namespace>.svc` (the DNS
name a headless Service gives the pods of an Indexed Job) resolves to it. Here every pod is a local
process, so such names mean 127.0.0.1, and the ports a headless Service names (e.g. torchrun's
rendezvous port 29500) would collide between jobs, test runs and sessions sharing the machine. So each
(Service, port) gets a free local port of its own, the same for all pods behind that Service, and a
pod's environment names 127.0.0.1 and that port where the manifest names the Service's host and port.
Commands see the rewritten values through `$(VAR)` expansion, as kubelet expands them.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Mapping


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LoopbackNetwork:
    """Headless-Service names and ports of the executed pods, mapped onto 127.0.0.1."""

    def __init__(self) -> None:
        self._ports: dict[tuple[str, str, int], int] = {}
        self._lock = threading.Lock()

    def local_port(self, namespace: str, service_uid: str, port: int) -> int:
        """The local port standing in for `port` of one Service (keyed by uid: a recreated Service
        of the same name gets a fresh port)."""
        with self._lock:
            key = (namespace, service_uid, port)
            if key not in self._ports:
                self._ports[key] = free_local_port()
            return self._ports[key]

    def pod_environment(
        self, env: Mapping[str, str], namespace: str, subdomain: str, ports: Mapping[int, int]
    ) -> dict[str, str]:
        """`env` with the Service's pod host names as 127.0.0.1 and its ports (`ports`: Service port
        -> local port) as their local ports. Only whole values are rewritten, so a value that merely
        contains the number (e.g. a path) is left alone."""
        host = re.compile(
            rf"\b[a-z0-9]([-a-z0-9]*[a-z0-9])?\.{re.escape(subdomain)}\.{re.escape(namespace)}"
            r"\.svc(\.cluster\.local)?\b"
        )
        rewritten = {}
        for name, value in env.items():
            local = host.sub("127.0.0.1", value)
            if local.isdigit() and int(local) in ports:
                local = str(ports[int(local)])
            rewritten[name] = local
        return rewritten
