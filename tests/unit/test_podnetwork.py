"""The local pod executor's loopback network: headless-Service names and ports onto 127.0.0.1."""

from __future__ import annotations

import socket

from podnetwork import LoopbackNetwork


def test_the_service_host_and_port_become_loopback_and_one_local_port_per_service() -> None:
    network = LoopbackNetwork()
    port = network.local_port("ns", "uid-1", 29500)
    assert port != 29500 and port == network.local_port("ns", "uid-1", 29500)
    assert network.local_port("ns", "uid-2", 29500) != port  # another job's Service: its own port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free when handed out
    env = {
        "MASTER_ADDR": "tiny-policy-0.tiny-policy.ns.svc",
        "FQDN": "tiny-policy-1.tiny-policy.ns.svc.cluster.local",
        "MASTER_PORT": "29500",
        "OTHER_SERVICE": "http://tiny-reward-server.ns.svc:8000",
        "OTHER_NAMESPACE": "tiny-policy-0.tiny-policy.other.svc",
        "WORLD_SIZE": "2",
        "PATH_WITH_NUMBER": "/data/29500",
    }
    out = network.pod_environment(env, "ns", "tiny-policy", {29500: port})
    assert out == env | {"MASTER_ADDR": "127.0.0.1", "FQDN": "127.0.0.1", "MASTER_PORT": str(port)}
