"""The rewards a policy can optimise: trained, pretrained, served elsewhere, or a rule (verifiers and a
Python entry point), and what each does to the pipeline and the pods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlhf_operator.api.secret_references import secret_names
from rlhf_operator.api.v1alpha1 import RLHFJobSpec, RuleName, RuleSpec, StageName
from rlhf_operator.children import JobIdentity, stage_job
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline.dependencies import dependencies
from rlhf_operator.stages import skip_reason
from rlhf_operator.workloads import verifiers
from rlhf_operator.workloads.config import parse_config
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.rule_rewards import rule_scorer, verifier
from tests.support.builders import rlhfjob

pytestmark = pytest.mark.unit
CONFIG = OperatorConfig()


def test_verifiers_say_right_or_wrong() -> None:
    assert verifiers.exact_match("  Paris \n", "Paris") == 1.0
    assert verifiers.exact_match("paris", "Paris") == 0.0
    assert verifiers.numeric_match("so the answer is 1,234.0", "She has #### 1234") == 1.0
    assert verifiers.numeric_match("72 apples, then 18", "#### 72") == 0.0  # the last number counts
    assert verifiers.numeric_match("no number", "#### 7") == 0.0
    assert verifiers.last_number("-3.5e2 and .5") == 0.5
    rule = RuleSpec(name=RuleName.REGEX, pattern=r"^<answer>\d+</answer>$")
    assert verifier(rule, None, "r")(["p", "p"], ["<answer>42</answer>", "42"]) == [1.0, 0.0]


def _context(tmp_path: Path, rows: list[dict[str, Any]], rule: dict[str, Any]) -> Any:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "baseModel": {"source": "/m"},
        "dataset": {"prompts": {"source": str(prompts)}},
        "storage": {"volume": {"claimName": "c"}},
        "stages": {"policy": {"algorithm": "grpo", "rewardRule": rule}},
    }
    config = {
        "job": {"namespace": "n", "name": "j", "uid": "u"},
        "stage": "policy",
        "spec": spec,
        "artifactRoot": "/r",
    }
    return parse_config(config)


def test_a_reference_verifier_reads_the_answer_from_the_prompts_rows(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"prompt": "2+2=", "answer": "#### 4"}, {"prompt": "3*3=", "answer": 9}]
    ctx = _context(tmp_path, rows, {"name": "numeric", "referenceField": "answer"})
    score = rule_scorer(ctx.typed_spec.stages.policy.reward_rule, ctx, "stages.policy.rewardRule")
    assert score(["2+2=", "3*3=", "2+2="], ["4", "it is 9", "5"]) == [1.0, 1.0, 0.0]
    with pytest.raises(StageConfigError, match="no reference for the prompt 'unknown'"):
        score(["unknown"], ["1"])


def test_a_row_without_the_reference_field_fails_naming_the_row(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "answer": "x"}, {"prompt": "b"}, {"prompt": "a", "answer": "y"}]
    ctx = _context(tmp_path, rows, {"name": "exactMatch", "referenceField": "answer"})
    with pytest.raises(StageConfigError) as missing:
        rule_scorer(ctx.typed_spec.stages.policy.reward_rule, ctx, "stages.policy.rewardRule")
    assert missing.value.reason == "MissingReference"
    message = missing.value.message
    assert "line 2: no reference field 'answer' (stages.policy.rewardRule.referenceField)" in message
    assert "line 3: the prompt has another 'answer' in an earlier row" in message


def test_a_python_entry_point_is_called_as_trl_calls_reward_functions(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "answer": "ok"}]
    rule = {
        "name": "python",
        "entryPoint": "tests.support.reward_functions:shorter_is_better",
        "referenceField": "answer",
    }
    ctx = _context(tmp_path, rows, rule)
    score = rule_scorer(ctx.typed_spec.stages.policy.reward_rule, ctx, "r")
    assert score(["p", "p"], ["ok", "no!"]) == pytest.approx([0.98, -0.03])
    bad = RuleSpec(name=RuleName.PYTHON, entry_point="tests.support.reward_functions:wrong_length")
    with pytest.raises(StageConfigError, match="must return one number per completion"):
        verifier(bad, None, "r")(["p", "p"], ["a", "b"])
    missing = RuleSpec(name=RuleName.PYTHON, entry_point="no_such_module:score")
    with pytest.raises(StageConfigError, match="cannot be imported in this image"):
        verifier(missing, None, "r")


@pytest.mark.parametrize(
    ("stages", "skipped"),
    [
        ({}, []),
        ({"rewardModel": {"pretrained": "hf://org/rm"}}, ["precompute", "ranking", "rewardModel"]),
        (
            {"rewardModel": {"endpoint": {"url": "https://rm.example/score"}}},
            ["precompute", "ranking", "rewardModel"],
        ),
        (
            {
                "policy": {
                    "algorithm": "grpo",
                    "klCoef": None,
                    "rewardRule": {"name": "keywords", "keywords": ["good"]},
                }
            },
            ["precompute", "ranking", "rewardModel"],
        ),
        # dpo still trains on pairs; evaluation judges by the pretrained model.
        (
            {"rewardModel": {"pretrained": "/data/rm"}, "policy": {"algorithm": "dpo", "klCoef": None}},
            ["rewardModel"],
        ),
    ],
)
def test_a_reward_that_is_not_trained_here_skips_what_only_training_needed(
    stages: dict[str, Any], skipped: list[str]
) -> None:
    spec = rlhfjob(stages=stages).spec
    reasons = {
        s.value: skip_reason(spec, s)
        for s in (StageName.PRECOMPUTE, StageName.RANKING, StageName.REWARD_MODEL)
    }
    assert [name for name, reason in reasons.items() if reason] == skipped, reasons


def test_secrets_the_spec_names_reach_the_pods_that_need_them_and_are_awaited() -> None:
    job = rlhfjob(
        hub={"tokenSecret": {"name": "hf"}},
        stages={
            "rewardModel": {
                "endpoint": {"url": "https://rm", "tokenSecret": {"name": "rm-token", "key": "t"}}
            },
            "policy": {
                "pod": {
                    "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "k"}}}],
                    "imagePullSecrets": [{"name": "registry"}],
                    "volumes": [{"name": "ca", "secret": {"secretName": "ca-certs", "optional": True}}],
                }
            },
        },
    )
    paths = set(secret_names(job.spec))
    assert paths >= {
        ("spec.hub.tokenSecret.name", "hf"),
        ("spec.stages.rewardModel.endpoint.tokenSecret.name", "rm-token"),
        ("spec.stages.*.pod.env[].valueFrom.secretKeyRef.name", "wandb"),
        ("spec.stages.*.pod.imagePullSecrets[].name", "registry"),
        ("spec.stages.*.pod.volumes[].secret.secretName", "ca-certs"),
    }
    awaited = {name for kind, name in dependencies(job, CONFIG) if kind == "Secret"}
    assert awaited == {"hf", "rm-token", "wandb", "registry"}  # the optional volume is not awaited
    for stage, gets_reward_token in (
        (StageName.POLICY, True),
        (StageName.EVALUATION, True),
        (StageName.PRECOMPUTE, False),
    ):
        manifest = stage_job(JobIdentity("ml", "tiny", "u"), job.spec, stage, CONFIG)
        env = {e["name"]: e for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert ("RLHF_REWARD_TOKEN" in env) is gets_reward_token
        if gets_reward_token:
            assert env["RLHF_REWARD_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "rm-token", "key": "t"}}


def test_a_pretrained_reward_model_is_not_checked_for_fit() -> None:
    from rlhf_operator.pipeline.fit import fit_refusal

    config = OperatorConfig(gpu_memory_gib={"reward-gpu": 1.0, "policy-gpu": 1000.0})
    trained = rlhfjob(baseModel={"source": "/data/models/llama-8B"}).spec
    refusal = fit_refusal(trained, config)
    assert refusal is not None and refusal.stage is StageName.REWARD_MODEL
    pretrained = RLHFJobSpec.model_validate(
        {
            **trained.model_dump(by_alias=True, exclude_none=True),
            "stages": {"rewardModel": {"pretrained": "/data/rm"}},
        }
    )
    assert fit_refusal(pretrained, config) is None


def test_ranking_settings_are_required_only_when_the_ranking_stage_runs() -> None:
    from rlhf_operator.api.v1alpha1.spec import _no_ranking
    from rlhf_operator.stages import skipped

    base: dict[str, Any] = {
        "baseModel": {"source": "/m"},
        "dataset": {"prompts": {"source": "/p.jsonl"}},
        "storage": {"volume": {"claimName": "c"}},
    }
    rule = {"name": "keywords", "keywords": ["good"]}
    grpo = RLHFJobSpec.model_validate(
        {**base, "stages": {"policy": {"algorithm": "grpo", "rewardRule": rule}}}
    )
    assert skipped(grpo, StageName.RANKING) and _no_ranking(grpo)
    with pytest.raises(ValueError, match=r"`stages\.ranking\.rule` must be set"):
        RLHFJobSpec.model_validate({**base, "stages": {"policy": {"algorithm": "dpo"}}})
    for stages in (
        {"rewardModel": {"pretrained": "/rm"}},
        {"policy": {"algorithm": "dpo"}, "ranking": {"rule": rule}},
        {"ranking": {"rule": rule}},
    ):
        spec = RLHFJobSpec.model_validate({**base, "stages": stages})
        assert _no_ranking(spec) == skipped(spec, StageName.RANKING), stages
