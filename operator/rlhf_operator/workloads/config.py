"""Reading the StageConfig file a stage pod receives, with the defaults the stage programs use.

The file is the operator's `StageConfig` (`rlhf_operator.api.stage_config`): the job identity,
the stage name, the whole RLHFJob spec (camelCase) and the artifact root. When the API package is
importable the file is validated with it (so a bad field fails here with exit 78, not deep in
training); the stages then read the camelCase dict, with the same defaults as the CRD, through
`StageContext.get`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhf_operator.workloads.errors import StageConfigError

STAGES = ("precompute", "ranking", "reward-model", "serve-reward", "policy", "evaluation")

#: Defaults applied when a field is absent (the CRD's defaults should match these).
DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "baseModel.revision": None,
    "baseModel.dtype": "auto",
    "dataset.prompts.format": "jsonl",
    "dataset.prompts.promptField": "prompt",
    "dataset.heldOut.fraction": 0.2,
    "stages.precompute.responsesPerPrompt": 4,
    "stages.precompute.maxNewTokens": 16,
    "stages.precompute.temperature": 1.0,
    "stages.precompute.topP": 1.0,
    "stages.precompute.shards": 1,
    "stages.precompute.batchSize": 32,
    "stages.ranking.method": "rule",
    "stages.ranking.pairs": "all",
    "stages.ranking.human.waitTimeoutSeconds": 0,
    "stages.ranking.aiJudge.mode": "compare",
    "stages.ranking.aiJudge.rubric": "Prefer the response that is more helpful, honest and harmless.",
    "stages.ranking.rule.name": "keywords",
    "stages.ranking.rule.keywords": ["good", "great", "nice", "happy"],
    "stages.ranking.rule.targetLength": 16,
    "stages.rewardModel.epochs": 3,
    "stages.rewardModel.learningRate": 1e-4,
    "stages.rewardModel.batchSize": 16,
    "stages.rewardModel.maxLength": 256,
    "stages.rewardModel.evalFraction": 0.2,
    "stages.rewardModel.serving.replicas": 1,
    "stages.rewardModel.serving.port": 8080,
    "stages.policy.algorithm": "ppo",
    "stages.policy.klCoef": 0.05,
    "stages.policy.klTarget": None,
    "stages.policy.steps": 60,
    "stages.policy.learningRate": 1e-4,
    "stages.policy.batchSize": 32,
    "stages.policy.miniBatchSize": None,
    "stages.policy.ppoEpochs": 1,
    "stages.policy.numGenerations": 4,
    "stages.policy.responseLength": 16,
    "stages.policy.temperature": 1.0,
    "stages.policy.rewardPlacement": "colocated",
    "stages.policy.nodes": 1,
    "stages.policy.checkpointInterval": 20,
    "stages.policy.loggingSteps": 1,
    "stages.evaluation.prompts": 32,
    "stages.evaluation.samplesPerPrompt": 4,
    "stages.evaluation.trueRule": None,
}

_MISSING = object()


def lookup(tree: Any, dotted: str, default: Any = _MISSING) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            if default is not _MISSING:
                return default
            return DEFAULTS.get(dotted)
        node = node[part]
    return node


@dataclass(frozen=True)
class StageContext:
    """What a stage needs from its StageConfig."""

    stage: str
    spec: dict[str, Any]
    artifact_root: str
    job: dict[str, Any] = field(default_factory=dict)
    reward_endpoint: str | None = None
    config_path: str | None = None

    def get(self, dotted: str, default: Any = _MISSING) -> Any:
        return lookup(self.spec, dotted, default)

    def require(self, dotted: str) -> Any:
        value = lookup(self.spec, dotted, None)
        if value is None:
            raise StageConfigError(f"spec.{dotted} must be set for the {self.stage} stage.", "MissingField")
        return value

    @property
    def seed(self) -> int:
        return int(self.get("seed"))

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "job": self.job,
            "stage": self.stage,
            "spec": self.spec,
            "artifactRoot": self.artifact_root,
        }
        if self.reward_endpoint:
            out["rewardEndpoint"] = self.reward_endpoint
        return out


def _validate_with_api(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate with the operator's pydantic models when present; return the camelCase dict."""
    try:
        from rlhf_operator.api import stage_config as api_stage_config
    except ImportError:
        return raw
    model_cls = getattr(api_stage_config, "StageConfig", None)
    if model_cls is None:
        return raw
    try:
        model = model_cls.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError; kept generic so this module stays light
        raise StageConfigError(f"the stage config is invalid: {exc}", "InvalidStageConfig") from exc
    dumped: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def parse_config(raw: Any, stage: str | None = None, config_path: str | None = None) -> StageContext:
    if not isinstance(raw, dict):
        raise StageConfigError("the stage config must be a JSON/YAML object.", "InvalidStageConfig")
    data = _validate_with_api(raw)
    spec = data.get("spec")
    root = data.get("artifactRoot")
    if not isinstance(spec, dict):
        raise StageConfigError("the stage config has no `spec` object.", "InvalidStageConfig")
    if not isinstance(root, str) or not root:
        raise StageConfigError("the stage config has no `artifactRoot`.", "InvalidStageConfig")
    return StageContext(
        stage=stage or str(data.get("stage", "")),
        spec=spec,
        artifact_root=root.rstrip("/"),
        job=dict(data.get("job") or {}),
        reward_endpoint=data.get("rewardEndpoint") or None,
        config_path=config_path,
    )


def load_config(path: str, stage: str | None = None) -> StageContext:
    if not os.path.exists(path):
        raise StageConfigError(
            f"the stage config file {path} does not exist; mount the ConfigMap there.", "ConfigNotFound"
        )
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StageConfigError(
            f"the stage config file {path} is not valid JSON/YAML: {exc}", "InvalidStageConfig"
        ) from exc
    return parse_config(raw, stage=stage, config_path=path)
