"""Shared pytest wiring: markers by directory, and the real local cluster for integration tests.

The cluster starts once per session (etcd, kube-apiserver, controller-manager, scheduler and kwok as
local processes on 127.0.0.1) and stops at the end. Set RLHF_TEST_KUBECONFIG to the kubeconfig of a
cluster that is already up (`make cluster-up`) to reuse it instead: the session then leaves it
running. Each test gets a fresh namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from localcluster import LocalCluster, tools_dir, wait_established

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
MARKER_BY_DIRECTORY = {
    "unit": "unit", "integration": "integration", "train": "train", "e2e": "e2e", "images": "images", "node": "node",
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        directory = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        marker = MARKER_BY_DIRECTORY.get(directory)
        if marker:
            item.add_marker(marker)


class Kube:
    """A handle on the cluster under test: its kubeconfig and the real kubectl."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = str(kubeconfig)
        self.kubectl_binary = str(tools_dir() / "bin" / "kubectl")

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_binary, "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def get_json(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return result

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 60,
        interval: float = 0.25,
        what: str = "condition",
    ) -> T:
        """Polls predicate() until it returns something truthy; fails with `what` after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    reuse = os.environ.get("RLHF_TEST_KUBECONFIG")
    if reuse:
        yield Kube(Path(reuse))
        return
    if not (tools_dir() / "bin" / "kube-apiserver").exists():
        pytest.fail(f"the local control plane is not installed in {tools_dir()}: run `make tools` first")
    local = LocalCluster(f"pytest-{os.getpid()}", home=tmp_path_factory.mktemp("clusters"))
    local.up()
    try:
        yield Kube(local.kubeconfig)
    finally:
        local.down()


@pytest.fixture
def namespace(cluster: Kube) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def crd_installed(cluster: Kube) -> Kube:
    """The RLHFJob CRD from crds/, applied and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    wait_established(cluster.kubectl, "crd", "--all")
    return cluster
