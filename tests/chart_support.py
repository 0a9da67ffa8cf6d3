"""Helpers shared by the chart's unit and integration tests: the pinned helm binary and rendering."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from localcluster import tools_dir
from tests.conftest import ROOT

CHART = ROOT / "charts" / "rlhf-operator"
CRD_SOURCE = ROOT / "crds" / "rlhf-operator.dev_rlhfjobs.yaml"
CRD_IN_CHART = CHART / "files" / "crds" / "rlhf-operator.dev_rlhfjobs.yaml"
CRD_NAME = "rlhfjobs.rlhf-operator.dev"


def helm_binary() -> str:
    helm = tools_dir() / "bin" / "helm"
    if not helm.exists():
        raise AssertionError(f"helm is not installed in {helm.parent}: run `make tools` first")
    return str(helm)


def helm(
    *args: str,
    values: dict[str, Any] | None = None,
    kubeconfig: str | None = None,
    check: bool = True,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Runs helm; `values` go in on stdin (`-f -`), after any -f/--set in args."""
    command = [helm_binary(), *args]
    if values is not None:
        command += ["-f", "-"]
    if kubeconfig:
        command += ["--kubeconfig", kubeconfig]
    result = subprocess.run(
        command,
        input=json.dumps(values) if values is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def render_text(
    values: dict[str, Any] | None = None, *args: str, release: str = "r", namespace: str = "ops"
) -> str:
    return helm("template", release, str(CHART), "--namespace", namespace, *args, values=values).stdout


def render(
    values: dict[str, Any] | None = None, *args: str, release: str = "r", namespace: str = "ops"
) -> list[dict[str, Any]]:
    """The chart's objects for these values (test hooks included)."""
    text = render_text(values, *args, release=release, namespace=namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in operator_container(docs)["env"]}


def fail_message(values: dict[str, Any]) -> str:
    """helm's error for values the chart must refuse (it must refuse them)."""
    result = helm("template", "r", str(CHART), values=values, check=False)
    assert result.returncode != 0, f"the chart accepted {values}"
    return result.stderr


def chart_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return data


def service_account_kubeconfig(cluster: Any, namespace: str, account: str, path: Path) -> str:
    """A kubeconfig that authenticates as the ServiceAccount with a real token (TokenRequest API),
    exactly as its pod would in the cluster: the API server's RBAC decides every call."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [c for c in admin["clusters"] if c["name"] == context["cluster"]],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": context["cluster"], "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)
