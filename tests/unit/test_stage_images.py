"""Which image each stage's pod runs: a pure function of (spec, stage, config)."""

from __future__ import annotations

from typing import Any

import pytest

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.children import JobIdentity, stage_job
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pod_template import stage_image
from rlhf_operator.reward_server_manifests import reward_server_deployment
from tests.support.builders import rlhfjob

pytestmark = pytest.mark.unit
CONFIG = OperatorConfig(
    image_worker="r/worker:1", image_trainer="r/trainer:1", image_trainer_vllm="r/trainer-vllm:1"
)
JOB = JobIdentity("ml", "tiny", "u-1")
# The stages that run their own image; the reward server's pod is a Deployment's (below).
STAGE_JOBS = (
    StageName.PRECOMPUTE,
    StageName.RANKING,
    StageName.REWARD_MODEL,
    StageName.POLICY,
    StageName.EVALUATION,
)


def images(**spec: Any) -> dict[StageName, str]:
    job = rlhfjob(**spec)
    out = {stage: stage_image(job.spec, stage, CONFIG) for stage in StageName}
    # What the functions return is what the manifests carry.
    for stage in STAGE_JOBS:
        assert (
            stage_job(JOB, job.spec, stage, CONFIG)["spec"]["template"]["spec"]["containers"][0]["image"]
            == (out[stage])
        )
    server = reward_server_deployment(JOB, job.spec, CONFIG, replicas=1)
    assert server["spec"]["template"]["spec"]["containers"][0]["image"] == out[StageName.REWARD_SERVER]
    return out


ROLE_IMAGES = {
    StageName.PRECOMPUTE: "r/worker:1",
    StageName.RANKING: "r/worker:1",
    StageName.REWARD_MODEL: "r/trainer:1",
    StageName.REWARD_SERVER: "r/trainer:1",
    StageName.POLICY: "r/trainer:1",
    StageName.EVALUATION: "r/worker:1",
}


def test_every_stage_runs_its_roles_image_with_the_hf_engine() -> None:
    assert images() == ROLE_IMAGES
    assert images(stages={"policy": {"generation": {"engine": "hf"}}}) == ROLE_IMAGES


@pytest.mark.parametrize("algorithm", ["ppo", "rloo", "grpo"])
def test_only_the_policy_generating_with_vllm_runs_the_trainer_vllm_image(algorithm: str) -> None:
    spec = {
        "stages": {
            "policy": {"algorithm": algorithm, "generation": {"engine": "vllm"}, "rewardPlacement": "remote"}
        }
    }
    assert images(**spec) == {**ROLE_IMAGES, StageName.POLICY: "r/trainer-vllm:1"}


def test_a_stages_pod_image_overrides_the_vllm_choice() -> None:
    custom = "registry.example/ml/policy-vllm:7"
    seen = images(stages={"policy": {"generation": {"engine": "vllm"}, "pod": {"image": custom}}})
    assert seen == {**ROLE_IMAGES, StageName.POLICY: custom}


def test_the_trainer_vllm_image_comes_from_the_environment() -> None:
    config = OperatorConfig.from_env(
        {"RLHF_OPERATOR_IMAGE_TRAINER_VLLM": "ecr/rlhf/trainer-vllm@sha256:" + "b" * 64}
    )
    assert config.image_trainer_vllm == "ecr/rlhf/trainer-vllm@sha256:" + "b" * 64
    assert OperatorConfig().image_trainer_vllm.startswith("ghcr.io/rlhf-operator/trainer-vllm:")
