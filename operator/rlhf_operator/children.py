"""Manifests of an RLHFJob's children: pure functions of (job, stage, config).

Batch stages are `batch/v1` Jobs so that retries, pod-failure policies, suspension and completion
indexes are Kubernetes' own. Their pod is `pod_template.pod_spec`'s; the served reward model's
Deployment, Service and budget are in `reward_server_manifests.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_operator.api.stage_config import (
    CONFIG_KEY,
    JobRef,
    StageConfig,
)
from rlhf_operator.api.stage_config import dump_stage_config as dump_config
from rlhf_operator.api.stage_io import EX_CONFIG
from rlhf_operator.api.v1alpha1 import (
    API_VERSION,
    KIND,
    RLHFJobSpec,
    StageName,
)
from rlhf_operator.config import OperatorConfig
from rlhf_operator.naming import (
    KUEUE_QUEUE_LABEL,
    child_name,
    cleanup_job_name,
    config_map_name,
    labels,
)
from rlhf_operator.pod_template import CONTAINER, Manifest, pod_labels, pod_spec
from rlhf_operator.stages import CLEANUP, MASTER_PORT, STAGES, StageKey, pod_settings

__all__ = [
    "JobIdentity",
    "Manifest",
    "cleanup_job",
    "config_map",
    "headless_service",
    "stage_config",
    "stage_job",
]


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

    def metadata(self, name: str, stage: StageKey) -> Manifest:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": labels(self.name, self.uid, stage),
            "ownerReferences": [self.owner_reference()],
        }


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


def _pod_failure_policy(group: bool = False) -> Manifest:
    return {
        "rules": [
            # Bad configuration or input: retrying cannot help.
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EX_CONFIG]},
            },
            # A drained node or a reclaimed spot instance is not the program's fault: a single pod is
            # recreated without counting it; a group's Job fails and the operator restarts the group,
            # without counting it either.
            {
                "action": "FailJob" if group else "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
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
    shape = STAGES[stage].job_shape(name, job.namespace, spec)
    command = list(shape.command or STAGES[stage].workload_command())
    template_labels = pod_labels(settings, metadata["labels"])
    if spec.queue_name:
        metadata["labels"][KUEUE_QUEUE_LABEL] = spec.queue_name
    pod = pod_spec(job, spec, stage, config, command=command, extra_env=list(shape.extra_env))
    if shape.headless_service:
        # Stable DNS names <job>-<index>.<service>, e.g. for a rendezvous.
        pod["subdomain"] = name
    job_spec: Manifest = {
        "completions": shape.completions,
        "parallelism": shape.parallelism,
        # A group's pods are never retried one by one: the operator replaces the whole Job, within
        # the stage's backoffLimit (its restarts are counted in the stage's status).
        "backoffLimit": 0 if shape.restart_as_group else settings.backoff_limit,
        "podFailurePolicy": _pod_failure_policy(shape.restart_as_group),
        "suspend": suspend,
        "template": {
            "metadata": {"labels": template_labels, "annotations": dict(settings.annotations)},
            "spec": pod,
        },
    }
    if shape.indexed:
        job_spec["completionMode"] = "Indexed"
    if settings.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def headless_service(job: JobIdentity, stage: StageName) -> Manifest:
    """Gives the pods of an Indexed Job stable DNS names (`JobShape.headless_service`)."""
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


def cleanup_job(job: JobIdentity, spec: RLHFJobSpec, config: OperatorConfig, artifact_root: str) -> Manifest:
    """Deletes the job's artifacts (artifactRetention: Delete); see `stages.CLEANUP`."""
    stage = CLEANUP
    name = cleanup_job_name(job.name)
    metadata = job.metadata(name, stage)
    settings = pod_settings(spec, stage)
    command = ["python", "-m", "rlhf_operator", "cleanup-artifacts", artifact_root]
    pod = pod_spec(job, spec, stage, config, command=command, with_config=False)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "template": {"metadata": {"labels": pod_labels(settings, metadata["labels"]),
                                      "annotations": dict(settings.annotations)},
                         "spec": pod},
        },
    }  # fmt: skip
