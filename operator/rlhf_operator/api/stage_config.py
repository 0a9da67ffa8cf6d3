"""The config of one stage: written by the operator into the stage's ConfigMap, read in the pod.

Both sides use the same models, so a stage program refuses a config the API would have refused.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field

from rlhf_operator.api.base import ApiModel
from rlhf_operator.api.v1alpha1 import RLHFJobSpec, StageName

# Key of the config in the stage's ConfigMap, where it is mounted, and the variable that says so.
CONFIG_KEY = "stage.json"
CONFIG_DIR = "/etc/rlhf-operator"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
#: Where the pods of a job with `serving.tls` find the reward server's certificate (set by the operator).
REWARD_TLS_DIR_ENV = "RLHF_REWARD_TLS_DIR"
CONFIG_ENV = "RLHF_STAGE_CONFIG"


class JobRef(ApiModel):
    namespace: str = Field(min_length=1, max_length=63, description="Namespace of the RLHFJob.")
    name: str = Field(min_length=1, max_length=253, description="Name of the RLHFJob.")
    uid: str = Field(min_length=1, max_length=64, description="UID of the RLHFJob.")


class StageConfig(ApiModel):
    job: JobRef = Field(description="The RLHFJob this stage belongs to.")
    stage: StageName = Field(description="The stage this config is for.")
    spec: RLHFJobSpec = Field(description="The whole RLHFJob spec, defaults filled in.")
    artifact_root: str = Field(
        min_length=1, max_length=2048, description="Local path or s3:// URI of the artifacts."
    )
    reward_endpoint: str | None = Field(
        None, min_length=1, max_length=2048, description="URL of the reward server (remote reward placement)."
    )


def dump_stage_config(config: StageConfig) -> str:
    """JSON for the ConfigMap: camelCase, every default written out so the pod needs no defaults."""
    return config.model_dump_json(by_alias=True, exclude_none=True, indent=2) + "\n"


def parse_stage_config(text: str) -> StageConfig:
    """Accepts JSON or YAML (JSON is YAML), so a hand-written config works for local runs."""
    return StageConfig.model_validate(yaml.safe_load(text))


def load_stage_config(path: str | Path) -> StageConfig:
    return parse_stage_config(Path(path).read_text(encoding="utf-8"))
