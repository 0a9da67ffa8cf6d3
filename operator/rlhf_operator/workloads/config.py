"""Reading the StageConfig file a stage pod receives.

The file is the operator's `StageConfig` (`rlhf_operator.api.stage_config`): the job identity,
the stage name, the whole RLHFJob spec (camelCase, every default written out) and the artifact
root. It is validated with the API's models, so a bad field fails here with exit 78, not deep in
training, and the stage programs read the validated spec typed: `ctx.typed_spec`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rlhf_operator.workloads.errors import StageConfigError

if TYPE_CHECKING:
    from rlhf_operator.api.stage_config import StageConfig
    from rlhf_operator.api.v1alpha1 import RLHFJobSpec


@dataclass(frozen=True)
class StageContext:
    """What a stage needs from its StageConfig."""

    stage: str
    spec: dict[str, Any]
    artifact_root: str
    job: dict[str, Any] = field(default_factory=dict)
    reward_endpoint: str | None = None
    config_path: str | None = None
    #: The validated config: stages read the spec typed, `ctx.typed_spec.stages.policy.batch_size`.
    config: StageConfig | None = None

    @property
    def typed_spec(self) -> RLHFJobSpec:
        if self.config is None:
            raise StageConfigError(
                "the stage config was not validated with the API models.", "InvalidStageConfig"
            )
        return self.config.spec

    @property
    def seed(self) -> int:
        return self.typed_spec.seed


def _validate_with_api(raw: dict[str, Any]) -> tuple[StageConfig, dict[str, Any]]:
    """Validates with the API's models: the model and its camelCase dict with every default filled in."""
    from pydantic import ValidationError

    from rlhf_operator.api.stage_config import StageConfig

    try:
        model = StageConfig.model_validate(raw)
    except ValidationError as exc:
        raise StageConfigError(f"the stage config is invalid: {exc}", "InvalidStageConfig") from exc
    dumped: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return model, dumped


def parse_config(raw: Any, stage: str | None = None, config_path: str | None = None) -> StageContext:
    if not isinstance(raw, dict):
        raise StageConfigError("the stage config must be a JSON/YAML object.", "InvalidStageConfig")
    model, data = _validate_with_api(raw)
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
        config=model,
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
