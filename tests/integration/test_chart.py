"""The Helm chart on the real local cluster: server-side dry run, install, restricted Pod Security,
`helm test`, the RBAC matrix (`kubectl auth can-i` as the chart's ServiceAccount), schema refusals,
upgrade rollout and uninstall. kwok plays the pods: the operator container never runs here."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart_support import CHART, CRD_NAME, helm, render_text, service_account_kubeconfig
from tests.conftest import Kube

SIM = "sim.rlhf-operator.dev"
# The test hook Pod would run the operator image; kwok plays it instead and reports success.
KWOK_TEST_POD = {"tests": {"podAnnotations": {f"{SIM}/outcome": "succeed"}}}


def fresh_namespace(cluster: Kube, prefix: str = "t-chart", **labels: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    if labels:
        cluster.kubectl("label", "namespace", name, *[f"{k}={v}" for k, v in labels.items()])
    return name


class Releases:
    """helm install/upgrade/uninstall against the test cluster; uninstalls what is left at the end."""

    def __init__(self, cluster: Kube) -> None:
        self.cluster = cluster
        self.installed: list[tuple[str, str]] = []

    def helm(
        self, *args: str, values: dict[str, Any] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return helm(*args, values=values, kubeconfig=self.cluster.kubeconfig, check=check)

    def install(self, release: str, namespace: str, values: dict[str, Any] | None = None) -> str:
        # --take-ownership: the CRD is cluster-wide and kept on uninstall, so an earlier release or
        # `kubectl apply` of crds/ (the `crd_installed` fixture) may have created it already.
        output = self.helm(
            "install", release, str(CHART), "--namespace", namespace, "--take-ownership",
            "--wait", "--timeout", "120s", values=values,
        ).stdout  # fmt: skip
        self.installed.append((release, namespace))
        return output

    def upgrade(self, release: str, namespace: str, values: dict[str, Any]) -> str:
        return self.helm(
            "upgrade", release, str(CHART), "--namespace", namespace, "--take-ownership",
            "--wait", "--timeout", "120s", values=values,
        ).stdout  # fmt: skip

    def uninstall(self, release: str, namespace: str) -> None:
        self.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s")
        self.installed.remove((release, namespace))

    def cleanup(self) -> None:
        for release, namespace in list(self.installed):
            self.helm("uninstall", release, "--namespace", namespace, "--timeout", "60s", check=False)


@pytest.fixture
def releases(cluster: Kube) -> Iterator[Releases]:
    handle = Releases(cluster)
    yield handle
    handle.cleanup()


class Installed:
    def __init__(self, cluster: Kube, namespace: str, release: str, notes: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.release = release
        self.fullname = f"{release}-rlhf-operator"
        self.account = f"system:serviceaccount:{namespace}:{self.fullname}"
        self.notes = notes

    def can_i(self, *args: str) -> bool:
        result = self.cluster.kubectl("auth", "can-i", *args, f"--as={self.account}", check=False)
        answer = result.stdout.strip()
        assert answer in {"yes", "no"}, result.stderr
        return answer == "yes"


@pytest.fixture(scope="module")
def installed(cluster: Kube) -> Iterator[Installed]:
    """The chart with default values (cluster scope) in a namespace that enforces restricted PSS."""
    namespace = fresh_namespace(
        cluster, "t-chart-restricted",
        **{"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"},
    )  # fmt: skip
    handle = Releases(cluster)
    release = f"r{uuid.uuid4().hex[:6]}"
    notes = handle.install(release, namespace, KWOK_TEST_POD)
    yield Installed(cluster, namespace, release, notes)
    handle.cleanup()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# ---------------------------------------------------------------------------------------------- dry run


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_rendered_chart_passes_a_server_side_dry_run(cluster: Kube, namespace: str, scope: str) -> None:
    values: dict[str, Any] = {"rbac": {"scope": scope}}
    if scope == "namespaced":
        values["watchNamespaces"] = [namespace]
    # --skip-tests: the test Pod names a ServiceAccount that a dry run does not create.
    manifest = render_text(values, "--skip-tests", release="dry", namespace=namespace)
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest)
    lines = result.stdout.splitlines()
    assert all(line.endswith("(server dry run)") for line in lines), result.stdout
    kinds = {line.split("/")[0] for line in lines}
    assert {"deployment.apps", "serviceaccount", "service", "clusterrole.rbac.authorization.k8s.io",
            "customresourcedefinition.apiextensions.k8s.io"} <= kinds  # fmt: skip
    if scope == "namespaced":
        assert {"role.rbac.authorization.k8s.io", "rolebinding.rbac.authorization.k8s.io"} <= kinds


# ---------------------------------------------------------------------------------------------- install


def test_install_creates_everything_and_the_operator_pod_lands_on_a_node(installed: Installed) -> None:
    cluster, ns, name = installed.cluster, installed.namespace, installed.fullname
    for kind in ("serviceaccount", "deployment", "service"):
        cluster.get_json(kind, name, "-n", ns)
    for kind in ("clusterrole", "clusterrolebinding"):
        cluster.get_json(kind, name)
        cluster.get_json(kind, f"{name}-discovery")
    crd = cluster.get_json("crd", CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"

    pods = cluster.get_json("pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"]
    assert len(pods) == 2  # two replicas, one leads (leader election)
    node = cluster.get_json("node", pods[0]["spec"]["nodeName"])
    assert node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] == "cpu"  # untainted: no GPU node
    assert pods[0]["spec"]["serviceAccountName"] == name

    assert "kubectl apply -f examples/tiny-rlhfjob.yaml" in installed.notes
    assert "kubectl get rlhfjobs -w" in installed.notes
    assert "kubectl describe rlhfjob tiny" in installed.notes


def test_operator_pod_is_admitted_by_the_restricted_pod_security_standard(installed: Installed) -> None:
    cluster, ns = installed.cluster, installed.namespace
    labels = cluster.get_json("namespace", ns)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The operator pod exists in it (the Deployment would report a FailedCreate otherwise) ...
    deployment = cluster.get_json("deployment", installed.fullname, "-n", ns)
    assert deployment["status"].get("readyReplicas") == 2
    # ... while the same namespace refuses a pod that is not restricted: admission is really on.
    result = cluster.kubectl(
        "run", "not-restricted", "-n", ns, "--image=busybox", "--dry-run=server", check=False
    )
    assert result.returncode != 0 and "violates PodSecurity" in result.stderr


def test_helm_test_hook_runs_as_a_restricted_pod(installed: Installed) -> None:
    output = helm(
        "test", installed.release, "--namespace", installed.namespace, "--timeout", "60s",
        kubeconfig=installed.cluster.kubeconfig,
    ).stdout  # fmt: skip
    assert f"TEST SUITE:     {installed.fullname}-test" in output
    assert "Phase:          Succeeded" in output, output


CAN = [
    ("list", "rlhfjobs.rlhf-operator.dev"), ("watch", "rlhfjobs.rlhf-operator.dev"),
    ("patch", "rlhfjobs.rlhf-operator.dev"), ("patch", "rlhfjobs.rlhf-operator.dev", "--subresource=status"),
    ("update", "rlhfjobs.rlhf-operator.dev", "--subresource=finalizers"),
    ("create", "jobs.batch"), ("patch", "jobs.batch"), ("delete", "jobs.batch"), ("watch", "jobs.batch"),
    ("list", "pods"), ("watch", "pods"), ("get", "pods", "--subresource=log"),
    ("create", "configmaps"), ("create", "services"), ("watch", "services"), ("delete", "services"),
    ("create", "deployments.apps"), ("patch", "deployments.apps"), ("delete", "deployments.apps"),
    ("create", "poddisruptionbudgets.policy"), ("delete", "poddisruptionbudgets.policy"),
    ("create", "networkpolicies.networking.k8s.io"), ("watch", "networkpolicies.networking.k8s.io"),
    ("get", "secrets"), ("create", "secrets"),
    ("get", "persistentvolumeclaims"), ("get", "serviceaccounts"),
    ("create", "events"), ("create", "events.events.k8s.io"),
]  # fmt: skip
CANNOT = [
    # Verbs the operator does not use are not granted.
    ("get", "rlhfjobs.rlhf-operator.dev"), ("update", "rlhfjobs.rlhf-operator.dev", "--subresource=status"),
    ("delete", "configmaps"), ("delete", "secrets"), ("patch", "events"), ("get", "pods"),
    ("delete", "networkpolicies.networking.k8s.io"), ("update", "leases.coordination.k8s.io"),
    ("list", "secrets"), ("watch", "secrets"), ("update", "secrets"), ("patch", "secrets"),
    ("create", "rlhfjobs.rlhf-operator.dev"), ("delete", "rlhfjobs.rlhf-operator.dev"),
    ("update", "rlhfjobs.rlhf-operator.dev"),
    ("create", "pods"), ("delete", "pods"), ("create", "pods", "--subresource=exec"),
    ("create", "serviceaccounts"), ("create", "serviceaccounts", "--subresource=token"),
    ("update", "configmaps"), ("create", "persistentvolumeclaims"),
    ("create", "roles.rbac.authorization.k8s.io"), ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("*", "*"),
]  # fmt: skip
CANNOT_CLUSTER_WIDE = [
    ("list", "secrets", "--all-namespaces"), ("watch", "secrets", "--all-namespaces"),
    ("delete", "namespaces"), ("create", "namespaces"), ("patch", "namespaces"),
    ("create", "clusterroles.rbac.authorization.k8s.io"), ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"), ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("get", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("get", "nodes"), ("impersonate", "users"), ("*", "*", "--all-namespaces"),
]  # fmt: skip


def test_operator_account_can_do_what_it_needs_in_any_namespace(installed: Installed) -> None:
    for namespace in ("default", "some-team"):
        refused = [a for a in CAN if not installed.can_i(*a, "-n", namespace)]
        assert not refused, f"the operator cannot: {refused}"
    for args in [("list", "customresourcedefinitions.apiextensions.k8s.io"),
                 ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
                 ("list", "namespaces"), ("watch", "namespaces"),
                 ("list", "rlhfjobs.rlhf-operator.dev", "--all-namespaces")]:  # fmt: skip
        assert installed.can_i(*args), args


def test_operator_account_cannot_do_more(installed: Installed) -> None:
    allowed = [a for a in CANNOT if installed.can_i(*a, "-n", "default")]
    allowed += [a for a in CANNOT_CLUSTER_WIDE if installed.can_i(*a)]
    assert not allowed, f"the operator may: {allowed}"


def test_operator_account_may_hold_only_its_own_lease_in_its_namespace(installed: Installed) -> None:
    ns, lease = installed.namespace, f"leases.coordination.k8s.io/{installed.fullname}-leader"
    assert installed.can_i("get", lease, "-n", ns) and installed.can_i("update", lease, "-n", ns)
    assert installed.can_i("create", "leases.coordination.k8s.io", "-n", ns)
    assert not installed.can_i("update", "leases.coordination.k8s.io/kube-scheduler", "-n", ns)
    assert not installed.can_i("create", "leases.coordination.k8s.io", "-n", "kube-system")


def test_rlhfjob_users_get_rlhfjobs_through_the_default_edit_and_view_roles(installed: Installed) -> None:
    """Kubernetes' aggregation controller adds the chart's rules to `edit` and `view`: a user bound to
    `edit` in a namespace may create RLHFJobs there, one bound to `view` only read them."""
    cluster, ns = installed.cluster, installed.namespace
    for role in ("edit", "view"):
        cluster.kubectl(
            "create", "rolebinding", f"user-{role}", f"--clusterrole={role}", f"--user=user-{role}", "-n", ns
        )

    def can(user: str, *args: str) -> bool:
        result = cluster.kubectl("auth", "can-i", *args, "-n", ns, f"--as={user}", check=False)
        return result.stdout.strip() == "yes"

    cluster.wait_for(lambda: can("user-edit", "create", "rlhfjobs.rlhf-operator.dev"), timeout=30,
                     what="the edit role to aggregate RLHFJobs")  # fmt: skip
    assert can("user-edit", "delete", "rlhfjobs.rlhf-operator.dev")
    assert can("user-view", "list", "rlhfjobs.rlhf-operator.dev")
    assert not can("user-view", "create", "rlhfjobs.rlhf-operator.dev")
    assert not can("user-edit", "patch", "rlhfjobs.rlhf-operator.dev", "--subresource=status")


def test_cluster_scope_with_watched_namespaces_grants_nothing_elsewhere(
    releases: Releases, namespace: str
) -> None:
    """`rbac.scope: cluster` used to bind every namespace even when the operator watched a few."""
    cluster = releases.cluster
    watched = fresh_namespace(cluster, "t-chart-watched")
    try:
        release = f"c{uuid.uuid4().hex[:6]}"
        notes = releases.install(
            release, namespace, {"watchNamespaces": [watched], "tests": {"enabled": False}}
        )
        target = Installed(cluster, namespace, release, notes)
        assert not [a for a in CAN if not target.can_i(*a, "-n", watched)]
        assert not [a for a in CAN if target.can_i(*a, "-n", "default")]
    finally:
        cluster.kubectl("delete", "namespace", watched, "--wait=false", check=False)


def test_helm_test_account_may_only_get_the_crd(installed: Installed) -> None:
    account = f"--as=system:serviceaccount:{installed.namespace}:{installed.fullname}-test"

    def can(*args: str) -> bool:
        return installed.cluster.kubectl("auth", "can-i", *args, account, check=False).stdout.strip() == "yes"

    assert can("get", f"customresourcedefinitions.apiextensions.k8s.io/{CRD_NAME}")
    assert not can("get", "customresourcedefinitions.apiextensions.k8s.io/other.example.com")
    assert not can("list", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can("get", "pods", "-n", installed.namespace)
    assert not can("list", "rlhfjobs.rlhf-operator.dev", "--all-namespaces")
    # Creating RLHFJobs (what its server-side dry run needs): in the release's namespace only.
    assert can("create", "rlhfjobs.rlhf-operator.dev", "-n", installed.namespace)
    assert not can("create", "rlhfjobs.rlhf-operator.dev", "-n", "default")


class Healthz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def healthz() -> Iterator[Callable[[int], str]]:
    servers: list[http.server.HTTPServer] = []

    def serve(status: int) -> str:
        handler = type("Handler", (Healthz,), {"status": status})
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/healthz"

    yield serve
    for server in servers:
        server.shutdown()


def test_helm_test_script_passes_as_the_hook_account_and_fails_on_a_dead_operator(
    installed: Installed, healthz: Callable[[int], str], tmp_path: Path
) -> None:
    """The hook's script, run here with the hook ServiceAccount's own token: RBAC is the real one."""
    kubeconfig = service_account_kubeconfig(
        installed.cluster, installed.namespace, f"{installed.fullname}-test", tmp_path / "test.kubeconfig"
    )
    script = str(CHART / "files" / "tests" / "check_operator.py")

    def run(url: str) -> subprocess.CompletedProcess[str]:
        sample = json.dumps(yaml.safe_load((CHART / "files" / "tests" / "rlhfjob.yaml").read_text()))
        env = {**os.environ, "KUBECONFIG": kubeconfig, "HEALTH_URL": url, "TIMEOUT_SECONDS": "1",
               "SAMPLE_RLHFJOB": sample, "NAMESPACE": installed.namespace}  # fmt: skip
        env.pop("KUBERNETES_SERVICE_HOST", None)
        return subprocess.run(
            [sys.executable, script], env=env, check=False, capture_output=True, text=True, timeout=60
        )

    ok = run(healthz(200))
    assert ok.returncode == 0, ok.stderr
    assert f"CRD {CRD_NAME} serves v1alpha1" in ok.stdout
    assert "a valid RLHFJob passes a server-side dry run" in ok.stdout
    assert not installed.cluster.kubectl("get", "rlhfjobs", "-n", installed.namespace, "-o", "name").stdout
    dead = run(healthz(500))
    assert dead.returncode == 1 and "FAILED liveness" in dead.stderr and "FAILED crd" not in dead.stderr
    assert "FAILED dry-run" not in dead.stderr


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": -1}, "at '/replicaCount': minimum: got -1, want 0"),
        ({"rbac": {"scope": "everywhere"}}, "at '/rbac/scope': value must be one of 'cluster', 'namespaced'"),
        ({"gpu": {"taint": "nvidia.com/gpu"}}, "at '/gpu': additional properties 'taint' not allowed"),
    ],
    ids=["negative-replicas", "bad-rbac-scope", "unknown-key"],
)
def test_install_refuses_invalid_values(
    releases: Releases, namespace: str, values: dict[str, Any], message: str
) -> None:
    result = releases.helm("install", "bad", str(CHART), "--namespace", namespace, values=values, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr and message in result.stderr
    assert releases.helm("status", "bad", "--namespace", namespace, check=False).returncode != 0
    deployments = releases.cluster.get_json("deployments", "-n", namespace)["items"]
    assert deployments == []


def test_upgrade_rolls_out_new_settings_and_uninstall_keeps_the_crd(
    releases: Releases, namespace: str
) -> None:
    cluster = releases.cluster
    release = f"u{uuid.uuid4().hex[:6]}"
    name = f"{release}-rlhf-operator"
    releases.install(release, namespace, {"tests": {"enabled": False}})
    before = cluster.get_json("deployment", name, "-n", namespace)

    def env_of(deployment: dict[str, Any]) -> dict[str, str]:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    assert env_of(before)["RLHF_OPERATOR_NODE_GROUP_POLICY"] == "policy-gpu"

    releases.upgrade(
        release, namespace, {"tests": {"enabled": False}, "nodeGroups": {"policy": "p5-48xlarge"}}
    )
    after = cluster.get_json("deployment", name, "-n", namespace)
    assert env_of(after)["RLHF_OPERATOR_NODE_GROUP_POLICY"] == "p5-48xlarge"
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"

    def new_pods() -> list[dict[str, Any]] | None:
        pods = cluster.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/component=operator")[
            "items"
        ]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp") and p["spec"].get("nodeName")]
        envs = [{e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]} for p in live]
        if len(live) == 2 and all(env["RLHF_OPERATOR_NODE_GROUP_POLICY"] == "p5-48xlarge" for env in envs):
            return live
        return None

    cluster.wait_for(new_pods, timeout=60, what="the operator pods with the new node group")

    releases.uninstall(release, namespace)
    assert cluster.kubectl("get", "deployment", name, "-n", namespace, check=False).returncode != 0
    assert cluster.kubectl("get", "clusterrole", name, check=False).returncode != 0
    crd = cluster.get_json("crd", CRD_NAME)  # kept: helm.sh/resource-policy=keep
    assert crd["metadata"].get("deletionTimestamp") is None


def test_namespaced_scope_works_only_in_the_watched_namespaces(releases: Releases, namespace: str) -> None:
    cluster = releases.cluster
    watched = [fresh_namespace(cluster, "t-chart-watched") for _ in range(2)]
    other = fresh_namespace(cluster, "t-chart-other")
    try:
        release = f"n{uuid.uuid4().hex[:6]}"
        values = {"rbac": {"scope": "namespaced"}, "watchNamespaces": watched, "tests": {"enabled": False}}
        notes = releases.install(release, namespace, values)
        assert f"the namespaces: {','.join(watched)}" in notes
        name = f"{release}-rlhf-operator"
        deployment = cluster.get_json("deployment", name, "-n", namespace)
        env = {
            e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["RLHF_OPERATOR_NAMESPACES"] == ",".join(watched)
        assert cluster.kubectl("get", "clusterrole", name, check=False).returncode != 0
        target = Installed(cluster, namespace, release, notes)
        for ns in watched:
            refused = [a for a in CAN if not target.can_i(*a, "-n", ns)]
            assert not refused, f"the operator cannot in {ns}: {refused}"
        for ns in (other, namespace, "default"):
            allowed = [a for a in CAN if target.can_i(*a, "-n", ns)]
            assert not allowed, f"the operator may in the unwatched namespace {ns}: {allowed}"
        allowed = [a for a in CANNOT if any(target.can_i(*a, "-n", ns) for ns in watched)]
        allowed += [a for a in CANNOT_CLUSTER_WIDE if target.can_i(*a)]
        allowed += [a for a in [("list", "rlhfjobs.rlhf-operator.dev", "--all-namespaces"),
                                ("list", "pods", "--all-namespaces")] if target.can_i(*a)]  # fmt: skip
        assert not allowed, f"the operator may: {allowed}"
        # Kopf's own discovery stays cluster-wide.
        assert target.can_i("list", "customresourcedefinitions.apiextensions.k8s.io")
        assert target.can_i("watch", "namespaces")
    finally:
        for ns in [*watched, other]:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_rendered_values_reach_the_installed_deployment(installed: Installed) -> None:
    deployment = installed.cluster.get_json("deployment", installed.fullname, "-n", installed.namespace)
    manifest = helm(
        "get", "manifest", installed.release, "--namespace", installed.namespace,
        kubeconfig=installed.cluster.kubeconfig,
    ).stdout  # fmt: skip
    assert f"name: {installed.fullname}" in manifest
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"  # the replicas elect a leader
    values = json.loads(
        helm(
            "get",
            "values",
            installed.release,
            "--namespace",
            installed.namespace,
            "-o",
            "json",
            kubeconfig=installed.cluster.kubeconfig,
        ).stdout
    )
    assert values == KWOK_TEST_POD
