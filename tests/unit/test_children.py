"""Child manifests: pure functions of (job, stage, config)."""

from __future__ import annotations

from datetime import UTC, datetime

from rlhf_operator.api.stage_config import parse_stage_config
from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.children import JobIdentity, stage_job
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline import reconcile
from rlhf_operator.plan import Observed
from tests.support.builders import TOKEN, rlhfjob

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def test_precompute_job_is_indexed_pinned_and_restricted() -> None:
    job = rlhfjob()
    manifest = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.PRECOMPUTE, CONFIG)
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod_spec = spec["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"eks.amazonaws.com/nodegroup": "cpu"}
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [78]
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_multi_node_policy_gets_rendezvous_and_gpus() -> None:
    job = rlhfjob(stages={"policy": {"nodes": 2, "pod": {"resources": {"gpus": 8}}}})
    manifest = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.POLICY, CONFIG)
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"]) == ("Indexed", 2)
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"][0] == "torchrun" and "--nproc-per-node=8" in container["command"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MASTER_ADDR"]["value"] == "tiny-policy-0.tiny-policy.ml.svc"
    assert env["WORLD_SIZE"]["value"] == "16"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert spec["template"]["spec"]["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists",
                                                          "effect": "NoSchedule"}  # fmt: skip
    assert spec["template"]["spec"]["nodeSelector"] == {"eks.amazonaws.com/nodegroup": "policy-gpu"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_reward_model_on_several_gpus_launches_like_the_policy() -> None:
    job = rlhfjob(stages={"rewardModel": {"nodes": 2, "pod": {"resources": {"gpus": 4, "efa": 1}}}})
    manifest = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.REWARD_MODEL, CONFIG)
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"]) == ("Indexed", 2)
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:3] == ["torchrun", "--nnodes=2", "--nproc-per-node=4"]
    assert "reward-model" in container["command"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MASTER_ADDR"]["value"] == "tiny-reward-model-0.tiny-reward-model.ml.svc"
    assert env["WORLD_SIZE"]["value"] == "8"
    assert pod["subdomain"] == "tiny-reward-model"
    assert container["resources"]["limits"]["vpc.amazonaws.com/efa"] == "1"
    assert container["resources"]["requests"]["vpc.amazonaws.com/efa"] == "1"
    # NCCL's shared memory: a memory-backed /dev/shm instead of the container's 64 MiB.
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_single_process_stages_keep_a_plain_command_and_no_shm() -> None:
    job = rlhfjob()
    manifest = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.REWARD_MODEL, CONFIG)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][0] == "python"
    assert "completionMode" not in manifest["spec"]
    evaluation = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.EVALUATION, CONFIG)
    assert all(v["name"] != "dshm" for v in evaluation["spec"]["template"]["spec"]["volumes"])


def test_config_map_holds_a_stage_config_the_pod_can_validate() -> None:
    plan = reconcile(rlhfjob(), {}, Observed(missing=()), CONFIG, NOW, new_token=TOKEN)
    [config_map] = [m for m in plan.create if m["kind"] == "ConfigMap"]
    data = config_map["data"]["stage.json"]
    config = parse_stage_config(data)
    assert config.stage is StageName.PRECOMPUTE
    assert config.artifact_root == "/data/rlhf-jobs/ml/tiny/u-1"
    assert config_map["immutable"] is True


def test_a_served_judge_gets_its_api_key_from_the_secret_and_the_secret_is_a_dependency() -> None:
    from rlhf_operator.pipeline.dependencies import dependencies

    endpoint = {"url": "http://judge.ml.svc:8000/v1", "model": "judge", "apiKeySecret": {"name": "judge-key"}}
    job = rlhfjob(stages={"ranking": {"method": "aiJudge", "rule": None, "aiJudge": {"endpoint": endpoint}}})
    ranking = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.RANKING, CONFIG)
    env = {e["name"]: e for e in ranking["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RLHF_JUDGE_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "judge-key", "key": "api-key"}}
    policy = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.POLICY, CONFIG)
    assert "RLHF_JUDGE_API_KEY" not in {
        e["name"] for e in policy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert ("Secret", "judge-key") in dependencies(job, CONFIG)
    assert ("Secret", "judge-key") not in dependencies(rlhfjob(), CONFIG)


def test_pod_settings_real_clusters_need_reach_the_pod() -> None:
    extras = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
                            ]
                        }
                    ]
                }
            }
        },
        "priorityClassName": "training-high",
        "imagePullSecrets": [{"name": "registry"}],
        "labels": {"team": "nlp", "cost-center": "42"},
        "volumes": [
            {"name": "certs", "secret": {"secretName": "ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
        ],
        "volumeMounts": [{"name": "certs", "mountPath": "/etc/ssl/extra", "readOnly": True}],
        "env": [
            {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "PLAIN", "value": "1"},
        ],
    }
    job = rlhfjob(stages={"policy": {"pod": extras}})
    manifest = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.POLICY, CONFIG)
    template = manifest["spec"]["template"]
    pod, container = template["spec"], template["spec"]["containers"][0]
    assert pod["affinity"] == extras["affinity"]
    assert pod["priorityClassName"] == "training-high" and pod["imagePullSecrets"] == [{"name": "registry"}]
    assert template["metadata"]["labels"]["team"] == "nlp"
    assert template["metadata"]["labels"]["rlhf-operator.dev/job-uid"] == "u-1"  # the operator's stay
    assert {
        "name": "certs",
        "secret": {"secretName": "ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    } in pod["volumes"]
    assert {"name": "certs", "mountPath": "/etc/ssl/extra", "readOnly": True} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WANDB_API_KEY"] == {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}},
    }
    assert env["POD"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["PLAIN"] == {"name": "PLAIN", "value": "1"}
    # Other stages keep their own settings.
    other = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.EVALUATION, CONFIG)["spec"][
        "template"
    ]
    assert "affinity" not in other["spec"] and "team" not in other["metadata"]["labels"]


def test_the_hub_token_reaches_every_stage_from_its_secret() -> None:
    job = rlhfjob(hub={"endpoint": "https://hub.internal", "tokenSecret": {"name": "hf"}})
    for stage in (StageName.PRECOMPUTE, StageName.REWARD_MODEL, StageName.POLICY, StageName.EVALUATION):
        container = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, stage, CONFIG)["spec"]["template"][
            "spec"
        ]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["RLHF_HUB_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
        assert env["HF_HUB_OFFLINE"]["value"] == "1"  # only the fetch process goes online
    plain = stage_job(JobIdentity("ml", "tiny", "u-1"), rlhfjob().spec, StageName.POLICY, CONFIG)
    assert "RLHF_HUB_TOKEN" not in str(plain)
