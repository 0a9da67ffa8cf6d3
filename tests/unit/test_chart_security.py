"""The chart's security pieces, rendered without a cluster: the admission policy, the RBAC scope,
leader election's Lease RBAC and the operator's NetworkPolicy values. The integration tests
(test_chart_admission.py, test_chart_rbac_operator.py, test_leader_election.py) enforce them."""

from __future__ import annotations

from rlhf_operator.api.admission_fields import pod_settings_paths
from rlhf_operator.api.secret_references import SECRET_REFERENCES
from tests.chart_support import find, one, operator_env, render


def _validations(values: dict[str, object]) -> list[dict[str, str]]:
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
