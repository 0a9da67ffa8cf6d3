"""The stage registry: one definition per stage, read by names, manifests, the pipeline and the pods."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from rlhf_operator.api import artifacts
from rlhf_operator.api.v1alpha1 import PIPELINE_STAGES, StageName
from rlhf_operator.children import JobIdentity, stage_job
from rlhf_operator.config import OperatorConfig
from rlhf_operator.local_runner import plan as local_plan
from rlhf_operator.naming import LABEL_COMPONENT, LABEL_STAGE, child_name
from rlhf_operator.pipeline import reconcile, retention
from rlhf_operator.plan import Observed
from rlhf_operator.stages import BY_COMMAND, CLEANUP, STAGES, skipped
from rlhf_operator.workloads import __main__ as entry
from rlhf_operator.workloads import layout
from tests.support.builders import TOKEN, finished_job, pod, rlhfjob

CONFIG = OperatorConfig()
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
IDENTITY = JobIdentity("ml", "tiny", "u-1")


def test_every_stage_has_one_definition_and_every_program_a_command() -> None:
    assert set(StageName) | {CLEANUP} == set(STAGES)
    for command, definition in BY_COMMAND.items():
        assert entry._parser().parse_args([command, "--config", "c.json"]).stage == command
        assert definition.module and definition.module.startswith("rlhf_operator.workloads.")
        assert definition.workload_command()[3] == command


RULE = {"algorithm": "grpo", "klCoef": None, "rewardRule": {"name": "regex", "pattern": "good"}}


@pytest.mark.parametrize(
    ("dataset", "stages", "runs"),
    [
        ({}, {}, ["precompute", "ranking", "rewardModel", "policy", "evaluation"]),
        ({"responses": {"source": "/data/r.jsonl"}}, {}, ["ranking", "rewardModel", "policy", "evaluation"]),
        ({"rankings": {"source": "/data/p.jsonl"}}, {}, ["rewardModel", "policy", "evaluation"]),
        ({}, {"policy": RULE}, ["policy", "evaluation"]),
        ({}, {"rewardModel": {"pretrained": "hf://org/rm"}}, ["policy", "evaluation"]),
    ],
)
def test_run_local_and_the_operator_skip_the_same_stages(
    dataset: dict[str, object], stages: dict[str, object], runs: list[str]
) -> None:
    job = rlhfjob(dataset=dataset, stages=stages)
    assert [s.value for s in local_plan(job.spec)] == runs
    assert [s.value for s in PIPELINE_STAGES if not skipped(job.spec, s)] == runs
    status = reconcile(job, {}, Observed(missing=()), CONFIG, NOW, new_token=TOKEN).status
    assert [r["name"] for r in status["stages"] if r["state"] != "Skipped"] == runs


@pytest.mark.parametrize(
    ("evaluation", "runs_reward_model"),
    [({}, False), ({"trueRule": None}, True)],
)
def test_dpo_trains_the_reward_model_only_when_evaluation_needs_it(
    evaluation: dict[str, object], runs_reward_model: bool
) -> None:
    job = rlhfjob(stages={"policy": {"algorithm": "dpo", "klCoef": None}, "evaluation": evaluation})
    assert (not skipped(job.spec, StageName.REWARD_MODEL)) is runs_reward_model
    status = reconcile(job, {}, Observed(missing=()), CONFIG, NOW, new_token=TOKEN).status
    record = next(r for r in status["stages"] if r["name"] == "rewardModel")
    if runs_reward_model:
        assert record["state"] == "Pending"
    else:
        assert record["state"] == "Skipped"
        assert "dpo" in record["message"] and "trueRule" in record["message"]


@pytest.mark.parametrize(
    ("stage", "completions", "indexed", "first"),
    [
        (StageName.PRECOMPUTE, 2, True, "python"),
        (StageName.RANKING, 1, False, "python"),
        (StageName.REWARD_MODEL, 1, False, "python"),
        (StageName.POLICY, 1, False, "python"),
    ],
)
def test_job_shape_is_the_stages_hook(stage: StageName, completions: int, indexed: bool, first: str) -> None:
    manifest = stage_job(IDENTITY, rlhfjob().spec, stage, CONFIG)
    assert manifest["spec"]["completions"] == completions
    assert ("completionMode" in manifest["spec"]) is indexed
    assert manifest["spec"]["template"]["spec"]["containers"][0]["command"][0] == first
    assert "subdomain" not in manifest["spec"]["template"]["spec"]


def test_multi_node_policy_asks_for_its_headless_service() -> None:
    job = rlhfjob(stages={"policy": {"nodes": 2}})
    done = {"stages": [{"name": s, "state": "Succeeded"} for s in ("precompute", "ranking", "rewardModel")]}
    created = reconcile(job, done, Observed(missing=()), CONFIG, NOW, new_token=TOKEN).create
    service = next(m for m in created if m["kind"] == "Service")
    assert service["metadata"]["name"] == "tiny-policy" and service["spec"]["clusterIP"] == "None"


def test_multi_gpu_reward_model_asks_for_its_headless_service() -> None:
    job = rlhfjob(stages={"rewardModel": {"pod": {"resources": {"gpus": 2}}}})
    done = {"stages": [{"name": s, "state": "Succeeded"} for s in ("precompute", "ranking")]}
    created = reconcile(job, done, Observed(missing=()), CONFIG, NOW, new_token=TOKEN).create
    service = next(m for m in created if m["kind"] == "Service")
    assert service["metadata"]["name"] == "tiny-reward-model" and service["spec"]["clusterIP"] == "None"
    launched = next(m for m in created if m["kind"] == "Job")
    assert launched["spec"]["template"]["spec"]["containers"][0]["command"][0] == "torchrun"


def test_default_precompute_artifact_is_what_the_stage_reports() -> None:
    """The default used to be the manifest file while precompute reports its directory."""
    root = "/data/rlhf-jobs/ml/tiny/u-1"
    observed = Observed(
        jobs={"tiny-precompute": finished_job()}, pods=(pod("precompute", "Succeeded", {}),), missing=()
    )
    status = reconcile(rlhfjob(), {}, observed, CONFIG, NOW, new_token=TOKEN).status
    assert status["artifacts"]["responses"] == layout.precompute_dir(root) == artifacts.precompute_dir(root)


def test_cleanup_job_has_its_own_labels_and_its_own_failure_message() -> None:
    """The cleanup Job used to carry the evaluation stage's label, so evaluation pods spoke for it."""
    job = rlhfjob(artifactRetention="Delete")
    held = ["rlhf-operator.dev/artifact-cleanup"]
    [cleanup] = retention(job, held, True, Observed(), CONFIG).create
    labels = cleanup["metadata"]["labels"]
    assert (labels[LABEL_STAGE], labels[LABEL_COMPONENT]) == ("cleanup", "cleanup")
    assert cleanup["spec"]["template"]["metadata"]["labels"][LABEL_STAGE] == "cleanup"
    evaluation_failed = pod("evaluation", "Failed", json.dumps({"error": "evaluation broke"}), 1, at="2")
    cleanup_failed = pod("cleanup", "Failed", "AccessDenied on s3://b/x", 1, at="1")
    observed = Observed(
        jobs={child_name("tiny", CLEANUP): finished_job("Failed")}, pods=(evaluation_failed, cleanup_failed)
    )
    [event] = retention(job, held, True, observed, CONFIG).events
    assert event.reason == "ArtifactCleanupFailed"
    assert "AccessDenied" in event.message and "evaluation broke" not in event.message
