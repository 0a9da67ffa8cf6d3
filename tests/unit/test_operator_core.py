"""The operator's pure core: names, manifests, results and the pipeline state machine."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api.stage_config import parse_stage_config
from rlhf_operator.api.v1alpha1 import RLHFJob, StageName
from rlhf_operator.children import JobIdentity, stage_job
from rlhf_operator.config import OperatorConfig
from rlhf_operator.naming import MAX_CHILD_NAME, child_name
from rlhf_operator.pipeline import Observed, reconcile
from rlhf_operator.results import failure_message, stage_result

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def tiny(**spec: Any) -> RLHFJob:
    manifest = yaml.safe_load((ROOT / "examples" / "tiny-rlhfjob.yaml").read_text())
    manifest["metadata"] = {"name": "tiny", "namespace": "ml", "uid": "u-1", "generation": 1}
    manifest["spec"] = deep_merge(manifest["spec"], spec)
    return RLHFJob.model_validate(manifest)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def finished_job(kind: str = "Complete", **status: Any) -> dict[str, Any]:
    return {"spec": {}, "status": {"conditions": [{"type": kind, "status": "True", "reason": "Done",
                                                  "lastTransitionTime": "2026-11-24T11:00:00Z"}], **status}}  # fmt: skip


def pod(stage: StageName, phase: str, message: str, exit_code: int = 0, **extra: Any) -> dict[str, Any]:
    terminated = {
        "exitCode": exit_code,
        "message": message,
        "reason": "Completed",
        "finishedAt": extra.get("at", ""),
    }
    return {
        "metadata": {"labels": {"rlhf-operator.dev/stage": stage.value}, "annotations": {}},
        "status": {"phase": phase, "containerStatuses": [{"state": {"terminated": terminated}}],
                   "conditions": extra.get("conditions", [])},
    }  # fmt: skip


def test_child_names_are_deterministic_and_short() -> None:
    assert child_name("tiny", StageName.REWARD_MODEL) == "tiny-reward-model"
    long_name = "a" * 200
    name = child_name(long_name, StageName.EVALUATION)
    assert len(name) <= MAX_CHILD_NAME and name == child_name(long_name, StageName.EVALUATION)
    assert name != child_name("a" * 199, StageName.EVALUATION)


def test_first_reconcile_asks_for_a_dependency_check_then_creates_precompute() -> None:
    job = tiny()
    plan = reconcile(job, {}, Observed(), CONFIG, NOW)
    assert plan.check_dependencies and plan.create == []
    plan = reconcile(job, {}, Observed(missing=()), CONFIG, NOW)
    kinds = [(m["kind"], m["metadata"]["name"]) for m in plan.create]
    assert kinds == [("ConfigMap", "tiny-precompute-config"), ("Job", "tiny-precompute")]
    assert plan.status["phase"] == "Running" and plan.status["currentStage"] == "precompute"
    assert [e.reason for e in plan.events] == ["StageStarted"]


def test_missing_dependency_waits_with_a_condition_naming_it() -> None:
    plan = reconcile(
        tiny(), {}, Observed(missing=("PersistentVolumeClaim rlhf-data does not exist",)), CONFIG, NOW
    )
    assert plan.create == []
    waiting = next(c for c in plan.status["conditions"] if c["type"] == "Waiting")
    assert waiting["status"] == "True" and "rlhf-data" in waiting["message"]
    assert plan.status["phase"] == "Pending"


def test_precompute_job_is_indexed_pinned_and_restricted() -> None:
    job = tiny()
    manifest = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.PRECOMPUTE, CONFIG)
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod_spec = spec["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"eks.amazonaws.com/nodegroup": "cpu"}
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [78]
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_multi_node_policy_gets_rendezvous_and_gpus() -> None:
    job = tiny(stages={"policy": {"nodes": 2, "pod": {"resources": {"gpus": 8}}}})
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


def test_config_map_holds_a_stage_config_the_pod_can_validate() -> None:
    plan = reconcile(tiny(), {}, Observed(missing=()), CONFIG, NOW)
    data = plan.create[0]["data"]["stage.json"]
    config = parse_stage_config(data)
    assert config.stage is StageName.PRECOMPUTE
    assert config.artifact_root == "/data/rlhf-jobs/ml/tiny/u-1"
    assert plan.create[0]["immutable"] is True


def test_finished_stage_feeds_metrics_and_starts_the_next() -> None:
    job = tiny()
    status = reconcile(job, {}, Observed(missing=()), CONFIG, NOW).status
    result = json.dumps({"metrics": {"rewardModelAccuracy": 0.9}, "message": "Trained."})
    observed = Observed(
        jobs={
            "tiny-precompute": finished_job(),
            "tiny-ranking": finished_job(),
            "tiny-reward-model": finished_job(),
        },
        pods=(pod(StageName.REWARD_MODEL, "Succeeded", result),),
        missing=(),
    )
    plan = reconcile(job, status, observed, CONFIG, NOW)
    assert plan.status["metrics"] == {"rewardModelAccuracy": 0.9}
    assert [m["metadata"]["name"] for m in plan.create] == ["tiny-policy-config", "tiny-policy"]
    assert plan.status["currentStage"] == "policy"
    assert [e.reason for e in plan.events].count("StageSucceeded") == 3


def test_failed_stage_fails_the_job_with_the_pod_message() -> None:
    error = json.dumps({"error": "the model path /data/m does not exist", "reason": "BadModel"})
    observed = Observed(
        jobs={"tiny-precompute": finished_job("Failed", failed=1)},
        pods=(pod(StageName.PRECOMPUTE, "Failed", error, exit_code=78),),
        missing=(),
    )
    plan = reconcile(tiny(), {}, observed, CONFIG, NOW)
    assert plan.status["phase"] == "Failed"
    assert "the model path /data/m does not exist" in plan.status["message"]
    assert "BadModel (exit code 78)" in plan.status["message"]
    assert plan.create == []


def test_terminal_stage_states_are_kept_when_children_disappear() -> None:
    job = tiny()
    done = {"stages": [{"name": "precompute", "state": "Succeeded", "children": []}]}
    plan = reconcile(job, done, Observed(missing=()), CONFIG, NOW)
    assert [m["metadata"]["name"] for m in plan.create] == ["tiny-ranking-config", "tiny-ranking"]


def test_suspend_patches_the_running_job_and_resume_respects_kueue() -> None:
    running = {"tiny-precompute": {"spec": {"suspend": False}, "status": {"active": 2}}}
    plan = reconcile(tiny(suspend=True), {}, Observed(jobs=running, missing=()), CONFIG, NOW)
    assert plan.patch == [("Job", "tiny-precompute", {"spec": {"suspend": True}})]
    assert plan.status["phase"] == "Suspended"
    suspended = {"tiny-precompute": {"spec": {"suspend": True}, "status": {}}}
    assert reconcile(tiny(), {}, Observed(jobs=suspended, missing=()), CONFIG, NOW).patch == [
        ("Job", "tiny-precompute", {"spec": {"suspend": False}})
    ]
    assert reconcile(tiny(queueName="q"), {}, Observed(jobs=suspended, missing=()), CONFIG, NOW).patch == []


def test_remote_policy_waits_for_a_ready_reward_server() -> None:
    job = tiny(stages={"policy": {"rewardPlacement": "remote"}})
    done = {"stages": [{"name": s, "state": "Succeeded"} for s in ("precompute", "ranking", "rewardModel")]}
    plan = reconcile(job, done, Observed(missing=()), CONFIG, NOW)
    kinds = sorted(m["kind"] for m in plan.create)
    assert kinds == ["ConfigMap", "Deployment", "Secret", "Service"]
    deployment = {"spec": {"replicas": 1}, "status": {"readyReplicas": 1}}
    observed = Observed(deployments={"tiny-reward-server": deployment}, services=frozenset({"tiny-reward-server"}),
                        config_maps=frozenset({"tiny-reward-server-config"}),
                        secrets=frozenset({"tiny-reward-server-token"}), missing=())  # fmt: skip
    plan = reconcile(job, done, observed, CONFIG, NOW)
    assert [m["kind"] for m in plan.create] == ["ConfigMap", "Job"]


def test_results_merge_shards_and_failures_prefer_counted_ones() -> None:
    a = pod(StageName.PRECOMPUTE, "Succeeded", json.dumps({"artifacts": {"responses": "s3://b/m.json"}}))
    assert stage_result([a]).artifacts == {"responses": "s3://b/m.json"}
    drained = pod(StageName.POLICY, "Failed", "node drained", exit_code=137, at="2026-11-24T11:00:02Z",
                  conditions=[{"type": "DisruptionTarget", "status": "True"}])  # fmt: skip
    crash = pod(StageName.POLICY, "Failed", "Traceback: boom", exit_code=1, at="2026-11-24T11:00:01Z")
    assert failure_message([drained, crash]) == "Completed (exit code 1): Traceback: boom"


def test_operator_config_from_environment_refuses_unknown_settings() -> None:
    config = OperatorConfig.from_env(
        {"RLHF_OPERATOR_NAMESPACES": "a, b", "RLHF_OPERATOR_NODE_GROUP_POLICY": "p5"}
    )
    assert config.namespaces == ("a", "b") and config.node_group_policy == "p5"
    with pytest.raises(ValueError, match=r"unknown setting.*RLHF_OPERATOR_NODEGROUP"):
        OperatorConfig.from_env({"RLHF_OPERATOR_NODEGROUP": "x"})


def test_retention_delete_holds_a_finalizer_until_the_cleanup_job_succeeds() -> None:
    from rlhf_operator.pipeline import retention

    job = tiny(artifactRetention="Delete")
    assert retention(job, [], False, Observed(), CONFIG).finalizers == ["rlhf-operator.dev/artifact-cleanup"]
    held = ["other", "rlhf-operator.dev/artifact-cleanup"]
    plan = retention(job, held, True, Observed(), CONFIG)
    assert plan.finalizers is None
    [cleanup] = plan.create
    assert cleanup["metadata"]["name"] == "tiny-cleanup"
    assert (
        cleanup["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "/data/rlhf-jobs/ml/tiny/u-1"
    )
    done = retention(job, held, True, Observed(jobs={"tiny-cleanup": finished_job()}), CONFIG)
    assert done.finalizers == ["other"] and done.events[0].reason == "ArtifactsDeleted"
    assert retention(tiny(), held, True, Observed(), CONFIG).finalizers == ["other"]


def test_cleanup_deletes_only_a_job_root(tmp_path: Path) -> None:
    from rlhf_operator.cleanup import is_job_root, main

    root = tmp_path / "rlhf-jobs" / "ml" / "tiny" / "u-1"
    (root / "policy").mkdir(parents=True)
    (root / "policy" / "model.safetensors").write_text("weights")
    assert main([str(root)]) == 0 and not root.exists() and (tmp_path / "rlhf-jobs" / "ml").exists()
    assert main([str(tmp_path / "rlhf-jobs")]) == 78
    assert is_job_root("s3://bucket/prefix/rlhf-jobs/ml/tiny/u-1") and not is_job_root(
        "s3://bucket/rlhf-jobs/ml"
    )


def test_store_keeps_slim_children_and_skips_updates_that_change_nothing() -> None:
    from rlhf_operator.store import Store

    store = Store()
    labels = {"rlhf-operator.dev/job-uid": "u-1", "rlhf-operator.dev/stage": "policy"}
    child = pod(StageName.POLICY, "Running", "")
    child["metadata"] |= {"name": "p", "labels": labels, "managedFields": [{"big": "x" * 1000}]}
    child["spec"] = {"containers": [{"name": "stage", "image": "trainer"}]}
    assert store.put_child("Pod", child) == "u-1"
    [kept] = store.observed("u-1").pods
    assert "spec" not in kept and "managedFields" not in kept["metadata"]
    child["metadata"]["resourceVersion"] = "99"  # a no-op update for the pipeline
    assert store.put_child("Pod", child) is None
    child["status"]["phase"] = "Succeeded"
    assert store.put_child("Pod", child) == "u-1"
    assert store.put_child("Pod", child, deleted=True) == "u-1"
    assert store.observed("u-1").pods == ()


def test_reward_model_on_several_gpus_launches_like_the_policy() -> None:
    job = tiny(stages={"rewardModel": {"nodes": 2, "pod": {"resources": {"gpus": 4, "efa": 1}}}})
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
    # NCCL's shared memory: a memory-backed /dev/shm instead of the container's 64 MiB.
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    plan = reconcile(job, {}, Observed(missing=()), CONFIG, NOW)
    assert plan.create  # the pipeline still starts with precompute; the Service comes with the stage


def test_single_process_stages_keep_a_plain_command_and_no_shm() -> None:
    job = tiny()
    manifest = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.REWARD_MODEL, CONFIG)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][0] == "python"
    assert "completionMode" not in manifest["spec"]
    evaluation = stage_job(JobIdentity("ml", "tiny", "u-1"), job.spec, StageName.EVALUATION, CONFIG)
    assert all(v["name"] != "dshm" for v in evaluation["spec"]["template"]["spec"]["volumes"])
