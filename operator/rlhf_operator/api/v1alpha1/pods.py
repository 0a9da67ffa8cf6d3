"""How a stage's pods are placed and sized."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.v1alpha1.common import ENV_NAME_PATTERN, LABEL_VALUE_PATTERN, ObjectName, Quantity
from rlhf_operator.api.v1alpha1.enums import TaintEffect, TolerationOperator


class Toleration(ApiModel):
    cel_rules = (
        CelRule(
            "!has(self.value) || self.value == '' || !has(self.operator) || self.operator != 'Exists'",
            "`value` must be empty when `operator` is Exists",
            lambda t: not t.value or t.operator != TolerationOperator.EXISTS,
        ),
    )

    key: str | None = Field(
        None, max_length=316, description="Taint key the toleration applies to; empty matches all keys."
    )
    operator: TolerationOperator | None = Field(None, description="Equal (the default) or Exists.")
    value: str | None = Field(
        None, max_length=63, description="Taint value the toleration matches (Equal only)."
    )
    effect: TaintEffect | None = Field(None, description="Taint effect to match; empty matches all effects.")
    toleration_seconds: int | None = Field(
        None, ge=0, le=31_536_000, description="How long a NoExecute taint is tolerated before eviction."
    )


class EnvVar(ApiModel):
    name: str = Field(
        min_length=1, max_length=256, pattern=ENV_NAME_PATTERN, description="Environment variable name."
    )
    value: str = Field("", max_length=8192, description="Environment variable value.")


class Resources(ApiModel):
    cpu: Quantity | None = Field(
        None,
        description="CPU request, a Kubernetes quantity such as `4` or `500m`. No CPU limit is set: a "
        "limit throttles data loading and NCCL's threads while the node has idle cores.",
    )
    memory: Quantity | None = Field(
        None, description="Memory request and limit, a Kubernetes quantity such as `16Gi`."
    )
    gpus: int = Field(0, ge=0, le=64, description="`nvidia.com/gpu` per pod; 0 runs the stage on CPU.")


GPU_STAGE_MESSAGE = "`gpus` must be at least 1: a GPU stage must request at least one GPU"


class GpuResources(Resources):
    """Resources of a stage that needs accelerators (reward model, policy)."""

    cel_rules = (CelRule("self.gpus >= 1", GPU_STAGE_MESSAGE, lambda r: r.gpus >= 1),)

    gpus: int = Field(1, ge=0, le=64, description="`nvidia.com/gpu` per pod; this stage needs at least one.")
    efa: int = Field(
        0, ge=0, le=32, description="`vpc.amazonaws.com/efa` interfaces per pod (multi-node NCCL over EFA)."
    )


class PodSettings(ApiModel):
    node_group: str | None = Field(
        None,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Node group the pods are pinned to; defaults to the operator's node group for this stage's role.",
    )
    node_selector: dict[str, Annotated[str, StringConstraints(max_length=63)]] = Field(
        default_factory=dict,
        max_length=16,
        description="Extra node labels the pods require, added to the node-group selector.",
    )
    annotations: dict[str, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra annotations on the pods, e.g. for Karpenter or monitoring.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Extra tolerations, added to the GPU tolerations."
    )
    resources: Resources = Field(default_factory=Resources, description="CPU, memory and GPUs per pod.")
    image: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="Container image; defaults to the operator's image for the stage.",
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra environment variables.")
    service_account_name: ObjectName | None = Field(
        None, description="Service account of the pods, e.g. one bound to an IAM role (IRSA or Pod Identity)."
    )
    backoff_limit: int = Field(3, ge=0, le=100, description="Retries of a failed pod before the stage fails.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=31_536_000, description="Time limit of the stage in seconds; unset means no limit."
    )


class GpuPodSettings(PodSettings):
    resources: GpuResources = Field(default_factory=GpuResources, description="CPU, memory and GPUs per pod.")
