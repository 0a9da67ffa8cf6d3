"""What the operator's children carry for a shared cluster: the job's NetworkPolicy, bounded node use,
the reward server's TLS, disruption budget and Kueue queue."""

from __future__ import annotations

from typing import Any

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.children import JobIdentity, stage_job
from rlhf_operator.config import OperatorConfig
from rlhf_operator.network import network_policy
from rlhf_operator.reward_server_manifests import (
    reward_server_deployment,
    reward_server_disruption_budget,
    reward_server_endpoint,
)
from tests.support.builders import rlhfjob

JOB = JobIdentity("ml", "tiny", "u-1")
CONFIG = OperatorConfig()
REMOTE: dict[str, Any] = {"policy": {"rewardPlacement": "remote"}}


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return pod


def _tls_volume(pod: dict[str, Any]) -> dict[str, Any]:
    secret: dict[str, Any] = next(v for v in pod["volumes"] if v["name"] == "reward-tls")["secret"]
    return secret


def test_the_network_policy_admits_only_the_jobs_own_pods_and_the_configured_egress() -> None:
    egress = [{"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}], "ports": [{"port": 8000}]}]
    policy = network_policy(JOB, OperatorConfig(network_egress=egress))
    own = {"podSelector": {"matchLabels": {"rlhf-operator.dev/job-uid": "u-1"}}}
    assert policy["spec"]["podSelector"] == own["podSelector"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"from": [own]}]
    assert policy["spec"]["egress"][0] == {"to": [own]}
    assert {"port": 53, "protocol": "UDP"} in policy["spec"]["egress"][1]["ports"]
    assert policy["spec"]["egress"][2:] == egress
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_every_pod_asks_for_its_disk_and_every_emptydir_is_bounded() -> None:
    job = rlhfjob(
        stages={"policy": {"pod": {"resources": {"gpus": 2, "memory": "64Gi", "ephemeralStorage": "100Gi"}}}}
    )
    for stage in (StageName.PRECOMPUTE, StageName.POLICY):
        pod = _pod(stage_job(JOB, job.spec, stage, CONFIG))
        disk = "100Gi" if stage is StageName.POLICY else "20Gi"
        assert pod["containers"][0]["resources"]["requests"]["ephemeral-storage"] == disk
        for volume in pod["volumes"]:
            if "emptyDir" in volume:
                assert volume["emptyDir"]["sizeLimit"], volume
    shm = next(
        v for v in _pod(stage_job(JOB, job.spec, StageName.POLICY, CONFIG))["volumes"] if v["name"] == "dshm"
    )
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}


def test_the_reward_server_is_queued_and_protected_like_the_jobs() -> None:
    spec = rlhfjob(queueName="gpu-queue", stages=REMOTE).spec
    deployment = reward_server_deployment(JOB, spec, CONFIG, replicas=1)
    assert deployment["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert deployment["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    budget = reward_server_disruption_budget(JOB)
    assert budget["spec"]["minAvailable"] == 1
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    assert (
        "kueue.x-k8s.io/queue-name"
        not in reward_server_deployment(JOB, rlhfjob(stages=REMOTE).spec, CONFIG, replicas=1)["metadata"][
            "labels"
        ]
    )


def test_with_a_certificate_the_server_gets_all_of_it_and_the_policy_only_what_verifies_it() -> None:
    spec = rlhfjob(stages={**REMOTE, "rewardModel": {"serving": {"tls": {"secretName": "reward-tls"}}}}).spec
    assert reward_server_endpoint(JOB, spec) == "https://tiny-reward-server.ml.svc:8080"
    server = _pod(reward_server_deployment(JOB, spec, CONFIG, replicas=1))
    policy = _pod(stage_job(JOB, spec, StageName.POLICY, CONFIG))
    tls = {p["name"]: next(v for v in p["volumes"] if v["name"] == "reward-tls")["secret"] for p in (
        {"name": "server", **server}, {"name": "policy", **policy})}  # fmt: skip
    assert tls["server"] == {"secretName": "reward-tls"}
    assert tls["policy"]["items"] == [
        {"key": "ca.crt", "path": "ca.crt"},
        {"key": "tls.crt", "path": "tls.crt"},
    ]
    for pod in (server, policy):
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["RLHF_REWARD_TLS_DIR"] == "/var/run/secrets/rlhf-operator/reward-tls"
    assert server["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    plain = rlhfjob(stages=REMOTE).spec
    assert reward_server_endpoint(JOB, plain).startswith("http://")
    assert all(
        v["name"] != "reward-tls" for v in _pod(stage_job(JOB, plain, StageName.POLICY, CONFIG))["volumes"]
    )
