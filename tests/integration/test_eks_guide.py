"""docs/eks.md, checked as far as a machine without AWS can: every Kubernetes manifest in it passes
a server-side dry run on the local API server (the RLHFJob CRD and Kueue's CRDs installed), the
eksctl ClusterConfig validates against eksctl's own JSON schema, the chart values file renders the
chart, and the IAM policy is the one the cluster config attaches. Every yaml/json block is one of
those: a new block without a check fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import tools_dir, wait_established
from tests.chart_support import CHART, helm
from tests.conftest import ROOT, Kube

GUIDE = ROOT / "docs" / "eks.md"
BLOCK = re.compile(r"^ *```(yaml|json)\n(.*?)^ *```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    return [(language, text) for language, text in BLOCK.findall(GUIDE.read_text())]


def documents() -> list[dict[str, Any]]:
    return [d for language, text in blocks() if language == "yaml" for d in yaml.safe_load_all(text) if d]


def eksctl_config() -> dict[str, Any]:
    [config] = [d for d in documents() if str(d.get("apiVersion", "")).startswith("eksctl.io/")]
    return config


def test_every_block_is_checked() -> None:
    kinds = []
    for language, text in blocks():
        if language == "json":
            kinds.append("iam-policy")
            continue
        first = text.splitlines()[0]
        for document in (d for d in yaml.safe_load_all(text) if d):
            if "values-eks.yaml" in first:
                kinds.append("chart-values")
            elif str(document.get("apiVersion", "")).startswith("eksctl.io/"):
                kinds.append("eksctl")
            else:
                assert {"apiVersion", "kind", "metadata"} <= set(document), (first, document)
                kinds.append("kubernetes")
    assert kinds.count("eksctl") == 1 and kinds.count("chart-values") == 1 and kinds.count("iam-policy") == 1
    assert kinds.count("kubernetes") == 8, kinds


def test_the_eksctl_config_validates_against_eksctls_schema() -> None:
    import jsonschema

    schema_file = tools_dir() / "eksctl" / "schema.json"
    assert schema_file.exists(), (
        f"{schema_file} is missing: run `make tools` (hack/install-tools.sh eksctl_schema)"
    )
    validator = jsonschema.Draft7Validator(json.loads(schema_file.read_text()))
    config = eksctl_config()
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    # The schema refuses what eksctl refuses: a misspelt key fails.
    broken = json.loads(json.dumps(config))
    broken["managedNodeGroups"][0]["instancetype"] = "m6i.large"
    assert list(validator.iter_errors(broken))
    groups = {g["name"]: g for g in config["managedNodeGroups"]}
    assert {"cpu", "reward-gpu", "policy-gpu"} <= set(groups)
    for name in ("reward-gpu", "policy-gpu"):
        assert groups[name]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
        assert not groups[name].get("efaEnabled"), "EFA is out of scope: the guide says what it needs"


def test_the_iam_policy_is_the_one_the_cluster_config_attaches() -> None:
    [policy] = [json.loads(text) for language, text in blocks() if language == "json"]
    [stages] = [
        a
        for a in eksctl_config()["iam"]["podIdentityAssociations"]
        if a["serviceAccountName"] == "rlhf-stages"
    ]
    assert stages["permissionPolicy"] == policy
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}


def test_the_values_file_renders_the_chart(tmp_path: Path) -> None:
    [text] = [t for language, t in blocks() if language == "yaml" and "values-eks.yaml" in t.splitlines()[0]]
    values = tmp_path / "values-eks.yaml"
    values.write_text(text)
    rendered = helm(
        "template",
        "rlhf-operator",
        str(CHART),
        "-f",
        str(values),
        "--api-versions",
        "monitoring.coreos.com/v1",
    ).stdout
    assert "111122223333.dkr.ecr.us-east-1.amazonaws.com/rlhf-operator/trainer:" in rendered
    assert "kind: PrometheusRule" in rendered and "kind: ServiceMonitor" in rendered


@pytest.fixture
def kueue_crds(cluster: Kube) -> Kube:
    crds = tools_dir() / "kueue" / "crds"
    assert crds.exists(), f"{crds} is missing: run `make tools` (hack/install-tools.sh kueue)"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    wait_established(cluster.kubectl, "crd/clusterqueues.kueue.x-k8s.io", "crd/localqueues.kueue.x-k8s.io",
                     "crd/resourceflavors.kueue.x-k8s.io")  # fmt: skip
    return cluster


def test_every_manifest_passes_a_server_side_dry_run(crd_installed: Kube, kueue_crds: Kube) -> None:
    cluster = crd_installed
    manifests = [
        d for d in documents() if not str(d.get("apiVersion", "")).startswith("eksctl.io/") and "kind" in d
    ]
    created = cluster.kubectl("create", "namespace", "ml", check=False).returncode == 0
    try:
        for manifest in manifests:
            result = cluster.kubectl(
                "apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False
            )
            assert result.returncode == 0, (
                f"{manifest['kind']} {manifest['metadata']['name']}: {result.stderr}"
            )
        # The dry run is real: a misspelt field is refused.
        job = next(m for m in manifests if m["kind"] == "RLHFJob")
        broken = json.loads(json.dumps(job))
        broken["spec"]["stages"]["policy"]["stepz"] = 1
        refused = cluster.kubectl(
            "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(broken), check=False
        )
        assert refused.returncode != 0 and "stepz" in refused.stderr
    finally:
        if created:
            cluster.kubectl("delete", "namespace", "ml", "--wait=false", check=False)
