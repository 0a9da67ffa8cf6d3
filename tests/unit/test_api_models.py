"""The RLHFJob models: refuse what the API server refuses, fill the same defaults, round-trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from rlhf_operator.api.v1alpha1 import (
    PIPELINE_STAGES,
    Algorithm,
    RankingMethod,
    RewardPlacement,
    RLHFJob,
    RLHFJobSpec,
    RLHFJobStatus,
    StageName,
    validate_update,
)
from tests.api_cases import ALLOWED_UPDATES, BASE, CASES, Case
from tests.support.merge import merged

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _refusal(case: Case) -> str:
    try:
        if case.before is not None:
            validate_update(
                RLHFJob.model_validate(case.before).spec, RLHFJob.model_validate(case.manifest).spec
            )
        else:
            RLHFJob.model_validate(case.manifest)
    except (ValidationError, ValueError) as error:
        return str(error)
    raise AssertionError(f"{case.id}: the models accepted an invalid manifest")


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


def test_base_manifest_is_valid() -> None:
    RLHFJob.model_validate(BASE)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_manifest_is_refused(case: Case) -> None:
    message = _refusal(case).lower()
    for expected in case.expect:
        assert expected.lower() in message, f"{expected!r} not in {message!r}"


@pytest.mark.parametrize(("case_id", "before", "after"), ALLOWED_UPDATES, ids=[u[0] for u in ALLOWED_UPDATES])
def test_allowed_update(case_id: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    validate_update(RLHFJob.model_validate(before).spec, RLHFJob.model_validate(after).spec)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_round_trips(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    job = RLHFJob.model_validate(manifest)
    assert job.model_dump(mode="json", by_alias=True, exclude_unset=True) == manifest
    # What the operator writes out (all defaults) must read back to the same job.
    full = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert RLHFJob.model_validate(full) == job


def test_examples_cover_the_documented_variants() -> None:
    jobs = {p.name: RLHFJob.model_validate(yaml.safe_load(p.read_text())) for p in EXAMPLES}
    assert {"tiny-rlhfjob.yaml", "human-rankings-rlhfjob.yaml", "ai-judge-rlhfjob.yaml"} <= set(jobs)
    assert jobs["human-rankings-rlhfjob.yaml"].spec.stages.ranking.method is RankingMethod.HUMAN
    assert jobs["ai-judge-rlhfjob.yaml"].spec.stages.ranking.method is RankingMethod.AI_JUDGE
    eks = jobs["eks-remote-reward-rlhfjob.yaml"].spec
    assert eks.storage.s3 is not None and eks.storage.volume is None
    assert eks.stages.policy.reward_placement is RewardPlacement.REMOTE
    assert (eks.stages.policy.nodes, eks.stages.policy.pod.resources.gpus) == (2, 8)
    assert eks.stages.reward_model.serving.replicas == 2
    dpo = jobs["dpo-rlhfjob.yaml"].spec
    assert dpo.stages.policy.algorithm is Algorithm.DPO and dpo.tracking.mlflow is not None


def test_defaults_are_filled() -> None:
    spec = RLHFJob.model_validate(BASE).spec
    assert spec.suspend is False
    assert spec.dataset.held_out.fraction == 0.2 and spec.dataset.held_out.source is None
    assert (
        spec.dataset.prompts.format is None and spec.dataset.prompts.prompt_field == "prompt"
    )  # by extension
    assert spec.storage.volume is not None and spec.storage.volume.mount_path == "/data"
    stages = spec.stages
    assert stages.precompute.responses_per_prompt == 4 and stages.precompute.shards == 1
    assert stages.precompute.pod.resources.gpus == 0 and stages.precompute.pod.backoff_limit == 3
    assert stages.reward_model.pod.resources.gpus == 1 and stages.reward_model.serving.port == 8080
    assert stages.policy.algorithm is Algorithm.PPO and stages.policy.kl_weight() == 0.05
    assert stages.policy.pod.resources.gpus == 1 and stages.policy.steps == 60
    assert stages.evaluation.prompts == 32 and stages.evaluation.pod.resources.gpus == 0


def test_empty_stages_are_valid_with_ready_rankings() -> None:
    manifest = merged(
        BASE, {"spec": {"stages": None, "dataset": {"rankings": {"source": "/data/pairs.jsonl"}}}}
    )
    assert RLHFJob.model_validate(manifest).spec.stages.ranking.method is RankingMethod.RULE


def test_python_names_also_accepted() -> None:
    spec = RLHFJobSpec.model_validate(
        {
            "base_model": {"source": "m"},
            "dataset": {"prompts": {"source": "p"}},
            "storage": {"s3": {"prefix": "s3://b/p"}},
            "stages": {"ranking": {"rule": {"name": "length", "target_length": 8}}},
        }
    )
    assert spec.stages.ranking.rule is not None and spec.stages.ranking.rule.target_length == 8


def test_status_round_trips() -> None:
    status = {
        "observedGeneration": 2,
        "phase": "Running",
        "currentStage": "policy",
        "startTime": "2026-01-01T00:00:00Z",
        "conditions": [
            {
                "type": "Running",
                "status": "True",
                "observedGeneration": 2,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "reason": "StageRunning",
                "message": "Stage policy is running.",
            }
        ],
        "stages": [{"name": "policy", "state": "Running", "attempts": 1, "children": ["case-policy"]}],
        "metrics": {"policyStep": 3, "policyTotalSteps": 60, "meanReward": 0.4, "kl": 0.01},
        "artifacts": {"responses": "/data/rlhf-jobs/ns/case/uid/precompute"},
    }
    parsed = RLHFJobStatus.model_validate(status)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == status


def test_pipeline_stage_order() -> None:
    assert [s.value for s in PIPELINE_STAGES] == [
        "precompute",
        "ranking",
        "rewardModel",
        "policy",
        "evaluation",
    ]
    assert StageName.REWARD_SERVER not in PIPELINE_STAGES


def test_vllm_engine_is_valid_for_ppo_rloo_grpo() -> None:
    from rlhf_operator.api.v1alpha1 import PolicyStage

    for algorithm in ("ppo", "rloo", "grpo"):
        stage = PolicyStage.model_validate({"algorithm": algorithm, "generation": {"engine": "vllm"}})
        assert str(stage.generation.engine) == "vllm"
