"""The Helm chart, rendered with the pinned helm (no cluster): lint, CRD copy, Deployment, RBAC, schema."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
import yaml

from rlhf_operator.config import OperatorConfig, Role
from tests.chart_support import (
    CHART,
    CRD_IN_CHART,
    CRD_SOURCE,
    chart_yaml,
    fail_message,
    find,
    helm,
    one,
    operator_container,
    operator_env,
    render,
)
from tests.conftest import ROOT

ENV_PREFIX = "RLHF_OPERATOR_"

# Every verb the operator may use, per (apiGroup, resource); anything else is a least-privilege bug.
NAMESPACED_RULES = {
    ("rlhf-operator.dev", "rlhfjobs"): {"list", "watch", "patch"},
    ("rlhf-operator.dev", "rlhfjobs/status"): {"patch"},
    ("rlhf-operator.dev", "rlhfjobs/finalizers"): {"update"},
    ("batch", "jobs"): {"list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "configmaps"): {"list", "watch", "create"},
    ("", "services"): {"list", "watch", "create", "delete"},
    ("apps", "deployments"): {"list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"list", "watch", "create", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"list", "watch", "create"},
    ("", "secrets"): {"get", "create"},
    ("", "persistentvolumeclaims"): {"get"},
    ("", "serviceaccounts"): {"get"},
    ("", "events"): {"create"},
    ("events.k8s.io", "events"): {"create"},
}
DISCOVERY_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}


def flatten(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# ---------------------------------------------------------------------------------------------- chart


def test_chart_metadata_follows_the_package_version() -> None:
    chart = chart_yaml()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == version
    assert chart["version"] == version


@pytest.mark.parametrize("values_file", [None, "ci/namespaced-values.yaml"])
def test_helm_lint_strict_passes(values_file: str | None) -> None:
    args = ["-f", str(CHART / values_file)] if values_file else []
    result = helm("lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in result.stdout


def test_chart_crd_is_a_byte_identical_copy_of_crds() -> None:
    assert CRD_IN_CHART.read_bytes() == CRD_SOURCE.read_bytes(), (
        "charts/rlhf-operator/files/crds/ differs from crds/: run `make chart-sync`"
    )
    assert not (CHART / "crds").exists(), "CRDs in the chart's crds/ directory are never upgraded by Helm"


def test_rendered_crd_is_the_source_crd_plus_the_keep_policy() -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text())
    kept = one(render(), "CustomResourceDefinition")
    assert kept["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert kept == source
    not_kept = one(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert not_kept == source
    assert not find(render({"crds": {"install": False}}), "CustomResourceDefinition")


# ---------------------------------------------------------------------------------------------- operator


def test_deployment_runs_restricted_operator_replicas() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2  # one leads (leader election), test_chart_security.py
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "r-rlhf-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(docs)
    assert container["image"] == "ghcr.io/rlhf-operator/operator:0.1.0"
    assert container["command"] == ["rlhf-operator", "operator"]
    assert "args" not in container
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8081, "metrics": 8080}
    assert "readinessProbe" not in container
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]


def test_operator_env_sets_every_config_field_and_parses_to_the_defaults() -> None:
    env = operator_env(render())
    assert set(env) == {ENV_PREFIX + name.upper() for name in OperatorConfig.model_fields}
    config = OperatorConfig.from_env(env)
    assert config == OperatorConfig(
        image_worker="ghcr.io/rlhf-operator/worker:0.1.0",
        image_trainer="ghcr.io/rlhf-operator/trainer:0.1.0",
        image_trainer_vllm="ghcr.io/rlhf-operator/trainer-vllm:0.1.0",
        # The chart's replicas elect a leader with a Lease in the release namespace.
        leader_election_namespace="ops",
        leader_election_lease="r-rlhf-operator-leader",
    )


def test_operator_env_follows_the_values() -> None:
    values = {
        "watchNamespaces": ["team-a", "team-b"],
        "nodeGroups": {
            "labelKey": "karpenter.sh/nodepool",
            "cpu": "c",
            "reward": "g5",
            "policy": "p5",
            "instanceTypes": {"p5": "p5.48xlarge"},
        },
        "pricing": {"gpuHourPrices": {"p5.48xlarge": 6.88}},
        "gpu": {"resource": "amd.com/gpu", "taintKey": "amd.com/gpu"},
        "images": {
            "worker": {"repository": "1.dkr.ecr.us-east-1.amazonaws.com/rlhf/worker", "tag": "v2"},
            "trainer": {"repository": "r/trainer", "digest": "sha256:" + "a" * 64},
            "trainerVllm": {"repository": "r/trainer-vllm", "tag": "v2-cuda"},
            "operator": {"repository": "r/operator", "tag": "v3"},
            "pullPolicy": "Always",
        },
        "stages": {"serviceAccountName": "s3-writer", "progressIntervalSeconds": 2.5},
        "resyncIntervalSeconds": 60,
        "metrics": {"port": 9090},
        "logLevel": "DEBUG",
        "extraEnv": [{"name": "AWS_REGION", "value": "us-east-1"}],
    }
    docs = render(values)
    env = operator_env(docs)
    assert env.pop("AWS_REGION") == "us-east-1"
    config = OperatorConfig.from_env(env)
    assert config.namespaces == ("team-a", "team-b")
    assert config.node_group_label == "karpenter.sh/nodepool"
    assert (config.node_group_cpu, config.node_group_reward, config.node_group_policy) == ("c", "g5", "p5")
    assert (config.gpu_resource, config.gpu_taint_key) == ("amd.com/gpu", "amd.com/gpu")
    assert config.image_worker == "1.dkr.ecr.us-east-1.amazonaws.com/rlhf/worker:v2"
    assert config.image_trainer == "r/trainer@sha256:" + "a" * 64
    assert config.image_trainer_vllm == "r/trainer-vllm:v2-cuda"
    assert config.image_pull_policy == "Always"
    assert config.stage_service_account == "s3-writer"
    assert config.progress_interval_seconds == 2.5
    assert config.resync_interval_seconds == 60
    assert config.metrics_port == 9090
    assert config.log_level == "DEBUG"
    assert (config.gpu_hour_price(Role.POLICY), config.gpu_hour_price(Role.REWARD)) == (6.88, None)
    container = operator_container(docs)
    assert container["image"] == "r/operator:v3"
    assert container["imagePullPolicy"] == "Always"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8081, "metrics": 9090}
    assert one(docs, "Service")["spec"]["ports"][1]["port"] == 9090


def test_metrics_off_drops_the_metrics_port() -> None:
    docs = render({"metrics": {"port": 0}})
    assert operator_env(docs)[ENV_PREFIX + "METRICS_PORT"] == "0"
    assert [p["name"] for p in operator_container(docs)["ports"]] == ["health"]
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["health"]


def test_service_account_annotations_for_irsa() -> None:
    arn = "arn:aws:iam::111122223333:role/rlhf-operator"
    docs = render({"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": arn}, "name": "rlhf"}})
    account = one(docs, "ServiceAccount", "rlhf")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "rlhf"
    docs = render({"serviceAccount": {"create": False, "name": "existing"}})
    assert not find(docs, "ServiceAccount", "existing")
    subjects = one(docs, "ClusterRoleBinding", "r-rlhf-operator")["subjects"]
    assert subjects == [{"kind": "ServiceAccount", "name": "existing", "namespace": "ops"}]


def test_service_monitor_only_when_enabled() -> None:
    assert not find(render(), "ServiceMonitor")
    monitor = one(
        render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}),
        "ServiceMonitor",
    )
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert "metrics.port > 0" in fail_message({"metrics": {"port": 0, "serviceMonitor": {"enabled": True}}})


def test_operator_pod_placement_values() -> None:
    values = {
        "nodeSelector": {"eks.amazonaws.com/nodegroup": "system"},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {}},
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"a": "b"},
    }
    pod = one(render(values), "Deployment")["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"a": "b"}
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod["spec"][key] == values[key]


def test_changed_values_change_the_pod_template() -> None:
    before = one(render(), "Deployment")["spec"]["template"]
    after = one(render({"nodeGroups": {"policy": "p5-48xlarge"}}), "Deployment")["spec"]["template"]
    assert before != after


# ---------------------------------------------------------------------------------------------- RBAC


def operator_rbac(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The operator's own objects of `kind`, not the `helm test` hook's."""
    return [
        d for d in find(docs, kind) if d["metadata"]["labels"].get("app.kubernetes.io/component") != "test"
    ]


def test_cluster_scope_grants_exactly_what_the_operator_uses() -> None:
    docs = render()
    assert flatten(one(docs, "ClusterRole", "r-rlhf-operator")["rules"]) == NAMESPACED_RULES
    assert flatten(one(docs, "ClusterRole", "r-rlhf-operator-discovery")["rules"]) == DISCOVERY_RULES
    # The only Role is leader election's, in the release namespace (test_chart_security.py).
    assert [r["metadata"]["name"] for r in operator_rbac(docs, "Role")] == ["r-rlhf-operator-leader-election"]
    for name in ("r-rlhf-operator", "r-rlhf-operator-discovery"):
        binding = one(docs, "ClusterRoleBinding", name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "r-rlhf-operator", "namespace": "ops"}
        ]


def test_no_rule_uses_wildcards() -> None:
    for values in ({}, {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["a"]}):
        for doc in render(values):
            for rule in doc.get("rules", []):
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], (doc["metadata"]["name"], rule)


def test_namespaced_scope_renders_a_role_per_watched_namespace() -> None:
    docs = render({"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]})
    roles = find(docs, "Role", "r-rlhf-operator")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert flatten(role["rules"]) == NAMESPACED_RULES
    bindings = find(docs, "RoleBinding", "r-rlhf-operator")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "r-rlhf-operator",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "r-rlhf-operator", "namespace": "ops"}
        ]
    cluster_roles = find(docs, "ClusterRole")
    assert {r["metadata"]["name"] for r in cluster_roles} == {
        "r-rlhf-operator-discovery",
        "r-rlhf-operator-test",
        "r-rlhf-operator-rlhfjobs-edit",
        "r-rlhf-operator-rlhfjobs-view",
    }
    assert flatten(one(docs, "ClusterRole", "r-rlhf-operator-discovery")["rules"]) == DISCOVERY_RULES
    assert operator_env(docs)[ENV_PREFIX + "NAMESPACES"] == "team-a,team-b"


def test_rbac_create_false_renders_no_rbac() -> None:
    docs = render({"rbac": {"create": False}, "tests": {"enabled": False}})
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")]


# ---------------------------------------------------------------------------------------------- helm test


def test_test_hook_is_least_privilege_and_restricted() -> None:
    docs = render()
    pod = one(docs, "Pod", "r-rlhf-operator-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["serviceAccountName"] == "r-rlhf-operator-test"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/rlhf-operator/operator:0.1.0"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    script = container["args"][0]
    assert script == (CHART / "files" / "tests" / "check_operator.py").read_text()
    compile(script, "check_operator.py", "exec")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HEALTH_URL"] == "http://r-rlhf-operator.ops.svc:8081/healthz"
    assert env["NAMESPACE"] == "ops"
    assert json.loads(env["SAMPLE_RLHFJOB"]) == yaml.safe_load(
        (CHART / "files" / "tests" / "rlhfjob.yaml").read_text()
    )
    # A dry run needs the create permission, in the release's namespace only.
    assert one(docs, "Role", "r-rlhf-operator-test")["rules"] == [
        {"apiGroups": ["rlhf-operator.dev"], "resources": ["rlhfjobs"], "verbs": ["create"]}
    ]
    assert one(docs, "ClusterRole", "r-rlhf-operator-test")["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["rlhfjobs.rlhf-operator.dev"],
            "verbs": ["get"],
        }
    ]
    assert not find(render({"tests": {"enabled": False}}), "Pod")


# ---------------------------------------------------------------------------------------------- schema

BAD_VALUES = [
    ({"replicaCount": -1}, "/replicaCount", "minimum"),
    ({"replicaCount": 6}, "/replicaCount", "maximum"),
    ({"metrics": {"port": -1}}, "/metrics/port", "minimum"),
    ({"metrics": {"port": 70000}}, "/metrics/port", "maximum"),
    ({"nodeGroups": {"gpuPool": "x"}}, "/nodeGroups", "additional properties 'gpuPool' not allowed"),
    ({"rbac": {"scope": "everywhere"}}, "/rbac/scope", "value must be one of 'cluster', 'namespaced'"),
    ({"rbac": {"scope": "namespaced"}}, "/watchNamespaces", "minItems"),
    ({"logLevel": "TRACE"}, "/logLevel", "value must be one of"),
    ({"images": {"pullPolicy": "Sometimes"}}, "/images/pullPolicy", "value must be one of"),
    ({"images": {"worker": {"tag": "bad tag"}}}, "/images/worker/tag", "does not match pattern"),
    ({"nodeGroups": {"cpu": ""}}, "/nodeGroups/cpu", "minLength"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", "does not match pattern"),
    ({"stages": {"progressIntervalSeconds": 0}}, "/stages/progressIntervalSeconds", "exclusiveMinimum"),
    ({"extraEnv": [{"name": "RLHF_OPERATOR_LOG_LEVEL", "value": "x"}]}, "/extraEnv/0/name", "not"),
    ({"replicas": 1}, "at ''", "additional properties 'replicas' not allowed"),
]


@pytest.mark.parametrize(
    ("values", "where", "message"), BAD_VALUES, ids=[json.dumps(v[0]) for v in BAD_VALUES]
)
def test_schema_refuses_bad_values_with_a_clear_message(
    values: dict[str, Any], where: str, message: str
) -> None:
    error = fail_message(values)
    assert "values don't meet the specifications of the schema" in error
    assert where in error and message in error, error


def test_schema_is_draft_07_and_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict) and "properties" in node:
            assert set(node["properties"]) >= set(value), (
                f"{path}: {set(value) - set(node['properties'])} unschematised"
            )
            for key, child in value.items():
                walk(child, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a `# --` comment above it, or sits under a documented key."""
    documented_above: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    comment = False
    undocumented = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            comment = False
            continue
        if stripped.startswith("# --"):
            comment = True
            continue
        if stripped.startswith("#"):
            continue
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            comment = False
            continue
        indent = len(match.group(1))
        while documented_above and documented_above[-1][0] >= indent:
            documented_above.pop()
        inherited = any(documented for _, documented in documented_above)
        is_section = line.rstrip().endswith(":")
        if not (comment or inherited or is_section):
            undocumented.append(stripped)
        documented_above.append((indent, comment or inherited))
        comment = False
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
