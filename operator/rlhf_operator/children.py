"""Manifests of an RLHFJob's children: pure functions of (job, stage, config).

Batch stages are `batch/v1` Jobs so that retries, pod-failure policies, suspension and completion
indexes are Kubernetes' own. The reward server is a Deployment + Service. Every pod is pinned to its
stage's node group, needs no API credentials, and passes the restricted Pod Security Standard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf_operator.api.stage_config import (
    CONFIG_DIR,
    CONFIG_ENV,
    CONFIG_KEY,
    CONFIG_PATH,
    JobRef,
    StageConfig,
)
from rlhf_operator.api.stage_config import dump_stage_config as dump_config
from rlhf_operator.api.v1alpha1 import API_VERSION, KIND, GpuResources, PodSettings, RLHFJobSpec, StageName
from rlhf_operator.config import OperatorConfig, Role
from rlhf_operator.naming import (
    KUEUE_QUEUE_LABEL,
    child_name,
    cleanup_job_name,
    config_map_name,
    labels,
    token_secret_name,
)
from rlhf_operator.workloads.exit_codes import EX_CONFIG

Manifest = dict[str, Any]

CONTAINER = "stage"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MASTER_PORT = 29500
TOKEN_MOUNT = "/var/run/secrets/rlhf-operator/reward"
TOKEN_KEY = "token"

ROLE_OF_STAGE = {
    StageName.PRECOMPUTE: Role.CPU,
    StageName.RANKING: Role.CPU,
    StageName.REWARD_MODEL: Role.REWARD,
    StageName.REWARD_SERVER: Role.REWARD,
    StageName.POLICY: Role.POLICY,
    StageName.EVALUATION: Role.CPU,
}
#: AWS's EFA device plugin resource (multi-node NCCL over EFA).
EFA_RESOURCE = "vpc.amazonaws.com/efa"

COMMAND_OF_STAGE = {
    StageName.PRECOMPUTE: "precompute",
    StageName.RANKING: "ranking",
    StageName.REWARD_MODEL: "reward-model",
    StageName.REWARD_SERVER: "serve-reward",
    StageName.POLICY: "policy",
    StageName.EVALUATION: "evaluation",
}


@dataclass(frozen=True)
class JobIdentity:
    """What the children need to know of their RLHFJob."""

    namespace: str
    name: str
    uid: str

    def owner_reference(self) -> Manifest:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(self, name: str, stage: StageName) -> Manifest:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": labels(self.name, self.uid, stage),
            "ownerReferences": [self.owner_reference()],
        }


def pod_settings(spec: RLHFJobSpec, stage: StageName) -> PodSettings:
    stages = spec.stages
    settings: dict[StageName, PodSettings] = {
        StageName.PRECOMPUTE: stages.precompute.pod,
        StageName.RANKING: stages.ranking.pod,
        StageName.REWARD_MODEL: stages.reward_model.pod,
        StageName.REWARD_SERVER: stages.reward_model.pod,
        StageName.POLICY: stages.policy.pod,
        StageName.EVALUATION: stages.evaluation.pod,
    }
    return settings[stage]


def stage_config(
    job: JobIdentity,
    spec: RLHFJobSpec,
    stage: StageName,
    artifact_root: str,
    reward_endpoint: str | None = None,
) -> StageConfig:
    return StageConfig(
        job=JobRef(namespace=job.namespace, name=job.name, uid=job.uid),
        stage=stage,
        spec=spec,
        artifact_root=artifact_root,
        reward_endpoint=reward_endpoint,
    )


def config_map(job: JobIdentity, stage: StageName, config: StageConfig) -> Manifest:
    """The stage's configuration; immutable, so a running pod never sees it change under it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": job.metadata(config_map_name(job.name, stage), stage),
        "immutable": True,
        "data": {CONFIG_KEY: dump_config(config)},
    }


def reward_token_secret(job: JobIdentity, token: str) -> Manifest:
    """The bearer token shared by the reward server and the policy pods of one job."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": job.metadata(token_secret_name(job.name), StageName.REWARD_SERVER),
        "type": "Opaque",
        "immutable": True,
        "stringData": {TOKEN_KEY: token},
    }


def _resources(settings: PodSettings, config: OperatorConfig) -> Manifest:
    requests: dict[str, str] = {}
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


RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_spec(
    job: JobIdentity,
    spec: RLHFJobSpec,
    stage: StageName,
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
    role = ROLE_OF_STAGE[stage]
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
        *({"name": e.name, "value": e.value} for e in settings.env),
    ]
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
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
    if stage in TRAINING_STAGES and settings.resources.gpus:
        # NCCL and torch's data loaders share memory through /dev/shm; a container's default 64 MiB
        # is too small. Memory-backed: it counts against the pod's memory limit.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if spec.stages.policy.reward_placement == "remote" and stage in (
        StageName.POLICY,
        StageName.REWARD_SERVER,
    ):
        volumes.append({"name": "reward-token", "secret": {"secretName": token_secret_name(job.name)}})
        mounts.append({"name": "reward-token", "mountPath": TOKEN_MOUNT, "readOnly": True})
        env.append({"name": "RLHF_REWARD_TOKEN_FILE", "value": f"{TOKEN_MOUNT}/{TOKEN_KEY}"})
    container: Manifest = {
        "name": CONTAINER,
        "image": settings.image or config.image(role),
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
    return pod


def _workload_command(stage: StageName) -> list[str]:
    return ["python", "-m", "rlhf_operator.workloads", COMMAND_OF_STAGE[stage], "--config", CONFIG_PATH]


def _pod_failure_policy() -> Manifest:
    return {
        "rules": [
            # Bad configuration or input: retrying cannot help.
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EX_CONFIG]},
            },
            # A drained node or a reclaimed spot instance is not the program's fault.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def stage_job(
    job: JobIdentity,
    spec: RLHFJobSpec,
    stage: StageName,
    config: OperatorConfig,
    *,
    suspend: bool = False,
) -> Manifest:
    """The batch/v1 Job of a batch stage (precompute, ranking, rewardModel, policy, evaluation)."""
    settings = pod_settings(spec, stage)
    name = child_name(job.name, stage)
    metadata = job.metadata(name, stage)
    command = _workload_command(stage)
    extra_env: list[Manifest] = []
    completions = 1
    parallelism = 1
    indexed = False
    if stage is StageName.PRECOMPUTE:
        completions = spec.stages.precompute.shards
        parallelism = spec.stages.precompute.parallelism or completions
        indexed = True
    elif needs_rendezvous(spec, stage):
        nodes = training_nodes(spec, stage)
        gpus = settings.resources.gpus
        completions = parallelism = nodes
        indexed = True
        extra_env = rendezvous_env(job, nodes, gpus, stage)
        command = [
            "torchrun", f"--nnodes={nodes}", f"--nproc-per-node={max(gpus, 1)}",
            "--node-rank=$(NODE_RANK)", "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)",
            "-m", "rlhf_operator.workloads", COMMAND_OF_STAGE[stage], "--config", CONFIG_PATH,
        ]  # fmt: skip
    template_labels = dict(metadata["labels"])
    if spec.queue_name:
        metadata["labels"][KUEUE_QUEUE_LABEL] = spec.queue_name
    pod = pod_spec(job, spec, stage, config, command=command, extra_env=extra_env)
    if indexed and stage in TRAINING_STAGES:
        # Stable DNS names <job>-<index>.<service> for the rendezvous.
        pod["subdomain"] = name
    job_spec: Manifest = {
        "completions": completions,
        "parallelism": parallelism,
        "backoffLimit": settings.backoff_limit,
        "podFailurePolicy": _pod_failure_policy(),
        "suspend": suspend,
        "template": {
            "metadata": {"labels": template_labels, "annotations": dict(settings.annotations)},
            "spec": pod,
        },
    }
    if indexed:
        job_spec["completionMode"] = "Indexed"
    if settings.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


#: Stages that train with torchrun on several GPUs or nodes (policy and reward model alike).
TRAINING_STAGES = (StageName.POLICY, StageName.REWARD_MODEL)


def training_nodes(spec: RLHFJobSpec, stage: StageName) -> int:
    return spec.stages.policy.nodes if stage is StageName.POLICY else spec.stages.reward_model.nodes


def needs_rendezvous(spec: RLHFJobSpec, stage: StageName) -> bool:
    """Several processes (nodes or GPUs) train together: torchrun, an Indexed Job, a headless Service."""
    if stage not in TRAINING_STAGES:
        return False
    return training_nodes(spec, stage) > 1 or pod_settings(spec, stage).resources.gpus > 1


def rendezvous_env(
    job: JobIdentity, nodes: int, gpus: int, stage: StageName = StageName.POLICY
) -> list[Manifest]:
    """torchrun's rendezvous: node 0 of the Indexed Job is the master, the index is the node rank."""
    name = child_name(job.name, stage)
    return [
        {"name": "MASTER_ADDR", "value": f"{name}-0.{name}.{job.namespace}.svc"},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
        {"name": "WORLD_SIZE", "value": str(nodes * max(gpus, 1))},
        {"name": "NNODES", "value": str(nodes)},
        {
            "name": "NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
    ]


def policy_headless_service(job: JobIdentity, stage: StageName = StageName.POLICY) -> Manifest:
    """The rendezvous Service of a training stage's Indexed Job (stable pod DNS names)."""
    name = child_name(job.name, stage)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": job.metadata(name, stage),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": name},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT}],
        },
    }


def reward_server_endpoint(job: JobIdentity, spec: RLHFJobSpec) -> str:
    name = child_name(job.name, StageName.REWARD_SERVER)
    return f"http://{name}.{job.namespace}.svc:{spec.stages.reward_model.serving.port}"


def reward_server_deployment(
    job: JobIdentity, spec: RLHFJobSpec, config: OperatorConfig, *, replicas: int
) -> Manifest:
    stage = StageName.REWARD_SERVER
    name = child_name(job.name, stage)
    port = spec.stages.reward_model.serving.port
    pod = pod_spec(
        job,
        spec,
        stage,
        config,
        command=[*_workload_command(stage), "--port", str(port)],
        restart_policy="Always",
        ports=[{"name": "http", "containerPort": port}],
        readiness_probe={"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
    )
    metadata = job.metadata(name, stage)
    settings = pod_settings(spec, stage)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": metadata["labels"]["app.kubernetes.io/instance"],
                    "rlhf-operator.dev/job-uid": job.uid,
                }
            },
            "template": {
                "metadata": {"labels": dict(metadata["labels"]), "annotations": dict(settings.annotations)},
                "spec": pod,
            },
        },
    }


def reward_server_service(job: JobIdentity, spec: RLHFJobSpec) -> Manifest:
    stage = StageName.REWARD_SERVER
    name = child_name(job.name, stage)
    metadata = job.metadata(name, stage)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": {
                "app.kubernetes.io/instance": metadata["labels"]["app.kubernetes.io/instance"],
                "rlhf-operator.dev/job-uid": job.uid,
            },
            "ports": [{"name": "http", "port": spec.stages.reward_model.serving.port, "targetPort": "http"}],
        },
    }


def cleanup_job(job: JobIdentity, spec: RLHFJobSpec, config: OperatorConfig, artifact_root: str) -> Manifest:
    """Deletes the job's artifacts (artifactRetention: Delete) on the CPU node group, with the
    evaluation stage's pod settings (service account, credentials) since it touches the same storage."""
    stage = StageName.EVALUATION
    name = cleanup_job_name(job.name)
    metadata = job.metadata(name, stage)
    metadata["labels"]["app.kubernetes.io/component"] = "cleanup"
    settings = pod_settings(spec, stage)
    command = ["python", "-m", "rlhf_operator", "cleanup-artifacts", artifact_root]
    pod = pod_spec(job, spec, stage, config, command=command, with_config=False)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "template": {"metadata": {"labels": dict(metadata["labels"]), "annotations": dict(settings.annotations)},
                         "spec": pod},
        },
    }  # fmt: skip
