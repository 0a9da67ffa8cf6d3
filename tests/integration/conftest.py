"""Fixtures for the operator's integration tests: one operator process per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import Kube
from tests.integration.operator_harness import operator_process
from tests.support.launchers import OperatorLauncher

# The session operator watches these namespaces only, so a test may run an operator of its own
# (killed and restarted) in a namespace outside the pattern.
OPERATOR_NAMESPACES = "t-op-*"


@pytest.fixture(scope="session")
def operator(crd_installed: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorLauncher]:
    process = operator_process(
        crd_installed.kubeconfig, OPERATOR_NAMESPACES, tmp_path_factory.mktemp("operator") / "operator.log"
    )
    process.start()
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture
def op_namespace(operator: OperatorLauncher, cluster: Kube) -> Iterator[str]:
    """A fresh namespace watched by the session operator."""
    name = f"t-op-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
