"""The stage config the operator hands to each pod, and the artifact layout under a job's root."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rlhf_operator.api import artifacts
from rlhf_operator.api.stage_config import (
    JobRef,
    StageConfig,
    dump_stage_config,
    load_stage_config,
    parse_stage_config,
)
from rlhf_operator.api.v1alpha1 import RLHFJob, StageName
from tests.api_cases import BASE
from tests.support.merge import merged


def _config(**overrides: object) -> StageConfig:
    spec = RLHFJob.model_validate(BASE).spec
    values: dict[str, object] = {
        "job": JobRef(namespace="ns", name="case", uid="1234"),
        "stage": StageName.POLICY,
        "spec": spec,
        "artifact_root": "/data/rlhf-jobs/ns/case/1234",
        **overrides,
    }
    return StageConfig.model_validate(values)


def test_dump_and_load(tmp_path: Path) -> None:
    config = _config(reward_endpoint="http://case-reward.ns.svc:8080")
    text = dump_stage_config(config)
    assert '"artifactRoot": "/data/rlhf-jobs/ns/case/1234"' in text and '"rewardModel"' in text
    path = tmp_path / "stage.json"
    path.write_text(text)
    assert load_stage_config(path) == config


def test_dump_writes_every_default() -> None:
    text = dump_stage_config(_config())
    assert '"responsesPerPrompt": 4' in text and '"maxNewTokens": 16' in text
    assert "rewardEndpoint" not in text


def test_yaml_config_is_accepted() -> None:
    config = parse_stage_config(
        "job: {namespace: ns, name: case, uid: u}\nstage: ranking\nartifactRoot: s3://b/p\n"
        "spec:\n  baseModel: {source: m}\n  dataset: {prompts: {source: p}}\n  storage: {s3: {prefix: 's3://b'}}\n"
        "  stages: {ranking: {rule: {name: length, targetLength: 8}}}\n"
    )
    assert config.stage is StageName.RANKING


def test_invalid_spec_is_refused() -> None:
    bad = merged(BASE, {"spec": {"stages": {"policy": {"klCoef": -1}}}})["spec"]
    with pytest.raises(ValidationError, match="klCoef"):
        _config(spec=bad)


def test_artifact_layout() -> None:
    root = "/data/rlhf-jobs/ns/case/1234"
    assert artifacts.precompute_shard(root, 1, 2) == f"{root}/precompute/responses-00001-of-00002.jsonl"
    assert artifacts.precompute_shards(root, 2)[0].endswith("responses-00000-of-00002.jsonl")
    assert artifacts.precompute_manifest(root) == f"{root}/precompute/manifest.json"
    assert artifacts.ranking_pairs(root) == f"{root}/ranking/pairs.jsonl"
    assert artifacts.reward_model_dir(root) == f"{root}/reward-model"
    assert artifacts.policy_model_dir(root) == f"{root}/policy/model"
    assert artifacts.policy_checkpoints_dir(root) == f"{root}/policy/checkpoints"
    assert artifacts.evaluation_report(root) == f"{root}/evaluation/report.json"
    assert artifacts.evaluation_plot(root) == f"{root}/evaluation/rewards.png"
    with pytest.raises(ValueError, match="shard index"):
        artifacts.precompute_shard(root, 2, 2)


def test_job_root() -> None:
    spec = RLHFJob.model_validate(BASE).spec
    assert artifacts.job_root(spec.storage, "ns", "case", "u1") == "/data/rlhf-jobs/ns/case/u1"
    s3 = RLHFJob.model_validate(
        merged(BASE, {"spec": {"storage": {"volume": None, "s3": {"prefix": "s3://b/jobs/"}}}})
    )
    root = artifacts.job_root(s3.spec.storage, "ns", "case", "u1")
    assert root == "s3://b/jobs/rlhf-jobs/ns/case/u1"
    assert artifacts.ranking_pairs(root) == "s3://b/jobs/rlhf-jobs/ns/case/u1/ranking/pairs.jsonl"
