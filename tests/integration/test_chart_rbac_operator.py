"""The real operator process, authenticated as the chart's ServiceAccount (a token from the TokenRequest
API, so the API server's RBAC judges every call exactly as in the cluster) and configured with the
environment the chart rendered into its Deployment, runs the tiny example to Succeeded. Any verb the
chart's RBAC lacks shows up here as a Forbidden error or a stuck job."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart_support import CHART, helm, service_account_kubeconfig
from tests.conftest import Kube
from tests.integration.operator_harness import apply, create_pvc, rlhfjob, wait_phase
from tests.support.launchers import OperatorLauncher

# Chart values of this test: the stricter namespaced scope (a Role in the watched namespace, only
# Kopf's discovery cluster-wide). Metrics are off so that no fixed port is bound on this machine.
VALUES = {
    "rbac": {"scope": "namespaced"},
    "metrics": {"port": 0},
    "stages": {"progressIntervalSeconds": 1},
    "resyncIntervalSeconds": 1,
    "tests": {"enabled": False},
}


@pytest.fixture
def jobs_namespace(cluster: Kube) -> Iterator[str]:
    # Outside the session operator's `t-op-*` namespaces: only the operator of this test acts here.
    name = f"t-chart-jobs-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_operator_as_the_chart_service_account_runs_the_tiny_example(
    crd_installed: Kube, namespace: str, jobs_namespace: str, tmp_path: Path
) -> None:
    cluster = crd_installed
    release = f"op{uuid.uuid4().hex[:6]}"
    fullname = f"{release}-rlhf-operator"
    values = {**VALUES, "watchNamespaces": [jobs_namespace]}
    helm(
        "install", release, str(CHART), "--namespace", namespace, "--take-ownership", "--wait",
        "--timeout", "120s", values=values, kubeconfig=cluster.kubeconfig,
    )  # fmt: skip
    operator: OperatorLauncher | None = None
    log_path = tmp_path / "operator.log"
    try:
        deployment = cluster.get_json("deployment", fullname, "-n", namespace)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        chart_env = {e["name"]: e.get("value", "") for e in container["env"]}
        assert chart_env["RLHF_OPERATOR_NAMESPACES"] == jobs_namespace
        assert container["command"] == ["rlhf-operator", "operator"]

        kubeconfig = service_account_kubeconfig(
            cluster, namespace, fullname, tmp_path / "operator.kubeconfig"
        )
        operator = OperatorLauncher(kubeconfig, log_path, chart_env)
        operator.start()
        operator.wait_ready()

        create_pvc(cluster, jobs_namespace)
        apply(cluster, rlhfjob("tiny", jobs_namespace))
        try:
            final = wait_phase(cluster, jobs_namespace, "tiny", "Succeeded", timeout=180)
        except AssertionError as error:
            raise AssertionError(f"{error}\noperator log (as {fullname}):\n{operator.log_tail()}") from error
        assert [s["state"] for s in final["stages"]] == ["Succeeded"] * 5
        assert operator.alive()
        output = log_path.read_text(errors="replace")
        assert "Forbidden" not in output and " 403" not in output, (
            f"RBAC refused the operator something:\n{operator.log_tail()}"
        )
    finally:
        if operator is not None:
            operator.stop()
        helm("uninstall", release, "--namespace", namespace, kubeconfig=cluster.kubeconfig, check=False)
