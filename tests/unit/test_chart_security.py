"""The chart's security pieces, rendered without a cluster: the admission policy, the RBAC scope,
leader election's Lease RBAC and the operator's NetworkPolicy values. The integration tests
(test_chart_admission.py, test_chart_rbac_operator.py, test_leader_election.py) enforce them."""

from __future__ import annotations

import json
from typing import Any

from rlhf_operator.api.admission_fields import pod_settings_paths
from rlhf_operator.api.secret_references import SECRET_REFERENCES
from tests.chart_support import fail_message, find, one, operator_env, render


def _validations(values: dict[str, Any]) -> list[dict[str, str]]:
    policy = one(render(values), "ValidatingAdmissionPolicy")
    return list(policy["spec"]["validations"])


def test_the_admission_policy_has_five_rules_per_stage_and_none_for_secrets_by_default() -> None:
    rules = _validations({})
    assert len(rules) == 5 * len(pod_settings_paths())
    for path in pod_settings_paths():
        assert sum(f"object.spec.{path}." in r["expression"] for r in rules) == 5, path
    assert all(r["reason"] == "Forbidden" for r in rules)


def test_only_allowed_secret_names_adds_one_rule_per_secret_reference() -> None:
    values = {"jobPolicy": {"secrets": {"onlyAllowedNames": True, "allowedNames": ["s3-keys"]}}}
    rules = _validations(values)[5 * len(pod_settings_paths()) :]
    assert [r["message"].split()[0] for r in rules] == [ref.path for ref in SECRET_REFERENCES]
    assert all(r["expression"].endswith('.all(n, n in ["s3-keys"])') for r in rules)


def test_the_stage_service_account_and_the_listed_ones_are_allowed() -> None:
    values = {"stages": {"serviceAccountName": "rlhf-stages"}, "jobPolicy": {"allowedServiceAccounts": ["a"]}}
    [rule] = [r for r in _validations(values) if "precompute.pod.serviceAccountName in" in r["expression"]]
    assert rule["expression"].endswith('in ["a","rlhf-stages"]')


def test_the_binding_covers_the_watched_namespaces_only() -> None:
    binding = one(render({"watchNamespaces": ["team-a", "team-b"]}), "ValidatingAdmissionPolicyBinding")
    [selector] = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector["values"] == ["team-a", "team-b"]
    assert "matchResources" not in one(render({}), "ValidatingAdmissionPolicyBinding")["spec"]


def test_the_policy_can_be_turned_off_and_the_operator_gets_the_secret_settings() -> None:
    docs = render(
        {"jobPolicy": {"enabled": False, "secrets": {"requireOptIn": False, "allowedNames": ["a", "b"]}}}
    )
    assert not find(docs, "ValidatingAdmissionPolicy") and not find(docs, "ValidatingAdmissionPolicyBinding")
    env = operator_env(docs)
    assert (env["RLHF_OPERATOR_SECRET_OPT_IN"], env["RLHF_OPERATOR_ALLOWED_SECRETS"]) == ("false", "a,b")


# ---------------------------------------------------------------------------------------------- HA


def test_two_replicas_elect_a_leader_with_a_lease_they_may_only_get_and_update() -> None:
    docs = render({"replicaCount": 2})
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = operator_env(docs)
    assert (env["RLHF_OPERATOR_LEADER_ELECTION_NAMESPACE"], env["RLHF_OPERATOR_LEADER_ELECTION_LEASE"]) == (
        "ops",
        "r-rlhf-operator-leader",
    )
    role = one(docs, "Role", "r-rlhf-operator-leader-election")
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["r-rlhf-operator-leader"], "verbs": ["get", "update"]},
    ]  # fmt: skip
    binding = one(docs, "RoleBinding", "r-rlhf-operator-leader-election")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "r-rlhf-operator", "namespace": "ops"}]


def test_without_leader_election_only_one_replica_runs_and_it_is_recreated() -> None:
    docs = render({"replicaCount": 1, "leaderElection": {"enabled": False}})
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert operator_env(docs)["RLHF_OPERATOR_LEADER_ELECTION_NAMESPACE"] == ""
    assert not find(docs, "Role", "r-rlhf-operator-leader-election")
    assert "replicaCount > 1 needs leaderElection.enabled" in fail_message(
        {"replicaCount": 2, "leaderElection": {"enabled": False}}
    )


# ---------------------------------------------------------------------------------------------- RBAC


def test_watched_namespaces_get_roles_even_in_cluster_scope() -> None:
    """A ClusterRoleBinding would cover every namespace, watched or not."""
    docs = render({"rbac": {"scope": "cluster"}, "watchNamespaces": ["team-a", "team-b"]})
    assert sorted(
        r["metadata"]["namespace"] for r in find(docs, "Role") if r["metadata"]["name"] == "r-rlhf-operator"
    ) == ["team-a", "team-b"]
    assert not find(docs, "ClusterRoleBinding", "r-rlhf-operator")
    assert not find(docs, "ClusterRole", "r-rlhf-operator")


def test_rlhfjob_users_get_access_through_the_default_edit_and_view_roles() -> None:
    docs = render()
    edit = one(docs, "ClusterRole", "r-rlhf-operator-rlhfjobs-edit")
    assert {k: v for k, v in edit["metadata"]["labels"].items() if k.startswith("rbac.")} == {
        "rbac.authorization.k8s.io/aggregate-to-edit": "true",
        "rbac.authorization.k8s.io/aggregate-to-admin": "true",
    }
    view = one(docs, "ClusterRole", "r-rlhf-operator-rlhfjobs-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert view["rules"] == [
        {
            "apiGroups": ["rlhf-operator.dev"],
            "resources": ["rlhfjobs", "rlhfjobs/status"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert not find(
        render({"rbac": {"aggregateToDefaultRoles": False}}), "ClusterRole", "r-rlhf-operator-rlhfjobs-view"
    )


# ---------------------------------------------------------------------------------------------- network, disk


def test_network_policy_and_disk_values_reach_the_operator() -> None:
    env = operator_env(render())
    assert env["RLHF_OPERATOR_NETWORK_POLICY"] == "true"
    assert json.loads(env["RLHF_OPERATOR_NETWORK_EGRESS"]) == [{"ports": [{"port": 443, "protocol": "TCP"}]}]
    assert env["RLHF_OPERATOR_STAGE_EPHEMERAL_STORAGE"] == "20Gi"
    values = {"networkPolicy": {"enabled": False, "egress": []}, "stages": {"ephemeralStorage": "50Gi"}}
    env = operator_env(render(values))
    assert (env["RLHF_OPERATOR_NETWORK_POLICY"], env["RLHF_OPERATOR_NETWORK_EGRESS"]) == ("false", "[]")
    assert env["RLHF_OPERATOR_STAGE_EPHEMERAL_STORAGE"] == "50Gi"
    assert "ephemeralStorage" in fail_message({"stages": {"ephemeralStorage": "lots"}})


def test_the_allowed_images_follow_the_images_the_operator_runs() -> None:
    digest = "sha256:" + "a" * 64
    values = {"images": {"worker": {"digest": digest}, "trainer": {"repository": "localhost:5000/ml/trainer"},
                         "trainerVllm": {"tag": "cuda"}},
              "jobPolicy": {"allowedImagePrefixes": ["registry.example/ml/"]}}  # fmt: skip
    [rule] = [r for r in _validations(values) if "precompute.pod.image)" in r["expression"]]
    prefixes = ["ghcr.io/rlhf-operator/worker:", "ghcr.io/rlhf-operator/worker@", "localhost:5000/ml/trainer:",
                "localhost:5000/ml/trainer@", "ghcr.io/rlhf-operator/trainer-vllm:",
                "ghcr.io/rlhf-operator/trainer-vllm@", "registry.example/ml/"]  # fmt: skip
    assert json.dumps(prefixes, separators=(",", ":")) in rule["expression"]
