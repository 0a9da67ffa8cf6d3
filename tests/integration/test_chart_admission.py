"""The chart's ValidatingAdmissionPolicy, enforced by the real API server: what an RLHFJob author may
not ask for is refused at `kubectl apply`, with a message that says what and why. The binding covers
the release's `watchNamespaces` only, so the test's policy touches no other test's RLHFJobs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chart_support import render_text
from tests.conftest import Kube
from tests.integration import operator_harness as harness

ALLOWED_PREFIX = "registry.example/ml/"


@pytest.fixture(scope="module")
def guarded(crd_installed: Kube) -> Iterator[str]:
    """A namespace guarded by the chart's policy (only the policy and its binding are applied)."""
    namespace = f"t-vap-{uuid.uuid4().hex[:8]}"
    crd_installed.kubectl("create", "namespace", namespace)
    values = {
        "watchNamespaces": [namespace],
        "stages": {"serviceAccountName": "rlhf-stages"},
        "jobPolicy": {
            "allowedImagePrefixes": [ALLOWED_PREFIX],
            "allowedServiceAccounts": ["trusted"],
            "secrets": {"allowedNames": ["s3-keys"], "onlyAllowedNames": True},
        },
    }
    release = f"vap{uuid.uuid4().hex[:6]}"
    manifest = render_text(
        values, "-s", "templates/admission-policy.yaml", release=release, namespace=namespace
    )
    crd_installed.kubectl("apply", "-f", "-", input=manifest)
    binding = f"binding '{release}-rlhf-operator-rlhfjobs'"

    def in_force() -> bool:
        """The API server loads policies asynchronously, and drops deleted ones the same way: an
        earlier test's release (default values: bound in every namespace) can still refuse here for
        a moment after its `helm uninstall`. In force: this policy refuses, and what it allows is
        admitted (no other policy is refusing)."""
        refused = _refused(crd_installed, namespace, _pod_setting("precompute", {"image": "evil/x:1"}))
        allowed = _pod_setting("ranking", {"serviceAccountName": "trusted"})
        return refused is not None and binding in refused and _apply(crd_installed, namespace, allowed)[0]

    try:
        crd_installed.wait_for(in_force, timeout=60, what="the admission policy, alone, to be in force")
        yield namespace
    finally:
        crd_installed.kubectl("delete", "-f", "-", input=manifest, check=False)
        crd_installed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _pod_setting(stage: str, pod: dict[str, Any]) -> dict[str, Any]:
    job = harness.rlhfjob("guarded", "placeholder")
    job["spec"]["stages"][stage].setdefault("pod", {}).update(pod)
    return job


def _apply(cluster: Kube, namespace: str, job: dict[str, Any]) -> tuple[bool, str]:
    job["metadata"]["namespace"] = namespace
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(job), check=False)
    return result.returncode == 0, result.stderr


def _refused(cluster: Kube, namespace: str, job: dict[str, Any]) -> str | None:
    admitted, stderr = _apply(cluster, namespace, job)
    return None if admitted else stderr


def test_the_policy_type_checks_against_the_crd(cluster: Kube, guarded: str) -> None:
    """The API server checks every expression against the CRD's schema: a misspelt field would be
    a warning here (and a rule that never refuses)."""

    def checked() -> dict[str, Any] | None:
        [policy] = [
            p for p in cluster.get_json("validatingadmissionpolicies")["items"]
            if p["metadata"]["name"].startswith("vap") and p["metadata"]["name"].endswith("-rlhfjobs")
        ]  # fmt: skip
        status: dict[str, Any] = policy.get("status") or {}
        return status if "typeChecking" in status else None

    status = cluster.wait_for(checked, timeout=30, what="the policy's type checking")
    assert not status["typeChecking"].get("expressionWarnings"), status


@pytest.mark.parametrize(
    ("stage", "pod", "says"),
    [
        ("policy", {"image": "docker.io/evil/miner:latest"}, "spec.stages.policy.pod.image must start with one of"),
        # A lookalike of the chart's own repository is not the repository.
        ("precompute", {"image": "ghcr.io/rlhf-operator/worker-evil:1"}, "spec.stages.precompute.pod.image"),
        ("ranking", {"serviceAccountName": "admin-irsa"}, "spec.stages.ranking.pod.serviceAccountName must be one of [trusted, rlhf-stages]"),
        ("rewardModel", {"tolerations": [{"operator": "Exists"}]}, "tolerates every taint"),
        ("evaluation", {"nodeSelector": {"eks.amazonaws.com/nodegroup": "policy-gpu"}}, "must not set the node group label"),
        ("evaluation", {"nodeGroup": "system"}, "spec.stages.evaluation.pod.nodeGroup must be one of [cpu, reward-gpu, policy-gpu]"),
    ],
)  # fmt: skip
def test_pod_settings_outside_the_policy_are_refused_at_apply(
    cluster: Kube, guarded: str, stage: str, pod: dict[str, Any], says: str
) -> None:
    stderr = _refused(cluster, guarded, _pod_setting(stage, pod))
    assert stderr is not None and says in stderr, stderr
    assert "ValidatingAdmissionPolicy" in stderr


def test_a_secret_outside_the_allowed_names_is_refused_and_a_listed_one_is_admitted(
    cluster: Kube, guarded: str
) -> None:
    judge = {"ranking": {"method": "aiJudge", "aiJudge": {"endpoint": {
        "url": "https://attacker.example/v1", "model": "m", "apiKeySecret": {"name": "prod-db-password"}}}}}  # fmt: skip
    stderr = _refused(cluster, guarded, harness.rlhfjob("guarded", "x", spec={"stages": judge}))
    assert stderr and "spec.stages.ranking.aiJudge.endpoint.apiKeySecret.name must name a Secret in" in stderr
    listed = harness.rlhfjob(
        "guarded", "x", spec={"storage": {"credentials": {"secretRef": {"name": "s3-keys"}}}}
    )
    assert _apply(cluster, guarded, listed) == (True, "")


def test_what_the_policy_allows_is_admitted(cluster: Kube, guarded: str) -> None:
    allowed = _pod_setting(
        "policy",
        {"image": ALLOWED_PREFIX + "trainer:1", "serviceAccountName": "trusted", "nodeGroup": "policy-gpu",
         "tolerations": [{"key": "spot", "operator": "Exists"}], "nodeSelector": {"topology.kubernetes.io/zone": "a"}},
    )  # fmt: skip
    allowed["spec"]["stages"]["precompute"]["pod"] = {"image": "ghcr.io/rlhf-operator/worker:0.1.0",
                                                      "serviceAccountName": "rlhf-stages"}  # fmt: skip
    assert _apply(cluster, guarded, allowed) == (True, "")
    # The chart's trainer-vllm repository, pinned by digest, for a policy generating with vLLM.
    vllm = _pod_setting("policy", {"image": "ghcr.io/rlhf-operator/trainer-vllm@sha256:" + "c" * 64})
    vllm["spec"]["stages"]["policy"]["generation"] = {"engine": "vllm"}
    assert _apply(cluster, guarded, vllm) == (True, "")


def test_namespaces_outside_the_binding_are_not_guarded(cluster: Kube, guarded: str, namespace: str) -> None:
    assert _apply(cluster, namespace, _pod_setting("precompute", {"image": "evil/x:1"}))[0]
