"""The operator's configuration, read once from the environment (the Helm chart sets it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlhf_operator import __version__
from rlhf_operator.api.v1alpha1.common import QUANTITY_PATTERN

ENV_PREFIX = "RLHF_OPERATOR_"
DEFAULT_IMAGE_REPOSITORY = "ghcr.io/rlhf-operator"


class Role(StrEnum):
    """What a stage's pods need from the cluster; each role has a node group and an image."""

    CPU = "cpu"
    REWARD = "reward"
    POLICY = "policy"


class OperatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: tuple[str, ...] = Field(
        (), description="Namespaces to watch; empty watches the whole cluster (NAMESPACES, comma separated)."
    )
    node_group_label: str = Field(
        "eks.amazonaws.com/nodegroup", description="Node label that names the node group."
    )
    node_group_cpu: str = Field(
        "cpu", description="Node group of CPU stages (precompute, ranking, evaluation)."
    )
    node_group_reward: str = Field("reward-gpu", description="Node group of the reward model and its server.")
    node_group_policy: str = Field("policy-gpu", description="Node group of the policy.")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource that counts GPUs.")
    gpu_taint_key: str = Field("nvidia.com/gpu", description="Taint on GPU nodes that GPU stages tolerate.")
    image_worker: str = Field(
        f"{DEFAULT_IMAGE_REPOSITORY}/worker:{__version__}", description="Image of the CPU stages."
    )
    image_trainer: str = Field(
        f"{DEFAULT_IMAGE_REPOSITORY}/trainer:{__version__}", description="Image of the GPU stages."
    )
    image_trainer_vllm: str = Field(
        f"{DEFAULT_IMAGE_REPOSITORY}/trainer-vllm:{__version__}",
        description="Image of the policy stage when it generates with vLLM (`generation.engine: vllm`): "
        "the trainer's programs in vLLM's environment (its own torch and transformers).",
    )
    image_pull_policy: str = Field("IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    stage_service_account: str | None = Field(
        None, description="Service account of stage pods that name none (e.g. one with IRSA for S3)."
    )
    stage_ephemeral_storage: str = Field(
        "20Gi",
        pattern=QUANTITY_PATTERN,
        description="Node disk per stage pod whose spec sets no `resources.ephemeralStorage`: request and /tmp limit.",
    )
    network_policy: bool = Field(
        True,
        description="Give each RLHFJob a NetworkPolicy: its pods talk only to each other, DNS and `network_egress`.",
    )
    network_egress: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"ports": [{"port": 443, "protocol": "TCP"}]}],
        description="More egress of stage pods, as NetworkPolicy egress rules (JSON); default: HTTPS anywhere.",
    )
    progress_interval_seconds: float = Field(
        5.0, gt=0, le=300, description="How often a running policy's progress is read from its log."
    )
    resync_interval_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How often every unfinished RLHFJob is reconciled even without an event (e.g. to see "
        "a claim or Secret it waits for appear).",
    )
    metrics_port: int = Field(
        8080, ge=0, le=65535, description="Port of the Prometheus metrics; 0 turns them off."
    )
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    leader_election_namespace: str | None = Field(
        None,
        description="Namespace of the leader-election Lease: replicas elect one leader that reconciles. "
        "Unset: no election, this process reconciles at once (one replica only).",
    )
    leader_election_lease: str = Field(
        "rlhf-operator-leader", min_length=1, max_length=253, description="Name of the leader-election Lease."
    )
    secret_opt_in: bool = Field(
        True,
        description="Hand a Secret named in a spec to the job's pods only when it carries the label "
        "rlhf-operator.dev/usable-by-rlhfjobs=true or its name is in `allowed_secrets`.",
    )
    allowed_secrets: tuple[str, ...] = Field(
        (),
        description="Secret names any RLHFJob may name without the label (ALLOWED_SECRETS, comma separated).",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object a line for a log pipeline (Kopf's formatter)."
    )
    gpu_memory_gib: dict[str, float] = Field(
        default_factory=dict,
        description="GPU memory (GiB) of each node group's GPUs, JSON: jobs whose estimate exceeds it are refused.",
    )

    node_group_instance_types: dict[str, str] = Field(
        default_factory=dict,
        description='Instance type of each node group\'s nodes, JSON, e.g. {"policy-gpu": "p4d.24xlarge"}: '
        "the key into `gpu_hour_prices`.",
    )
    gpu_hour_prices: dict[str, float] = Field(
        default_factory=dict,
        description="Price of one GPU-hour by instance type, JSON: the estimated cost in status. Empty: no cost.",
    )

    @field_validator("gpu_hour_prices")
    @classmethod
    def _prices_not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = sorted(k for k, v in value.items() if v < 0)
        if negative:
            raise ValueError(f"GPU-hour prices must not be negative: {', '.join(negative)}")
        return value

    @field_validator(
        "gpu_memory_gib", "node_group_instance_types", "gpu_hour_prices", "network_egress", mode="before"
    )
    @classmethod
    def _parse_json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("namespaces", "allowed_secrets", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(ns.strip() for ns in value.split(",") if ns.strip())
        return value

    def node_group(self, role: Role) -> str:
        return {
            Role.CPU: self.node_group_cpu,
            Role.REWARD: self.node_group_reward,
            Role.POLICY: self.node_group_policy,
        }[role]

    def gpu_hour_price(self, role: Role) -> float | None:
        """The GPU-hour price on the role's node group, if its instance type has one."""
        instance_type = self.node_group_instance_types.get(self.node_group(role))
        return self.gpu_hour_prices.get(instance_type) if instance_type else None

    def image(self, role: Role) -> str:
        return self.image_worker if role is Role.CPU else self.image_trainer

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorConfig:
        """Each field from RLHF_OPERATOR_<FIELD IN UPPER CASE>; unknown RLHF_OPERATOR_* names are an error."""
        values = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in environ.items()
            if key.startswith(ENV_PREFIX) and value != ""
        }
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            known = ", ".join(ENV_PREFIX + name.upper() for name in cls.model_fields)
            raise ValueError(
                f"unknown setting(s) {', '.join(ENV_PREFIX + u.upper() for u in unknown)}; known: {known}"
            )
        return cls.model_validate(values)
