"""The lineage manifest written next to each stage's artifact: what made it, as content hashes.

`lineage.json` in the stage's artifact directory names the job and stage, the SHA-256 of each
input (model files, prompts, upstream artifacts' own lineage) and the spec section the stage read.
Its `digest` covers all of that, so two artifacts with the same digest were made the same way;
precompute reuses an earlier job's responses on that basis.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field

from rlhf_operator.api.base import ApiModel
from rlhf_operator.api.stage_config import JobRef
from rlhf_operator.api.v1alpha1 import StageName

LINEAGE_FILE = "lineage.json"
REUSE_INDEX_DIR = ".reuse"


def digest_of(value: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Lineage(ApiModel):
    stage: StageName = Field(description="The stage that made the artifact.")
    job: JobRef = Field(description="The RLHFJob whose stage made it.")
    artifact: str = Field(min_length=1, max_length=2048, description="Where the artifact is.")
    inputs: dict[str, str] = Field(
        default_factory=dict, description="SHA-256 of each input: model files, prompts, upstream lineage."
    )
    spec: dict[str, Any] = Field(default_factory=dict, description="The spec section the stage read.")

    @property
    def digest(self) -> str:
        """What made the artifact, and nothing about which job did: equal for equal inputs."""
        return digest_of({"stage": self.stage.value, "inputs": self.inputs, "spec": self.spec})

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["digest"] = self.digest
        return data


class ReuseEntry(ApiModel):
    """One finished result in a namespace's reuse index, `<jobs>/<namespace>/.reuse/<stage>/<digest>.json`."""

    digest: str = Field(min_length=64, max_length=64, description="The lineage digest of the result.")
    artifact_root: str = Field(min_length=1, max_length=2048, description="The job root that holds it.")
    job: JobRef = Field(description="The job that made it.")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="SHA-256 of each file a reuse copies, by its path under the job root: checked when read.",
    )
