"""The pod of every child: one function of (job, stage, config) that pins it to its node group, gives
it its volumes, its environment and the Secrets it may use, and passes the restricted Pod Security
Standard. `children.py` and `reward_server_manifests.py` wrap it in Jobs and a Deployment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from rlhf_operator.api.stage_config import (
    CONFIG_DIR,
    CONFIG_ENV,
    CONFIG_PATH,
    REWARD_TLS_DIR_ENV,
)
from rlhf_operator.api.training import GenerationEngine
from rlhf_operator.api.v1alpha1 import (
    GpuResources,
    PodSettings,
    RankingMethod,
    RLHFJobSpec,
    SecretKeyRef,
    StageName,
)
from rlhf_operator.api.v1alpha1.hub import HUB_TOKEN_ENV
from rlhf_operator.config import OperatorConfig
from rlhf_operator.naming import (
    config_map_name,
    token_secret_name,
)
from rlhf_operator.stages import STAGES, StageKey, pod_settings

if TYPE_CHECKING:
    from rlhf_operator.children import JobIdentity

Manifest = dict[str, Any]

CONTAINER = "stage"

TERMINATION_MESSAGE_PATH = "/dev/termination-log"

TOKEN_MOUNT = "/var/run/secrets/rlhf-operator/reward"

TOKEN_KEY = "token"

#: The reward server's certificate (`serving.tls`): tls.crt and tls.key for it, ca.crt for its clients.
TLS_MOUNT = "/var/run/secrets/rlhf-operator/reward-tls"

#: AWS's EFA device plugin resource (multi-node NCCL over EFA).
EFA_RESOURCE = "vpc.amazonaws.com/efa"


def scratch_size(settings: PodSettings, config: OperatorConfig) -> str:
    """Node disk of one pod (/tmp): its ephemeral-storage request and the size limit of /tmp."""
    return settings.resources.ephemeral_storage or config.stage_ephemeral_storage


def _resources(settings: PodSettings, config: OperatorConfig) -> Manifest:
    requests: dict[str, str] = {"ephemeral-storage": scratch_size(settings, config)}
    limits: dict[str, str] = {}
    if settings.resources.cpu:
        requests["cpu"] = settings.resources.cpu
    if settings.resources.memory:
        requests["memory"] = limits["memory"] = settings.resources.memory
    if settings.resources.gpus:
        limits[config.gpu_resource] = str(settings.resources.gpus)
    efa = settings.resources.efa if isinstance(settings.resources, GpuResources) else 0
    if efa:
        limits[EFA_RESOURCE] = requests[EFA_RESOURCE] = str(efa)
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _tolerations(settings: PodSettings, config: OperatorConfig) -> list[Manifest]:
    tolerations = [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in settings.tolerations]
    if settings.resources.gpus:
        tolerations.insert(0, {"key": config.gpu_taint_key, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


#: Stage programs write only their volumes (/tmp, which is also HOME, the storage volume, /dev/shm):
#: a read-only root makes any other write fail loudly instead of filling the node's disk.
RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}

#: /dev/shm of a GPU pod whose spec sets no memory (memory-backed: it counts as the pod's memory).
DEFAULT_SHM_SIZE = "8Gi"


def _volumes(
    job: JobIdentity, spec: RLHFJobSpec, stage: StageKey, config: OperatorConfig, with_config: bool
) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, mounts): /tmp, the stage's config, the storage volume, /dev/shm, the reward token
    and certificate. Every emptyDir has a size limit: a pod cannot fill its node's disk or memory."""
    settings = pod_settings(spec, stage)
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {"sizeLimit": scratch_size(settings, config)}}]
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]
    if with_config:
        volumes.append({"name": "config", "configMap": {"name": config_map_name(job.name, stage)}})
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    if spec.storage.volume is not None:
        volume = spec.storage.volume
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": volume.claim_name}})
        mount: Manifest = {"name": "data", "mountPath": volume.mount_path}
        if volume.sub_path:
            mount["subPath"] = volume.sub_path
        mounts.append(mount)
    if STAGES[stage].gpu_training and settings.resources.gpus:
        # NCCL and torch's data loaders share memory through /dev/shm; a container's default 64 MiB
        # is too small. Memory-backed: it counts against the pod's memory limit.
        shm = {"medium": "Memory", "sizeLimit": settings.resources.memory or DEFAULT_SHM_SIZE}
        volumes.append({"name": "dshm", "emptyDir": shm})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if spec.stages.policy.reward_placement == "remote" and STAGES[stage].reward_token:
        volumes.append({"name": "reward-token", "secret": {"secretName": token_secret_name(job.name)}})
        mounts.append({"name": "reward-token", "mountPath": TOKEN_MOUNT, "readOnly": True})
        tls = spec.stages.reward_model.serving.tls
        if tls is not None:
            volumes.append({"name": "reward-tls", "secret": _reward_tls_secret(tls.secret_name, stage)})
            mounts.append({"name": "reward-tls", "mountPath": TLS_MOUNT, "readOnly": True})
    return volumes, mounts


def _reward_tls_secret(secret_name: str, stage: StageKey) -> Manifest:
    """The reward server's certificate: all of it for the server, only what verifies it (the CA, or
    the certificate itself when self-signed) for its clients."""
    if stage is StageName.REWARD_SERVER:
        return {"secretName": secret_name}
    return {
        "secretName": secret_name,
        "items": [{"key": k, "path": k} for k in ("ca.crt", "tls.crt")],
        "optional": True,
    }


#: The served AI judge's API key, from `aiJudge.endpoint.apiKeySecret` (read by endpoint_judge).
JUDGE_API_KEY_ENV = "RLHF_JUDGE_API_KEY"

#: The bearer token of a reward server elsewhere (`rewardModel.endpoint`; read by reward_client).
REWARD_TOKEN_ENV = "RLHF_REWARD_TOKEN"

REWARD_CALLERS = (StageName.POLICY, StageName.EVALUATION)


def judge_api_key_secret(spec: RLHFJobSpec) -> SecretKeyRef | None:
    judge = spec.stages.ranking.ai_judge
    if spec.stages.ranking.method is not RankingMethod.AI_JUDGE or judge is None or judge.endpoint is None:
        return None
    return judge.endpoint.api_key_secret


def _token_env(spec: RLHFJobSpec, stage: StageKey) -> list[Manifest]:
    """The tokens of `spec.hub.tokenSecret` (any stage may load an hf:// model or dataset; only the
    Hub fetch process reads it) and of `rewardModel.endpoint.tokenSecret` (the stages that call the
    reward: policy and evaluation)."""
    wanted: list[tuple[str, str, str]] = []
    if spec.hub is not None and spec.hub.token_secret is not None:
        wanted.append((HUB_TOKEN_ENV, spec.hub.token_secret.name, spec.hub.token_secret.key))
    endpoint = spec.stages.reward_model.endpoint
    if endpoint is not None and endpoint.token_secret is not None and stage in REWARD_CALLERS:
        wanted.append((REWARD_TOKEN_ENV, endpoint.token_secret.name, endpoint.token_secret.key))
    return [{"name": n, "valueFrom": {"secretKeyRef": {"name": s, "key": k}}} for n, s, k in wanted]


def stage_image(spec: RLHFJobSpec, stage: StageKey, config: OperatorConfig) -> str:
    """The stage's image: its `pod.image` when set; for a policy generating with vLLM the trainer-vllm
    image (vLLM pins its own torch and transformers, so it lives in an image of its own); otherwise
    its role's. The reward model, the reward server and the CPU stages never need vLLM."""
    image = pod_settings(spec, stage).image
    if image:
        return image
    if stage is StageName.POLICY and spec.stages.policy.generation.engine == GenerationEngine.VLLM:
        return config.image_trainer_vllm
    return config.image(STAGES[stage].role)


def pod_spec(
    job: JobIdentity,
    spec: RLHFJobSpec,
    stage: StageKey,
    config: OperatorConfig,
    *,
    command: list[str],
    extra_env: list[Manifest] | None = None,
    restart_policy: str = "Never",
    ports: list[Manifest] | None = None,
    readiness_probe: Manifest | None = None,
    with_config: bool = True,
) -> Manifest:
    settings = pod_settings(spec, stage)
    role = STAGES[stage].role
    selector = {
        config.node_group_label: settings.node_group or config.node_group(role),
        **settings.node_selector,
    }
    env = [
        {"name": CONFIG_ENV, "value": CONFIG_PATH},
        {"name": "RLHF_TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        *(extra_env or []),
        *(core_v1(e) for e in settings.env),
    ]
    volumes, mounts = _volumes(job, spec, stage, config, with_config)
    volumes += [core_v1(v) for v in settings.volumes]
    mounts += [core_v1(m) for m in settings.volume_mounts]
    if spec.stages.policy.reward_placement == "remote" and STAGES[stage].reward_token:
        env.append({"name": "RLHF_REWARD_TOKEN_FILE", "value": f"{TOKEN_MOUNT}/{TOKEN_KEY}"})
        if spec.stages.reward_model.serving.tls is not None:
            env.append({"name": REWARD_TLS_DIR_ENV, "value": TLS_MOUNT})
    container: Manifest = {
        "name": CONTAINER,
        "image": stage_image(spec, stage, config),
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "env": env,
        "volumeMounts": mounts,
        "resources": _resources(settings, config),
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        # A crash before the program writes its result still tells the operator something.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    env += _token_env(spec, stage)
    judge_key = judge_api_key_secret(spec) if stage is StageName.RANKING else None
    if judge_key is not None:
        ref = {"name": judge_key.name, "key": judge_key.key}
        env.append({"name": JUDGE_API_KEY_ENV, "valueFrom": {"secretKeyRef": ref}})
    if spec.storage.credentials is not None and spec.storage.credentials.secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": spec.storage.credentials.secret_ref.name}}]
    if ports:
        container["ports"] = ports
    if readiness_probe:
        container["readinessProbe"] = readiness_probe
    pod: Manifest = {
        "restartPolicy": restart_policy,
        "nodeSelector": selector,
        "tolerations": _tolerations(settings, config),
        # Stage programs never talk to the API server: progress goes to the log, results to the
        # termination message.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    service_account = settings.service_account_name or config.stage_service_account
    if service_account:
        pod["serviceAccountName"] = service_account
    pod.update(_scheduling_extras(settings))
    return pod


def _scheduling_extras(settings: PodSettings) -> Manifest:
    """`pod.affinity`, `priorityClassName` and `imagePullSecrets`, as the pod spec takes them."""
    out: Manifest = {}
    if settings.affinity is not None:
        out["affinity"] = core_v1(settings.affinity)
    if settings.priority_class_name:
        out["priorityClassName"] = settings.priority_class_name
    if settings.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": ref.name} for ref in settings.image_pull_secrets]
    return out


def core_v1(model: BaseModel) -> Manifest:
    """A pod-settings model as core/v1 writes it: camelCase, unset fields and empty lists left out
    (an empty object stays: `emptyDir: {}` is a volume)."""

    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: prune(v) for k, v in value.items() if v != []}
        if isinstance(value, list):
            return [prune(v) for v in value]
        return value

    dumped: Manifest = prune(model.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return dumped


def pod_labels(settings: PodSettings, own: Manifest) -> Manifest:
    """`pod.labels` and the operator's own labels (which the API keeps apart from the user's)."""
    return {**settings.labels, **own}
