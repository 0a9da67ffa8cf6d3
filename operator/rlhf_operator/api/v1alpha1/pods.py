"""How a stage's pods are placed and sized."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.v1alpha1.affinity import Affinity, LabelValue
from rlhf_operator.api.v1alpha1.common import (
    ENV_NAME_PATTERN,
    LABEL_VALUE_PATTERN,
    ObjectName,
    Quantity,
    ShortText,
)
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


class KeySelector(ApiModel):
    name: ObjectName = Field(description="Name of the object in the RLHFJob's namespace.")
    key: ShortText = Field(description="Key in it.")
    optional: bool | None = Field(None, description="Start the pod even if the object or key is missing.")


class FieldSelector(ApiModel):
    field_path: str = Field(
        min_length=1, max_length=256, description="Field of the pod, e.g. metadata.name or status.podIP."
    )


class EnvVarSource(ApiModel):
    cel_rules = (
        CelRule(
            "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)].filter(x, x).size() == 1",
            "exactly one of `secretKeyRef`, `configMapKeyRef` or `fieldRef` must be set",
            lambda v: [v.secret_key_ref, v.config_map_key_ref, v.field_ref].count(None) == 2,
        ),
    )

    secret_key_ref: KeySelector | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(None, description="A key of a ConfigMap.")
    field_ref: FieldSelector | None = Field(None, description="A field of the pod.")


class EnvVar(ApiModel):
    cel_rules = (
        CelRule(
            "!has(self.value) || !has(self.valueFrom)",
            "`value` and `valueFrom` must not both be set",
            lambda e: e.value is None or e.value_from is None,
        ),
    )

    name: str = Field(
        min_length=1, max_length=256, pattern=ENV_NAME_PATTERN, description="Environment variable name."
    )
    value: str | None = Field(None, max_length=8192, description="Environment variable value.")
    value_from: EnvVarSource | None = Field(
        None, description="Where the value comes from: a Secret's or ConfigMap's key, or a pod field."
    )


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
    ephemeral_storage: Quantity | None = Field(
        None,
        description="Node disk per pod for /tmp (also HOME: downloaded models, caches): its ephemeral-storage "
        "request and the size limit of /tmp, beyond which the pod is evicted. Defaults to the operator's "
        "(chart value `stages.ephemeralStorage`).",
    )


GPU_STAGE_MESSAGE = "`gpus` must be at least 1: a GPU stage must request at least one GPU"


class GpuResources(Resources):
    """Resources of a stage that needs accelerators (reward model, policy)."""

    cel_rules = (CelRule("self.gpus >= 1", GPU_STAGE_MESSAGE, lambda r: r.gpus >= 1),)

    gpus: int = Field(1, ge=0, le=64, description="`nvidia.com/gpu` per pod; this stage needs at least one.")
    efa: int = Field(
        0, ge=0, le=32, description="`vpc.amazonaws.com/efa` interfaces per pod (multi-node NCCL over EFA)."
    )


class KeyToPath(ApiModel):
    key: ShortText = Field(description="Key of the Secret or ConfigMap.")
    path: str = Field(
        min_length=1, max_length=1024, pattern=r"^[^/]", description="Relative file path it is written to."
    )


class SecretVolume(ApiModel):
    secret_name: ObjectName = Field(description="Secret in the RLHFJob's namespace.")
    items: list[KeyToPath] = Field(
        default_factory=list, max_length=64, description="Keys to project; empty: every key."
    )
    optional: bool | None = Field(None, description="Start the pod even if the Secret is missing.")


class ConfigMapVolume(ApiModel):
    name: ObjectName = Field(description="ConfigMap in the RLHFJob's namespace.")
    items: list[KeyToPath] = Field(
        default_factory=list, max_length=64, description="Keys to project; empty: every key."
    )
    optional: bool | None = Field(None, description="Start the pod even if the ConfigMap is missing.")


class ClaimVolume(ApiModel):
    claim_name: ObjectName = Field(description="PersistentVolumeClaim in the RLHFJob's namespace.")
    read_only: bool | None = Field(None, description="Mount it read-only.")


class EmptyDirVolume(ApiModel):
    medium: Literal["", "Memory"] | None = Field(None, description="'' (node disk) or Memory.")
    size_limit: Quantity | None = Field(None, description="Most it may hold, e.g. 10Gi.")


#: Volume names and mount paths of the operator's own volumes (children.py): not for `pod.volumes`.
RESERVED_VOLUMES = ("tmp", "config", "data", "dshm", "reward-token")
RESERVED_MOUNT_PATHS = ("/tmp", "/etc/rlhf-operator", "/dev/shm", "/var/run/secrets/rlhf-operator")


class Volume(ApiModel):
    cel_rules = (
        CelRule(
            "[has(self.secret), has(self.configMap), has(self.persistentVolumeClaim), has(self.emptyDir)]"
            ".filter(x, x).size() == 1",
            "exactly one of `secret`, `configMap`, `persistentVolumeClaim` or `emptyDir` must be set",
            lambda v: [v.secret, v.config_map, v.persistent_volume_claim, v.empty_dir].count(None) == 3,
        ),
        CelRule(
            f"!(self.name in {list(RESERVED_VOLUMES)})",
            f"`name` must not be one of the operator's own volumes ({', '.join(RESERVED_VOLUMES)})",
            lambda v: v.name not in RESERVED_VOLUMES,
        ),
    )

    name: str = Field(
        min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Volume name."
    )
    secret: SecretVolume | None = Field(None, description="Files from a Secret.")
    config_map: ConfigMapVolume | None = Field(None, description="Files from a ConfigMap.")
    persistent_volume_claim: ClaimVolume | None = Field(None, description="Another PersistentVolumeClaim.")
    empty_dir: EmptyDirVolume | None = Field(None, description="Scratch space for the pod's life.")


class VolumeMount(ApiModel):
    cel_rules = (
        CelRule(
            f"!(self.mountPath in {list(RESERVED_MOUNT_PATHS)})",
            f"`mountPath` must not be one of the operator's ({', '.join(RESERVED_MOUNT_PATHS)})",
            lambda m: m.mount_path not in RESERVED_MOUNT_PATHS,
        ),
        CelRule(
            "!has(self.subPath) || (!self.subPath.startsWith('/') && !self.subPath.matches('(^|/)[.][.](/|$)'))",
            "`subPath` must be a relative path without '..'",
            lambda m: (
                m.sub_path is None or (not m.sub_path.startswith("/") and ".." not in m.sub_path.split("/"))
            ),
        ),
    )

    name: str = Field(min_length=1, max_length=63, description="Name of a volume in `volumes`.")
    mount_path: str = Field(min_length=2, max_length=1024, pattern=r"^/", description="Where it is mounted.")
    sub_path: str | None = Field(None, min_length=1, max_length=1024, description="Sub-path to mount.")
    read_only: bool | None = Field(None, description="Mount it read-only.")


class ObjectReference(ApiModel):
    name: ObjectName = Field(description="Name of the object in the RLHFJob's namespace.")


#: Label keys the operator sets on its pods (and Kubernetes' Job controller): not for `pod.labels`.
RESERVED_LABEL_PREFIXES = (
    "app.kubernetes.io/",
    "rlhf-operator.dev/",
    "batch.kubernetes.io/",
    "kueue.x-k8s.io/",
)
LABEL_KEY_PATTERN = (
    # [.] rather than an escaped dot: the pattern is also a CEL string literal, where \. is no escape.
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def _pod_rules() -> tuple[CelRule, ...]:
    prefixes = " && ".join(f"!k.startsWith('{p}')" for p in RESERVED_LABEL_PREFIXES)
    return (
        CelRule(
            "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
            "self.volumes.exists(v, v.name == m.name))",
            "every `volumeMounts[].name` must name a volume in `volumes`",
            lambda p: {m.name for m in p.volume_mounts} <= {v.name for v in p.volumes},
        ),
        CelRule(
            f"!has(self.labels) || self.labels.all(k, k.matches('{LABEL_KEY_PATTERN}') && {prefixes})",
            "`labels` keys must be label keys (an optional DNS prefix and a name of at most 63 characters) "
            f"outside the operator's prefixes ({', '.join(RESERVED_LABEL_PREFIXES)})",
            lambda p: all(
                re.match(LABEL_KEY_PATTERN, k) and not k.startswith(RESERVED_LABEL_PREFIXES) for k in p.labels
            ),
        ),
    )


class PodSettings(ApiModel):
    cel_rules = _pod_rules()

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
    # What real clusters ask of a pod besides placement and size (core/v1's names and shapes).
    affinity: Affinity | None = Field(None, description="Node and pod (anti-)affinity, as in a pod spec.")
    priority_class_name: ObjectName | None = Field(
        None, description="PriorityClass of the pods (preemption order under GPU pressure)."
    )
    image_pull_secrets: list[ObjectReference] = Field(
        default_factory=list, max_length=8, description="Secrets to pull `image` from a private registry."
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Extra labels on the pods (cost allocation, policy)."
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=16,
        description="Extra volumes: Secrets, ConfigMaps, claims, scratch.",
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list,
        max_length=16,
        description="Where the extra volumes are mounted in the container.",
    )


class GpuPodSettings(PodSettings):
    resources: GpuResources = Field(default_factory=GpuResources, description="CPU, memory and GPUs per pod.")
