"""The RLHFJob object."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.v1alpha1.spec import RLHFJobSpec
from rlhf_operator.api.v1alpha1.status import RLHFJobStatus


class ObjectMeta(ApiModel):
    """The parts of metadata the operator reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


#: Child names are `<job>-<stage>`, and Services need an RFC 1035 label: a leading letter, no dots.
NAME_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"


class RLHFJob(ApiModel):
    # At the root of the CRD's schema, where CEL may read metadata.name.
    cel_rules = (
        CelRule(
            f"!has(self.metadata.name) || self.metadata.name.matches('{NAME_PATTERN}')",
            "`metadata.name` must start with a lowercase letter and hold only lowercase letters, digits "
            "and '-' (no dots): the job's Jobs and Services are named after it",
            lambda j: j.metadata.name is None or re.fullmatch(NAME_PATTERN, j.metadata.name) is not None,
        ),
    )

    api_version: Literal["rlhf-operator.dev/v1alpha1"] = "rlhf-operator.dev/v1alpha1"
    kind: Literal["RLHFJob"] = "RLHFJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: RLHFJobSpec
    status: RLHFJobStatus | None = None
